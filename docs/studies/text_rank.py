"""How many directions a dit stage's text encoder spreads its caption tokens over
(docs/learning_curve.md, "What makes a run weak").

    python docs/studies/text_rank.py WORKDIR[:STEP] [WORKDIR[:STEP] ...]

For the descriptive captions of 64 test-split scenes of the procedural world (9x32x32), the
encoder's outputs at every caption token (padding left out), read after the embedding (token plus
position), after each block and after the final norm. Prints, per checkpoint and place, the
effective rank of the tokens about their mean: exp of the entropy of the centred singular values'
energy shares (`caption_use.effective_rank`: 1 when every token differs from the mean along one
direction only, the width when they spread evenly); after the final norm it is the dit stage's
`eval/text_token_rank` but on scenes of seed 777. The encoder is the one generation reads: the
checkpoint's EMA weights.
"""
import sys

import numpy as np

from data_pipelines.shapes import world
from videogen.evaluate import caption_use
from videogen.generate import pipeline

SCENES = 64


def places(encoder, ids: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
  """The encoder's tokens [N, D] at each place, its forward pass read step by step."""
  length = ids.shape[1]
  x = np.asarray(encoder.embedding[...])[ids] + np.asarray(encoder.positions[...])[None, :length]
  found = {"embedding": x}
  attention_mask = mask[:, None, None, :]
  for index, block in enumerate(encoder.blocks):
    x = block(x, attention_mask)
    found[f"block {index + 1}"] = np.asarray(x)
  found["final norm"] = np.asarray(encoder.final_norm(x))
  # The pass above is the encoder's own, read in parts: its end must be what the encoder returns.
  np.testing.assert_allclose(found["final norm"][mask], np.asarray(encoder(ids, mask)[0])[mask],
                             rtol=1e-4, atol=1e-4)
  return {name: value[mask] for name, value in found.items()}


def main(arguments: list[str]) -> None:
  captions = [world.describe(world.sample_scene(index, seed=777, split="test"), frames=9,
                             height=32, width=32) for index in range(SCENES)]
  header = None
  for argument in arguments:
    workdir, _, step = argument.partition(":")
    generator = pipeline.load(workdir, progress=False, step=int(step) if step else None)
    ids, mask = generator.tokenizer.encode(captions)
    ranks = {name: caption_use.effective_rank(tokens) for name, tokens in
             places(generator.text_encoder, np.asarray(ids), np.asarray(mask, bool)).items()}
    if header is None:
      header = list(ranks)
      print("| checkpoint | " + " | ".join(header) + " |")
      print("|---" * (len(header) + 1) + "|")
    print(f"| {argument} | " + " | ".join(f"{ranks[name]:.1f}" for name in header) + " |",
          flush=True)


if __name__ == "__main__":
  main(sys.argv[1:])
