"""videogen/models/attention.py: every backend equals a float64 NumPy reference."""

import jax
import numpy as np
import pytest

from videogen.models import attention


def _numpy_attention(q, k, v, mask):
  q, k, v = (np.asarray(x, np.float64) for x in (q, k, v))
  logits = np.einsum("bqnh,bknh->bnqk", q, k) / np.sqrt(q.shape[-1])
  logits = np.where(mask, logits, -np.inf)
  logits -= logits.max(-1, keepdims=True)
  weights = np.exp(logits)
  weights /= weights.sum(-1, keepdims=True)
  return np.einsum("bnqk,bknh->bqnh", weights, v)


def _inputs(seed=0, batch=2, q_len=5, k_len=7, heads=3, head_dim=8):
  keys = jax.random.split(jax.random.key(seed), 3)
  q = jax.random.normal(keys[0], (batch, q_len, heads, head_dim))
  k = jax.random.normal(keys[1], (batch, k_len, heads, head_dim))
  v = jax.random.normal(keys[2], (batch, k_len, heads, head_dim))
  return q, k, v


@pytest.mark.parametrize("backend", attention.available_backends())
def test_backend_matches_numpy_reference(backend):
  q, k, v = _inputs()
  lengths = np.array([7, 4])  # the second example's last 3 keys are padding.
  mask = (np.arange(7)[None, :] < lengths[:, None])[:, None, None, :]
  out = attention.dot_product_attention(q, k, v, mask=mask, backend=backend)
  np.testing.assert_allclose(out, _numpy_attention(q, k, v, mask), atol=1e-5)


def test_padded_keys_do_not_change_the_output():
  q, k, v = _inputs(seed=1)
  mask = np.ones((2, 1, 1, 7), bool)
  mask[:, ..., 5:] = False
  noisy_v = v.at[:, 5:].set(1e3)
  out = attention.dot_product_attention(q, k, v, mask=mask, backend="xla")
  noisy = attention.dot_product_attention(q, k, noisy_v, mask=mask, backend="xla")
  np.testing.assert_allclose(out, noisy, atol=1e-6)


def test_query_with_no_allowed_key_gives_zeros():
  q, k, v = _inputs(seed=2)
  mask = np.ones((2, 1, 5, 7), bool)
  mask[0, :, 3, :] = False
  out = attention.dot_product_attention(q, k, v, mask=mask, backend="xla")
  np.testing.assert_array_equal(np.asarray(out[0, 3]), 0.0)
  assert np.all(np.isfinite(np.asarray(out)))


def test_unknown_backend_is_a_clear_error():
  q, k, v = _inputs()
  with pytest.raises(ValueError, match="unknown attention backend 'flash'"):
    attention.dot_product_attention(q, k, v, backend="flash")


def test_rows_without_keys_are_zeroed_for_every_backend():
  # The cuDNN kernel's output for an all-masked row is not specified; the wrapper zeros it.
  out = np.ones((2, 5, 3, 4), np.float32)
  mask = np.ones((2, 1, 5, 7), bool)
  mask[1, :, 2, :] = False
  zeroed = np.array(attention._zero_rows_without_keys(out, mask))
  np.testing.assert_array_equal(zeroed[1, 2], 0.0)
  zeroed[1, 2] = 1.0
  np.testing.assert_array_equal(zeroed, out)
  per_key = np.zeros((2, 1, 1, 7), bool)  # a fully padded caption: every row of sample 0 empty
  per_key[1] = True
  zeroed = np.asarray(attention._zero_rows_without_keys(out, per_key))
  np.testing.assert_array_equal(zeroed[0], 0.0)
  np.testing.assert_array_equal(zeroed[1], 1.0)


def test_cudnn_backend_asks_for_half_precision():
  q, k, v = _inputs()
  with pytest.raises(ValueError, match="needs bfloat16 or float16 inputs"):
    attention._cudnn_attention(q, k, v, None)
