"""videogen/models/layers.py: patches, positions, modulation, masks and the dense layers."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from videogen.models import layers


@pytest.fixture(autouse=True, scope="module")
def _no_eager_sharding():
  with nnx.use_eager_sharding(False):
    yield


def _normal(seed, shape):
  """Random inputs from NumPy: nothing to compile."""
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _rngs():
  # The "rbg" generator compiles much faster than threefry on CPU; values are irrelevant here.
  return nnx.Rngs(jax.random.key(0, impl="rbg"))


@pytest.mark.parametrize("shape, patch", [
    ((2, 5, 8, 12, 3), (1, 2, 2)),
    ((1, 4, 8, 8, 4), (2, 4, 2)),
    ((3, 1, 6, 4, 2), (1, 3, 1)),
])
def test_unpatchify_inverts_patchify(shape, patch):
  latents = _normal(0, shape)
  tokens = layers.patchify(latents, patch)
  grid = [s // p for s, p in zip(shape[1:4], patch)]
  assert tokens.shape == (shape[0], math.prod(grid), math.prod(patch) * shape[-1])
  np.testing.assert_array_equal(layers.unpatchify(tokens, grid, patch), latents)


def test_patch_tokens_are_frame_major_and_hold_one_patch_each():
  latents = np.arange(1 * 2 * 4 * 4 * 1, dtype=np.float32).reshape(1, 2, 4, 4, 1)
  tokens = np.asarray(layers.patchify(jnp.asarray(latents), (1, 2, 2)))
  # Token index = (frame * 2 + row) * 2 + col; its values are that 2x2 patch of that frame.
  np.testing.assert_array_equal(tokens[0, 0], latents[0, 0, 0:2, 0:2, 0].ravel())
  np.testing.assert_array_equal(tokens[0, 3], latents[0, 0, 2:4, 2:4, 0].ravel())
  np.testing.assert_array_equal(tokens[0, 5], latents[0, 1, 0:2, 2:4, 0].ravel())


def test_indivisible_latent_is_a_clear_error():
  with pytest.raises(ValueError, match="latent height 7 is not divisible by the patch size 2"):
    layers.patchify(jnp.zeros((1, 1, 7, 8, 4)), (1, 2, 2))


def _rotated_product(q, k, q_position, k_position, axes_dims):
  angles = layers.rope_angles(jnp.asarray([q_position, k_position], jnp.float32), axes_dims)
  rotated_q = layers.apply_rope(q[None, None, None], angles[None, :1])
  rotated_k = layers.apply_rope(k[None, None, None], angles[None, 1:])
  return float(jnp.sum(rotated_q * rotated_k))


def test_rope_product_depends_only_on_relative_position():
  head_dim = 32
  axes_dims = layers.split_axes_dims(head_dim)
  q, k = _normal(1, (2, head_dim))
  base = _rotated_product(q, k, (1, 2, 3), (4, 0, 7), axes_dims)
  for shift in [(5, 0, 0), (0, 9, 0), (0, 0, -3), (2, 11, 30)]:
    shifted_q = tuple(a + s for a, s in zip((1, 2, 3), shift))
    shifted_k = tuple(a + s for a, s in zip((4, 0, 7), shift))
    assert _rotated_product(q, k, shifted_q, shifted_k, axes_dims) == pytest.approx(base, abs=1e-4)
  # ... and it does depend on the relative position, along each of the three axes.
  for moved_k in [(5, 0, 7), (4, 1, 7), (4, 0, 8)]:
    assert abs(_rotated_product(q, k, (1, 2, 3), moved_k, axes_dims) - base) > 1e-3


def test_rope_is_a_rotation():
  x = _normal(2, (2, 6, 3, 16))
  angles = layers.rope_angles(layers.grid_positions(1, 2, 3), layers.split_axes_dims(16))[None]
  rotated = layers.apply_rope(x, angles)
  np.testing.assert_allclose(jnp.linalg.norm(rotated, axis=-1), jnp.linalg.norm(x, axis=-1),
                             rtol=1e-5)
  np.testing.assert_allclose(rotated[:, 0], x[:, 0], atol=1e-6)  # position (0, 0, 0)


@pytest.mark.parametrize("dim, expected", [(32, (8, 12, 12)), (64, (16, 24, 24)),
                                           (72, (20, 26, 26)), (1152, (288, 432, 432))])
def test_split_axes_dims(dim, expected):
  assert layers.split_axes_dims(dim) == expected


def test_gather_tokens_takes_each_frames_kept_tokens_in_order():
  # Two examples of two frames of six tokens each; a token's value is its example * 100 + index.
  tokens = (jnp.arange(12)[None, :, None] + 100 * jnp.arange(2)[:, None, None]).astype(jnp.float32)
  keep = jnp.asarray([[[0, 5], [1, 2]], [[3, 4], [0, 5]]])
  np.testing.assert_array_equal(layers.gather_tokens(tokens, keep)[..., 0],
                                [[0, 5, 7, 8], [103, 104, 106, 111]])
  with pytest.raises(ValueError, match="do not split into the 2 frames"):
    layers.gather_tokens(tokens[:, :11], keep)


def test_grid_positions_are_frame_major_coordinates():
  positions = np.asarray(layers.grid_positions(2, 3, 4))
  assert positions.shape == (24, 3)
  np.testing.assert_array_equal(positions[0], [0, 0, 0])
  np.testing.assert_array_equal(positions[5], [0, 1, 1])
  np.testing.assert_array_equal(positions[23], [1, 2, 3])


def test_sincos_embedding_matches_numpy():
  positions = layers.grid_positions(2, 3, 2)
  width = 24
  table = np.asarray(layers.sincos_embedding(positions, width))
  expected = []
  for axis, dim in enumerate(layers.split_axes_dims(width)):
    omega = 1.0 / 10000.0 ** (np.arange(dim // 2) / (dim // 2))
    angles = np.asarray(positions)[:, axis:axis + 1] * omega
    expected += [np.sin(angles), np.cos(angles)]
  np.testing.assert_allclose(table, np.concatenate(expected, axis=-1), atol=1e-6)
  assert len({tuple(row) for row in np.round(table, 5)}) == len(table)  # all positions distinct


def test_timestep_frequencies_match_the_dit_formula():
  t = jnp.asarray([0.0, 0.25, 1.0])
  features = np.asarray(layers.timestep_frequencies(t, 8, time_scale=1000.0))
  frequencies = np.exp(-np.log(10000.0) * np.arange(4) / 4)
  angles = np.asarray(t)[:, None] * 1000.0 * frequencies
  np.testing.assert_allclose(features, np.concatenate([np.cos(angles), np.sin(angles)], -1),
                             rtol=1e-5, atol=1e-5)


def test_modulation_and_gates_are_per_frame():
  x = _normal(3, (2, 3 * 4, 5))  # 3 frames of 4 tokens
  shift, scale, gate_values = _normal(4, (3, 2, 3, 5))
  modulated = np.asarray(layers.modulate(x, shift, scale))
  gated = np.asarray(layers.gate(x, gate_values))
  for frame in range(3):
    tokens = slice(4 * frame, 4 * frame + 4)
    np.testing.assert_allclose(
        modulated[:, tokens], x[:, tokens] * (1 + scale[:, frame, None]) + shift[:, frame, None],
        rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(gated[:, tokens], x[:, tokens] * gate_values[:, frame, None],
                               rtol=1e-5, atol=1e-6)


def test_layer_norm_and_rms_norm_run_in_float32():
  x = (_normal(5, (4, 16)) * 3 + 1).astype(jnp.bfloat16)
  normed = layers.layer_norm(x)
  assert normed.dtype == jnp.float32
  np.testing.assert_allclose(jnp.mean(normed, -1), 0.0, atol=1e-5)
  np.testing.assert_allclose(jnp.std(normed, -1), 1.0, atol=1e-3)
  norm = layers.RMSNorm(16, dtype=jnp.bfloat16, rngs=_rngs())
  out = norm(x)
  assert out.dtype == jnp.bfloat16 and norm.scale[...].dtype == jnp.float32
  x32 = np.asarray(x, np.float64)
  expected = x32 / np.sqrt(np.mean(x32 ** 2, -1, keepdims=True) + 1e-6)
  np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=1e-2)


def test_dense_with_head_axes_matches_einsum_and_names_its_axes():
  dense = layers.Dense(8, (2, 3), axes=("embed", "heads", "kv"), rngs=_rngs())
  x = _normal(6, (4, 5, 8))
  expected = jnp.einsum("bld,dnh->blnh", x, dense.kernel[...]) + dense.bias[...]
  np.testing.assert_allclose(dense(x), expected, rtol=1e-5, atol=1e-6)
  assert dense.kernel.get_metadata("out_sharding") == ("embed", "heads", "kv")
  assert dense.bias.get_metadata("out_sharding") == ("heads", "kv")


def test_adaln_modulation_starts_at_zero():
  modulation = layers.AdaLNModulation(6, 4, 3, rngs=_rngs())
  outputs = modulation(_normal(7, (2, 5, 6)))
  assert len(outputs) == 3
  for value in outputs:
    assert value.shape == (2, 5, 4) and value.dtype == jnp.float32
    np.testing.assert_array_equal(value, 0.0)


def test_self_attention_mask_keeps_segments_apart_and_skips_padding():
  segments = jnp.asarray([[0, 0, 1, 1, 1]])
  padding = jnp.asarray([[True, True, True, True, False]])
  mask = np.asarray(layers.self_attention_mask(padding, segments))
  assert mask.shape == (1, 1, 5, 5)
  expected = np.array([[1, 1, 0, 0, 0], [1, 1, 0, 0, 0], [0, 0, 1, 1, 0], [0, 0, 1, 1, 0],
                       [0, 0, 1, 1, 0]], bool)
  np.testing.assert_array_equal(mask[0, 0], expected)
  assert layers.self_attention_mask(None, None) is None


def test_cross_attention_ignores_padded_context():
  attention = layers.Attention(16, 2, context_dim=8, rngs=_rngs())
  x = _normal(8, (2, 6, 16))
  context = _normal(9, (2, 5, 8))
  valid = jnp.asarray([[True] * 5, [True, True, False, False, False]])
  run = nnx.jit(lambda attention, context: attention(x, context, mask=valid[:, None, None, :]))
  out = run(attention, context)
  np.testing.assert_allclose(run(attention, context.at[1, 2:].set(100.0)), out, atol=1e-5)
  changed = run(attention, context.at[1, 0].set(100.0))  # a valid token does change the output
  assert not np.allclose(changed[1], out[1], atol=1e-3)
