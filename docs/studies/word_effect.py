"""How far each caption word moves the transformer's velocity (docs/learning_curve.md).

    python docs/studies/word_effect.py WORKDIR [STEP]

For 8 noise draws at t = 0.5, 0.9 and 0.99, the transformer's velocity for "a large red circle
moving right; on a black background" against the same caption with one word changed (direction,
colour, shape, size, background). Prints the root-mean-square difference per word: about 0 for a
word the transformer does not read. Then, for the text encoder, how far each changed word moves
the output of its own token (the largest change over the caption's tokens) against their norm.
"""
import sys

import jax
import jax.numpy as jnp
import numpy as np

from videogen.generate import pipeline

workdir = sys.argv[1]
step = int(sys.argv[2]) if len(sys.argv) > 2 else None  # None: the latest checkpoint
generator = pipeline.load(workdir, progress=False, step=step)
base = "a large red circle moving right; on a black background"
changed = {"direction": base.replace("right", "left"), "colour": base.replace("red", "blue"),
           "shape": base.replace("circle", "square"), "size": base.replace("large", "small"),
           "background": base.replace("black", "gray")}
prompts = {"base": base, **changed}
conditions = {word: generator.encode_prompt(text) for word, text in prompts.items()}
config = generator.dit.config
t_frames, height, width = config.input_size
for t_value in (0.5, 0.9, 0.99):
  differences = {word: [] for word in changed}
  for seed in range(8):
    x = jax.random.normal(jax.random.PRNGKey(seed), (1, t_frames, height, width,
                                                     config.in_channels))
    t = jnp.full((1, t_frames), t_value)
    reference = np.asarray(generator.velocity(x, t, conditions["base"]))
    for word in changed:
      velocity = np.asarray(generator.velocity(x, t, conditions[word]))
      differences[word].append(np.sqrt(np.mean(np.square(velocity - reference))))
  print(f"t = {t_value}: " + ", ".join(f"{word} {np.mean(values):.3f}"
                                       for word, values in differences.items()))

mask = np.asarray(conditions["base"]["context_mask"][0])
if any((np.asarray(c["context_mask"][0]) != mask).any() for c in conditions.values()):
  raise SystemExit("a changed word is not one piece like the word it replaces: the tokens of "
                   "the captions do not line up")
tokens = np.asarray(conditions["base"]["context"][0])[mask]
moved = {word: np.linalg.norm(np.asarray(conditions[word]["context"][0])[mask] - tokens,
                              axis=-1).max() for word in changed}
print(f"text encoder outputs (norm {np.linalg.norm(tokens, axis=-1).mean():.1f}), moved by: "
      + ", ".join(f"{word} {value:.2f}" for word, value in moved.items()))
