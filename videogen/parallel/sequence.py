"""Attention with its tokens split over the mesh's "sequence" axis (sequence parallelism).

    context = sharding.current()                    # inside `sharding.activation_sharding`
    if sequence.splits_tokens(context):
      out = sequence.attention(q, k, v, mask, attend=local_attention, context=context)

q: [B, Tq, N, H], k and v: [B, Tk, N, H], mask: bool broadcastable to [B, N, Tq, Tk] (True = may
attend). With the mesh's "sequence" axis of size S, each device holds Tq / S queries and Tk / S
keys and values (the batch and the heads split as the rules table says), and one of two methods
(`config.mesh.sequence_parallel`) computes exact attention from them with `jax.shard_map`:

  "ulysses"  (DeepSpeed-Ulysses) an all-to-all turns the token split into a head split: each
             device attends over all tokens with N / S of the heads, through `attend` (any backend),
             and a second all-to-all turns the result back. Needs the heads each device holds
             divisible by S. The logits one device holds are [B, N / S, Tq, Tk].
  "ring"     (ring attention) each device keeps its queries; the key/value blocks travel round
             the ring of S devices (`jax.lax.ppermute`), and each block's contribution is folded
             in with an online softmax (running max, running sum, float32 accumulator), so the
             forward pass holds one block's logits [B, N, Tq / S, Tk / S] at a time (the
             backward pass keeps every step's weights: 1/S of the whole, as Ulysses does).
             Works for any head count.
  "auto"     Ulysses where the heads divide, else the ring (logged once per shape).

Only self-attention (Tq == Tk: the same tokens) moves keys and values between devices.
Cross-attention to a different sequence (video tokens to text tokens) splits the queries only:
the keys and values, short, are whole on every device.

Token counts that S does not divide are padded to the next multiple of S: padded keys are masked
out and padded queries are dropped, so the result is the same as unpadded attention's.

A dense mask is split with the queries for the ring (each device holds [B, N, Tq / S, Tk]); under
Ulysses every device needs all of its query rows, so a per-token mask is the memory-efficient
choice there (a full [Tq, Tk] mask is held whole on each device).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
from absl import logging
from jax.sharding import PartitionSpec

from videogen.parallel import axes
from videogen.parallel import mesh as mesh_lib
from videogen.parallel import sharding

Attend = Callable[[jax.Array, jax.Array, jax.Array, jax.Array | None], jax.Array]


def splits_tokens(context: sharding.ActivationSharding | None) -> bool:
  """Whether attention traced in `context` runs with its tokens split (mesh "sequence" > 1)."""
  return context is not None and context.mesh.shape.get(axes.SEQUENCE, 1) > 1


def _token_heads_spec(context: sharding.ActivationSharding, shape: tuple[int, ...],
                      split: bool) -> PartitionSpec:
  """[B, T, N, H]: the batch and heads split as the rules say, the tokens over "sequence" (or
  whole, `split` False)."""
  rules = {name: tuple(axis for axis in mesh_axes if axis != axes.SEQUENCE)
           for name, mesh_axes in context.rules.items()}
  spec = sharding.logical_to_spec((axes.ACT_BATCH, None, axes.ACT_HEADS, None), shape, rules,
                                  context.mesh, name="sequence-parallel attention")
  return PartitionSpec(spec[0], axes.SEQUENCE if split else None, spec[2], None)


def _mask_spec(mask: jax.Array, token_spec: PartitionSpec, split_rows: bool) -> PartitionSpec:
  """[B or 1, N or 1, Tq or 1, Tk]: split like the tokens where the mask is not broadcast."""
  batch = token_spec[0] if mask.shape[0] > 1 else None
  heads = token_spec[2] if mask.shape[1] > 1 else None
  rows = axes.SEQUENCE if split_rows and mask.shape[2] > 1 else None
  return PartitionSpec(batch, heads, rows, None)


def _num_shards(mesh: jax.sharding.Mesh, entry) -> int:
  names = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
  size = 1
  for name in names:
    size *= mesh.shape[name]
  return size


def choose_method(requested: str, local_heads: int, sequence_size: int) -> str:
  """The method to run: `requested` ("auto", "ulysses", "ring") given the heads one device holds.

  Raises:
    ValueError: "ulysses" was asked for but `local_heads` is not a multiple of `sequence_size`.
  """
  divides = local_heads % sequence_size == 0
  if requested == "ulysses" and not divides:
    raise ValueError(
        f"sequence_parallel='ulysses' needs the heads each device holds ({local_heads}) divisible "
        f"by mesh.sequence ({sequence_size}): set config.mesh.sequence_parallel='ring' (or "
        f"'auto'), or a head count that mesh.sequence divides")
  if requested not in mesh_lib.SEQUENCE_PARALLEL:
    raise ValueError(f"unknown sequence_parallel {requested!r}; choose one of "
                     f"{', '.join(mesh_lib.SEQUENCE_PARALLEL)}")
  if requested == "auto":
    if not divides:
      logging.log_first_n(
          logging.INFO, "sequence parallelism: %d heads per device do not split %d ways: ring "
          "attention instead of Ulysses", 10, local_heads, sequence_size)
    return "ulysses" if divides else "ring"
  return requested


def _pad_tokens(x: jax.Array, length: int, axis: int, value=0) -> jax.Array:
  if x.shape[axis] == length:
    return x
  widths = [(0, 0)] * x.ndim
  widths[axis] = (0, length - x.shape[axis])
  return jnp.pad(x, widths, constant_values=value)


def _prepare_mask(mask: jax.Array | None, *, q_len: int, k_len: int, q_padded: int,
                  k_padded: int) -> jax.Array | None:
  """The mask as [B or 1, N or 1, Tq' or 1, Tk'] over the padded tokens, or None when nothing is
  masked: padded keys are never attended to, padded query rows attend like the rest (dropped)."""
  if mask is None and k_padded == k_len:
    return None
  if mask is None:
    return (jnp.arange(k_padded) < k_len)[None, None, None, :]
  mask = jnp.asarray(mask, bool)
  mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
  mask = jnp.broadcast_to(mask, (*mask.shape[:3], k_len))
  mask = _pad_tokens(mask, k_padded, axis=3, value=False)
  if mask.shape[2] > 1:
    mask = _pad_tokens(mask, q_padded, axis=2, value=True)
  return mask


def _ulysses(q, k, v, mask, *, attend: Attend):
  """One device's share: tokens-split [b, T / S, n, H] -> heads-split [b, T, n / S, H], attend,
  and back."""
  to_heads = functools.partial(jax.lax.all_to_all, axis_name=axes.SEQUENCE, split_axis=2,
                               concat_axis=1, tiled=True)
  q, k, v = to_heads(q), to_heads(k), to_heads(v)
  if mask is not None and mask.shape[1] > 1:
    heads = q.shape[2]
    mask = jax.lax.dynamic_slice_in_dim(mask, jax.lax.axis_index(axes.SEQUENCE) * heads, heads,
                                        axis=1)
  out = attend(q, k, v, mask)
  return jax.lax.all_to_all(out, axes.SEQUENCE, split_axis=1, concat_axis=2, tiled=True)


def _ring(q, k, v, mask, *, size: int):
  """One device's share: queries [b, tq, n, H] against the S key/value blocks [b, tk, n, H] that
  pass round the ring; mask [b or 1, n or 1, tq or 1, S * tk] (this device's rows) or None.

  A loop (not unrolled), so that one block's logits at a time are live in the forward pass.
  """
  index = jax.lax.axis_index(axes.SEQUENCE)
  block = k.shape[1]
  scale = q.shape[-1] ** -0.5
  batch, q_len, heads, head_dim = q.shape
  to_next = [(source, (source + 1) % size) for source in range(size)]

  def fold(step, k, v, running_max, running_sum, accumulator):
    """Folds the block held at `step` (it started on device index - step) into the sums."""
    logits = jnp.einsum("bqnh,bknh->bnqk", q, k, preferred_element_type=jnp.float32) * scale
    if mask is not None:
      origin = (index - step) % size
      allowed = jax.lax.dynamic_slice_in_dim(mask, origin * block, block, axis=3)
      logits = jnp.where(allowed, logits, -jnp.inf)
    # The result does not depend on the running max (it cancels), so it carries no gradient.
    new_max = jax.lax.stop_gradient(jnp.maximum(running_max, jnp.max(logits, axis=-1)))
    shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
    weights = jnp.exp(logits - shift[..., None])
    rescale = jnp.exp(running_max - shift)  # 0 while no key was allowed yet
    running_sum = running_sum * rescale + jnp.sum(weights, axis=-1)
    accumulator = accumulator * jnp.swapaxes(rescale, 1, 2)[..., None] + jnp.einsum(
        "bnqk,bknh->bqnh", weights.astype(v.dtype), v, preferred_element_type=jnp.float32)
    return new_max, running_sum, accumulator

  def body(step, carry):
    k, v, *sums = carry
    k, v = jax.lax.ppermute((k, v), axes.SEQUENCE, to_next)
    return (k, v, *fold(step, k, v, *sums))

  sums = fold(0, k, v, jnp.full((batch, heads, q_len), -jnp.inf, jnp.float32),
              jnp.zeros((batch, heads, q_len), jnp.float32),
              jnp.zeros((batch, q_len, heads, head_dim), jnp.float32))
  _, _, _, running_sum, accumulator = jax.lax.fori_loop(1, size, body, (k, v, *sums))
  total = jnp.swapaxes(running_sum, 1, 2)[..., None]  # [b, tq, n, 1]
  # A query row with no allowed key gets zeros, as in the reference.
  out = jnp.where(total > 0, accumulator / jnp.where(total > 0, total, 1.0), 0.0)
  return out.astype(q.dtype)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None, *,
              attend: Attend, context: sharding.ActivationSharding) -> jax.Array:
  """Exact attention with the tokens split over `context.mesh`'s "sequence" axis.

  Args:
    q: [B, Tq, N, H] queries; k, v: [B, Tk, N, H].
    mask: bool broadcastable to [B, N, Tq, Tk], True = may attend; None = all.
    attend: single-device attention (q, k, v, mask) -> [B, Tq, N, H] for Ulysses and for
      cross-attention (the ring computes its blocks itself, in float32).
    context: the activation-sharding context (mesh, rules, method) it was traced in.

  Returns:
    [B, Tq, N, H], split like q.

  Raises:
    ValueError: "ulysses" asked for with a head count the sequence size does not divide.
  """
  mesh = context.mesh
  size = mesh.shape[axes.SEQUENCE]
  q_len, k_len = q.shape[1], k.shape[1]
  self_attention = q_len == k_len
  q_padded = -(-q_len // size) * size
  k_padded = -(-k_len // size) * size if self_attention else k_len
  mask = _prepare_mask(mask, q_len=q_len, k_len=k_len, q_padded=q_padded, k_padded=k_padded)
  q = _pad_tokens(q, q_padded, axis=1)
  k, v = _pad_tokens(k, k_padded, axis=1), _pad_tokens(v, k_padded, axis=1)
  split = _token_heads_spec(context, q.shape, split=True)

  if not self_attention:
    method, local = "queries", lambda q, k, v, mask: attend(q, k, v, mask)
    kv_spec = _token_heads_spec(context, k.shape, split=False)
    split_rows = True
  else:
    local_heads = q.shape[2] // _num_shards(mesh, split[2])
    method = choose_method(context.sequence_parallel, local_heads, size)
    kv_spec = split
    if method == "ulysses":
      local, split_rows = functools.partial(_ulysses, attend=attend), False
    else:
      local, split_rows = functools.partial(_ring, size=size), True

  args, specs = [q, k, v], [split, kv_spec, kv_spec]
  if mask is not None:
    args.append(mask)
    specs.append(_mask_spec(mask, split, split_rows))
  else:
    local = functools.partial(lambda fn, q, k, v: fn(q, k, v, None), local)
  with jax.named_scope(f"sequence_parallel_{method}"):
    out = jax.shard_map(local, mesh=mesh, in_specs=tuple(specs), out_specs=split)(*args)
  return out[:, :q_len]
