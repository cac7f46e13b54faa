"""videogen/models/discriminator.py: shapes, per-video and per-patch independence, gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from videogen.models import discriminator as discriminator_lib


@functools.lru_cache(maxsize=None)
def _discriminator(channels=8, num_layers=3):
  with nnx.use_eager_sharding(False):
    return discriminator_lib.PatchDiscriminator3D(channels, num_layers, rngs=nnx.Rngs(0))


def _logits_fn(model):
  graphdef, state = nnx.split(model)
  return functools.partial(jax.jit(lambda s, v: nnx.merge(graphdef, s)(v)), state)


def _video(shape, seed=0):
  return jax.random.uniform(jax.random.key(seed), shape, minval=-1.0, maxval=1.0)


@pytest.mark.parametrize("frames,height,width,expected", [
    (9, 32, 32, (2, 3, 4, 4, 1)),    # time 9 -> 5 -> 3, space / 8
    (1, 32, 48, (2, 1, 4, 6, 1)),    # an image stays one frame
    (5, 16, 32, (2, 2, 2, 4, 1)),
])
def test_shapes(frames, height, width, expected):
  logits = _logits_fn(_discriminator())(_video((2, frames, height, width, 3)))
  assert logits.shape == expected and logits.dtype == jnp.float32


def test_no_statistics_across_the_batch():
  logits_fn = _logits_fn(_discriminator())
  videos = _video((2, 5, 32, 32, 3))
  changed = videos.at[1].set(_video((5, 32, 32, 3), seed=1))
  np.testing.assert_allclose(logits_fn(changed)[0], logits_fn(videos)[0], atol=1e-6)
  assert np.abs(logits_fn(changed)[1] - logits_fn(videos)[1]).max() > 1e-4


def test_patch_logits_are_local():
  """A change in one corner leaves the logits of far patches unchanged."""
  logits_fn = _logits_fn(_discriminator())
  videos = _video((1, 1, 64, 64, 3))
  changed = videos.at[:, :, :4, :4].set(1.0)
  before, after = logits_fn(videos), logits_fn(changed)
  assert np.abs(after[:, :, 0, 0] - before[:, :, 0, 0]).max() > 1e-4
  np.testing.assert_allclose(after[:, :, 4:, 4:], before[:, :, 4:, 4:], atol=1e-6)


def test_gradients_reach_every_parameter():
  graphdef, params = nnx.split(_discriminator(), nnx.Param)
  videos = _video((2, 5, 16, 16, 3))
  grads = jax.jit(jax.grad(lambda p: jnp.mean(jnp.square(nnx.merge(graphdef, p)(videos)))))(
      params)
  dead = [jax.tree_util.keystr(path) for path, g in jax.tree_util.tree_leaves_with_path(grads)
          if not np.abs(np.asarray(g)).max() > 0]
  assert not dead, f"no gradient reaches {dead}"


def test_every_parameter_has_logical_axis_names():
  _, params = nnx.split(_discriminator(), nnx.Param)
  for path, variable in jax.tree_util.tree_leaves_with_path(
      params, is_leaf=lambda x: isinstance(x, nnx.Variable)):
    names = variable.get_metadata("out_sharding", None)
    assert names is not None and len(names) == variable.get_value().ndim, path


def test_wrong_input_is_a_clear_error():
  with pytest.raises(ValueError, match=r"\[B, T, H, W, 3\]"):
    _discriminator()(jnp.zeros((1, 32, 32, 3)))
