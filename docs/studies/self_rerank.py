"""Best of N seeds chosen by the transformer itself: the candidate its caption explains best.

    python docs/studies/self_rerank.py WORKDIR SCENES N K [LOW HIGH]

Generates each text-to-video prompt of the learning curve's suite (`--scenes_per_group=SCENES`:
4 x SCENES prompts) with N seeds (the suite's own seed first) and re-encodes every video. Each
candidate x0 is scored as a zero-shot diffusion classifier would (Li et al. 2023, "Your
diffusion model is secretly a zero-shot classifier"): over K noise levels t (midpoints of the
sampler's shifted grid) and noises eps, shared by the prompt's candidates, the flow loss with the
null caption minus the loss with the prompt,

    score = mean_k |v(x_t, t, null) - (eps - x0)|^2 - |v(x_t, t, prompt) - (eps - x0)|^2,

an estimate of log p(x0 | prompt) - log p(x0), so the candidate the prompt explains best, not
merely the most likely video, scores highest. Only the levels in [LOW, HIGH] (default [0, 1])
count.
The analyzer scores every video afterwards; it prints the suite's accuracies for seed 1 of N
(what `evaluate --what=learning_curve` samples), for the candidate the transformer picks, and for
the analyzer's own pick (the oracle of docs/studies/best_of_n.py), as JSON lines.
"""
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np

from videogen.diffusion import flow
from videogen.diffusion import samplers
from videogen.evaluate import scoring

import best_of_n  # docs/studies/best_of_n.py, beside this script

workdir, scenes, candidates, levels = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(
    sys.argv[4])
low, high = (float(sys.argv[5]), float(sys.argv[6])) if len(sys.argv) > 6 else (0.0, 1.0)
suite, generator = best_of_n.load(workdir, scenes)
right = best_of_n.right
null = generator.encode_prompt("")


def accuracies(scores: list[scoring.VideoScore]) -> dict[str, float]:
  return {key: round(value, 4) for key, value in best_of_n.accuracies(scores).items()}


def caption_scores(latents: jax.Array, cond: dict, key: jax.Array) -> np.ndarray:
  """[N] scores of N candidates' latents [N, t, h, w, C] (module docstring)."""
  n, frames = latents.shape[:2]
  shift = samplers.sampling_shift(generator.sample_config, generator.flow_config,
                                  generator.num_tokens(frames, suite.height, suite.width))
  times = flow.time_shift((np.arange(levels) + 0.5) / levels, shift)
  times = times[(times >= low) & (times <= high)]
  k = len(times)
  eps = jax.random.normal(key, (k, *latents.shape[1:]), jnp.float32)
  x0 = jnp.repeat(latents, k, axis=0)                      # [n k, ...]: candidate-major
  noise = jnp.tile(eps, (n, 1, 1, 1, 1))
  t = jnp.asarray(np.tile(times, n), jnp.float32)[:, None] * jnp.ones((1, frames))
  x_t = flow.noisy_input(x0, noise, t)
  target = noise - x0
  batch = lambda c: jax.tree.map(lambda v: jnp.repeat(v, n * k, axis=0), c)
  error = lambda c: jnp.mean(jnp.square(generator.velocity(x_t, t, batch(c)) - target),
                             axis=(1, 2, 3, 4))
  gap = (error(null) - error(cond)).reshape(n, k)
  return np.asarray(gap.mean(axis=1))


first, picked, oracle = [], [], []
for index, prompt in enumerate(suite.prompts):
  scores, videos = best_of_n.sample(suite, generator, index, candidates)
  latents = [generator.encode(video) for video in videos]
  self_scores = caption_scores(jnp.concatenate(latents), generator.encode_prompt(prompt.text),
                               jax.random.key(index))
  first.append(scores[0])
  picked.append(scores[int(np.argmax(self_scores))])
  oracle.append(max(scores, key=right))
  print(index, [right(s) for s in scores], np.round(self_scores, 4).tolist(), prompt.text,
        flush=True)

print(json.dumps({"pick": "seed 1", "candidates": candidates, **accuracies(first)}))
print(json.dumps({"pick": "transformer", "candidates": candidates, "levels": levels,
                  "low": low, "high": high, **accuracies(picked)}))
print(json.dumps({"pick": "analyzer", "candidates": candidates, **accuracies(oracle)}))
