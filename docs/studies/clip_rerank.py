"""Best of N seeds chosen by the caption-clip model: the candidate most similar to its caption.

    python docs/studies/clip_rerank.py WORKDIR SCENES N [PARAMS.pkl]

WORKDIR holds a dit stage and a text stage (`--config.stages='("text",)'`, the caption-clip model
of `videogen.models.caption_clip`). Generates each text-to-video prompt of the learning curve's
suite (`--scenes_per_group=SCENES`: 4 x SCENES prompts) with N seeds (the suite's own seed first),
re-encodes every video, and keeps per prompt the candidate whose clip embedding has the largest
cosine similarity with the prompt's text embedding: CLIP reranking (DALL-E, Ramesh et al. 2021).
The analyzer scores every video afterwards; it prints the suite's accuracies for seed 1 of N
(what `evaluate --what=learning_curve` samples), for the caption-clip model's pick, and for the
analyzer's own pick (the oracle of docs/studies/best_of_n.py), as JSON lines. With PARAMS.pkl
(written by docs/studies/negative_clip.py) the caption-clip model's weights come from there instead
of the text stage's checkpoint. With VG_NEGATIVES=M a candidate scores instead the log-probability
of the prompt among itself and M hard negatives of it (negative_clip.perturb): how sure the model
is that the video shows the prompt and not a variant. Last it prints how well the model reads
counts on the generated videos: over every candidate, the AUC of the margin of the prompt over its
count variants (each object dropped, another prompt's objects added) against the analyzer's
verdict on the count (1: it separates them as the analyzer does; 0.5: not at all).
"""
import json
import os
import pickle
import sys

import jax.numpy as jnp
import numpy as np
from flax import nnx

from videogen import workdir as workdir_lib
from videogen.evaluate import scoring
from videogen.models import caption_clip
from videogen.train import text_stage

import best_of_n  # docs/studies/best_of_n.py, beside this script
import negative_clip  # docs/studies/negative_clip.py, beside this script

NEGATIVES = int(os.environ.get("VG_NEGATIVES", "0"))

workdir, scenes, candidates = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
suite, generator = best_of_n.load(workdir, scenes)
right = best_of_n.right
experiment = workdir_lib.saved_experiment(
    workdir, workdir_lib.TEXT_STAGE, workdir_lib.require_step(workdir, workdir_lib.TEXT_STAGE))
stage = text_stage.TextStage(experiment)
with nnx.use_eager_sharding(False):
  abstract = nnx.eval_shape(lambda: stage.create_model(nnx.Rngs(0)))
graphdef, params, frozen = nnx.split(abstract, stage.trainable, ...)
clip_model, clip_step = workdir_lib.restore_model(workdir, workdir_lib.TEXT_STAGE, graphdef,
                                                  params, frozen, experiment=experiment)
if len(sys.argv) > 4:
  with open(sys.argv[4], "rb") as f:
    pure = pickle.load(f)
  trained = nnx.state(clip_model, nnx.Param)
  nnx.replace_by_pure_dict(trained, pure)
  nnx.update(clip_model, trained)
  clip_step = sys.argv[4]
print("caption-clip model of", clip_step, flush=True)


@nnx.jit
def similarities(model, tokens, mask, latents):
  """[N candidates, P captions] cosine similarities."""
  _, pooled = model.text_encoder(tokens, mask)
  text = caption_clip.unit_length(model.text_projection(pooled.astype(jnp.float32)))
  return caption_clip.unit_length(model.clip_encoder(latents)) @ text.T


def captions_to_rank(prompt: str, donor: str, rng: np.random.Generator) -> list[str]:
  """The prompt first, then (with VG_NEGATIVES=M) M hard negatives of it (an added object comes
  from `donor`, another prompt)."""
  if not NEGATIVES:
    return [prompt]
  found = []
  for _ in range(20 * NEGATIVES):
    kind = negative_clip.KINDS[int(rng.integers(len(negative_clip.KINDS)))]
    new = negative_clip.perturb(prompt, kind, donor, rng)
    if new and new != prompt and new not in found:
      found.append(new)
    if len(found) == NEGATIVES:
      break
  return [prompt] + found


def accuracies(scores: list[scoring.VideoScore]) -> dict[str, float]:
  return {key: round(value, 4) for key, value in best_of_n.accuracies(scores).items()}


def count_variants(prompt: str, donor: str) -> list[str]:
  """The prompt with each of its objects dropped in turn, and with each of the donor's added."""
  objects, background, descriptive = negative_clip.split_caption(prompt)
  dropped = [negative_clip.join_caption(objects[:j] + objects[j + 1:], background, descriptive)
             for j in range(len(objects))] if len(objects) > 1 else []
  colours = {negative_clip.colour_word(o) for o in objects}
  added = [negative_clip.join_caption(objects + [extra], background, descriptive)
           for extra in negative_clip.split_caption(donor)[0]
           if negative_clip.colour_word(extra) not in colours]
  return dropped + added


def auc(margins: list[float], correct: list[bool]) -> float:
  """The chance that a video of the right count has a larger margin than one of a wrong count."""
  good = np.array([m for m, c in zip(margins, correct) if c])
  bad = np.array([m for m, c in zip(margins, correct) if not c])
  return float(np.mean((good[:, None] > bad[None, :]) + 0.5 * (good[:, None] == bad[None, :])))


first, picked, oracle = [], [], []
margins, count_right = [], []
for index, prompt in enumerate(suite.prompts):
  scores, videos = best_of_n.sample(suite, generator, index, candidates)
  latents = [generator.encode(video) for video in videos]
  donor = suite.prompts[(index + 2) % len(suite.prompts)].text  # the same caption style
  ids, mask = generator.tokenizer.encode(captions_to_rank(prompt.text, donor,
                                                          np.random.default_rng(index)))
  table = np.asarray(similarities(clip_model, jnp.asarray(ids), jnp.asarray(mask, bool),
                                  jnp.concatenate(latents)))
  # Without negatives the similarity to the prompt; with them, how far the prompt is preferred
  # to its variants (its log-probability among them at the model's temperature).
  logits = table * float(caption_clip.inverse_temperature(clip_model.logit_scale[...]))
  sims = logits[:, 0] - np.log(np.exp(logits).sum(axis=1)) if NEGATIVES else table[:, 0]
  variants = count_variants(prompt.text, donor)
  if variants:
    ids, mask = generator.tokenizer.encode([prompt.text] + variants)
    table = np.asarray(similarities(clip_model, jnp.asarray(ids), jnp.asarray(mask, bool),
                                    jnp.concatenate(latents)))
    margins.extend((table[:, 0] - table[:, 1:].max(axis=1)).tolist())
    count_right.extend(s.count_correct for s in scores)
  first.append(scores[0])
  picked.append(scores[int(np.argmax(sims))])
  oracle.append(max(scores, key=right))
  print(index, [right(s) for s in scores], np.round(sims, 3).tolist(), prompt.text, flush=True)

print(json.dumps({"pick": "seed 1", "candidates": candidates, **accuracies(first)}))
print(json.dumps({"pick": "caption-clip", "candidates": candidates, "step": clip_step,
                  "negatives": NEGATIVES, **accuracies(picked)}))
print(json.dumps({"pick": "analyzer", "candidates": candidates, **accuracies(oracle)}))
# Does the caption-clip model read counts on generated videos as the analyzer does? 0.5: no.
print(json.dumps({"count_margin_auc": round(auc(margins, count_right), 3),
                  "videos": len(margins), "count_right": int(np.sum(count_right))}))
