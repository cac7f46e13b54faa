"""The spacetime diffusion transformer: a DiT over patches of a video autoencoder's latents.

    model = DiT(DiTConfig.tiny(), rngs=nnx.Rngs(0))
    velocity = model(latents, timesteps, context, context_mask, pooled)

latents [B, t, h, w, C] are cut into spacetime patches (pt, ph, pw) -> tokens [B, N, D]. Each
block: adaLN-Zero-modulated self-attention over all spacetime tokens (RMS-normalised queries and
keys, 3D rotary positions from the actual token coordinates), cross-attention to the text tokens
(masked; zero-initialised output, so a fresh block is the identity), an adaLN-Zero-modulated MLP.
A final adaLN layer and a linear map bring the tokens back to patches -> [B, t, h, w, C_out].
Masked training calls `kept_velocity` instead: the same blocks over a subset of each frame's
tokens, at their own positions, giving the velocity patches of that subset.

Timesteps are per latent frame ([B] or [B, t], in [0, 1]): frames given as clean conditioning carry
timestep 0 while the others are noisy, so every block modulates each frame's tokens with that
frame's own shift, scale and gate. A pooled text embedding is added to the timestep embedding.
A distilled few-step student (`step_size_embedding`) also takes the size d of the step it is
asked to make and adds an embedding of d, zero at initialisation, to the timestep embedding.
The DiT paper's class-conditional image models, which `summary` measures but nothing here trains,
are the special case of one frame, no cross-attention, sin-cos positions, learned sigma and the
label embedding added unprojected (`DiTConfig.paper("XL", 2)`).
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import einops
import jax
import jax.numpy as jnp
from flax import nnx

from videogen.models import attention as attention_lib
from videogen.models import layers
from videogen.parallel import axes
from videogen.parallel import sharding


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """The `config.dit` section.

  Attributes:
    width: model width D. num_heads divides it; the head size must be even (rotary pairs).
    depth: number of transformer blocks.
    num_heads: attention heads.
    mlp_ratio: MLP hidden units / width.
    patch_size: spacetime patch (pt, ph, pw) on the latent.
    in_channels: latent channels C.
    input_size: the latent (t, h, w) this model is sized for: what `summary` measures. The model
      itself takes any size divisible by the patch.
    learn_sigma: output 2C channels (the DiT paper's learned variance) instead of C. Kept only so
      that `summary` counts the paper's models exactly; the flow objective cannot train it.
    context_dim: width of the text tokens to cross-attend to; None = no cross-attention.
    pooled_dim: width of the pooled text embedding added to the timestep embedding; None =
      no pooled input.
    pooled_projection: project the pooled embedding with an MLP; False adds it as it is (the DiT
      paper's label embedding; then pooled_dim must equal width).
    position_embedding: "rope" (3D rotary from the token coordinates), "sincos" (fixed 3D sin-cos
      absolute embeddings added to the tokens, the DiT paper's), or "rope+sincos".
    rope_theta: base of the rotary frequencies.
    qk_norm: RMS-normalise queries and keys (per head) before the dot product.
    norm_eps: epsilon of the (parameter-free) LayerNorms before modulation.
    frequency_dim: size of the sinusoidal timestep features.
    time_scale: timesteps in [0, 1] are multiplied by this before the sinusoids.
    dtype: compute dtype; param_dtype: storage dtype of the parameters.
    attention_backend: see `videogen.models.attention`.
    scan_layers: stack the blocks and `nnx.scan` over them (one compiled block, fast compiles
      for deep models); False keeps a Python list of blocks.
    scan_unroll: blocks per scan iteration (depth unrolls completely).
    remat: rematerialisation policy of a block, see `layers.REMAT_POLICIES`.
    step_size_embedding: take the step size d of a few-step sampler (`step_sizes`) and add its
      embedding to the timestep embedding (the distill stage's student). Its output layer starts
      at zero, so a fresh student computes exactly what the transformer it starts from does.
  """
  width: int = 128
  depth: int = 4
  num_heads: int = 4
  mlp_ratio: float = 4.0
  patch_size: tuple[int, int, int] = (1, 2, 2)
  in_channels: int = 8
  input_size: tuple[int, int, int] = (5, 8, 8)
  learn_sigma: bool = False
  context_dim: Optional[int] = 128
  pooled_dim: Optional[int] = 128
  pooled_projection: bool = True
  position_embedding: Literal["rope", "sincos", "rope+sincos"] = "rope"
  rope_theta: float = 10000.0
  qk_norm: bool = True
  norm_eps: float = 1e-6
  frequency_dim: int = 256
  time_scale: float = 1000.0
  dtype: layers.DTypeName = "float32"
  param_dtype: layers.DTypeName = "float32"
  attention_backend: attention_lib.Backend = "auto"
  scan_layers: bool = True
  scan_unroll: int = 1
  remat: layers.RematPolicy = "none"
  step_size_embedding: bool = False

  def __post_init__(self):
    if self.width % self.num_heads or (self.width // self.num_heads) % 2:
      raise ValueError(
          f"width {self.width} must split into {self.num_heads} heads of an even size: choose "
          f"num_heads dividing width with an even quotient")
    if "rope" in self.position_embedding:
      layers.split_axes_dims(self.head_dim)  # raises when the head is too small to split.
    if "sincos" in self.position_embedding:
      layers.split_axes_dims(self.width)
    if any(p < 1 for p in self.patch_size) or any(s < 1 for s in self.input_size):
      raise ValueError(f"patch_size {self.patch_size} and input_size {self.input_size} must be "
                       f"positive")
    if not self.pooled_projection and self.pooled_dim not in (None, self.width):
      raise ValueError(
          f"pooled_projection=False adds the pooled embedding unprojected, so pooled_dim "
          f"({self.pooled_dim}) must equal width ({self.width})")
    if self.depth < 1 or not 1 <= self.scan_unroll <= self.depth:
      raise ValueError(f"depth {self.depth} must be >= 1 and scan_unroll {self.scan_unroll} in "
                       f"[1, depth]")

  @property
  def head_dim(self) -> int:
    return self.width // self.num_heads

  @property
  def out_channels(self) -> int:
    return 2 * self.in_channels if self.learn_sigma else self.in_channels

  @property
  def latent_shape(self) -> tuple[int, int, int, int]:
    """The (t, h, w, C) latent the model is sized for."""
    return (*self.input_size, self.in_channels)

  @property
  def num_tokens(self) -> int:
    """Tokens of one `input_size` latent."""
    t, h, w = (s // p for s, p in zip(self.input_size, self.patch_size))
    return t * h * w

  @classmethod
  def tiny(cls, **overrides) -> DiTConfig:
    """CPU size: width 128, depth 4, 4 heads, for 5x8x8x8 latents (80 tokens)."""
    return cls(**overrides)

  @classmethod
  def small(cls, **overrides) -> DiTConfig:
    """One-GPU size: width 512, depth 12, 8 heads, 5x16x16x16 latents (320 tokens), bfloat16."""
    settings = dict(width=512, depth=12, num_heads=8, in_channels=16, input_size=(5, 16, 16),
                    context_dim=512, pooled_dim=512, dtype="bfloat16", remat="dots_no_batch")
    return cls(**{**settings, **overrides})

  @classmethod
  def paper(cls, size: Literal["S", "B", "L", "XL"], patch: int, **overrides) -> DiTConfig:
    """The DiT paper's class-conditional ImageNet 256x256 models: 32x32x4 latents, one frame.

    Sizes S/B/L/XL are depth 12/12/24/28, width 384/768/1024/1152, heads 6/12/16/16; `patch` is
    2, 4 or 8. Conditioning is a class embedding of `width` added to the timestep embedding.
    """
    sizes = {"S": (12, 384, 6), "B": (12, 768, 12), "L": (24, 1024, 16), "XL": (28, 1152, 16)}
    if size not in sizes or patch not in (2, 4, 8):
      raise ValueError(f"DiT paper models are sizes {', '.join(sizes)} with patch 2, 4 or 8; "
                       f"got {size}/{patch}")
    depth, width, heads = sizes[size]
    settings = dict(width=width, depth=depth, num_heads=heads, patch_size=(1, patch, patch),
                    in_channels=4, input_size=(1, 32, 32), learn_sigma=True, context_dim=None,
                    pooled_dim=width, pooled_projection=False, position_embedding="sincos",
                    qk_norm=False)
    return cls(**{**settings, **overrides})


class DiTBlock(nnx.Module):
  """One transformer block with adaLN-Zero modulation per latent frame.

  x: [B, N, D] frame-major tokens; cond: [B, t, D] one conditioning vector per token frame.
  """

  def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
    dtype, param_dtype = layers.dtype_of(config.dtype), layers.dtype_of(config.param_dtype)
    self.norm_eps = config.norm_eps
    self.dtype = dtype
    self.modulation = layers.AdaLNModulation(config.width, config.width, 6, rngs=rngs)
    self.self_attention = layers.Attention(
        config.width, config.num_heads, qk_norm=config.qk_norm, backend=config.attention_backend,
        dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    has_cross = config.context_dim is not None
    self.cross_norm = layers.RMSNorm(
        config.width, eps=config.norm_eps, dtype=dtype, param_dtype=param_dtype,
        rngs=rngs) if has_cross else None
    self.cross_attention = layers.Attention(
        config.width, config.num_heads, context_dim=config.context_dim, qk_norm=config.qk_norm,
        zero_init_output=True, backend=config.attention_backend, dtype=dtype,
        param_dtype=param_dtype, rngs=rngs) if has_cross else None
    self.mlp = layers.MLP(config.width, int(config.width * config.mlp_ratio), dtype=dtype,
                          param_dtype=param_dtype, rngs=rngs)

  @jax.named_scope("dit_block")
  def __call__(self, x: jax.Array, cond: jax.Array, *, context: jax.Array | None,
               context_mask: jax.Array | None, has_context: jax.Array | None,
               self_mask: jax.Array | None, rope: jax.Array | None) -> jax.Array:
    """context: [B, L, C]; context_mask: bool [B, 1, 1, L]; has_context: bool [B] (a sample
    whose caption is fully padded gets no cross-attention update at all); self_mask: bool
    [B, 1, N, N] or None; rope: [1, N, head_dim / 2] or None."""
    shift_attn, scale_attn, gate_attn, shift_mlp, scale_mlp, gate_mlp = self.modulation(cond)
    hidden = layers.modulate(layers.layer_norm(x, self.norm_eps), shift_attn, scale_attn)
    hidden = self.self_attention(hidden.astype(self.dtype), mask=self_mask, rope=rope)
    x = x + layers.gate(hidden, gate_attn)
    if self.cross_attention is not None and context is not None:
      update = self.cross_attention(self.cross_norm(x), context, mask=context_mask)
      # Cross-attention to nothing is zero, output bias included: a dropped caption is "no text".
      x = x + jnp.where(has_context[:, None, None], update, jnp.zeros_like(update))
    hidden = layers.modulate(layers.layer_norm(x, self.norm_eps), shift_mlp, scale_mlp)
    hidden = self.mlp(hidden.astype(self.dtype))
    return sharding.constrain(x + layers.gate(hidden, gate_mlp), axes.TOKENS)


class FinalLayer(nnx.Module):
  """adaLN (shift, scale) then a zero-initialised linear map to patch values.

  x: [B, N, D], cond: [B, t, D] -> [B, N, pt * ph * pw * C_out].
  """

  def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
    self.norm_eps = config.norm_eps
    self.dtype = layers.dtype_of(config.dtype)
    patch_values = config.patch_size[0] * config.patch_size[1] * config.patch_size[2]
    self.modulation = layers.AdaLNModulation(config.width, config.width, 2, rngs=rngs)
    self.linear = layers.Dense(config.width, patch_values * config.out_channels,
                               axes=(axes.EMBED, None), kernel_init=nnx.initializers.zeros_init(),
                               dtype=self.dtype, param_dtype=layers.dtype_of(config.param_dtype),
                               rngs=rngs)

  @jax.named_scope("final_layer")
  def __call__(self, x: jax.Array, cond: jax.Array) -> jax.Array:
    shift, scale = self.modulation(cond)
    hidden = layers.modulate(layers.layer_norm(x, self.norm_eps), shift, scale)
    return self.linear(hidden.astype(self.dtype))


class DiT(nnx.Module):
  """The diffusion transformer; see the module docstring."""

  def __init__(self, config: DiTConfig, *, rngs: nnx.Rngs):
    self.config = config
    dtype, param_dtype = layers.dtype_of(config.dtype), layers.dtype_of(config.param_dtype)
    patch_values = config.patch_size[0] * config.patch_size[1] * config.patch_size[2]
    self.patch_embed = layers.Dense(patch_values * config.in_channels, config.width,
                                    axes=(None, axes.EMBED), dtype=dtype, param_dtype=param_dtype,
                                    rngs=rngs)
    self.time_embed = layers.TimestepEmbedding(
        config.width, frequency_dim=config.frequency_dim, time_scale=config.time_scale,
        param_dtype=param_dtype, rngs=rngs)
    self.pooled_embed = _PooledProjection(
        config.pooled_dim, config.width, param_dtype=param_dtype,
        rngs=rngs) if config.pooled_dim is not None and config.pooled_projection else None
    if config.scan_layers:
      @nnx.split_rngs(splits=config.depth)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: axes.LAYERS})
      def make_blocks(rngs: nnx.Rngs) -> DiTBlock:
        return DiTBlock(config, rngs=rngs)
      self.blocks = make_blocks(rngs)
    else:
      self.blocks = nnx.List([DiTBlock(config, rngs=rngs) for _ in range(config.depth)])
    self.final_layer = FinalLayer(config, rngs=rngs)
    # Built last, so that the other parameters draw the same initial values with or without it.
    self.step_embed = layers.TimestepEmbedding(
        config.width, frequency_dim=config.frequency_dim, time_scale=config.time_scale,
        param_dtype=param_dtype, output_init=nnx.initializers.zeros_init(),
        rngs=rngs) if config.step_size_embedding else None

  def __call__(self, latents: jax.Array, timesteps: jax.Array,
               context: jax.Array | None = None, context_mask: jax.Array | None = None,
               pooled: jax.Array | None = None, *, token_mask: jax.Array | None = None,
               segment_ids: jax.Array | None = None,
               step_sizes: jax.Array | None = None) -> jax.Array:
    """Predicts the flow velocity.

    Args:
      latents: [B, t, h, w, C] noisy latents.
      timesteps: [B] or [B, t] (per latent frame) in [0, 1].
      context: [B, L, context_dim] text token embeddings, or None (no text: same as a fully
        padded caption).
      context_mask: bool [B, L], False at padding; None = all valid.
      pooled: [B, pooled_dim] pooled text embedding, or None.
      token_mask: bool [B, N] over the N video tokens, False at padding (they are not attended
        to).
      segment_ids: int [B, N]; tokens attend only within their own segment (packing).
      step_sizes: [B], the size t - s > 0 of the step from t to s the caller will make with the
        velocity (`config.step_size_embedding` only; required then).

    Returns:
      [B, t, h, w, C_out] in float32.
    """
    grid = layers.check_patchable(latents.shape, self.config.patch_size)
    patches = self._velocity_patches(latents, timesteps, context, context_mask, pooled, keep=None,
                                     token_mask=token_mask, segment_ids=segment_ids,
                                     step_sizes=step_sizes)
    out = layers.unpatchify(patches, grid, self.config.patch_size)
    return out.astype(jnp.float32)

  def kept_velocity(self, latents: jax.Array, timesteps: jax.Array, context: jax.Array | None,
                    context_mask: jax.Array | None, pooled: jax.Array | None, *,
                    keep: jax.Array) -> jax.Array:
    """The velocity of a subset of the tokens, computed from that subset alone (masked training).

    The blocks see only the kept tokens, at their own positions: they cost what a clip of that
    many tokens costs. Every token frame keeps the same number of tokens, so each frame's
    modulation applies as in `__call__`.

    Args:
      latents, timesteps, context, context_mask, pooled: as for `__call__`.
      keep: int [B, t', k], for each example and token frame the indices (in [0, h' * w')) of
        the k tokens of that frame to keep; t' = t / pt, h' = h / ph, w' = w / pw.

    Returns:
      float32 [B, t' * k, pt * ph * pw * C_out]: the kept tokens' velocity patches, frame-major,
      in `layers.patchify`'s layout (compare with `layers.gather_tokens(layers.patchify(target,
      patch), keep)`).
    """
    grid = layers.check_patchable(latents.shape, self.config.patch_size)
    if keep.ndim != 3 or keep.shape[:2] != (latents.shape[0], grid[0]):
      raise ValueError(f"keep must be [batch, token frames, kept] = [{latents.shape[0]}, "
                       f"{grid[0]}, k], got shape {keep.shape}")
    patches = self._velocity_patches(latents, timesteps, context, context_mask, pooled,
                                     keep=keep)
    return patches.astype(jnp.float32)

  def _velocity_patches(self, latents: jax.Array, timesteps: jax.Array,
                        context: jax.Array | None, context_mask: jax.Array | None,
                        pooled: jax.Array | None, *, keep: jax.Array | None,
                        token_mask: jax.Array | None = None,
                        segment_ids: jax.Array | None = None,
                        step_sizes: jax.Array | None = None) -> jax.Array:
    """The forward pass up to the final layer: [B, N or t' * k, patch values]."""
    config = self.config
    grid = layers.check_patchable(latents.shape, config.patch_size)
    batch, frames = latents.shape[0], latents.shape[1]
    if latents.shape[-1] != config.in_channels:
      raise ValueError(f"latents have {latents.shape[-1]} channels but config.dit.in_channels is "
                       f"{config.in_channels}")
    dtype = layers.dtype_of(config.dtype)

    patches = layers.patchify(latents.astype(dtype), config.patch_size)  # [B, N, patch values]
    positions = layers.grid_positions(*grid)[None]  # [1, N, 3]
    if keep is not None:  # masked training: the kept tokens only, [B, t' * k, ...]
      patches = layers.gather_tokens(patches, keep)
      positions = layers.gather_tokens(jnp.broadcast_to(positions, (batch, *positions.shape[1:])),
                                       keep)
    with jax.named_scope("patch_embed"):
      x = self.patch_embed(patches)  # [B, N or t' * k, D]
    if "sincos" in config.position_embedding:
      x = x + layers.sincos_embedding(positions, config.width).astype(dtype)
    x = sharding.constrain(x, axes.TOKENS)
    rope = None
    if "rope" in config.position_embedding:
      rope = layers.rope_angles(positions, layers.split_axes_dims(config.head_dim),
                                config.rope_theta)

    with jax.named_scope("conditioning"):
      cond = self._conditioning(timesteps, pooled, batch, frames, grid[0])  # [B, t', D] float32
      if self.step_embed is not None:
        if step_sizes is None or jnp.shape(step_sizes) != (batch,):
          raise ValueError(f"a step-size-conditioned DiT needs step_sizes of shape [{batch}], got "
                           f"{None if step_sizes is None else jnp.shape(step_sizes)}: pass the "
                           f"step's size t - s")
        step_cond = self.step_embed(jnp.asarray(step_sizes, jnp.float32))
        cond = cond + step_cond.astype(jnp.float32)[:, None, :]
      elif step_sizes is not None:
        raise ValueError("step_sizes were given but config.dit.step_size_embedding is False: "
                         "only a distilled student takes them")
    self_mask = layers.self_attention_mask(token_mask, segment_ids)
    context_mask_4d = has_context = None
    if context is not None:
      if config.context_dim is None:
        raise ValueError("context was given but config.dit.context_dim is None (no "
                         "cross-attention): set context_dim to the text encoder's width")
      if context_mask is None:
        context_mask = jnp.ones(context.shape[:2], bool)
      context = sharding.constrain(context.astype(dtype), axes.TOKENS)
      context_mask = context_mask.astype(bool)
      has_context = jnp.any(context_mask, axis=-1)
      # A sample without text attends to all of its (ignored) context instead of to nothing:
      # no kernel ever sees an all-masked row (its output and gradient are unspecified in fused
      # kernels), and the block zeros that sample's cross-attention update anyway.
      context_mask_4d = (context_mask | ~has_context[:, None])[:, None, None, :]

    def run_block(x: jax.Array, block: DiTBlock) -> jax.Array:
      return block(x, cond, context=context, context_mask=context_mask_4d,
                   has_context=has_context, self_mask=self_mask, rope=rope)

    policy = layers.REMAT_POLICIES[config.remat]
    if config.remat != "none":
      run_block = nnx.remat(run_block, policy=policy)
    if config.scan_layers:
      x = nnx.scan(run_block, in_axes=(nnx.Carry, 0), out_axes=nnx.Carry,
                   unroll=config.scan_unroll)(x, self.blocks)
    else:
      for block in self.blocks:
        x = run_block(x, block)

    return self.final_layer(x, cond)

  def _conditioning(self, timesteps: jax.Array, pooled: jax.Array | None, batch: int,
                    frames: int, token_frames: int) -> jax.Array:
    """Timesteps [B] or [B, t] (+ pooled [B, P]) -> one conditioning vector per token frame."""
    timesteps = jnp.asarray(timesteps, jnp.float32)
    if timesteps.ndim == 1:
      timesteps = jnp.broadcast_to(timesteps[:, None], (timesteps.shape[0], frames))
    if timesteps.shape != (batch, frames):
      raise ValueError(f"timesteps must be [batch] or [batch, latent frames] = [{batch}] or "
                       f"[{batch}, {frames}], got shape {timesteps.shape}")
    cond = self.time_embed(timesteps).astype(jnp.float32)  # [B, t, D]
    if token_frames != frames:
      # A temporal patch spans several latent frames: average their timestep embeddings.
      cond = einops.reduce(cond, "b (t pt) d -> b t d", "mean", t=token_frames)
    if pooled is not None:
      if self.config.pooled_dim is None:
        raise ValueError("pooled was given but config.dit.pooled_dim is None: set it to the "
                         "text encoder's width, or pass pooled=None")
      if pooled.shape != (batch, self.config.pooled_dim):
        raise ValueError(f"pooled must be [batch, pooled_dim] = [{batch}, "
                         f"{self.config.pooled_dim}], got shape {pooled.shape}")
      extra = pooled if self.pooled_embed is None else self.pooled_embed(pooled)
      cond = cond + extra.astype(jnp.float32)[:, None, :]
    return cond


class _PooledProjection(nnx.Module):
  """Pooled text embedding [B, P] -> Linear, SiLU, Linear -> [B, D]."""

  def __init__(self, pooled_dim: int, width: int, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
    self.linear_in = layers.Dense(pooled_dim, width, axes=(axes.EMBED, axes.MLP),
                                  param_dtype=param_dtype, rngs=rngs)
    self.linear_out = layers.Dense(width, width, axes=(axes.MLP, axes.EMBED),
                                   param_dtype=param_dtype, rngs=rngs)

  def __call__(self, pooled: jax.Array) -> jax.Array:
    return self.linear_out(jax.nn.silu(self.linear_in(pooled.astype(jnp.float32))))
