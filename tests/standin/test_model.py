"""tests/standin/model.py: the stand-in transformer."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from tests.standin import model as standin

TINY = standin.StandinConfig(features=8, embed=32, mlp=64, heads=2, head_dim=16, depth=2)


@functools.partial(nnx.jit, static_argnums=0)
def _build(config, key):
  # Built under jit: one compilation instead of one per eager initializer call.
  with nnx.use_eager_sharding(False):
    return standin.StandinModel(config, rngs=nnx.Rngs(key))


def _model(seed=0):
  return _build(TINY, jax.random.key(seed))


@nnx.jit
def _apply(model, x):
  return model(x)


@pytest.fixture(scope="module")
def model():
  return _model()


def test_output_shape_and_parameter_count(model):
  x = jnp.ones((3, 5, TINY.features))
  assert _apply(model, x).shape == (3, 5, TINY.features)
  e, m, h, d, f = TINY.embed, TINY.mlp, TINY.heads, TINY.head_dim, TINY.features
  per_block = 4 * e * h * d + 2 * e * m + 2 * e
  expected = 2 * f * e + TINY.depth * per_block + e
  assert sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param))) == expected


def test_default_size_is_big_enough_to_shard():
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: standin.StandinModel(standin.StandinConfig(),
                                                           rngs=nnx.Rngs(0)))
  count = sum(p.size for p in jax.tree.leaves(nnx.state(abstract, nnx.Param)))
  assert 3_000_000 < count < 4_000_000


def test_every_parameter_has_one_logical_name_per_dimension(model):
  state = nnx.state(model, nnx.Param)
  variables = jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  assert variables
  for variable in variables:
    names = variable.get_metadata("out_sharding", None)
    assert names is not None and len(names) == variable.get_value().ndim, variable


def test_attention_mixes_positions(model):
  x = jax.random.normal(jax.random.key(1), (1, 4, TINY.features))
  changed = x.at[0, 3].add(1.0)
  # A per-position network would leave position 0 unchanged.
  assert not np.allclose(_apply(model, x)[0, 0], _apply(model, changed)[0, 0])


def test_dtype_is_compute_and_param_dtype_is_storage(model):
  bf16_config = dataclasses.replace(TINY, dtype="bfloat16")
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: standin.StandinModel(bf16_config, rngs=nnx.Rngs(0)))
  bf16_model = nnx.merge(nnx.graphdef(abstract), nnx.state(model))
  y = _apply(bf16_model, jnp.ones((1, 4, TINY.features)))
  assert y.dtype == jnp.bfloat16
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(bf16_model, nnx.Param)))
  # Close to the float32 model: the same parameters, computed in bfloat16.
  np.testing.assert_allclose(np.asarray(y, np.float32),
                             _apply(model, jnp.ones((1, 4, TINY.features))), atol=0.1)


def test_norm_computes_in_float32_and_returns_the_input_dtype(model):
  normed = model.final_norm(jnp.full((2, TINY.embed), 3.0, jnp.bfloat16))
  assert normed.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(normed, np.float32), 1.0, atol=1e-2)


def test_initialisation_is_deterministic_from_the_seed(model):
  again, other = _model(seed=0), _model(seed=1)
  for a, b in zip(jax.tree.leaves(nnx.state(model)), jax.tree.leaves(nnx.state(again))):
    np.testing.assert_array_equal(a, b)
  assert not np.allclose(model.embed_in[...], other.embed_in[...])
