"""Reconstruction metrics over videos: PSNR and SSIM, pure jnp (jit-able, differentiable).

    psnr(reconstruction, video, max_value=1.0)   # [B] in dB
    ssim(reconstruction, video, max_value=1.0)   # [B] in [-1, 1]

Both take videos [B, T, H, W, C] whose values span `max_value` (1.0 for [0, 1]; 255.0 for uint8
values; 2.0 for videos in [-1, 1]) and return one number per video. PSNR is computed from the mean
squared error over the whole video (not an average of per-frame PSNRs); SSIM is the mean of the
SSIM map of every frame and channel (Wang et al. 2004: an 11x11 Gaussian window with sigma 1.5,
K1 = 0.01, K2 = 0.03, 'valid' positions only, as `tf.image.ssim` computes it).
"""

from __future__ import annotations

import einops
import jax
import jax.numpy as jnp


def _check_pair(videos: jax.Array, references: jax.Array) -> None:
  if videos.shape != references.shape or videos.ndim != 5:
    raise ValueError(f"expected two videos [B, T, H, W, C] of one shape, got {videos.shape} and "
                     f"{references.shape}")


def psnr(videos: jax.Array, references: jax.Array, *, max_value: float = 1.0) -> jax.Array:
  """Peak signal-to-noise ratio in dB per video: 10 log10(max_value^2 / MSE).

  Args:
    videos, references: [B, T, H, W, C].
    max_value: the value range (see the module docstring).

  Returns:
    [B] float32; +inf where a video equals its reference.
  """
  _check_pair(videos, references)
  error = videos.astype(jnp.float32) - references.astype(jnp.float32)
  mse = jnp.mean(jnp.square(error), axis=(1, 2, 3, 4))
  return 10.0 * jnp.log10(max_value ** 2 / mse)


def gaussian_window(size: int = 11, sigma: float = 1.5) -> jax.Array:
  """The normalised 1D Gaussian [size] whose outer product is SSIM's window."""
  offsets = jnp.arange(size, dtype=jnp.float32) - (size - 1) / 2.0
  weights = jnp.exp(-0.5 * jnp.square(offsets / sigma))
  return weights / jnp.sum(weights)


def _filter_valid(images: jax.Array, window: jax.Array) -> jax.Array:
  """Separable 'valid' filtering of images [N, H, W] with window [K] along H and W."""
  size = window.shape[0]
  x = images[..., None]  # [N, H, W, 1]
  kernel_height = window.reshape(size, 1, 1, 1)
  kernel_width = window.reshape(1, size, 1, 1)
  dimension_numbers = ("NHWC", "HWIO", "NHWC")
  x = jax.lax.conv_general_dilated(x, kernel_height, (1, 1), "VALID",
                                   dimension_numbers=dimension_numbers,
                                   precision=jax.lax.Precision.HIGHEST)
  x = jax.lax.conv_general_dilated(x, kernel_width, (1, 1), "VALID",
                                   dimension_numbers=dimension_numbers,
                                   precision=jax.lax.Precision.HIGHEST)
  return x[..., 0]


def ssim(videos: jax.Array, references: jax.Array, *, max_value: float = 1.0,
         window_size: int = 11, sigma: float = 1.5, k1: float = 0.01,
         k2: float = 0.03) -> jax.Array:
  """Structural similarity per video: the mean SSIM over frames, channels and positions.

  Args:
    videos, references: [B, T, H, W, C] with H, W >= window_size.
    max_value: the value range (see the module docstring).
    window_size, sigma: the Gaussian window.
    k1, k2: the stabilising constants, scaled by max_value.

  Returns:
    [B] float32; 1 where a video equals its reference.
  """
  _check_pair(videos, references)
  batch, _, height, width, _ = videos.shape
  if min(height, width) < window_size:
    raise ValueError(f"frames of {height}x{width} are smaller than the SSIM window "
                     f"{window_size}x{window_size}: pass a smaller window_size (odd, e.g. 7)")
  window = gaussian_window(window_size, sigma)
  as_images = lambda v: einops.rearrange(v.astype(jnp.float32), "b t h w c -> (b t c) h w")
  x, y = as_images(videos), as_images(references)
  mean_x, mean_y = _filter_valid(x, window), _filter_valid(y, window)
  variance_x = _filter_valid(x * x, window) - mean_x * mean_x
  variance_y = _filter_valid(y * y, window) - mean_y * mean_y
  covariance = _filter_valid(x * y, window) - mean_x * mean_y
  c1, c2 = (k1 * max_value) ** 2, (k2 * max_value) ** 2
  ssim_map = ((2.0 * mean_x * mean_y + c1) * (2.0 * covariance + c2)) / (
      (mean_x * mean_x + mean_y * mean_y + c1) * (variance_x + variance_y + c2))
  return jnp.mean(einops.rearrange(ssim_map, "(b n) h w -> b (n h w)", b=batch), axis=1)
