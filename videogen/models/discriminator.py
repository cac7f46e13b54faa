"""A 3D patch discriminator: real-vs-reconstructed logits for overlapping spacetime patches.

    discriminator = PatchDiscriminator3D(channels=64, num_layers=3, rngs=nnx.Rngs(0))
    logits = discriminator(video)   # [B, T, H, W, 3] in [-1, 1] -> [B, t, H / 2^L, W / 2^L, 1]

A stack of 3x3x3 convolutions (PatchGAN in 3D): the first keeps the time axis and halves the frame
size, each of the next `num_layers - 1` doubles the channels (up to 8x) and halves time
('same'-padded, so 1 + 2m frames -> 1 + m, and an image stays one frame) and the frame size; a
last convolution maps to one logit per patch. Time is padded on both sides: the discriminator only
judges, it need not be causal. Normalisation is the autoencoder's per-position RMSNorm over
channels, so the discriminator's verdict on one video never depends on the others in the batch.

Parameter axis names (`videogen.parallel.axes`): convolution kernels (None, None, None, CONV_IN,
CONV_OUT) and biases (CONV_OUT,), except the RGB input axis of the first and the single logit of
the last (None); norm scales (NORM,).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from videogen.models import autoencoder as autoencoder_lib
from videogen.parallel import axes
from videogen.parallel import sharding

# The slope of the leaky ReLUs, as in PatchGAN.
LEAKY_SLOPE = 0.2


class _Conv3d(nnx.Module):
  """A 3x3x3 convolution, 'same'-padded in every axis.

  x: [B, T, H, W, Cin] -> [B, T', H', W', Cout].
  """

  def __init__(self, in_channels: int, out_channels: int, *, stride: tuple[int, int, int],
               in_axis: str | None, out_axis: str | None, dtype: jnp.dtype,
               param_dtype: jnp.dtype, rngs: nnx.Rngs):
    self.stride = stride
    self.dtype = dtype
    init = nnx.with_partitioning(nnx.initializers.lecun_normal(),
                                 (None, None, None, in_axis, out_axis))
    self.kernel = nnx.Param(init(rngs.params(), (3, 3, 3, in_channels, out_channels),
                                 param_dtype))
    self.bias = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros_init(), (out_axis,))(
        rngs.params(), (out_channels,), param_dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    y = autoencoder_lib.conv3d(x.astype(self.dtype), self.kernel[...].astype(self.dtype),
                               stride=self.stride, time_padding=(1, 1))
    return y + self.bias[...].astype(self.dtype)


class PatchDiscriminator3D(nnx.Module):
  """video [B, T, H, W, 3] in [-1, 1] -> patch logits [B, t, H / 2^L, W / 2^L, 1] float32.

  With L = num_layers, t = T halved (1 + 2m -> 1 + m) num_layers - 1 times.
  """

  def __init__(self, channels: int = 64, num_layers: int = 3, *, epsilon: float = 1e-6,
               dtype: jnp.dtype = jnp.float32, param_dtype: jnp.dtype = jnp.float32,
               rngs: nnx.Rngs):
    if num_layers < 1:
      raise ValueError(f"num_layers={num_layers} must be >= 1")
    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.conv_in = _Conv3d(3, channels, stride=(1, 2, 2), in_axis=None, out_axis=axes.CONV_OUT,
                           **common)
    convs, norms = [], []
    width = channels
    for layer in range(1, num_layers):
      next_width = channels * min(2 ** layer, 8)
      convs.append(_Conv3d(width, next_width, stride=(2, 2, 2), in_axis=axes.CONV_IN,
                           out_axis=axes.CONV_OUT, **common))
      norms.append(autoencoder_lib.ChannelRMSNorm(next_width, epsilon=epsilon, **common))
      width = next_width
    self.convs = nnx.List(convs)
    self.norms = nnx.List(norms)
    self.conv_out = _Conv3d(width, 1, stride=(1, 1, 1), in_axis=axes.CONV_IN, out_axis=None,
                            **common)

  def __call__(self, video: jax.Array) -> jax.Array:
    if video.ndim != 5 or video.shape[-1] != 3:
      raise ValueError(f"video must be [B, T, H, W, 3], got shape {video.shape}")
    x = sharding.constrain(jax.nn.leaky_relu(self.conv_in(video), LEAKY_SLOPE), axes.FEATURE_MAP)
    for conv, norm in zip(self.convs, self.norms):
      x = sharding.constrain(jax.nn.leaky_relu(norm(conv(x)), LEAKY_SLOPE), axes.FEATURE_MAP)
    return self.conv_out(x).astype(jnp.float32)
