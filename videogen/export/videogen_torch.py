"""videogen in PyTorch: the exported text encoder, diffusion transformer and video autoencoder.

A self-contained file (it imports only torch, numpy, safetensors and sentencepiece; never jax or
videogen), copied verbatim into an export's `torch/` folder beside the weights:

    torch/
      text_encoder.safetensors  dit.safetensors  encoder.safetensors  decoder.safetensors
      tokenizer.model           the sentencepiece model of the run
      config.json               the experiment the weights were trained with
      videogen_torch.py         this file

    import videogen_torch
    videogen = videogen_torch.load("OUT/torch")
    video = videogen.generate("a red circle moving right", seed=0)   # uint8 [T, H, W, 3]

The four modules (`torch.nn.Module`, float32, channels-last like the JAX models) take the inputs
of the JAX pipeline's jitted functions (videogen/generate/pipeline.py), in the same order:

  text_encoder(ids int [B, L], mask bool [B, L]) -> (context [B, L, D], pooled [B, D])
  dit(latents [B, t, h, w, C], timesteps [B, t], context [B, L, D], context_mask bool [B, L],
      pooled [B, D]) -> velocity [B, t, h, w, C]
  encoder(video [B, T, H, W, 3] in [-1, 1]) -> normalised posterior-mean latents [B, t, h, w, C]
  decoder(normalised latents [B, t, h, w, C]) -> video [B, T, H, W, 3] float32, in [-1, 1] up to
      rounding (unclipped); `to_uint8` gives the pixels the JAX pipeline writes.

The encoder and decoder run the whole clip in one pass: the JAX pipeline's chunked passes (which
carry the causal convolutions' past frames) equal it. `generate` runs the JAX pipeline's
text-to-video: the same tokenization, timestep grid and time shift, Euler or Heun steps with
classifier-free guidance, sampling windows for clips longer than the training clips, and decoding.
From the JAX pipeline's initial noise (`noise=`) it returns the JAX video; `seed=` draws the noise
with torch's generator instead, which JAX's does not reproduce.

Weights: one safetensors file per module whose tensor names are the module's parameter names
(`state_dict` keys), which are the Flax NNX parameter paths joined with "." and keep the JAX
layouts (a dense kernel is [*in, *out], e.g. a query projection [width, heads, head_dim]; a 3D
convolution kernel [kt, kh, kw, in, out]). The transformer's blocks, stacked along a leading
layer axis in JAX when `scan_layers` is on, are saved one per layer: `blocks.{i}.<path>`.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import safetensors.torch
import sentencepiece
import torch
import torch.nn.functional as F
from torch import nn

COMPONENTS = ("text_encoder", "dit", "encoder", "decoder")
# The JAX pipeline's defaults (videogen/generate/pipeline.py: Generator, experiment_defaults).
DEFAULT_SHAPE = (9, 32, 32)
DEFAULT_OVERLAP = 2
DEFAULT_SUFFIX_OVERLAP = 1


# ------------------------------------------------------------------------------------------------
# Layers shared by the text encoder and the transformer (videogen/models/layers.py).
# ------------------------------------------------------------------------------------------------


def _as_tuple(size) -> tuple[int, ...]:
  return (size,) if isinstance(size, int) else tuple(size)


class Dense(nn.Module):
  """x [..., *in_features] -> [..., *out_features]; kernel [*in, *out], bias [*out]."""

  def __init__(self, in_features, out_features, *, use_bias: bool = True):
    super().__init__()
    self.in_features, self.out_features = _as_tuple(in_features), _as_tuple(out_features)
    self.kernel = nn.Parameter(torch.zeros(self.in_features + self.out_features))
    self.bias = nn.Parameter(torch.zeros(self.out_features)) if use_bias else None

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = torch.tensordot(x, self.kernel, dims=len(self.in_features))
    return y if self.bias is None else y + self.bias


class RMSNorm(nn.Module):
  """x / rms(x) * scale over the last axis."""

  def __init__(self, features: int, eps: float = 1e-6):
    super().__init__()
    self.eps = eps
    self.scale = nn.Parameter(torch.ones(features))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt(torch.mean(torch.square(x), dim=-1, keepdim=True) + self.eps) * (
        self.scale)


class MLP(nn.Module):
  """up, tanh-approximated GELU, down: [..., D] -> [..., D]."""

  def __init__(self, width: int, hidden: int):
    super().__init__()
    self.up = Dense(width, hidden)
    self.down = Dense(hidden, width)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.down(F.gelu(self.up(x), approximate="tanh"))


def layer_norm(x: torch.Tensor, eps: float) -> torch.Tensor:
  """LayerNorm without scale or shift (adaLN supplies them)."""
  mean = torch.mean(x, dim=-1, keepdim=True)
  variance = torch.mean(torch.square(x - mean), dim=-1, keepdim=True)
  return (x - mean) * torch.rsqrt(variance + eps)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
  """x [B, N, D] frame-major tokens * (1 + scale) + shift, per frame: shift, scale [B, t, D]."""
  batch, tokens, width = x.shape
  frames = shift.shape[1]
  x = x.reshape(batch, frames, tokens // frames, width)
  x = x * (1.0 + scale[:, :, None]) + shift[:, :, None]
  return x.reshape(batch, tokens, width)


def gate(x: torch.Tensor, gate_values: torch.Tensor) -> torch.Tensor:
  """Scales each frame's tokens x [B, N, D] by its gate [B, t, D]."""
  batch, tokens, width = x.shape
  frames = gate_values.shape[1]
  gated = x.reshape(batch, frames, tokens // frames, width) * gate_values[:, :, None]
  return gated.reshape(batch, tokens, width)


class AdaLNModulation(nn.Module):
  """SiLU then a linear layer: cond [..., C] -> `count` tensors [..., width]."""

  def __init__(self, cond_dim: int, width: int, count: int):
    super().__init__()
    self.count = count
    self.linear = Dense(cond_dim, (count, width))

  def forward(self, cond: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return torch.unbind(self.linear(F.silu(cond)), dim=-2)


def timestep_frequencies(timesteps: torch.Tensor, dim: int, time_scale: float,
                         max_period: float = 10000.0) -> torch.Tensor:
  """Sinusoidal features [...] -> [..., dim] as [cos | sin] of timesteps * time_scale."""
  half = dim // 2
  frequencies = torch.exp(-math.log(max_period)
                          * torch.arange(half, dtype=torch.float32, device=timesteps.device)
                          / half)
  angles = timesteps[..., None] * time_scale * frequencies
  features = torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)
  if dim % 2:
    features = torch.cat([features, torch.zeros_like(features[..., :1])], dim=-1)
  return features


class TimestepEmbedding(nn.Module):
  """Timesteps [...] -> sinusoids -> Linear, SiLU, Linear -> [..., width]."""

  def __init__(self, width: int, frequency_dim: int, time_scale: float):
    super().__init__()
    self.frequency_dim, self.time_scale = frequency_dim, time_scale
    self.linear_in = Dense(frequency_dim, width)
    self.linear_out = Dense(width, width)

  def forward(self, timesteps: torch.Tensor) -> torch.Tensor:
    features = timestep_frequencies(timesteps, self.frequency_dim, self.time_scale)
    return self.linear_out(F.silu(self.linear_in(features)))


def split_axes_dims(dim: int) -> tuple[int, int, int]:
  """Features per (t, h, w) axis: 3/8 each for h and w, the rest for t (all even)."""
  spatial = 2 * ((3 * dim) // 16)
  return dim - 2 * spatial, spatial, spatial


def grid_positions(frames: int, height: int, width: int) -> torch.Tensor:
  """(t, h, w) coordinates of a token grid, frame-major: float32 [frames * height * width, 3]."""
  t, h, w = torch.meshgrid(torch.arange(frames), torch.arange(height), torch.arange(width),
                           indexing="ij")
  return torch.stack([t.reshape(-1), h.reshape(-1), w.reshape(-1)], dim=-1).to(torch.float32)


def rope_angles(positions: torch.Tensor, axes_dims: tuple[int, int, int],
                theta: float) -> torch.Tensor:
  """3D RoPE angles: positions [N, 3] -> [N, sum(axes_dims) / 2]."""
  angles = []
  for axis, dim in enumerate(axes_dims):
    frequencies = torch.pow(torch.tensor(theta, dtype=torch.float32),
                            -torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    angles.append(positions[..., axis:axis + 1] * frequencies)
  return torch.cat(angles, dim=-1)


def apply_rope(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
  """Rotates feature pairs (i, i + H/2) of x [B, N, heads, H] by angles [1, N, H/2]."""
  first, second = torch.chunk(x, 2, dim=-1)
  cos = torch.cos(angles)[:, :, None, :]
  sin = torch.sin(angles)[:, :, None, :]
  return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)


def sincos_embedding(positions: torch.Tensor, width: int,
                     max_period: float = 10000.0) -> torch.Tensor:
  """Fixed 3D sin-cos absolute embeddings: positions [N, 3] -> [N, width]."""
  parts = []
  for axis, dim in enumerate(split_axes_dims(width)):
    half = dim // 2
    frequencies = 1.0 / torch.pow(torch.tensor(max_period, dtype=torch.float32),
                                  torch.arange(half, dtype=torch.float32) / half)
    angles = positions[..., axis:axis + 1] * frequencies
    parts.extend([torch.sin(angles), torch.cos(angles)])
  return torch.cat(parts, dim=-1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
  """softmax(q k^T / sqrt(H)) v; q [B, Tq, N, H], k and v [B, Tk, N, H], mask bool broadcastable
  to [B, N, Tq, Tk] (True = may attend). A query row with no allowed key gives zeros."""
  logits = torch.einsum("bqnh,bknh->bnqk", q, k) * q.shape[-1] ** -0.5
  if mask is not None:
    logits = torch.where(mask, logits, torch.finfo(torch.float32).min)
  weights = torch.softmax(logits, dim=-1)
  if mask is not None:
    weights = torch.where(torch.any(mask, dim=-1, keepdim=True), weights, 0.0)
  return torch.einsum("bnqk,bknh->bqnh", weights, v)


class Attention(nn.Module):
  """Multi-head (self- or cross-) attention with optional QK RMSNorm and rotary positions."""

  def __init__(self, width: int, num_heads: int, *, context_dim: int | None = None,
               qk_norm: bool = True):
    super().__init__()
    head_dim = width // num_heads
    source_dim = width if context_dim is None else context_dim
    self.query = Dense(width, (num_heads, head_dim))
    self.key = Dense(source_dim, (num_heads, head_dim))
    self.value = Dense(source_dim, (num_heads, head_dim))
    self.output = Dense((num_heads, head_dim), width)
    self.query_norm = RMSNorm(head_dim) if qk_norm else None
    self.key_norm = RMSNorm(head_dim) if qk_norm else None

  def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, *,
              mask: torch.Tensor | None = None,
              rope: torch.Tensor | None = None) -> torch.Tensor:
    source = x if context is None else context
    query, key, value = self.query(x), self.key(source), self.value(source)
    if self.query_norm is not None:
      query, key = self.query_norm(query), self.key_norm(key)
    if rope is not None:
      query, key = apply_rope(query, rope), apply_rope(key, rope)
    return self.output(attention(query, key, value, mask))


# ------------------------------------------------------------------------------------------------
# The text encoder (videogen/models/text_encoder.py, text mode).
# ------------------------------------------------------------------------------------------------


class _EncoderBlock(nn.Module):
  def __init__(self, width: int, num_heads: int, mlp_ratio: float):
    super().__init__()
    self.attention_norm = RMSNorm(width)
    self.attention = Attention(width, num_heads)
    self.mlp_norm = RMSNorm(width)
    self.mlp = MLP(width, int(width * mlp_ratio))

  def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    x = x + self.attention(self.attention_norm(x), mask=mask)
    return x + self.mlp(self.mlp_norm(x))


class TextEncoder(nn.Module):
  """ids int [B, L], mask bool [B, L] -> (context [B, L, D] zero at padding, pooled [B, D]).

  `pooled` is the mean over the valid tokens (zeros for a fully padded caption).
  """

  def __init__(self, config: dict):
    super().__init__()
    if config.get("mode", "text") != "text":
      raise ValueError(f"text_encoder mode {config.get('mode')!r} is not exported: only 'text'")
    self.config = config
    width = config["width"]
    self.embedding = nn.Parameter(torch.zeros(config["vocab_size"], width))
    self.positions = nn.Parameter(torch.zeros(config["max_length"], width))
    self.blocks = nn.ModuleList([_EncoderBlock(width, config["num_heads"], config["mlp_ratio"])
                                 for _ in range(config["depth"])])
    self.final_norm = RMSNorm(width)

  def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    length = ids.shape[1]
    if length > self.positions.shape[0]:
      raise ValueError(f"{length} tokens exceed the text encoder's max_length "
                       f"{self.positions.shape[0]}: truncate the ids")
    mask = mask.to(torch.bool)
    x = self.embedding[ids.to(torch.long)] + self.positions[None, :length]
    attention_mask = mask[:, None, None, :]
    for block in self.blocks:
      x = block(x, attention_mask)
    weights = mask[..., None].to(torch.float32)
    embeddings = self.final_norm(x) * weights
    counts = torch.clamp(torch.sum(weights, dim=1), min=1.0)
    return embeddings, torch.sum(embeddings, dim=1) / counts


# ------------------------------------------------------------------------------------------------
# The diffusion transformer (videogen/models/dit.py).
# ------------------------------------------------------------------------------------------------


class DiTBlock(nn.Module):
  """adaLN-Zero self-attention, cross-attention to the text, adaLN-Zero MLP; x [B, N, D]."""

  def __init__(self, config: dict):
    super().__init__()
    width = config["width"]
    self.norm_eps = config["norm_eps"]
    self.modulation = AdaLNModulation(width, width, 6)
    self.self_attention = Attention(width, config["num_heads"], qk_norm=config["qk_norm"])
    has_cross = config["context_dim"] is not None
    self.cross_norm = RMSNorm(width, eps=config["norm_eps"]) if has_cross else None
    self.cross_attention = Attention(width, config["num_heads"], context_dim=config["context_dim"],
                                     qk_norm=config["qk_norm"]) if has_cross else None
    self.mlp = MLP(width, int(width * config["mlp_ratio"]))

  def forward(self, x: torch.Tensor, cond: torch.Tensor, context: torch.Tensor | None,
              context_mask: torch.Tensor | None, has_context: torch.Tensor | None,
              rope: torch.Tensor | None) -> torch.Tensor:
    shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = self.modulation(cond)
    hidden = modulate(layer_norm(x, self.norm_eps), shift_attn, scale_attn)
    x = x + gate(self.self_attention(hidden, rope=rope), gate_attn)
    if self.cross_attention is not None and context is not None:
      update = self.cross_attention(self.cross_norm(x), context, mask=context_mask)
      x = x + torch.where(has_context[:, None, None], update, 0.0)
    hidden = modulate(layer_norm(x, self.norm_eps), shift_mlp, scale_mlp)
    return x + gate(self.mlp(hidden), gate_mlp)


class FinalLayer(nn.Module):
  def __init__(self, config: dict, out_channels: int):
    super().__init__()
    self.norm_eps = config["norm_eps"]
    patch_values = math.prod(config["patch_size"])
    self.modulation = AdaLNModulation(config["width"], config["width"], 2)
    self.linear = Dense(config["width"], patch_values * out_channels)

  def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    shift, scale = self.modulation(cond)
    return self.linear(modulate(layer_norm(x, self.norm_eps), shift, scale))


class _PooledProjection(nn.Module):
  def __init__(self, pooled_dim: int, width: int):
    super().__init__()
    self.linear_in = Dense(pooled_dim, width)
    self.linear_out = Dense(width, width)

  def forward(self, pooled: torch.Tensor) -> torch.Tensor:
    return self.linear_out(F.silu(self.linear_in(pooled)))


class DiT(nn.Module):
  """The velocity [B, t, h, w, C] at latents [B, t, h, w, C] and timesteps [B] or [B, t].

  context [B, L, D] with context_mask bool [B, L] (a fully padded caption is "no text"), pooled
  [B, D] (ignored when the model has no pooled input).
  """

  def __init__(self, config: dict):
    super().__init__()
    self.config = config
    self.patch_size = tuple(config["patch_size"])
    self.out_channels = config["in_channels"] * (2 if config["learn_sigma"] else 1)
    width = config["width"]
    self.patch_embed = Dense(math.prod(self.patch_size) * config["in_channels"], width)
    self.time_embed = TimestepEmbedding(width, config["frequency_dim"], config["time_scale"])
    self.pooled_embed = (_PooledProjection(config["pooled_dim"], width)
                         if config["pooled_dim"] is not None and config["pooled_projection"]
                         else None)
    self.blocks = nn.ModuleList([DiTBlock(config) for _ in range(config["depth"])])
    self.final_layer = FinalLayer(config, self.out_channels)

  def forward(self, latents: torch.Tensor, timesteps: torch.Tensor,
              context: torch.Tensor | None = None, context_mask: torch.Tensor | None = None,
              pooled: torch.Tensor | None = None) -> torch.Tensor:
    config = self.config
    batch, frames, height, width, channels = latents.shape
    pt, ph, pw = self.patch_size
    if frames % pt or height % ph or width % pw or channels != config["in_channels"]:
      raise ValueError(f"latents {tuple(latents.shape)} must be [B, t, h, w, "
                       f"{config['in_channels']}] with (t, h, w) divisible by the patch "
                       f"{self.patch_size}")
    grid = (frames // pt, height // ph, width // pw)
    patches = latents.reshape(batch, grid[0], pt, grid[1], ph, grid[2], pw, channels)
    patches = patches.permute(0, 1, 3, 5, 2, 4, 6, 7).reshape(
        batch, math.prod(grid), pt * ph * pw * channels)
    x = self.patch_embed(patches)
    positions = grid_positions(*grid).to(latents.device)
    if "sincos" in config["position_embedding"]:
      x = x + sincos_embedding(positions, config["width"])[None]
    rope = None
    if "rope" in config["position_embedding"]:
      head_dim = config["width"] // config["num_heads"]
      rope = rope_angles(positions, split_axes_dims(head_dim), config["rope_theta"])[None]
    cond = self._conditioning(timesteps, pooled, batch, frames, grid[0])
    has_context = None
    if context is not None:
      if config["context_dim"] is None:
        raise ValueError("context was given but the model has no cross-attention (context_dim "
                         "is None)")
      if context_mask is None:
        context_mask = torch.ones(context.shape[:2], dtype=torch.bool, device=context.device)
      context_mask = context_mask.to(torch.bool)
      has_context = torch.any(context_mask, dim=-1)
      # As in JAX: a sample without text attends to all of its ignored context.
      context_mask = (context_mask | ~has_context[:, None])[:, None, None, :]
    for block in self.blocks:
      x = block(x, cond, context, context_mask, has_context, rope)
    patches = self.final_layer(x, cond)
    out = patches.reshape(batch, *grid, pt, ph, pw, self.out_channels)
    return out.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(
        batch, frames, height, width, self.out_channels)

  def _conditioning(self, timesteps: torch.Tensor, pooled: torch.Tensor | None, batch: int,
                    frames: int, token_frames: int) -> torch.Tensor:
    timesteps = timesteps.to(torch.float32)
    if timesteps.ndim == 1:
      timesteps = timesteps[:, None].expand(timesteps.shape[0], frames)
    cond = self.time_embed(timesteps)  # [B, t, D]
    if token_frames != frames:  # a temporal patch averages its frames' timestep embeddings
      cond = cond.reshape(batch, token_frames, frames // token_frames, -1).mean(dim=2)
    if pooled is not None and self.config["pooled_dim"] is not None:
      extra = pooled if self.pooled_embed is None else self.pooled_embed(pooled)
      cond = cond + extra[:, None, :]
    return cond


# ------------------------------------------------------------------------------------------------
# The causal video autoencoder (videogen/models/autoencoder.py): channels-last throughout.
# ------------------------------------------------------------------------------------------------


class CausalConv3d(nn.Module):
  """Causal in time (the first frame repeated kt - 1 times on the past side), 'same' in space.

  x [B, T, H, W, Cin] -> [B, T', H', W', Cout]; kernel [kt, kh, kw, Cin, Cout].
  """

  def __init__(self, in_channels: int, out_channels: int, stride=(1, 1, 1), kernel_size=(3, 3, 3)):
    super().__init__()
    self.stride = tuple(stride)
    self.kernel = nn.Parameter(torch.zeros(*kernel_size, in_channels, out_channels))
    self.bias = nn.Parameter(torch.zeros(out_channels))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    kernel_time, kernel_height, kernel_width = self.kernel.shape[:3]
    padded = torch.cat([x[:, :1]] * (kernel_time - 1) + [x], dim=1)
    y = F.conv3d(padded.permute(0, 4, 1, 2, 3), self.kernel.permute(4, 3, 0, 1, 2), self.bias,
                 stride=self.stride,
                 padding=(0, (kernel_height - 1) // 2, (kernel_width - 1) // 2))
    return y.permute(0, 2, 3, 4, 1)


class ChannelRMSNorm(RMSNorm):
  """RMSNorm over the channels at each position."""


def _fold_time(x: torch.Tensor) -> torch.Tensor:
  """[B, 2T, H, W, C] -> [B, T, H, W, 2C] (each pair of frames into channels, frame-major)."""
  batch, frames, height, width, channels = x.shape
  x = x.reshape(batch, frames // 2, 2, height, width, channels).permute(0, 1, 3, 4, 2, 5)
  return x.reshape(batch, frames // 2, height, width, 2 * channels)


def _fold_space(x: torch.Tensor, size: int) -> torch.Tensor:
  """[B, T, H, W, C] -> [B, T, H/s, W/s, s s C] (each s x s block into channels)."""
  batch, frames, height, width, channels = x.shape
  x = x.reshape(batch, frames, height // size, size, width // size, size, channels)
  return x.permute(0, 1, 2, 4, 3, 5, 6).reshape(
      batch, frames, height // size, width // size, size * size * channels)


def _unfold_space(x: torch.Tensor, size: int) -> torch.Tensor:
  """The inverse of `_fold_space`."""
  batch, frames, height, width, channels = x.shape
  out = channels // (size * size)
  x = x.reshape(batch, frames, height, width, size, size, out).permute(0, 1, 2, 4, 3, 5, 6)
  return x.reshape(batch, frames, height * size, width * size, out)


def _unfold_time(x: torch.Tensor) -> torch.Tensor:
  """The inverse of `_fold_time`: [B, T, H, W, 2C] -> [B, 2T, H, W, C]."""
  batch, frames, height, width, channels = x.shape
  x = x.reshape(batch, frames, height, width, 2, channels // 2).permute(0, 1, 4, 2, 3, 5)
  return x.reshape(batch, 2 * frames, height, width, channels // 2)


def _mean_groups(x: torch.Tensor, out_channels: int) -> torch.Tensor:
  """Averages consecutive groups of channels: [..., o g] -> [..., o]."""
  return x.reshape(*x.shape[:-1], out_channels, x.shape[-1] // out_channels).mean(dim=-1)


def fold_shortcut(x: torch.Tensor, out_channels: int, *, spatial: bool,
                  temporal: bool) -> torch.Tensor:
  """The encoder's parameter-free shortcut around a downsampling (at the start of a video)."""
  if temporal:
    x = _fold_time(torch.cat([x[:, :1], x], dim=1))
  if spatial:
    x = _fold_space(x, 2)
  return _mean_groups(x, out_channels)


def unfold_shortcut(x: torch.Tensor, out_channels: int, *, spatial: bool,
                    temporal: bool) -> torch.Tensor:
  """The decoder's parameter-free shortcut around an upsampling (at the start of a video)."""
  block = (2 if temporal else 1) * (4 if spatial else 1)
  x = torch.repeat_interleave(x, block * out_channels // x.shape[-1], dim=-1)
  if spatial:
    x = _unfold_space(x, 2)
  if temporal:
    x = _unfold_time(x)[:, 1:]
  return x


class ResidualBlock(nn.Module):
  """norm, SiLU, conv, norm, SiLU, conv, plus a (projected) skip."""

  def __init__(self, in_channels: int, out_channels: int, epsilon: float):
    super().__init__()
    self.norm1 = ChannelRMSNorm(in_channels, epsilon)
    self.conv1 = CausalConv3d(in_channels, out_channels)
    self.norm2 = ChannelRMSNorm(out_channels, epsilon)
    self.conv2 = CausalConv3d(out_channels, out_channels)
    self.skip = (nn.Parameter(torch.zeros(in_channels, out_channels))
                 if in_channels != out_channels else None)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    h = self.conv1(F.silu(self.norm1(x)))
    h = self.conv2(F.silu(self.norm2(h)))
    skip = x if self.skip is None else torch.einsum("bthwc,cd->bthwd", x, self.skip)
    return skip + h


class SpatialAttention(nn.Module):
  """Residual self-attention among the positions of each frame."""

  def __init__(self, channels: int, heads: int, epsilon: float):
    super().__init__()
    head_dim = channels // heads
    self.norm = ChannelRMSNorm(channels, epsilon)
    self.query = nn.Parameter(torch.zeros(channels, heads, head_dim))
    self.key = nn.Parameter(torch.zeros(channels, heads, head_dim))
    self.value = nn.Parameter(torch.zeros(channels, heads, head_dim))
    self.out = nn.Parameter(torch.zeros(heads, head_dim, channels))
    self.out_bias = nn.Parameter(torch.zeros(channels))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    batch, frames, height, width, channels = x.shape
    tokens = self.norm(x).reshape(batch * frames, height * width, channels)
    q, k, v = (torch.einsum("bsc,cnd->bsnd", tokens, p) for p in (self.query, self.key,
                                                                   self.value))
    out = torch.einsum("bsnd,ndc->bsc", attention(q, k, v), self.out) + self.out_bias
    return x + out.reshape(batch, frames, height, width, channels)


class MiddleBlock(nn.Module):
  def __init__(self, channels: int, config: dict):
    super().__init__()
    epsilon = config["norm_epsilon"]
    self.block1 = ResidualBlock(channels, channels, epsilon)
    self.attention = (SpatialAttention(channels, config["attention_heads"], epsilon)
                      if config["middle_attention"] else None)
    self.block2 = ResidualBlock(channels, channels, epsilon)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.block1(x)
    if self.attention is not None:
      x = self.attention(x)
    return self.block2(x)


class Downsample(nn.Module):
  def __init__(self, channels: int, *, spatial: bool, temporal: bool, shortcut: bool):
    super().__init__()
    self.spatial, self.temporal, self.shortcut = spatial, temporal, shortcut
    self.conv = CausalConv3d(channels, channels,
                             stride=(2 if temporal else 1,) + (2 if spatial else 1,) * 2)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = self.conv(x)
    if self.shortcut:
      y = y + fold_shortcut(x, y.shape[-1], spatial=self.spatial, temporal=self.temporal)
    return y


class Upsample(nn.Module):
  def __init__(self, in_channels: int, out_channels: int, *, spatial: bool, temporal: bool,
               shortcut: bool):
    super().__init__()
    self.spatial, self.temporal, self.shortcut = spatial, temporal, shortcut
    self.out_channels = out_channels
    self.conv = CausalConv3d(in_channels, out_channels * (2 if temporal else 1))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    shortcut = (unfold_shortcut(x, self.out_channels, spatial=self.spatial,
                                temporal=self.temporal) if self.shortcut else None)
    if self.spatial:
      x = torch.repeat_interleave(torch.repeat_interleave(x, 2, dim=2), 2, dim=3)
    x = self.conv(x)
    if self.temporal:
      x = _unfold_time(x)[:, 1:]
    return x if shortcut is None else x + shortcut


def _widths(config: dict) -> list[int]:
  return [config["base_channels"] * m for m in config["channel_multipliers"]]


class Encoder(nn.Module):
  """video [B, 1 + F k, H, W, 3] in [-1, 1] -> normalised posterior mean [B, 1 + k, H/S, W/S, C].

  normalised = (mean - shift_factor) * scale_factor, what the transformer models.
  """

  def __init__(self, config: dict):
    super().__init__()
    self.config = config
    widths = _widths(config)
    epsilon = config["norm_epsilon"]
    self.patch_size = config["patch_size"]
    self.conv_in = CausalConv3d(3 * self.patch_size ** 2, widths[0])
    blocks, downsamples = [], []
    channels = widths[0]
    for level, width in enumerate(widths):
      for _ in range(config["num_res_blocks"]):
        blocks.append(ResidualBlock(channels, width, epsilon))
        channels = width
      if level < len(widths) - 1:
        downsamples.append(Downsample(channels, spatial=config["spatial_downsample"][level],
                                      temporal=config["temporal_downsample"][level],
                                      shortcut=config["shortcuts"]))
    self.blocks = nn.ModuleList(blocks)
    self.downsamples = nn.ModuleList(downsamples)
    self.middle = MiddleBlock(channels, config)
    self.norm_out = ChannelRMSNorm(channels, epsilon)
    self.conv_out = CausalConv3d(channels, 2 * config["latent_channels"])

  def moments(self, video: torch.Tensor) -> torch.Tensor:
    """video [B, T, H, W, 3] -> posterior moments [B, t, h, w, 2C] (mean | log-variance)."""
    config = self.config
    x = self.conv_in(_fold_space(video, self.patch_size))
    per_level = config["num_res_blocks"]
    for index, block in enumerate(self.blocks):
      level, position = divmod(index, per_level)
      x = block(x)
      if position == per_level - 1 and level < len(self.downsamples):
        x = self.downsamples[level](x)
    x = self.middle(x)
    moments = self.conv_out(F.silu(self.norm_out(x)))
    if config["shortcuts"]:  # into the mean only
      mean_shortcut = _mean_groups(x, config["latent_channels"])
      moments = moments + torch.cat([mean_shortcut, torch.zeros_like(mean_shortcut)], dim=-1)
    return moments

  def forward(self, video: torch.Tensor) -> torch.Tensor:
    check_video_shape(self.config, *video.shape[1:4])
    mean = self.moments(video.to(torch.float32))[..., :self.config["latent_channels"]]
    return (mean - self.config["shift_factor"]) * self.config["scale_factor"]


class Decoder(nn.Module):
  """normalised latents [B, t, h, w, C] -> video [B, 1 + F (t - 1), h S, w S, 3], float32 in
  [-1, 1] up to rounding (unclipped)."""

  def __init__(self, config: dict):
    super().__init__()
    self.config = config
    widths = _widths(config)
    epsilon = config["norm_epsilon"]
    channels = widths[-1]
    self.conv_in = CausalConv3d(config["latent_channels"], channels)
    self.middle = MiddleBlock(channels, config)
    blocks, upsamples = [], []
    for level in reversed(range(len(widths))):
      for _ in range(config["num_res_blocks"] + 1):
        blocks.append(ResidualBlock(channels, widths[level], epsilon))
        channels = widths[level]
      if level > 0:
        upsamples.append(Upsample(channels, widths[level - 1],
                                  spatial=config["spatial_downsample"][level - 1],
                                  temporal=config["temporal_downsample"][level - 1],
                                  shortcut=config["shortcuts"]))
        channels = widths[level - 1]
    self.blocks = nn.ModuleList(blocks)
    self.upsamples = nn.ModuleList(upsamples)
    self.norm_out = ChannelRMSNorm(channels, epsilon)
    self.patch_size = config["patch_size"]
    self.conv_out = CausalConv3d(channels, 3 * self.patch_size ** 2)

  def forward(self, latents: torch.Tensor) -> torch.Tensor:
    config = self.config
    if latents.ndim != 5 or latents.shape[-1] != config["latent_channels"]:
      raise ValueError(f"latents must be [B, t, h, w, {config['latent_channels']}], got shape "
                       f"{tuple(latents.shape)}")
    latents = latents.to(torch.float32) / config["scale_factor"] + config["shift_factor"]
    x = self.conv_in(latents)
    if config["shortcuts"]:
      x = x + torch.repeat_interleave(latents, x.shape[-1] // latents.shape[-1], dim=-1)
    x = self.middle(x)
    per_level = config["num_res_blocks"] + 1
    for index, block in enumerate(self.blocks):
      level, position = divmod(index, per_level)
      x = block(x)
      if position == per_level - 1 and level < len(self.upsamples):
        x = self.upsamples[level](x)
    patches = self.conv_out(F.silu(self.norm_out(x)))
    return _unfold_space(patches, self.patch_size)


def temporal_factor(config: dict) -> int:
  """F: a clip of 1 + F k frames has 1 + k latent frames."""
  return 2 ** sum(bool(d) for d in config["temporal_downsample"])


def spatial_factor(config: dict) -> int:
  """S: an H x W frame has an H/S x W/S latent."""
  return config["patch_size"] * 2 ** sum(bool(d) for d in config["spatial_downsample"])


def check_video_shape(config: dict, frames: int, height: int, width: int) -> None:
  temporal, spatial = temporal_factor(config), spatial_factor(config)
  if frames < 1 or (frames - 1) % temporal or height % spatial or width % spatial:
    raise ValueError(f"a video of {frames}x{height}x{width} cannot be encoded: frames must be "
                     f"1 + {temporal}k and height and width multiples of {spatial}")


def to_uint8(video: torch.Tensor) -> torch.Tensor:
  """float in [-1, 1] (clipped first) -> uint8 in [0, 255], rounding half to even."""
  return torch.round((torch.clamp(video, -1.0, 1.0) + 1.0) * 127.5).to(torch.uint8)


def to_model_range(frames: np.ndarray) -> np.ndarray:
  """uint8 [..., 3] -> float32 in [-1, 1] (computed in NumPy, as the JAX pipeline does)."""
  return frames.astype(np.float32) / 127.5 - 1.0


# ------------------------------------------------------------------------------------------------
# Tokenizer (data_pipelines/tokenizer.py), sampler (videogen/diffusion/), windows and generation
# (videogen/generate/).
# ------------------------------------------------------------------------------------------------


class Tokenizer:
  """Captions -> (ids int32 [N, max_length], mask bool [N, max_length]) ending in </s>."""

  def __init__(self, model_file: str, max_length: int):
    self.processor = sentencepiece.SentencePieceProcessor(model_file=model_file)
    self.max_length = max_length
    self.pad_id, self.eos_id = self.processor.pad_id(), self.processor.eos_id()

  def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    for text in texts:
      if not text.strip():
        raise ValueError(f"prompt is empty: {text!r}; pass a caption such as 'a red circle'")
    ids = np.full((len(texts), self.max_length), self.pad_id, dtype=np.int32)
    mask = np.zeros((len(texts), self.max_length), dtype=bool)
    for row, pieces in enumerate(self.processor.encode(list(texts))):
      pieces = list(pieces)[:self.max_length - 1] + [self.eos_id]  # </s> ends even a cut text
      ids[row, :len(pieces)] = pieces
      mask[row, :len(pieces)] = True
    return ids, mask


def time_shift(t, shift: float):
  """s t / (1 + (s - 1) t)."""
  return shift * t / (1.0 + (shift - 1.0) * t)


def resolution_shift(num_tokens: int, diffusion: dict) -> float:
  """The training time shift for `num_tokens` tokens."""
  unclipped = diffusion["base_shift"] * math.sqrt(num_tokens / diffusion["base_tokens"])
  return float(min(max(unclipped, diffusion["min_shift"]), diffusion["max_shift"]))


def timestep_grid(num_steps: int, shift: float) -> np.ndarray:
  """float32 [num_steps + 1] from 1 down to 0: uniform, then time-shifted."""
  # Written as the JAX grid is (through the inverse shift of t = 1), so the float64 values match.
  start = np.float64(1.0) / (shift - (shift - 1.0) * np.float64(1.0))
  steps = max(1, math.ceil(num_steps * start - 1e-9))
  grid = time_shift(np.linspace(start, 0.0, steps + 1, dtype=np.float64), shift)
  grid[0], grid[-1] = 1.0, 0.0
  return grid.astype(np.float32)


def round_frames(frames: int, factor: int) -> int:
  """The nearest 1 + F k frame count."""
  return 1 + factor * max(0, math.floor((frames - 1) / factor + 0.5))


def round_size(size: int, multiple: int) -> int:
  """The nearest positive multiple of `multiple`."""
  return max(multiple, multiple * math.floor(size / multiple + 0.5))


def plan_windows(new_latents: int, window: int | None,
                 overlap: int) -> list[tuple[int, int, int]]:
  """Sampling windows (context, new, extra) of a fresh clip: see videogen/generate/windows.py."""
  windows, remaining, available = [], new_latents, 0
  while remaining > 0:
    context = min(overlap, available)
    capacity = math.inf if window is None else window - context
    if remaining <= capacity:
      extra = capacity - remaining if windows else 0  # the last window runs the full shape
      windows.append((context, remaining, extra))
      break
    windows.append((context, capacity, 0))
    remaining -= capacity
    available += capacity
  return windows


def _parse_bucket(spec: str) -> tuple[int, int, int]:
  frames, height, width = spec.replace(" ", "").split(":")[0].split("x")
  return int(frames), int(height), int(width)


class VideoGen:
  """The four modules with the tokenizer and the experiment config; `generate` makes videos.

  Attributes:
    text_encoder, dit, encoder, decoder: the modules (see the module docstring).
    config: the experiment (config.json) as a dict.
    tokenizer: `Tokenizer`.
  """

  def __init__(self, text_encoder: TextEncoder, dit: DiT, encoder: Encoder, decoder: Decoder,
               tokenizer: Tokenizer, config: dict):
    self.text_encoder, self.dit, self.encoder, self.decoder = text_encoder, dit, encoder, decoder
    self.tokenizer = tokenizer
    self.config = config
    autoencoder = config["autoencoder"]
    self.temporal_factor = temporal_factor(autoencoder)
    self.spatial_factor = spatial_factor(autoencoder)
    self.latent_channels = autoencoder["latent_channels"]
    self.patch_size = tuple(config["dit"]["patch_size"])
    self.sample_config = config["sample"]
    self.diffusion = config["diffusion"]
    # As the JAX pipeline's experiment_defaults: the longest training clip sets the default
    # shape and the sampling window.
    self.default_shape, window_frames = DEFAULT_SHAPE, None
    if config.get("data"):
      self.default_shape = max((_parse_bucket(b) for b in config["data"]["buckets"]),
                               key=lambda shape: shape[0])
      window_frames = self.default_shape[0]
    self.window_latents = None
    if window_frames is not None:
      latents = 1 + (round_frames(window_frames, self.temporal_factor) - 1) // self.temporal_factor
      self.window_latents = max(latents, DEFAULT_OVERLAP + DEFAULT_SUFFIX_OVERLAP + 1)

  @property
  def device(self) -> torch.device:
    return self.dit.patch_embed.kernel.device

  def num_tokens(self, latent_frames: int, height: int, width: int) -> int:
    pt, ph, pw = self.patch_size
    return (math.ceil(latent_frames / pt) * (height // self.spatial_factor // ph)
            * (width // self.spatial_factor // pw))

  @torch.no_grad()
  def encode_prompt(self, prompt: str) -> dict[str, torch.Tensor]:
    """{"context": [1, L, D], "context_mask": bool [1, L], "pooled": [1, D]}; "" is no text."""
    if prompt.strip():
      ids, mask = self.tokenizer.encode([prompt])
    else:
      ids = np.full((1, self.tokenizer.max_length), self.tokenizer.pad_id, np.int32)
      mask = np.zeros((1, self.tokenizer.max_length), bool)
    ids, mask = torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)
    context, pooled = self.text_encoder(ids, mask)
    return {"context": context, "context_mask": mask, "pooled": pooled}

  @torch.no_grad()
  def velocity(self, x: torch.Tensor, t: torch.Tensor, cond: dict[str, torch.Tensor]):
    return self.dit(x, t, cond["context"], cond["context_mask"], cond["pooled"])

  def _guided(self, x, t: float, cond, negative, guidance: float, cond_latents, cond_mask):
    times = torch.full(x.shape[:2], float(t), dtype=torch.float32, device=x.device)
    if cond_mask is not None:
      x = torch.where(cond_mask[:, :, None, None, None], cond_latents, x)
      times = torch.where(cond_mask, 0.0, times)
    if guidance == 1.0:
      return self.velocity(x, times, cond)
    both = self.velocity(torch.cat([x, x]), torch.cat([times, times]),
                         {k: torch.cat([cond[k], negative[k]]) for k in cond})
    v_cond, v_uncond = both[:x.shape[0]], both[x.shape[0]:]
    return v_uncond + guidance * (v_cond - v_uncond)

  @torch.no_grad()
  def sample(self, noise: torch.Tensor, cond, negative, *, method: str, steps: int,
             guidance: float, shift: float, cond_latents: torch.Tensor | None = None,
             cond_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Integrates the flow ODE from noise at t = 1 to latents at t = 0 (Euler or Heun)."""
    def hold(y):
      if cond_mask is None:
        return y
      return torch.where(cond_mask[:, :, None, None, None], cond_latents, y)

    velocity = lambda y, t: self._guided(y, t, cond, negative, guidance, cond_latents, cond_mask)
    grid = timestep_grid(steps, shift)
    x = hold(noise)
    for t_now, t_next in zip(grid[:-1], grid[1:]):
      dt = float(np.float32(t_next) - np.float32(t_now))
      slope = velocity(x, t_now)
      if method == "euler":
        x_next = x + dt * slope
      elif method == "heun":
        x_euler = hold(x + dt * slope)
        x_next = x + dt * 0.5 * (slope + velocity(x_euler, t_next))
      else:
        raise ValueError(f"unknown sampler method {method!r}; choose 'euler' or 'heun'")
      x = hold(x_next)
    return x

  @torch.no_grad()
  def decode(self, latents: torch.Tensor) -> np.ndarray:
    """Normalised latents [1, t, h, w, C] -> uint8 frames [1 + F (t - 1), H, W, 3]."""
    return to_uint8(self.decoder(latents))[0].cpu().numpy()

  @torch.no_grad()
  def encode(self, frames: np.ndarray) -> torch.Tensor:
    """uint8 [1 + F k, H, W, 3] -> normalised latents [1, 1 + k, h, w, C]."""
    video = torch.from_numpy(to_model_range(np.asarray(frames)))[None].to(self.device)
    return self.encoder(video)

  def generate(self, prompt: str, *, noise=None, seed: int | None = None,
               steps: int | None = None, guidance: float | None = None,
               frames: int | None = None, height: int | None = None,
               width: int | None = None) -> np.ndarray:
    """Text to video, as the JAX pipeline's `modes.text_to_video`.

    Args:
      prompt: the text (not empty).
      noise: the initial noise [1, t, h, w, C] (numpy or torch), or one per sampling window (a
        list) when the clip is longer than the window; given the JAX pipeline's noise the result
        is its video. None: drawn from torch's generator seeded with `seed`.
      seed: the seed of torch's noise (default: the config's sample.seed).
      steps, guidance: override config.sample's num_steps and guidance_scale.
      frames, height, width: the clip (rounded to 1 + F k frames and the models' multiple as the
        JAX pipeline rounds them); None takes the longest training clip's.

    Returns:
      uint8 [frames, height, width, 3].
    """
    if not isinstance(prompt, str) or not prompt.strip():
      raise ValueError(f"prompt is empty ({prompt!r}): pass a description such as "
                       f"'a red circle moving right'")
    sample = self.sample_config
    steps = sample["num_steps"] if steps is None else steps
    guidance = float(sample["guidance_scale"] if guidance is None else guidance)
    if steps < 1:
      raise ValueError(f"steps = {steps} must be >= 1")
    factor, multiple = self.temporal_factor, self.spatial_factor
    height = round_size(self.default_shape[1] if height is None else height,
                        multiple * self.patch_size[1])
    width = round_size(self.default_shape[2] if width is None else width,
                       multiple * self.patch_size[2])
    frames = round_frames(self.default_shape[0] if frames is None else frames, factor)
    windows = plan_windows(1 + (frames - 1) // factor, self.window_latents, DEFAULT_OVERLAP)
    noises = self._noises(noise, seed, windows, height, width)
    cond = self.encode_prompt(prompt)
    negative = None if guidance == 1.0 else self.encode_prompt(sample["negative_prompt"])
    made: list[np.ndarray] = []
    for (context, new, extra), window_noise in zip(windows, noises):
      total = context + new + extra
      cond_latents = cond_mask = None
      if context:
        existing = np.concatenate(made)
        given = self.encode(existing[len(existing) - (1 + factor * (context - 1)):])
        cond_latents = torch.zeros_like(window_noise)
        cond_latents[:, :context] = given
        cond_mask = (torch.arange(total, device=self.device) < context)[None]
      shift = (sample["shift"] if sample.get("shift") is not None else
               resolution_shift(self.num_tokens(total, height, width), self.diffusion))
      latents = self.sample(window_noise, cond, negative, method=sample["method"], steps=steps,
                            guidance=guidance, shift=shift, cond_latents=cond_latents,
                            cond_mask=cond_mask)
      decoded = self.decode(latents)
      first = 0 if not context else 1 + factor * (context - 1)
      count = factor * new if context else 1 + factor * (new - 1)
      made.append(decoded[first:first + count])
    return np.concatenate(made, axis=0)

  def _noises(self, noise, seed, windows, height: int, width: int) -> list[torch.Tensor]:
    shapes = [(1, sum(window), height // self.spatial_factor, width // self.spatial_factor,
               self.latent_channels) for window in windows]
    if noise is None:
      generator = torch.Generator().manual_seed(
          int(self.sample_config["seed"] if seed is None else seed))
      return [torch.randn(shape, generator=generator).to(self.device) for shape in shapes]
    noises = list(noise) if isinstance(noise, (list, tuple)) else [noise]
    if len(noises) != len(shapes):
      raise ValueError(f"{len(noises)} noise arrays for {len(shapes)} sampling windows: pass one "
                       f"per window, of shapes {shapes}")
    tensors = []
    for given, shape in zip(noises, shapes):
      given = given if torch.is_tensor(given) else torch.from_numpy(np.array(given, np.float32))
      if tuple(given.shape) != shape:
        raise ValueError(f"noise of shape {tuple(given.shape)} does not fit the window's latents "
                         f"{shape} (frames, height and width as rounded)")
      tensors.append(given.to(torch.float32).to(self.device))
    return tensors


def load(path: str, device: str | torch.device = "cpu") -> VideoGen:
  """Loads an export's torch/ folder: the four modules (eval mode), tokenizer and config."""
  def file(name: str) -> str:
    full = os.path.join(path, name)
    if not os.path.exists(full):
      raise FileNotFoundError(f"{full} is missing: is {path} the torch/ folder of an export "
                              f"(python -m videogen.main export --workdir=... --out=...)?")
    return full

  with open(file("config.json")) as f:
    config = json.load(f)
  tokenizer = Tokenizer(file("tokenizer.model"), config["tokenizer"]["max_length"])
  modules = {"text_encoder": TextEncoder(config["text_encoder"]), "dit": DiT(config["dit"]),
             "encoder": Encoder(config["autoencoder"]), "decoder": Decoder(config["autoencoder"])}
  for name, module in modules.items():
    module.load_state_dict(safetensors.torch.load_file(file(f"{name}.safetensors")), strict=True)
    module.to(device).eval()
  return VideoGen(**modules, tokenizer=tokenizer, config=config)
