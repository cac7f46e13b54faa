"""How far one changed word moves a text encoder's pooled caption (docs/learning_curve.md).

    python docs/studies/text_separation.py WORKDIR dit|text|random [SCENES]

For SCENES test-split scenes of the procedural world (9x32x32; default 256): the descriptive
caption, and per attribute the caption of the same scene with that attribute of one object changed
(`caption_use.counterfactual`: another colour or shape, the other size, the direction reversed).
Prints, per attribute, the mean distance between the two pooled embeddings relative to the mean
length of a pooled embedding. The encoder: the dit stage's (its EMA weights, as generation reads
them), the text stage's, or a random one of the same config.
"""
import sys

import jax
import numpy as np
from flax import nnx

from data_pipelines.shapes import world
from videogen import workdir as workdir_lib
from videogen.evaluate import caption_use
from videogen.generate import pipeline
from videogen.models import text_encoder as text_encoder_lib
from videogen.train import text_stage

workdir, which = sys.argv[1], sys.argv[2]
scenes = int(sys.argv[3]) if len(sys.argv) > 3 else 256
experiment = workdir_lib.saved_experiment(workdir, workdir_lib.DIT_STAGE if which == "dit"
                                          else workdir_lib.TEXT_STAGE)
tokenizer = workdir_lib.load_tokenizer(workdir, experiment)
if which == "dit":
  encoder = pipeline.load(workdir, progress=False).text_encoder
else:
  with nnx.use_eager_sharding(False):
    encoder = text_encoder_lib.TextEncoder(experiment.text_encoder, rngs=nnx.Rngs(0))
  if which == "text":
    state, _ = text_stage.restore_text_encoder(experiment, workdir, mesh=None)
    nnx.update(encoder, jax.device_get(state))


def pooled(captions):
  ids, mask = tokenizer.encode(captions)
  return np.asarray(encoder(ids, mask)[1], np.float32)


rng = np.random.default_rng(0)
distances = {attribute: [] for attribute in ("color", "shape", "size", "direction")}
lengths = []
for index in range(scenes):
  scene = world.sample_scene(index, seed=777, split="test")
  caption = world.describe(scene, frames=9, height=32, width=32)
  base = pooled([caption])[0]
  lengths.append(np.linalg.norm(base))
  for attribute, found in distances.items():
    changed = caption_use.counterfactual(scene, attribute, rng)
    if changed is None:
      continue
    other = pooled([world.describe(changed, frames=9, height=32, width=32)])[0]
    found.append(np.linalg.norm(base - other))
length = float(np.mean(lengths))
print(f"{workdir} ({which} encoder), {scenes} scenes; pooled length {length:.2f}")
print("| attribute | pairs | distance | distance / length |")
print("|---|---|---|---|")
for attribute, found in distances.items():
  print(f"| {attribute} | {len(found)} | {np.mean(found):.2f} | {np.mean(found) / length:.3f} |")
