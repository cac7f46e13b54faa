"""Building blocks shared by the diffusion transformer and the text encoder.

Every parameter carries logical axis names through `nnx.with_partitioning`; the experiment's rules
table maps them to mesh axes. The names (constants of `videogen.parallel.axes`) used here and by
dit.py / text_encoder.py:

  EMBED     the model width (residual stream), also a text encoder's width
  MLP       MLP hidden units and the adaLN modulation outputs
  HEADS     attention heads
  KV        the per-head feature dimension
  VOCAB     rows of a token embedding table
  LAYERS    the stacked-layer axis added by `nnx.vmap` to the blocks `nnx.scan` runs
  None      small input dimensions (patch features, timestep frequencies, positions): replicated

Compute happens in `dtype`, parameters are stored in `param_dtype`; normalisation, modulation and
rotary embeddings are computed in float32 whatever the compute dtype.

Token layout: a latent video [B, T, H, W, C] cut into patches (pt, ph, pw) gives tokens
[B, N, D] with N = (T/pt) (H/ph) (W/pw), ordered frame-major (t, then h, then w), so the tokens of
one latent frame are contiguous; per-frame modulation views them as [B, t, s, D].
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, Sequence

import einops
import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from flax import nnx

from videogen.models import attention as attention_lib
from videogen.parallel import axes
from videogen.parallel import sharding

DTypeName = Literal["float32", "bfloat16", "float16"]
Initializer = Callable[..., jax.Array]

# Rematerialisation policies by name: what the backward pass may keep from the forward pass of a
# block instead of recomputing it. Activations are tagged with `checkpoint_name` below.
REMAT_POLICIES: dict[str, Any] = {
    "none": None,  # no remat: keep every activation (fastest, most memory)
    "full": jax.checkpoint_policies.nothing_saveable,  # recompute the whole block
    "dots": jax.checkpoint_policies.checkpoint_dots,  # keep matmul outputs
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "qkv_attention": jax.checkpoint_policies.save_only_these_names(
        "query", "key", "value", "attention"),
}
RematPolicy = Literal["none", "full", "dots", "dots_no_batch", "qkv_attention"]


def dtype_of(name: str) -> jnp.dtype:
  """Maps a config's dtype name ("float32", "bfloat16", "float16") to the JAX dtype."""
  dtypes = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
  if name not in dtypes:
    raise ValueError(f"unknown dtype {name!r}; choose one of: {', '.join(dtypes)}")
  return jnp.dtype(dtypes[name])


def _as_tuple(size: int | Sequence[int]) -> tuple[int, ...]:
  return (size,) if isinstance(size, int) else tuple(size)


