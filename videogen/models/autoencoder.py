"""The 3D causal-convolution video autoencoder (a VAE) whose latents the diffusion model learns.

    model = VideoAutoencoder(AutoencoderConfig.tiny(), rngs=nnx.Rngs(0))
    mean, logvar = model.encode(video)            # video: [B, T, H, W, 3] in [-1, 1]
    reconstruction = model.decode(mean)           # [B, T, H, W, 3]

Time. Every convolution is causal in time: it pads only on the past side (by repeating the first
frame), so a latent frame never sees a later video frame. Each temporal 2x downsampling is a
kernel-3, stride-2 causal convolution, which maps 1 + 2m frames to 1 + m and encodes the first frame
alone; with temporal compression F = 2^n a video of 1 + F k frames maps to 1 + k latent frames, and
an image is a one-frame video (1 -> 1). Latent frame j > 0 depends on video frames <= F j: its
"group" is frames F (j - 1) + 1 .. F j. The decoder mirrors this: each temporal 2x upsampling makes
two frames from every frame and drops the very first one (1 + m -> 1 + 2m).

Space. An optional p x p patch fold (`patch_size`, pixels to channels) comes first, then each
spatial 2x downsampling is a stride-2 convolution; the decoder upsamples by nearest-neighbour
repetition and a convolution, and unfolds the patches last. Spatial compression S = p 2^m.

Shortcuts (`shortcuts`, on by default). Around each down/upsampling and across the bottleneck
runs a parameter-free path that only rearranges values: the encoder folds each 2x2 (x2 in time)
block into channels and averages groups of them down to the output width; the decoder repeats
channels and unfolds them back into the block. The shortcuts of encoder and decoder are arranged
so that, composed, they return each value to the position it came from, so a fresh model already
passes a coarse copy of its input to its output and the convolutions learn what it misses (the
"residual autoencoding" of Chen et al., 2024, Deep Compression Autoencoder). The tiny preset
reached 23.7 / 27.3 dB after 500 / 1500 steps with them and 20.2 / 25.5 dB without.

Normalisation is RMSNorm over channels at each position (each pixel of each frame), in float32. It
keeps no statistics across time (so causality holds and temporal chunks equal one pass), none across
space (so spatial tiles with enough margin equal one pass, and a model trained at 32x32 behaves the
same on larger frames), and none across the batch. GroupNorm would normalise over the whole frame
and lose the last two properties.

Bounded memory. `encode_chunked` / `decode_chunked` run the model over a few latent frames at a time
and carry each causal convolution's last input frames from one chunk to the next, so the result
equals the one-pass result; the equal-sized middle chunks go through one `jax.lax.scan` (compiled
once). Optional spatial tiling (`tile_latents`) runs each tile with a margin (`tile_margin_latents`)
and keeps its centre: exact when the margin covers the receptive field and `middle_attention` is
off, a close approximation otherwise (attention in the middle block sees the whole frame).

Logical axis names of the parameters (constants of `videogen.parallel.axes`; the trainer's rules
map them to mesh axes):
  convolution kernels [kt, kh, kw, in, out]:  (None, None, None, CONV_IN, CONV_OUT)
  convolution biases [out]:                   (CONV_OUT,)
  the RGB side of the first and the last convolution is None, not CONV_IN/CONV_OUT (3 channels
  cannot be split over devices)
  pointwise (1x1x1) skip projections [in, out]: (CONV_IN, CONV_OUT)
  norm scales [C]:                            (NORM,)
  attention query/key/value [C, N, D]:        (EMBED, HEADS, KV)
  attention output [N, D, C] and its bias [C]: (HEADS, KV, EMBED) and (EMBED,)

Latent scaling for the diffusion stage. The posterior's scale is not unit; the user of the latents
(the diffusion stage) applies `normalize_latents` (`(z - shift_factor) * scale_factor`) before
diffusion and `denormalize_latents` before `decode`. The autoencoder itself never applies them.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from videogen.models import attention as attention_lib
from videogen.models import layers
from videogen.parallel import axes
from videogen.parallel import sharding

# The posterior's log-variance is clipped to this range, so exp() neither overflows nor vanishes.
LOGVAR_RANGE: tuple[float, float] = (-30.0, 20.0)
Cache = Any  # A nested dict of carried frames, None at the start of a video.


@dataclasses.dataclass(frozen=True)
class AutoencoderConfig:
  """Settings of `VideoAutoencoder` (the `config.autoencoder` section).

  The encoder has `len(channel_multipliers)` levels of `num_res_blocks` residual blocks each, with
  `base_channels * multiplier` channels; between level i and i + 1 it halves the frame size when
  `spatial_downsample[i]` and halves the time axis (1 + 2m -> 1 + m) when `temporal_downsample[i]`.
  The decoder mirrors it with one more residual block per level.

  Attributes:
    base_channels: channels of the first level.
    patch_size: p; the encoder first folds each p x p pixel patch into channels (and the decoder
      unfolds its output), so that every convolution runs at 1/p of the frame size: a cheap
      first p-fold of the spatial compression.
    channel_multipliers: per-level channel multipliers of `base_channels`.
    num_res_blocks: residual blocks per encoder level (the decoder has one more).
    spatial_downsample: per level transition, whether height and width are halved.
    temporal_downsample: per level transition, whether time is halved (causally).
    latent_channels: channels C of the latent [B, t, h, w, C].
    shortcuts: parameter-free space/time-to-channel shortcuts around each down/upsampling and
      across the bottleneck (see the module docstring).
    middle_attention: per-frame spatial self-attention in the middle blocks.
    attention_heads: heads of that attention; must divide the middle block's channels.
    attention_backend: see `videogen.models.attention`.
    norm_epsilon: epsilon of the RMSNorms.
    scale_factor: multiplies latents in `normalize_latents` (applied by the diffusion stage).
    shift_factor: subtracted from latents in `normalize_latents` before scaling.
    dtype: compute dtype (bfloat16 on accelerators); norms and the posterior stay float32.
    param_dtype: storage dtype of the parameters.
    remat: recompute each residual block in the backward pass (saves activation memory).
  """
  base_channels: int = 128
  patch_size: int = 1
  channel_multipliers: tuple[int, ...] = (1, 2, 4, 4)
  num_res_blocks: int = 2
  spatial_downsample: tuple[bool, ...] = (True, True, True)
  temporal_downsample: tuple[bool, ...] = (True, True, False)
  latent_channels: int = 16
  shortcuts: bool = True
  middle_attention: bool = True
  attention_heads: int = 4
  attention_backend: attention_lib.Backend = "auto"
  norm_epsilon: float = 1e-6
  scale_factor: float = 1.0
  shift_factor: float = 0.0
  dtype: layers.DTypeName = "float32"
  param_dtype: layers.DTypeName = "float32"
  remat: bool = False

  def __post_init__(self):
    transitions = len(self.channel_multipliers) - 1
    if transitions < 0:
      raise ValueError("channel_multipliers is empty: give at least one level, e.g. (1, 2, 2)")
    for name in ("spatial_downsample", "temporal_downsample"):
      if len(getattr(self, name)) != transitions:
        raise ValueError(
            f"{name} has {len(getattr(self, name))} entries but channel_multipliers "
            f"{self.channel_multipliers} has {transitions} level transitions: give one per "
            f"transition")
    middle_channels = self.base_channels * self.channel_multipliers[-1]
    if self.middle_attention and middle_channels % self.attention_heads:
      raise ValueError(
          f"attention_heads={self.attention_heads} does not divide the middle block's "
          f"{middle_channels} channels: choose a divisor")
    if self.shortcuts:
      widths = [self.base_channels * m for m in self.channel_multipliers]
      if widths[-1] % self.latent_channels:
        raise ValueError(
            f"shortcuts=True needs the middle block's {widths[-1]} channels to be a multiple of "
            f"latent_channels={self.latent_channels}: change one, or set shortcuts=False")
      for level in range(transitions):
        block = (2 if self.temporal_downsample[level] else 1) * (
            4 if self.spatial_downsample[level] else 1)
        if block * widths[level] % widths[level + 1]:
          raise ValueError(
              f"shortcuts=True needs {block} x {widths[level]} channels (level {level}, folded) "
              f"to be a multiple of level {level + 1}'s {widths[level + 1]}: change "
              f"channel_multipliers, or set shortcuts=False")
    if min(self.num_res_blocks, self.base_channels, self.latent_channels, self.patch_size) < 1:
      raise ValueError("num_res_blocks, base_channels, latent_channels and patch_size must be "
                       ">= 1")

  @property
  def temporal_factor(self) -> int:
    """F: a video of 1 + F k frames has 1 + k latent frames."""
    return 2 ** sum(self.temporal_downsample)

  @property
  def spatial_factor(self) -> int:
    """S: an H x W frame has an H/S x W/S latent."""
    return self.patch_size * 2 ** sum(self.spatial_downsample)

  def normalize_latents(self, latents: jax.Array) -> jax.Array:
    """(latents - shift_factor) * scale_factor: what the diffusion stage models (also for
    latents read from a cache, without the autoencoder)."""
    return (latents - self.shift_factor) * self.scale_factor

  @classmethod
  def tiny(cls) -> AutoencoderConfig:
    """2x4x4 compression, 8 latent channels, for 32x32, 9-frame clips on a CPU.

    A 2x2 patch fold and one level transition (space and time halved together), so that every
    convolution runs at 16x16 or 8x8 (at 32x32 input); with the shortcuts. On 2 CPU cores a
    training step of 4 5-frame 16x16 crops takes 0.06-0.12 s by the machine
    (experiments/shapes.py:tiny).
    """
    return cls(base_channels=32, patch_size=2, channel_multipliers=(1, 2), num_res_blocks=1,
               spatial_downsample=(True,), temporal_downsample=(True,), latent_channels=8,
               middle_attention=False, attention_heads=1)

  @classmethod
  def standard(cls) -> AutoencoderConfig:
    """4x8x8 compression, 16 latent channels, attention in the middle (the default)."""
    return cls()


# Settings that change what the same parameters compute, with the value a saved config that lacks
# them was trained with (the setting did not exist yet). `upgrade_saved_config` fills them in.
_SAVED_CONFIG_DEFAULTS: dict[str, Any] = {"shortcuts": False}
# Settings that may differ between the autoencoder's training and its use: latent scaling is set
# after training (from the latents' statistics), the rest changes the arithmetic, not the function.
USE_TIME_FIELDS: frozenset[str] = frozenset({
    "scale_factor", "shift_factor", "dtype", "param_dtype", "remat", "attention_backend"})


def upgrade_saved_config(section: dict[str, Any]) -> dict[str, Any]:
  """A saved `config.autoencoder` section (a dict) with the settings it predates filled in.

  A checkpoint written before a setting existed was trained without it, which is not always the
  setting's default today (the shortcuts are on by default, and a model trained without them
  computes something else with them).
  """
  return {**_SAVED_CONFIG_DEFAULTS, **section}


def architecture_differences(trained: AutoencoderConfig,
                             current: AutoencoderConfig) -> list[str]:
  """"name: trained -> current" for every setting that makes `current` another function."""
  return [f"{field.name}: {getattr(trained, field.name)!r} -> {getattr(current, field.name)!r}"
          for field in dataclasses.fields(AutoencoderConfig)
          if field.name not in USE_TIME_FIELDS
          and getattr(trained, field.name) != getattr(current, field.name)]


def _dtype(name: str) -> jnp.dtype:
  return jnp.dtype(name)


def conv3d(x: jax.Array, kernel: jax.Array, *, stride: tuple[int, int, int] = (1, 1, 1),
           time_padding: tuple[int, int] = (0, 0)) -> jax.Array:
  """A 3D convolution, zero-padded by `time_padding` in time and 'same'-padded in space.

  On CPU the kt time taps are stacked into channels and convolved in 2D (XLA:CPU runs a 3D
  convolution about 5x slower than this equivalent 2D one); elsewhere it is one 3D convolution.

  Args:
    x: [B, T, H, W, Cin].
    kernel: [kt, kh, kw, Cin, Cout] with odd kh, kw.
    stride: (time, height, width) strides.
    time_padding: frames of zeros before and after.

  Returns:
    [B, (T + padding - kt) // st + 1, H / sh, W / sw, Cout] (sizes rounded up in space).
  """
  kernel_time, kernel_height, kernel_width = kernel.shape[:3]
  spatial_padding = [((kernel_height - 1) // 2,) * 2, ((kernel_width - 1) // 2,) * 2]
  if jax.default_backend() != "cpu":
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=stride, padding=[time_padding, *spatial_padding],
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
  x = jnp.pad(x, ((0, 0), time_padding, (0, 0), (0, 0), (0, 0)))
  num_outputs = (x.shape[1] - kernel_time) // stride[0] + 1
  last = stride[0] * (num_outputs - 1) + 1
  taps = jnp.concatenate([x[:, tap:tap + last:stride[0]] for tap in range(kernel_time)], axis=-1)
  frames = einops.rearrange(taps, "b t h w c -> (b t) h w c")
  y = jax.lax.conv_general_dilated(
      frames, einops.rearrange(kernel, "t h w i o -> h w (t i) o"), window_strides=stride[1:],
      padding=spatial_padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return einops.rearrange(y, "(b t) h w c -> b t h w c", b=x.shape[0])


def causal_conv3d(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, *,
                  stride: tuple[int, int, int] = (1, 1, 1),
                  cache: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """A 3D convolution, causal in time, 'same'-padded in space.

  Args:
    x: [B, T, H, W, Cin].
    kernel: [kt, kh, kw, Cin, Cout] (odd kh, kw).
    bias: [Cout] or None.
    stride: (time, height, width) strides.
    cache: the frames carried from the previous chunk ([B, c, H, W, Cin]); None at the start of a
      video, where the first frame is repeated kt - 1 times on the past side instead.

  Returns:
    (y, new_cache): y is [B, T', H/sh, W/sw, Cout] with T' = (c + T - kt) // st + 1; new_cache holds
    the input frames from the next output's window start on, to pass with the next chunk.
  """
  kernel_time = kernel.shape[0]
  if cache is None:
    past = jnp.repeat(x[:, :1], kernel_time - 1, axis=1)
  else:
    past = cache.astype(x.dtype)
  padded = jnp.concatenate([past, x], axis=1)
  num_outputs = (padded.shape[1] - kernel_time) // stride[0] + 1
  new_cache = padded[:, num_outputs * stride[0]:]
  y = conv3d(padded, kernel.astype(x.dtype), stride=stride)
  if bias is not None:
    y = y + bias.astype(y.dtype)
  return y, new_cache


def fold_shortcut(x: jax.Array, out_channels: int, *, spatial: bool, temporal: bool,
                  start_of_video: bool) -> jax.Array:
  """The encoder's parameter-free shortcut around a downsampling.

  Folds each 2x2 block (and each pair of frames, the first frame paired with itself at the start
  of a video, as the causal strided convolution does) into channels, then averages consecutive
  groups of channels down to out_channels.

  Args:
    x: [B, T, H, W, C]; T = 1 + 2m at the start of a video, else 2m (when temporal).
    out_channels: Cout; the folded channel count (C times the block size) must be a multiple.
    spatial, temporal: which axes are halved.
    start_of_video: x begins with the video's first frame.

  Returns:
    [B, 1 + m (or m), H/2, W/2, Cout] (each axis halved only if enabled).
  """
  if temporal:
    if start_of_video:
      x = jnp.concatenate([x[:, :1], x], axis=1)
    x = einops.rearrange(x, "b (t f) h w c -> b t h w (f c)", f=2)
  if spatial:
    x = einops.rearrange(x, "b t (h p) (w q) c -> b t h w (p q c)", p=2, q=2)
  return einops.reduce(x, "b t h w (o g) -> b t h w o", "mean", o=out_channels)


def unfold_shortcut(x: jax.Array, out_channels: int, *, spatial: bool, temporal: bool,
                    start_of_video: bool) -> jax.Array:
  """The decoder's parameter-free shortcut around an upsampling; mirrors `fold_shortcut`.

  Repeats each channel so there are out_channels for every position of the 2x2 block (and pair
  of frames), then unfolds the block, dropping the very first frame at the start of a video.

  Args:
    x: [B, t, H, W, Cin]; Cout times the block size must be a multiple of Cin.

  Returns:
    [B, 1 + 2(t - 1) (start) or 2t, 2H, 2W, Cout] (each axis doubled only if enabled).
  """
  block = (2 if temporal else 1) * (4 if spatial else 1)
  x = einops.repeat(x, "b t h w c -> b t h w (c r)", r=block * out_channels // x.shape[-1])
  if spatial:
    x = einops.rearrange(x, "b t h w (p q c) -> b t (h p) (w q) c", p=2, q=2)
  if temporal:
    x = einops.rearrange(x, "b t h w (f c) -> b (t f) h w c", f=2)
    if start_of_video:
      x = x[:, 1:]
  return x


class CausalConv3d(nnx.Module):
  """`causal_conv3d` with its own kernel [kt, kh, kw, Cin, Cout] and bias [Cout].

  x: [B, T, H, W, Cin] -> ([B, T', H', W', Cout], carried frames); see `causal_conv3d`.
  """

  def __init__(self, in_channels: int, out_channels: int, *,
               kernel_size: tuple[int, int, int] = (3, 3, 3),
               stride: tuple[int, int, int] = (1, 1, 1),
               in_axis: str | None = axes.CONV_IN, out_axis: str | None = axes.CONV_OUT,
               dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32,
               rngs: nnx.Rngs):
    self.stride = stride
    self.dtype = dtype
    init = nnx.with_partitioning(nnx.initializers.lecun_normal(),
                                 (None, None, None, in_axis, out_axis))
    self.kernel = nnx.Param(
        init(rngs.params(), (*kernel_size, in_channels, out_channels), param_dtype))
    self.bias = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros_init(), (out_axis,))(
        rngs.params(), (out_channels,), param_dtype))

  def __call__(self, x: jax.Array, cache: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    return causal_conv3d(x.astype(self.dtype), self.kernel[...], self.bias[...],
                         stride=self.stride, cache=cache)


class ChannelRMSNorm(nnx.Module):
  """RMSNorm over channels at each position, in float32. x: [..., C] -> [..., C] (dtype)."""

  def __init__(self, channels: int, *, epsilon: float = 1e-6, dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.epsilon = epsilon
    self.dtype = dtype
    self.scale = nnx.Param(nnx.with_partitioning(nnx.initializers.ones_init(), (axes.NORM,))(
        rngs.params(), (channels,), param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    x = x.astype(jnp.float32)
    mean_square = jnp.mean(jnp.square(x), axis=-1, keepdims=True)
    x = x * jax.lax.rsqrt(mean_square + self.epsilon) * self.scale[...].astype(jnp.float32)
    return x.astype(self.dtype)


class ResidualBlock(nnx.Module):
  """norm -> SiLU -> causal conv -> norm -> SiLU -> causal conv, plus a (projected) skip.

  x: [B, T, H, W, Cin] -> [B, T, H, W, Cout].
  """

  def __init__(self, in_channels: int, out_channels: int, *, epsilon: float, dtype: jnp.dtype,
               param_dtype: jnp.dtype, remat: bool, rngs: nnx.Rngs):
    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.remat = remat
    self.norm1 = ChannelRMSNorm(in_channels, epsilon=epsilon, **common)
    self.conv1 = CausalConv3d(in_channels, out_channels, **common)
    self.norm2 = ChannelRMSNorm(out_channels, epsilon=epsilon, **common)
    self.conv2 = CausalConv3d(out_channels, out_channels, **common)
    if in_channels != out_channels:
      init = nnx.with_partitioning(nnx.initializers.lecun_normal(), (axes.CONV_IN, axes.CONV_OUT))
      self.skip = nnx.Param(init(rngs.params(), (in_channels, out_channels), param_dtype))
    else:
      self.skip = None
    self.dtype = dtype

  def _forward(self, x: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    cache = cache or {}
    h, conv1_cache = self.conv1(jax.nn.silu(self.norm1(x)), cache.get("conv1"))
    h, conv2_cache = self.conv2(jax.nn.silu(self.norm2(h)), cache.get("conv2"))
    skip = x.astype(self.dtype)
    if self.skip is not None:
      skip = jnp.einsum("bthwc,cd->bthwd", skip, self.skip[...].astype(self.dtype))
    return skip + h, {"conv1": conv1_cache, "conv2": conv2_cache}

  @jax.named_scope("residual_block")
  def __call__(self, x: jax.Array, cache: Cache = None) -> tuple[jax.Array, Cache]:
    if self.remat:
      y, cache = nnx.remat(ResidualBlock._forward)(self, x, cache)
    else:
      y, cache = self._forward(x, cache)
    return sharding.constrain(y, axes.FEATURE_MAP), cache


class SpatialAttention(nnx.Module):
  """Residual self-attention among the positions of each frame (never across frames).

  x: [B, T, H, W, C] -> [B, T, H, W, C].
  """

  def __init__(self, channels: int, *, heads: int, epsilon: float,
               backend: attention_lib.Backend, dtype: jnp.dtype, param_dtype: jnp.dtype,
               rngs: nnx.Rngs):
    head_dim = channels // heads
    self.backend = backend
    self.dtype = dtype
    self.norm = ChannelRMSNorm(channels, epsilon=epsilon, dtype=dtype, param_dtype=param_dtype,
                               rngs=rngs)
    in_init = nnx.with_partitioning(nnx.initializers.lecun_normal(in_axis=0, out_axis=(1, 2)),
                                    (axes.EMBED, axes.HEADS, axes.KV))
    self.query = nnx.Param(in_init(rngs.params(), (channels, heads, head_dim), param_dtype))
    self.key = nnx.Param(in_init(rngs.params(), (channels, heads, head_dim), param_dtype))
    self.value = nnx.Param(in_init(rngs.params(), (channels, heads, head_dim), param_dtype))
    out_init = nnx.with_partitioning(nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2),
                                     (axes.HEADS, axes.KV, axes.EMBED))
    self.out = nnx.Param(out_init(rngs.params(), (heads, head_dim, channels), param_dtype))
    self.out_bias = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros_init(), (axes.EMBED,))(
        rngs.params(), (channels,), param_dtype))

  @jax.named_scope("spatial_attention")
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, frames, height, width, _ = x.shape
    tokens = einops.rearrange(self.norm(x), "b t h w c -> (b t) (h w) c")
    q, k, v = (jnp.einsum("bsc,cnd->bsnd", tokens, p[...].astype(self.dtype))
               for p in (self.query, self.key, self.value))
    attended = attention_lib.dot_product_attention(q, k, v, backend=self.backend)
    out = jnp.einsum("bsnd,ndc->bsc", attended, self.out[...].astype(self.dtype))
    out = out + self.out_bias[...].astype(self.dtype)
    out = einops.rearrange(out, "(b t) (h w) c -> b t h w c", b=batch, t=frames, h=height,
                           w=width)
    return x.astype(self.dtype) + out


class MiddleBlock(nnx.Module):
  """Residual block, optional per-frame attention, residual block. x: [B, T, H, W, C]."""

  def __init__(self, channels: int, config: AutoencoderConfig, *, rngs: nnx.Rngs):
    common = dict(epsilon=config.norm_epsilon, dtype=_dtype(config.dtype),
                  param_dtype=_dtype(config.param_dtype), rngs=rngs)
    self.block1 = ResidualBlock(channels, channels, remat=config.remat, **common)
    self.attention = (SpatialAttention(channels, heads=config.attention_heads,
                                       backend=config.attention_backend, **common)
                      if config.middle_attention else None)
    self.block2 = ResidualBlock(channels, channels, remat=config.remat, **common)

  @jax.named_scope("middle")
  def __call__(self, x: jax.Array, cache: Cache = None) -> tuple[jax.Array, Cache]:
    cache = cache or {}
    x, block1_cache = self.block1(x, cache.get("block1"))
    if self.attention is not None:
      x = sharding.constrain(self.attention(x), axes.FEATURE_MAP)
    x, block2_cache = self.block2(x, cache.get("block2"))
    return x, {"block1": block1_cache, "block2": block2_cache}


class Downsample(nnx.Module):
  """A kernel-3 causal conv with stride 2 in time and/or space (plus `fold_shortcut`).

  x: [B, 1 + 2m, H, W, C] -> [B, 1 + m, H/2, W/2, C] (each halving only if enabled).
  """

  def __init__(self, channels: int, *, spatial: bool, temporal: bool, shortcut: bool,
               dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs):
    stride = (2 if temporal else 1,) + (2 if spatial else 1,) * 2
    self.spatial = spatial
    self.temporal = temporal
    self.shortcut = shortcut
    self.conv = CausalConv3d(channels, channels, stride=stride, dtype=dtype,
                             param_dtype=param_dtype, rngs=rngs)

  @jax.named_scope("downsample")
  def __call__(self, x: jax.Array, cache: Cache = None) -> tuple[jax.Array, Cache]:
    y, new_cache = self.conv(x, cache)
    if self.shortcut:
      y = y + fold_shortcut(x.astype(y.dtype), y.shape[-1], spatial=self.spatial,
                            temporal=self.temporal, start_of_video=cache is None)
    return sharding.constrain(y, axes.FEATURE_MAP), new_cache


class Upsample(nnx.Module):
  """Nearest 2x in space, then a causal conv whose output channels hold 2 frames each in time
  (plus `unfold_shortcut`).

  x: [B, 1 + m, H, W, Cin] -> [B, 1 + 2m, 2H, 2W, Cout] at the start of a video (the first
  frame's first copy is dropped, mirroring the encoder's first frame encoded alone), [B, 2m, ...]
  for later chunks. Cout is the next (finer) level's width, so the high-resolution convolution is
  no wider than that level needs.
  """

  def __init__(self, in_channels: int, out_channels: int, *, spatial: bool, temporal: bool,
               shortcut: bool, dtype: jnp.dtype, param_dtype: jnp.dtype, rngs: nnx.Rngs):
    self.spatial = spatial
    self.temporal = temporal
    self.shortcut = shortcut
    self.out_channels = out_channels
    self.conv = CausalConv3d(in_channels, out_channels * (2 if temporal else 1), dtype=dtype,
                             param_dtype=param_dtype, rngs=rngs)

  @jax.named_scope("upsample")
  def __call__(self, x: jax.Array, cache: Cache = None) -> tuple[jax.Array, Cache]:
    start_of_video = cache is None
    shortcut = (unfold_shortcut(x, self.out_channels, spatial=self.spatial,
                                temporal=self.temporal, start_of_video=start_of_video)
                if self.shortcut else None)
    if self.spatial:
      x = einops.repeat(x, "b t h w c -> b t (h sh) (w sw) c", sh=2, sw=2)
    x, new_cache = self.conv(x, cache)
    if self.temporal:
      x = einops.rearrange(x, "b t h w (f c) -> b (t f) h w c", f=2)
      if start_of_video:
        x = x[:, 1:]
    if shortcut is not None:
      x = x + shortcut.astype(x.dtype)
    return sharding.constrain(x, axes.FEATURE_MAP), new_cache


class Encoder(nnx.Module):
  """video [B, T, H, W, 3] -> posterior moments [B, t, H/S, W/S, 2C] (mean | log-variance)."""

  def __init__(self, config: AutoencoderConfig, *, rngs: nnx.Rngs):
    dtype, param_dtype = _dtype(config.dtype), _dtype(config.param_dtype)
    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    widths = [config.base_channels * m for m in config.channel_multipliers]
    self.patch_size = config.patch_size
    self.conv_in = CausalConv3d(3 * config.patch_size ** 2, widths[0], in_axis=None, **common)
    blocks, downsamples = [], []
    channels = widths[0]
    for level, width in enumerate(widths):
      for _ in range(config.num_res_blocks):
        blocks.append(ResidualBlock(channels, width, epsilon=config.norm_epsilon,
                                    remat=config.remat, **common))
        channels = width
      if level < len(widths) - 1:
        downsamples.append(Downsample(channels, spatial=config.spatial_downsample[level],
                                      temporal=config.temporal_downsample[level],
                                      shortcut=config.shortcuts, **common))
    self.num_res_blocks = config.num_res_blocks
    self.blocks = nnx.List(blocks)
    self.downsamples = nnx.List(downsamples)
    self.middle = MiddleBlock(channels, config, rngs=rngs)
    self.norm_out = ChannelRMSNorm(channels, epsilon=config.norm_epsilon, **common)
    self.conv_out = CausalConv3d(channels, 2 * config.latent_channels, **common)
    self.shortcut = config.shortcuts
    self.latent_channels = config.latent_channels

  @jax.named_scope("encoder")
  def __call__(self, video: jax.Array, cache: Cache = None) -> tuple[jax.Array, Cache]:
    cache = cache or {}
    new_cache = {}
    patches = einops.rearrange(video, "b t (h p) (w q) c -> b t h w (p q c)", p=self.patch_size,
                               q=self.patch_size)
    x, new_cache["conv_in"] = self.conv_in(patches, cache.get("conv_in"))
    x = sharding.constrain(x, axes.FEATURE_MAP)
    for index, block in enumerate(self.blocks):
      level, position = divmod(index, self.num_res_blocks)
      with jax.named_scope(f"level{level}"):
        x, new_cache[f"block{index}"] = block(x, cache.get(f"block{index}"))
        if position == self.num_res_blocks - 1 and level < len(self.downsamples):
          key = f"downsample{level}"
          x, new_cache[key] = self.downsamples[level](x, cache.get(key))
    x, new_cache["middle"] = self.middle(x, cache.get("middle"))
    moments, new_cache["conv_out"] = self.conv_out(jax.nn.silu(self.norm_out(x)),
                                                   cache.get("conv_out"))
    if self.shortcut:  # into the mean only; the log-variance is the convolution's alone
      mean_shortcut = einops.reduce(x.astype(moments.dtype), "b t h w (o g) -> b t h w o", "mean",
                                    o=self.latent_channels)
      moments = moments + jnp.concatenate([mean_shortcut, jnp.zeros_like(mean_shortcut)], -1)
    return moments, new_cache


class Decoder(nnx.Module):
  """latents [B, t, h, w, C] -> video [B, T, h S, w S, 3]; mirrors `Encoder`.

  `features` returns the input of the last convolution `conv_out` (the loss's adaptive GAN weight
  needs the gradient at that layer's kernel).
  """

  def __init__(self, config: AutoencoderConfig, *, rngs: nnx.Rngs):
    dtype, param_dtype = _dtype(config.dtype), _dtype(config.param_dtype)
    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    widths = [config.base_channels * m for m in config.channel_multipliers]
    channels = widths[-1]
    self.conv_in = CausalConv3d(config.latent_channels, channels, **common)
    self.shortcut = config.shortcuts
    self.middle = MiddleBlock(channels, config, rngs=rngs)
    blocks, upsamples = [], []
    for level in reversed(range(len(widths))):
      for _ in range(config.num_res_blocks + 1):
        blocks.append(ResidualBlock(channels, widths[level], epsilon=config.norm_epsilon,
                                    remat=config.remat, **common))
        channels = widths[level]
      if level > 0:
        upsamples.append(Upsample(channels, widths[level - 1],
                                  spatial=config.spatial_downsample[level - 1],
                                  temporal=config.temporal_downsample[level - 1],
                                  shortcut=config.shortcuts, **common))
        channels = widths[level - 1]
    self.blocks_per_level = config.num_res_blocks + 1
    self.blocks = nnx.List(blocks)
    self.upsamples = nnx.List(upsamples)
    self.norm_out = ChannelRMSNorm(channels, epsilon=config.norm_epsilon, **common)
    self.patch_size = config.patch_size
    self.conv_out = CausalConv3d(channels, 3 * config.patch_size ** 2, out_axis=None, **common)

  @jax.named_scope("decoder")
  def features(self, latents: jax.Array, cache: Cache = None) -> tuple[jax.Array, Cache]:
    """latents [B, t, h, w, C] -> (activated features [B, T, H, W, C0], carried frames)."""
    cache = cache or {}
    new_cache = {}
    x, new_cache["conv_in"] = self.conv_in(latents, cache.get("conv_in"))
    if self.shortcut:
      x = x + einops.repeat(latents.astype(x.dtype), "b t h w c -> b t h w (c r)",
                            r=x.shape[-1] // latents.shape[-1])
    x = sharding.constrain(x, axes.FEATURE_MAP)
    x, new_cache["middle"] = self.middle(x, cache.get("middle"))
    for index, block in enumerate(self.blocks):
      # Decoder levels count from the coarsest (level0) up, in the order they run.
      level, position = divmod(index, self.blocks_per_level)
      with jax.named_scope(f"level{level}"):
        x, new_cache[f"block{index}"] = block(x, cache.get(f"block{index}"))
        if position == self.blocks_per_level - 1 and level < len(self.upsamples):
          key = f"upsample{level}"
          x, new_cache[key] = self.upsamples[level](x, cache.get(key))
    return jax.nn.silu(self.norm_out(x)), new_cache

  def unpatchify(self, patches: jax.Array) -> jax.Array:
    """conv_out's output [B, T, H/p, W/p, 3 p p] -> video [B, T, H, W, 3]."""
    return einops.rearrange(patches, "b t h w (p q c) -> b t (h p) (w q) c", p=self.patch_size,
                            q=self.patch_size)

  def __call__(self, latents: jax.Array, cache: Cache = None) -> tuple[jax.Array, Cache]:
    cache = cache or {}
    features, new_cache = self.features(latents, cache.get("features"))
    patches, conv_out_cache = self.conv_out(features, cache.get("conv_out"))
    return self.unpatchify(patches), {"features": new_cache, "conv_out": conv_out_cache}


def kl_divergence(mean: jax.Array, logvar: jax.Array) -> jax.Array:
  """KL(N(mean, exp(logvar)) || N(0, 1)) in nats per latent element, averaged per example.

  Args:
    mean, logvar: [B, t, h, w, C].

  Returns:
    [B] float32.
  """
  mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
  per_element = 0.5 * (jnp.square(mean) + jnp.exp(logvar) - 1.0 - logvar)
  return jnp.mean(per_element, axis=tuple(range(1, mean.ndim)))


def _concatenate_chunks(chunks: list[Any]) -> Any:
  return jax.tree.map(lambda *parts: jnp.concatenate(parts, axis=1), *chunks)


def _run_in_chunks(step: Callable[[jax.Array, Cache], tuple[Any, Cache]], x: jax.Array,
                   first_length: int, chunk_length: int) -> Any:
  """Runs `step` over x's time axis: x[:, :first_length], then chunks of chunk_length (scanned).

  step(chunk, cache) -> (outputs pytree of [B, t, ...], cache); the first call gets cache None.
  Returns the outputs concatenated along time.
  """
  outputs, cache = step(x[:, :first_length], None)
  results = [outputs]
  rest = x[:, first_length:]
  num_full = rest.shape[1] // chunk_length
  if num_full:
    stacked = einops.rearrange(rest[:, :num_full * chunk_length], "b (n t) ... -> n b t ...",
                               n=num_full)

    def body(carried, chunk):
      out, carried = step(chunk, carried)
      return carried, out

    cache, scanned = jax.lax.scan(body, cache, stacked)
    results.append(jax.tree.map(lambda s: einops.rearrange(s, "n b t ... -> b (n t) ..."),
                                scanned))
  if rest.shape[1] > num_full * chunk_length:
    outputs, cache = step(rest[:, num_full * chunk_length:], cache)
    results.append(outputs)
  return _concatenate_chunks(results)


def _spatially_tiled(fn: Callable[[jax.Array], Any], x: jax.Array, *, in_scale: int,
                     out_scale: int, tile: int, margin: int) -> Any:
  """Applies fn to overlapping spatial tiles of x and stitches the tiles' centres.

  Positions are in latent units: x is [B, T, h in_scale, w in_scale, ...] and fn's outputs are
  [B, T', h out_scale, w out_scale, ...]. Each tile of tile x tile latents runs with `margin`
  latents of context on every side (clipped at the frame's edges) that are cut off afterwards.
  """
  height, width = x.shape[2] // in_scale, x.shape[3] // in_scale
  rows = []
  for top in range(0, height, tile):
    row = []
    for left in range(0, width, tile):
      bottom, right = min(top + tile, height), min(left + tile, width)
      top_in, left_in = max(0, top - margin), max(0, left - margin)
      bottom_in, right_in = min(height, bottom + margin), min(width, right + margin)
      out = fn(x[:, :, top_in * in_scale:bottom_in * in_scale,
                 left_in * in_scale:right_in * in_scale])
      row.append(jax.tree.map(
          lambda o, t=top - top_in, l=left - left_in, h=bottom - top, w=right - left:
          o[:, :, t * out_scale:(t + h) * out_scale, l * out_scale:(l + w) * out_scale], out))
    rows.append(jax.tree.map(lambda *parts: jnp.concatenate(parts, axis=3), *row))
  return jax.tree.map(lambda *parts: jnp.concatenate(parts, axis=2), *rows)


class VideoAutoencoder(nnx.Module):
  """The causal video VAE; see the module docstring for the design and the axis names.

  Shapes: video [B, T, H, W, 3] float in [-1, 1] with T = 1 + F k and H, W divisible by S;
  latents [B, 1 + k, H/S, W/S, C], float32.
  """

  def __init__(self, config: AutoencoderConfig, *, rngs: nnx.Rngs):
    self.config = config
    self.encoder = Encoder(config, rngs=rngs)
    self.decoder = Decoder(config, rngs=rngs)

  @property
  def compression(self) -> str:
    """"FxSxS", e.g. "4x8x8": temporal x spatial x spatial compression factors."""
    factor = self.config.spatial_factor
    return f"{self.config.temporal_factor}x{factor}x{factor}"

  def latent_shape(self, frames: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(t, h, w, C) of the latent of a frames x height x width video; raises if not encodable."""
    self._check_video_shape(frames, height, width)
    factor = self.config.spatial_factor
    return (1 + (frames - 1) // self.config.temporal_factor, height // factor, width // factor,
            self.config.latent_channels)

  def _check_video_shape(self, frames: int, height: int, width: int) -> None:
    temporal, spatial = self.config.temporal_factor, self.config.spatial_factor
    if frames < 1 or (frames - 1) % temporal:
      below = 1 + max(0, (frames - 1) // temporal) * temporal
      above = below + temporal if frames > 1 else 1 + temporal
      raise ValueError(
          f"video has {frames} frames; with temporal compression {temporal} the frame count must "
          f"be 1 + {temporal}k: use {below} or {above} frames")
    if height % spatial or width % spatial:
      raise ValueError(
          f"frame size {height}x{width} is not divisible by the spatial compression {spatial}: "
          f"resize or crop to {height // spatial * spatial}x{width // spatial * spatial} or "
          f"{-(-height // spatial) * spatial}x{-(-width // spatial) * spatial}")

  def _check_video(self, video: jax.Array) -> None:
    if video.ndim != 5 or video.shape[-1] != 3:
      raise ValueError(f"video must be [B, T, H, W, 3], got shape {video.shape}")
    self._check_video_shape(*video.shape[1:4])

  def _check_latents(self, latents: jax.Array) -> None:
    if latents.ndim != 5 or latents.shape[-1] != self.config.latent_channels:
      raise ValueError(f"latents must be [B, t, h, w, {self.config.latent_channels}], got shape "
                       f"{latents.shape}")

  def _split_moments(self, moments: jax.Array) -> tuple[jax.Array, jax.Array]:
    mean, logvar = jnp.split(moments.astype(jnp.float32), 2, axis=-1)
    return mean, jnp.clip(logvar, *LOGVAR_RANGE)

  def _encode_step(self, video: jax.Array, cache: Cache) -> tuple[tuple[jax.Array, jax.Array],
                                                                   Cache]:
    moments, cache = self.encoder(video.astype(_dtype(self.config.dtype)), cache)
    return self._split_moments(moments), cache

  def _decode_step(self, latents: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
    video, cache = self.decoder(latents.astype(_dtype(self.config.dtype)), cache)
    return video.astype(jnp.float32), cache

  def encode(self, video: jax.Array) -> tuple[jax.Array, jax.Array]:
    """video [B, T, H, W, 3] in [-1, 1] -> (mean, logvar), each [B, t, h, w, C] float32."""
    self._check_video(video)
    return self._encode_step(video, None)[0]

  def decode(self, latents: jax.Array) -> jax.Array:
    """latents [B, t, h, w, C] -> video [B, 1 + F (t - 1), h S, w S, 3] float32 (unclipped)."""
    self._check_latents(latents)
    return self._decode_step(latents, None)[0]

  def encode_chunked(self, video: jax.Array, chunk_latent_frames: int, *,
                     tile_latents: int | None = None,
                     tile_margin_latents: int = 8) -> tuple[jax.Array, jax.Array]:
    """`encode` with bounded memory: chunk_latent_frames latent frames at a time.

    Equal to `encode` (the carried frames make the chunks see exactly what one pass sees).
    tile_latents: optional spatial tile size in latent units; see the module docstring.
    """
    self._check_video(video)
    if chunk_latent_frames < 1:
      raise ValueError(f"chunk_latent_frames={chunk_latent_frames} must be >= 1")
    factor = self.config.temporal_factor

    def encode_tile(tile: jax.Array) -> tuple[jax.Array, jax.Array]:
      return _run_in_chunks(self._encode_step, tile, first_length=1 + factor * (
          chunk_latent_frames - 1), chunk_length=factor * chunk_latent_frames)

    if tile_latents is None:
      return encode_tile(video)
    return _spatially_tiled(encode_tile, video, in_scale=self.config.spatial_factor, out_scale=1,
                            tile=tile_latents, margin=tile_margin_latents)

  def decode_chunked(self, latents: jax.Array, chunk_latent_frames: int, *,
                     tile_latents: int | None = None, tile_margin_latents: int = 8) -> jax.Array:
    """`decode` with bounded memory: chunk_latent_frames latent frames at a time.

    Equal to `decode`. tile_latents: optional spatial tile size in latent units.
    """
    self._check_latents(latents)
    if chunk_latent_frames < 1:
      raise ValueError(f"chunk_latent_frames={chunk_latent_frames} must be >= 1")

    def decode_tile(tile: jax.Array) -> jax.Array:
      return _run_in_chunks(self._decode_step, tile, first_length=chunk_latent_frames,
                            chunk_length=chunk_latent_frames)

    if tile_latents is None:
      return decode_tile(latents)
    return _spatially_tiled(decode_tile, latents, in_scale=1,
                            out_scale=self.config.spatial_factor, tile=tile_latents,
                            margin=tile_margin_latents)

  def sample(self, mean: jax.Array, logvar: jax.Array, rng: jax.Array) -> jax.Array:
    """A draw from the diagonal Gaussian posterior: mean + exp(logvar / 2) * noise."""
    noise = jax.random.normal(rng, mean.shape, jnp.float32)
    return mean + jnp.exp(0.5 * logvar) * noise

  def __call__(self, video: jax.Array, *, rng: jax.Array | None = None,
               sample_posterior: bool = True) -> tuple[jax.Array, jax.Array, jax.Array]:
    """video [B, T, H, W, 3] -> (reconstruction [B, T, H, W, 3], mean, logvar [B, t, h, w, C])."""
    if sample_posterior and rng is None:
      raise ValueError("sample_posterior=True needs rng=jax.random.key(...); pass "
                       "sample_posterior=False to decode the posterior mean")
    mean, logvar = self.encode(video)
    if sample_posterior:
      latents = self.sample(mean, logvar, rng)
    else:
      latents = mean
    return self.decode(latents), mean, logvar

  def normalize_latents(self, latents: jax.Array) -> jax.Array:
    """(latents - shift_factor) * scale_factor: what the diffusion stage models."""
    return self.config.normalize_latents(latents)

  def denormalize_latents(self, latents: jax.Array) -> jax.Array:
    """The inverse of `normalize_latents`; apply before `decode`."""
    return latents / self.config.scale_factor + self.config.shift_factor
