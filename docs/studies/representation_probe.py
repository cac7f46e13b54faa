r"""What a representation-aligned transformer's hidden tokens know, by noise level.

    python docs/studies/representation_probe.py WORKDIR [ROWS]

For the last ROWS clips of WORKDIR's latent cache (features written by attribute_features.py), each
noised to t with one fixed noise draw, reads the projected hidden tokens
(`DiT.velocity_and_representation`, docs/studies/representation_alignment.patch) at the tokens
an object covers more than half of, and prints per attribute the share whose largest channel is the
object's value, next to the share of the most common value (what a transformer that ignores
both the latents and the caption scores). At t = 1 the latents hold nothing, so what is read
there comes from the caption.
"""

from __future__ import annotations

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from videogen.diffusion import flow
from videogen.generate import pipeline

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import attribute_features  # noqa: E402  (the study script beside this one)

LEVELS = (0.3, 0.6, 0.9, 1.0)


def attribute_slices() -> dict[str, slice]:
  names = attribute_features.feature_names()
  slices = {}
  for kind in ("shape", "colour", "size", "motion"):
    positions = [i for i, name in enumerate(names) if name.startswith(kind + ":")]
    slices[kind] = slice(positions[0], positions[-1] + 1)
  return slices


def main(argv: list[str]) -> int:
  if not 1 <= len(argv) <= 2:
    print(__doc__, file=sys.stderr)
    return 2
  workdir, num = argv[0], int(argv[1]) if len(argv) > 1 else 256
  generator = pipeline.load(workdir, progress=False)
  dit = nnx.merge(generator._dit_graph, generator._dit_state)
  text_encoder = nnx.merge(generator._text_graph, generator._text_state)
  autoencoder = nnx.merge(generator._ae_graph, generator._ae_state)
  cache = f"{workdir}/latent_cache/bucket0_"
  latents = np.load(cache + "latents.npy", mmap_mode="r")
  tokens, mask = np.load(cache + "tokens.npy"), np.load(cache + "token_mask.npy")
  features = np.load(cache + "features.npy", mmap_mode="r")
  rows = np.arange(len(tokens) - num, len(tokens))
  clean = autoencoder.normalize_latents(jnp.asarray(latents[rows], jnp.float32))
  context, pooled = text_encoder(jnp.asarray(tokens[rows]), jnp.asarray(mask[rows]))
  target = np.asarray(features[rows]).reshape(num, -1, features.shape[-1])
  covered = target[..., -1] - attribute_features._BACKGROUND_WEIGHT > 0.5
  noise = jax.random.normal(jax.random.key(0), clean.shape)
  slices = attribute_slices()
  print(f"{covered.sum()} object tokens; most common value: " + ", ".join(
      f"{kind} {np.bincount(target[..., s].argmax(-1)[covered]).max() / covered.sum():.2f}"
      for kind, s in slices.items()))
  for level in LEVELS:
    t = jnp.full(clean.shape[:2], level)
    _, representation = dit.velocity_and_representation(
        flow.noisy_input(clean, noise, t), t, context, jnp.asarray(mask[rows]), pooled)
    representation = np.asarray(representation)
    read = {kind: np.mean((representation[..., s].argmax(-1) == target[..., s].argmax(-1))[covered])
            for kind, s in slices.items()}
    print(f"t = {level}: " + ", ".join(f"{kind} {value:.2f}" for kind, value in read.items()))
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