class Dense(nnx.Module):
  """A linear map from the last `len(in_features)` axes of x to `out_features` axes.

  x: [..., *in_features] -> [..., *out_features]. With tuples, e.g. in_features=width and
  out_features=(heads, head_dim), the kernel keeps the head axes separate, so each gets its own
  logical axis name.
  """

  def __init__(self, in_features: int | Sequence[int], out_features: int | Sequence[int], *,
               axes: tuple[str | None, ...], use_bias: bool = True,
               kernel_init: Initializer | None = None,
               bias_init: Initializer = nnx.initializers.zeros_init(),
               dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32,
               rngs: nnx.Rngs):
    self.in_features = _as_tuple(in_features)
    self.out_features = _as_tuple(out_features)
    if len(axes) != len(self.in_features) + len(self.out_features):
      raise ValueError(f"Dense{self.in_features}->{self.out_features} needs one logical axis name "
                       f"per kernel axis, got {axes}")
    if kernel_init is None:
      num_in = len(self.in_features)
      kernel_init = nnx.initializers.xavier_uniform(
          in_axis=tuple(range(num_in)),
          out_axis=tuple(range(num_in, num_in + len(self.out_features))))
    self.dtype = dtype
    self.kernel = nnx.Param(nnx.with_partitioning(kernel_init, axes)(
        rngs.params(), self.in_features + self.out_features, param_dtype))
    self.bias = nnx.Param(nnx.with_partitioning(bias_init, axes[len(self.in_features):])(
        rngs.params(), self.out_features, param_dtype)) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.tensordot(x.astype(self.dtype), self.kernel[...].astype(self.dtype),
                      axes=len(self.in_features))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class MLP(nnx.Module):
  """Two linear layers with a tanh-approximated GELU between: x [..., D] -> [..., D]."""

  def __init__(self, width: int, hidden: int, *, dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.up = Dense(width, hidden, axes=(axes.EMBED, axes.MLP), dtype=dtype,
                    param_dtype=param_dtype, rngs=rngs)
    self.down = Dense(hidden, width, axes=(axes.MLP, axes.EMBED), dtype=dtype,
                      param_dtype=param_dtype, rngs=rngs)

  @jax.named_scope("mlp")
  def __call__(self, x: jax.Array) -> jax.Array:
    hidden = sharding.constrain(jax.nn.gelu(self.up(x), approximate=True), axes.TOKEN_HIDDEN)
    hidden = checkpoint_name(hidden, "mlp_hidden")
    return self.down(hidden)


class RMSNorm(nnx.Module):
  """x / rms(x) * scale over the last axis, computed in float32; returns `dtype`.

  `axis_name` is the logical name of the normalised axis (`axes.EMBED` for the residual stream,
  `axes.KV` for per-head query/key normalisation).
  """

  def __init__(self, features: int, *, axis_name: str = axes.EMBED, eps: float = 1e-6,
               dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32,
               rngs: nnx.Rngs):
    del rngs  # the scale starts at one; no randomness.
    self.eps = eps
    self.dtype = dtype
    self.scale = nnx.Param(nnx.with_partitioning(nnx.initializers.ones_init(), (axis_name,))(
        None, (features,), param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    normed = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + self.eps)
    return (normed * self.scale[...].astype(jnp.float32)).astype(self.dtype)


def layer_norm(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """LayerNorm without learned scale or shift (adaLN supplies them), in float32."""
  x = x.astype(jnp.float32)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  variance = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
  return (x - mean) * jax.lax.rsqrt(variance + eps)


def frames_view(x: jax.Array, frames: int) -> jax.Array:
  """Tokens [B, N, D] -> [B, frames, N / frames, D] (tokens are frame-major)."""
  return einops.rearrange(x, "b (t s) d -> b t s d", t=frames)


def tokens_view(x: jax.Array) -> jax.Array:
  """[B, frames, S, D] -> tokens [B, frames * S, D]."""
  return einops.rearrange(x, "b t s d -> b (t s) d")


def modulate(x: jax.Array, shift: jax.Array, scale: jax.Array) -> jax.Array:
  """adaLN: x * (1 + scale) + shift with per-frame parameters, in float32.

  x: [B, N, D] (frame-major tokens); shift, scale: [B, t, D] with N divisible by t.
  """
  x = frames_view(x.astype(jnp.float32), shift.shape[1])
  x = x * (1.0 + scale[:, :, None]) + shift[:, :, None]
  return tokens_view(x)


def gate(x: jax.Array, gate_values: jax.Array) -> jax.Array:
  """Scales the tokens of each frame by its gate: x [B, N, D], gate_values [B, t, D]."""
  gated = frames_view(x.astype(jnp.float32), gate_values.shape[1]) * gate_values[:, :, None]
  return tokens_view(gated).astype(x.dtype)


class AdaLNModulation(nnx.Module):
  """SiLU then a zero-initialised linear layer: cond [..., C] -> `count` arrays [..., width].

  Zero initialisation is the "Zero" of adaLN-Zero: every shift, scale and gate starts at zero,
  so a fresh block is the identity. Kept in float32 (modulation precision matters more than its
  tiny cost).
  """

  def __init__(self, cond_dim: int, width: int, count: int, *, rngs: nnx.Rngs):
    self.count = count
    self.linear = Dense(cond_dim, (count, width), axes=(axes.EMBED, None, axes.MLP),
                        kernel_init=nnx.initializers.zeros_init(), dtype=jnp.float32,
                        param_dtype=jnp.float32, rngs=rngs)

  def __call__(self, cond: jax.Array) -> tuple[jax.Array, ...]:
    values = self.linear(jax.nn.silu(cond.astype(jnp.float32)))  # [..., count, width]
    return tuple(values[..., i, :] for i in range(self.count))


def timestep_frequencies(timesteps: jax.Array, dim: int, *, time_scale: float = 1000.0,
                         max_period: float = 10000.0) -> jax.Array:
  """Sinusoidal features of timesteps: [...] -> [..., dim] as [cos | sin] (the DiT layout).

  Timesteps in [0, 1] are multiplied by `time_scale` first, so that the frequencies resolve
  steps as finely as the DDPM-style [0, 1000] range they were designed for.
  """
  half = dim // 2
  frequencies = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = timesteps.astype(jnp.float32)[..., None] * time_scale * frequencies
  features = jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)
  if dim % 2:
    features = jnp.concatenate([features, jnp.zeros_like(features[..., :1])], axis=-1)
  return features


class TimestepEmbedding(nnx.Module):
  """Timesteps [...] -> sinusoidal features -> Linear, SiLU, Linear -> [..., width].

  `output_init` initialises the last Linear's kernel; zeros make an embedding that adds nothing
  until it is trained (the distilled student's step size).
  """

  def __init__(self, width: int, *, frequency_dim: int = 256, time_scale: float = 1000.0,
               param_dtype: jnp.dtype = jnp.float32,
               output_init: Initializer = nnx.initializers.normal(0.02), rngs: nnx.Rngs):
    self.frequency_dim = frequency_dim
    self.time_scale = time_scale
    self.linear_in = Dense(frequency_dim, width, axes=(None, axes.EMBED),
                           kernel_init=nnx.initializers.normal(0.02), param_dtype=param_dtype,
                           rngs=rngs)
    self.linear_out = Dense(width, width, axes=(axes.EMBED, axes.MLP), kernel_init=output_init,
                            param_dtype=param_dtype, rngs=rngs)

  def __call__(self, timesteps: jax.Array) -> jax.Array:
    features = timestep_frequencies(timesteps, self.frequency_dim, time_scale=self.time_scale)
    return self.linear_out(jax.nn.silu(self.linear_in(features)))


# ----------------------------------------------------------------------------------------------
# Positions: 3D rotary embeddings and 3D sin-cos absolute embeddings.
# ----------------------------------------------------------------------------------------------


def split_axes_dims(dim: int) -> tuple[int, int, int]:
  """Splits `dim` features over the (t, h, w) axes: 3/8 each for h and w, the rest for t.

  Every part is even (rotary pairs; sin and cos halves). E.g. 32 -> (8, 12, 12),
  64 -> (16, 24, 24), 1152 -> (288, 432, 432).
  """
  spatial = 2 * ((3 * dim) // 16)
  temporal = dim - 2 * spatial
  if dim % 2 or temporal < 2 or spatial < 2:
    raise ValueError(f"cannot split {dim} features over (t, h, w): use an even size >= 12")
  return temporal, spatial, spatial


def grid_positions(frames: int, height: int, width: int) -> jax.Array:
  """The (t, h, w) coordinates of a token grid, frame-major: float32 [frames * height * width, 3].

  Coordinates are the patch indices themselves, so a longer, taller or wider grid than any seen
  in training extends the same coordinate system instead of squeezing it.
  """
  t, h, w = jnp.meshgrid(jnp.arange(frames), jnp.arange(height), jnp.arange(width),
                         indexing="ij")
  return jnp.stack([t.ravel(), h.ravel(), w.ravel()], axis=-1).astype(jnp.float32)


def rope_angles(positions: jax.Array, axes_dims: tuple[int, int, int],
                theta: float = 10000.0) -> jax.Array:
  """Rotation angles for 3D RoPE: positions [..., N, 3] -> [..., N, sum(axes_dims) / 2].

  Axis a gets axes_dims[a] / 2 frequencies theta^(-2i / axes_dims[a]); its angles are the
  token's coordinate on that axis times those frequencies.
  """
  angles = []
  for axis, dim in enumerate(axes_dims):
    frequencies = theta ** (-jnp.arange(0, dim, 2, dtype=jnp.float32) / dim)
    angles.append(positions[..., axis:axis + 1].astype(jnp.float32) * frequencies)
  return jnp.concatenate(angles, axis=-1)


def apply_rope(x: jax.Array, angles: jax.Array) -> jax.Array:
  """Rotates feature pairs (i, i + H/2) of x [B, N, heads, H] by angles [B or 1, N, H/2].

  The product of a rotated query at position p with a rotated key at position r depends on
  p - r only. Computed in float32; returns x's dtype.
  """
  x32 = x.astype(jnp.float32)
  first, second = jnp.split(x32, 2, axis=-1)
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  return rotated.astype(x.dtype)


def sincos_embedding(positions: jax.Array, width: int, max_period: float = 10000.0) -> jax.Array:
  """Fixed 3D sin-cos absolute embeddings (the DiT paper's, extended to time).

  positions [N, 3] -> [N, width]; the width is split over (t, h, w) by `split_axes_dims`, each
  part [sin | cos] of coordinate * 1 / max_period^(i / (part / 2)).
  """
  parts = []
  for axis, dim in enumerate(split_axes_dims(width)):
    half = dim // 2
    frequencies = 1.0 / max_period ** (jnp.arange(half, dtype=jnp.float32) / half)
    angles = positions[..., axis:axis + 1].astype(jnp.float32) * frequencies
    parts.extend([jnp.sin(angles), jnp.cos(angles)])
  return jnp.concatenate(parts, axis=-1)


# ----------------------------------------------------------------------------------------------
# Spacetime patches.
# ----------------------------------------------------------------------------------------------


def check_patchable(shape: Sequence[int], patch: Sequence[int]) -> tuple[int, int, int]:
  """Returns the token grid (t, h, w) of a latent [B, T, H, W, C], or a clear error."""
  if len(shape) != 5:
    raise ValueError(f"latents must be [batch, frames, height, width, channels], got shape "
                     f"{tuple(shape)}")
  grid = []
  for name, size, step in zip(("frames", "height", "width"), shape[1:4], patch):
    if size % step:
      raise ValueError(
          f"latent {name} {size} is not divisible by the patch size {step} on that axis "
          f"(patch {tuple(patch)}): use a latent {name} that is a multiple of {step}, or change "
          f"config.dit.patch_size")
    grid.append(size // step)
  return tuple(grid)


def patchify(latents: jax.Array, patch: Sequence[int]) -> jax.Array:
  """Cuts latents [B, T, H, W, C] into patches: -> [B, N, pt * ph * pw * C] (frame-major)."""
  check_patchable(latents.shape, patch)
  pt, ph, pw = patch
  return einops.rearrange(latents, "b (t pt) (h ph) (w pw) c -> b (t h w) (pt ph pw c)",
                          pt=pt, ph=ph, pw=pw)


def unpatchify(tokens: jax.Array, grid: Sequence[int], patch: Sequence[int]) -> jax.Array:
  """The exact inverse of `patchify`: [B, N, pt * ph * pw * C] -> [B, T, H, W, C]."""
  (t, h, w), (pt, ph, pw) = grid, patch
  return einops.rearrange(tokens, "b (t h w) (pt ph pw c) -> b (t pt) (h ph) (w pw) c",
                          t=t, h=h, w=w, pt=pt, ph=ph, pw=pw)


def gather_tokens(tokens: jax.Array, keep: jax.Array) -> jax.Array:
  """The kept tokens of each frame: tokens [B, N, F] (frame-major, t' frames of N / t'),
  keep int [B, t', k] (indices within each frame) -> [B, t' * k, F], frame-major."""
  batch, frames = keep.shape[:2]
  per_frame = tokens.shape[1] // frames
  if tokens.shape[0] != batch or per_frame * frames != tokens.shape[1]:
    raise ValueError(f"tokens {tokens.shape} do not split into the {frames} frames of keep "
                     f"{keep.shape}")
  flat = keep + per_frame * jnp.arange(frames, dtype=keep.dtype)[None, :, None]
  return jnp.take_along_axis(tokens, flat.reshape(batch, -1, 1), axis=1)


# ----------------------------------------------------------------------------------------------
# Attention.
# ----------------------------------------------------------------------------------------------


def self_attention_mask(token_mask: jax.Array | None,
                        segment_ids: jax.Array | None) -> jax.Array | None:
  """Dense mask [B, 1, N, N] (True = may attend) from a padding mask and/or segment ids.

  token_mask: bool [B, N], False marks padding keys. segment_ids: int [B, N]; a token attends
  only to tokens of its own segment (several videos packed into one sequence stay apart).
  """
  mask = None
  if segment_ids is not None:
    mask = segment_ids[:, None, :, None] == segment_ids[:, None, None, :]
  if token_mask is not None:
    keys = token_mask.astype(bool)[:, None, None, :]
    mask = keys if mask is None else mask & keys
  return mask


class Attention(nnx.Module):
  """Multi-head attention with optional RMS-normalised queries/keys and rotary embeddings.

  Self-attention when `context_dim` is None (keys and values from x), cross-attention otherwise
  (keys and values from `context` [B, L, context_dim]).

  x: [B, N, width] -> [B, N, width].
  """

  def __init__(self, width: int, num_heads: int, *, context_dim: int | None = None,
               qk_norm: bool = True, zero_init_output: bool = False,
               backend: attention_lib.Backend = "auto", dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    if width % num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {num_heads}")
    head_dim = width // num_heads
    self.backend = backend
    self.dtype = dtype
    source_dim = width if context_dim is None else context_dim
    projection = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.query = Dense(width, (num_heads, head_dim), axes=(axes.EMBED, axes.HEADS, axes.KV),
                       **projection)
    self.key = Dense(source_dim, (num_heads, head_dim), axes=(axes.EMBED, axes.HEADS, axes.KV),
                     **projection)
    self.value = Dense(source_dim, (num_heads, head_dim), axes=(axes.EMBED, axes.HEADS, axes.KV),
                       **projection)
    output_init = nnx.initializers.zeros_init() if zero_init_output else None
    self.output = Dense((num_heads, head_dim), width, axes=(axes.HEADS, axes.KV, axes.EMBED),
                        kernel_init=output_init, **projection)
    norm = lambda: RMSNorm(head_dim, axis_name=axes.KV, dtype=dtype, param_dtype=param_dtype,
                           rngs=rngs)
    self.query_norm = norm() if qk_norm else None
    self.key_norm = norm() if qk_norm else None

  def __call__(self, x: jax.Array, context: jax.Array | None = None, *,
               mask: jax.Array | None = None, rope: jax.Array | None = None) -> jax.Array:
    """x: [B, N, D]; context: [B, L, C] or None; mask: bool broadcastable to [B, heads, N, L];
    rope: angles [B or 1, N, head_dim / 2] (self-attention only)."""
    # Named by role, so a profile tells a DiT block's two attentions apart.
    with jax.named_scope("self_attention" if context is None else "cross_attention"):
      return self._attend(x, x if context is None else context, mask, rope)

  def _attend(self, x: jax.Array, source: jax.Array, mask: jax.Array | None,
              rope: jax.Array | None) -> jax.Array:
    query = sharding.constrain(self.query(x), axes.TOKEN_HEADS)  # [B, N, heads, head_dim]
    key = sharding.constrain(self.key(source), axes.TOKEN_HEADS)
    value = sharding.constrain(self.value(source), axes.TOKEN_HEADS)
    if self.query_norm is not None:
      query, key = self.query_norm(query), self.key_norm(key)
    if rope is not None:
      query, key = apply_rope(query, rope), apply_rope(key, rope)
    query = checkpoint_name(query, "query")
    key = checkpoint_name(key, "key")
    value = checkpoint_name(value, "value")
    # The model's token sequence: split over the mesh's "sequence" axis where it has one.
    out = attention_lib.dot_product_attention(query, key, value, mask=mask, backend=self.backend,
                                              split_tokens=True)
    out = sharding.constrain(out.astype(self.dtype), axes.TOKEN_HEADS)
    out = checkpoint_name(out, "attention")
    return self.output(out)
