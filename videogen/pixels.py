"""Pixels <-> the autoencoder's range: uint8 [0, 255] <-> float32 [-1, 1].

The one place this conversion is written: the autoencoder trains on `to_model_range(video)`, the
diffusion stage and the latent cache encode through it, and every decoded frame comes back
through `to_uint8`. Both take a NumPy array (computed on the host, NumPy out) or a `jax.Array`
(traceable inside `jax.jit`, jax out). The two agree up to the last bit of a float32 (XLA may
divide by multiplying with the reciprocal), so a caller keeps to one of them where results must
stay bit-identical: the generation pipeline converts its inputs on the host, the stages inside
their jitted steps.
"""

from __future__ import annotations

from typing import TypeVar

import jax
import jax.numpy as jnp
import numpy as np

Array = TypeVar("Array", np.ndarray, jax.Array)


def to_model_range(video: Array) -> Array:
  """uint8 [..., 3] in [0, 255] -> float32 in [-1, 1] (the autoencoder's input range)."""
  return video.astype(np.float32) / 127.5 - 1.0


def to_uint8(video: Array) -> Array:
  """float in [-1, 1] (clipped first) -> uint8 in [0, 255], rounding half to even."""
  xp = np if isinstance(video, np.ndarray) else jnp
  return xp.round((xp.clip(video, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
