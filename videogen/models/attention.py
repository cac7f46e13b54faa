"""The one attention function every model calls, with a backend choice.

    out = attention.dot_product_attention(q, k, v, mask=mask, backend="auto")

q: [B, Tq, N, H], k and v: [B, Tk, N, H], mask: bool broadcastable to [B, N, Tq, Tk] (True = may
attend). Backends:
  "xla":    the einsum reference; always available, float32 softmax. Tests compare the others to it.
  "cudnn":  `jax.nn.dot_product_attention(implementation="cudnn")`, flash attention on NVIDIA GPUs.
  "splash": the Pallas TPU splash kernel.
  "auto":   the fastest one the current backend supports, falling back to "xla".

Every backend gives zeros (never NaN) for a query row with no allowed key, e.g. cross-attention to
a fully padded caption (the null conditioning of classifier-free guidance).

A transformer's attention over its token sequence passes `split_tokens=True`: traced inside an
activation-sharding context whose mesh has a "sequence" axis larger than 1, it then runs with the
tokens split over that axis (Ulysses or ring attention, `videogen.parallel.sequence`), giving the
same result; elsewhere (sequence size 1, no context) the call is exactly the single-device one.
"""

from __future__ import annotations

from typing import Literal

import functools

import jax
import jax.numpy as jnp

from videogen.parallel import sequence
from videogen.parallel import sharding

Backend = Literal["auto", "xla", "cudnn", "splash"]
BACKENDS: tuple[str, ...] = ("auto", "xla", "cudnn", "splash")


def reference_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                        mask: jax.Array | None = None) -> jax.Array:
  """softmax(q k^T / sqrt(H) + mask) v with the logits and softmax in float32."""
  scale = q.shape[-1] ** -0.5
  logits = jnp.einsum("bqnh,bknh->bnqk", q, k, preferred_element_type=jnp.float32) * scale
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1)
  if mask is not None:
    # A query row with no allowed key (a padded token) gets zeros, not a uniform average.
    weights = jnp.where(jnp.any(mask, axis=-1, keepdims=True), weights, 0.0)
  return jnp.einsum("bnqk,bknh->bqnh", weights.astype(v.dtype), v)


def _cudnn_attention(q, k, v, mask):
  if q.dtype not in (jnp.bfloat16, jnp.float16):
    raise ValueError(
        f"the cudnn attention backend needs bfloat16 or float16 inputs, got {q.dtype}: set the "
        f"model's dtype to bfloat16, or use backend='xla' (or 'auto') for float32")
  if mask is not None:
    # cuDNN takes the mask as a bias whose last two axes must be [Tq, Tk] (not broadcast).
    mask = jnp.broadcast_to(mask, (*mask.shape[:-2], q.shape[1], k.shape[1]))
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation="cudnn")


def _zero_rows_without_keys(out: jax.Array, mask: jax.Array | None) -> jax.Array:
  """Zeros the outputs [B, Tq, N, H] of query rows whose mask row allows no key."""
  if mask is None:
    return out
  has_key = jnp.any(mask, axis=-1)  # broadcastable to [B, N, Tq]
  has_key = jnp.broadcast_to(has_key, (out.shape[0], out.shape[2], out.shape[1]))
  return jnp.where(jnp.swapaxes(has_key, 1, 2)[..., None], out, jnp.zeros_like(out))


def _splash_attention(q, k, v, mask):
  # Imported lazily: the Pallas TPU kernels are only importable where Mosaic is.
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as splash
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as masks
  if mask is not None:
    raise NotImplementedError(
        "the splash backend takes no dense mask here: use backend='xla' for masked attention")
  batch, q_len, heads, head_dim = q.shape
  kernel = splash.make_splash_mha(
      mask=masks.MultiHeadMask([masks.FullMask((q_len, k.shape[1]))] * heads),
      head_shards=1, q_seq_shards=1)
  to_heads_first = lambda x: jnp.swapaxes(x, 1, 2)  # [B, T, N, H] -> [B, N, T, H]
  out = jax.vmap(kernel)(to_heads_first(q) * head_dim ** -0.5, to_heads_first(k),
                         to_heads_first(v))
  return to_heads_first(out)


def available_backends() -> tuple[str, ...]:
  """The concrete backends that can run on the default JAX backend."""
  platform = jax.default_backend()
  if platform == "gpu":
    return ("xla", "cudnn")
  if platform == "tpu":
    return ("xla", "splash")
  return ("xla",)


def dot_product_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                          mask: jax.Array | None = None, backend: Backend = "auto", *,
                          split_tokens: bool = False) -> jax.Array:
  """Multi-head attention; see the module docstring for shapes, backends and `split_tokens`."""
  if split_tokens:
    context = sharding.current()
    if sequence.splits_tokens(context):
      attend = functools.partial(_single_device_attention, backend=backend)
      return sequence.attention(q, k, v, mask, attend=attend, context=context)
  return _single_device_attention(q, k, v, mask, backend=backend)


def _single_device_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
                             backend: Backend) -> jax.Array:
  if backend == "auto":
    options = available_backends()
    backend = "cudnn" if "cudnn" in options and q.dtype in (jnp.bfloat16, jnp.float16) else "xla"
    if "splash" in options and mask is None:
      backend = "splash"
  if backend == "xla":
    return reference_attention(q, k, v, mask)
  if backend == "cudnn":
    return _zero_rows_without_keys(_cudnn_attention(q, k, v, mask), mask)
  if backend == "splash":
    return _splash_attention(q, k, v, mask)
  raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
