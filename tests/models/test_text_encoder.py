"""videogen/models/text_encoder.py: token ids or class labels -> (embeddings, pooled)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from videogen.models import text_encoder

from tests.helpers import named_scopes

CONFIG = text_encoder.TextEncoderConfig.tiny(vocab_size=64, max_length=12, width=32, depth=2)
CLASSES = text_encoder.TextEncoderConfig.classes(10, 16)


@pytest.fixture(autouse=True, scope="module")
def _no_eager_sharding():
  with nnx.use_eager_sharding(False):
    yield


def _build(config):
  # The "rbg" generator compiles much faster than threefry on CPU.
  return nnx.jit(lambda: text_encoder.TextEncoder(
      config, rngs=nnx.Rngs(jax.random.key(0, impl="rbg"))))()


@pytest.fixture(scope="module")
def encode():
  """(model, jitted encode(tokens, mask))."""
  model = _build(CONFIG)
  graphdef, state = nnx.split(model)
  return model, jax.jit(lambda tokens, mask: nnx.merge(graphdef, state)(tokens, mask))


def _tokens(seed=0):
  tokens = jax.random.randint(jax.random.key(seed), (3, CONFIG.max_length), 1, CONFIG.vocab_size)
  mask = jnp.arange(CONFIG.max_length)[None] < jnp.asarray([[12], [5], [0]])
  return tokens, mask


def test_text_mode_shapes_zero_padding_and_mean_pooling(encode):
  _, run = encode
  tokens, mask = _tokens()
  embeddings, pooled = run(tokens, mask)
  assert embeddings.shape == (3, CONFIG.max_length, CONFIG.width)
  assert pooled.shape == (3, CONFIG.width)
  np.testing.assert_array_equal(embeddings[1, 5:], 0.0)
  np.testing.assert_allclose(pooled[1], embeddings[1, :5].mean(0), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(pooled[0], embeddings[0].mean(0), rtol=1e-5, atol=1e-6)
  assert np.abs(embeddings[1, :5]).max(-1).min() > 0.1  # every valid position is non-zero


def test_fully_padded_caption_is_zeros_not_nan(encode):
  _, run = encode
  tokens, mask = _tokens()
  embeddings, pooled = run(tokens, mask)
  assert np.all(np.isfinite(embeddings)) and np.all(np.isfinite(pooled))
  np.testing.assert_array_equal(embeddings[2], 0.0)
  np.testing.assert_array_equal(pooled[2], 0.0)


def test_padded_tokens_do_not_change_the_valid_ones(encode):
  _, run = encode
  tokens, mask = _tokens()
  embeddings, pooled = run(tokens, mask)
  other = tokens.at[1, 5:].set(7)
  other_embeddings, other_pooled = run(other, mask)
  np.testing.assert_allclose(other_embeddings[1], embeddings[1], atol=1e-5)
  np.testing.assert_allclose(other_pooled[1], pooled[1], atol=1e-5)
  # A valid token does change every valid position (bidirectional attention).
  changed, _ = run(tokens.at[1, 0].set((tokens[1, 0] + 1) % CONFIG.vocab_size), mask)
  assert np.all(np.abs(changed[1, 1:5] - embeddings[1, 1:5]).max(-1) > 1e-4)


def test_shorter_sequences_and_errors(encode):
  model, _ = encode
  tokens, mask = _tokens()
  short, _ = model(tokens[:, :4], mask[:, :4])
  assert short.shape == (3, 4, CONFIG.width)
  with pytest.raises(ValueError, match="exceed config.text_encoder.max_length 12"):
    model(jnp.zeros((1, 13), jnp.int32), jnp.ones((1, 13), bool))
  with pytest.raises(ValueError, match="text mode needs the token mask"):
    model(tokens)


def test_class_mode_is_a_label_table_with_the_papers_null_row():
  model = _build(CLASSES)
  labels = jnp.asarray([0, 3, 3, 10])
  embeddings, pooled = model(labels)
  assert embeddings.shape == (4, 1, 16) and pooled.shape == (4, 16)
  np.testing.assert_array_equal(embeddings[:, 0], pooled)
  table = model.embedding[...]
  assert table.shape == (CLASSES.num_classes + 1, 16)  # the DiT paper counts the null row
  np.testing.assert_array_equal(pooled, table[np.asarray(labels)])
  assert not np.allclose(pooled[0], pooled[1])
  with pytest.raises(ValueError, match="class mode takes labels of shape"):
    model(jnp.zeros((2, 3), jnp.int32))
  with pytest.raises(ValueError, match="class mode takes labels only"):
    model(labels, jnp.ones((4,), bool))


@pytest.mark.parametrize("frozen", [False, True])
def test_frozen_encoder_passes_no_gradient(frozen):
  config = dataclasses.replace(CLASSES, frozen=frozen)
  model = _build(config)

  def loss(model):
    embeddings, pooled = model(jnp.asarray([1, 2]))
    return jnp.sum(embeddings ** 2) + jnp.sum(pooled)

  gradient = nnx.grad(loss)(model).embedding[...]
  if frozen:
    np.testing.assert_array_equal(gradient, 0.0)
  else:
    assert np.abs(gradient[1]).max() > 0 and np.abs(gradient[3]).max() == 0


def test_every_parameter_has_logical_axis_names():
  model = nnx.eval_shape(lambda: text_encoder.TextEncoder(CONFIG, rngs=nnx.Rngs(0)))
  params = nnx.state(model, nnx.Param)
  for path, variable in jax.tree_util.tree_leaves_with_path(
      params, is_leaf=lambda x: isinstance(x, nnx.Variable)):
    axes = variable.get_metadata("out_sharding", None)
    assert axes is not None and len(axes) == variable.get_value().ndim, path
  assert model.embedding.get_metadata("out_sharding") == ("vocab", "embed")


def test_named_scopes_label_the_blocks_for_profiles():
  model = nnx.eval_shape(lambda: text_encoder.TextEncoder(CONFIG, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  s = jax.ShapeDtypeStruct
  jaxpr = jax.make_jaxpr(lambda state, *inputs: nnx.merge(graphdef, state)(*inputs))(
      state, s((1, CONFIG.max_length), jnp.int32), s((1, CONFIG.max_length), jnp.bool_))
  stacks = named_scopes.name_stacks(jaxpr.jaxpr)
  for scope in ("text_encoder/encoder_block/self_attention", "text_encoder/encoder_block/mlp"):
    assert any(stack.startswith(scope) for stack in stacks), (scope, sorted(stacks))
