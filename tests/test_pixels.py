"""videogen/pixels.py: uint8 <-> [-1, 1], on the host and in jitted code."""

import jax
import jax.numpy as jnp
import numpy as np

from videogen import pixels


def test_every_uint8_value_survives_the_round_trip():
  values = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  model_range = pixels.to_model_range(values)
  assert model_range.dtype == np.float32
  assert model_range.min() == -1.0 and model_range.max() == 1.0
  np.testing.assert_array_equal(pixels.to_uint8(model_range), values)


def test_numpy_and_jitted_jax_agree():
  rng = np.random.default_rng(0)
  frames = rng.integers(0, 256, (2, 3, 4, 5, 3), dtype=np.uint8)
  on_host = pixels.to_model_range(frames)
  in_jit = jax.jit(pixels.to_model_range)(jnp.asarray(frames))
  assert isinstance(on_host, np.ndarray) and isinstance(in_jit, jax.Array)
  # XLA may divide by multiplying with the reciprocal: equal up to float32 rounding.
  np.testing.assert_allclose(on_host, np.asarray(in_jit), rtol=0, atol=np.finfo(np.float32).eps)
  # Out-of-range values are clipped.
  decoded = np.concatenate([rng.normal(0.0, 0.7, 1000), [-3.0, 3.0, -1.0, 1.0]]).astype(
      np.float32)
  on_host = pixels.to_uint8(decoded)
  in_jit = jax.jit(pixels.to_uint8)(jnp.asarray(decoded))
  assert on_host.dtype == np.uint8 and in_jit.dtype == jnp.uint8
  np.testing.assert_array_equal(on_host, np.asarray(in_jit))
  np.testing.assert_array_equal(on_host[1000:], [0, 255, 0, 255])
