"""The caption-clip model: the text encoder pre-trained against latent clips (CLIP's objective).

    model = CaptionClipModel(text_config, CaptionClipConfig(), in_channels=8, rngs=nnx.Rngs(0))
    text, clip = model(tokens, token_mask, latents)        # [B, E] each, unit length
    loss, accuracy = contrastive_loss(text, clip, model.logit_scale[...])

A caption's pooled text embedding and its clip's embedding are projected to a shared space of E
features, and each caption is trained to pick out its own clip among the batch's (and each clip
its own caption): the symmetric cross-entropy of CLIP (Radford et al., 2021) over the batch's
[B, B] cosine similarities times a learned inverse temperature. Words matter to the loss only as
far as they tell the clips of a batch apart: in small batches of the procedural world colour and
size mostly do, and shapes and directions of motion stay barely separated
(docs/learning_curve.md measures it). The text stage (`videogen.train.text_stage`) trains it;
the dit stage can start its text encoder from the result
(`config.dit_stage.pretrained_text_encoder`).

The clip encoder reads normalised autoencoder latents [B, t, h, w, C] (a one-frame clip is an
image): spacetime patches -> linear embedding + fixed 3D sin-cos positions -> pre-norm
transformer blocks -> mean over tokens -> RMSNorm -> projection.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from videogen.models import layers
from videogen.models import text_encoder as text_encoder_lib
from videogen.parallel import axes

# CLIP's cap on the inverse temperature: beyond it the logits only grow, not the ranking.
MAX_LOGIT_SCALE = 100.0


@dataclasses.dataclass(frozen=True)
class CaptionClipConfig:
  """The `config.text_stage` section: the clip side of the caption-clip model.

  Attributes:
    width, depth, num_heads, mlp_ratio: the clip encoder's transformer.
    patch_size: its spacetime patch (pt, ph, pw) on the latent.
    embed_dim: features E of the shared space both sides are projected to.
    temperature: the softmax temperature the learned one starts from (CLIP's 0.07).
  """
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_ratio: float = 4.0
  patch_size: tuple[int, int, int] = (1, 2, 2)
  embed_dim: int = 128
  temperature: float = 0.07

  def __post_init__(self):
    if self.width % self.num_heads:
      raise ValueError(f"config.text_stage.width {self.width} is not divisible by num_heads "
                       f"{self.num_heads}")
    layers.split_axes_dims(self.width)  # raises when the sin-cos positions cannot split it.
    if min(self.depth, self.embed_dim, *self.patch_size) < 1:
      raise ValueError(f"config.text_stage: depth {self.depth}, embed_dim {self.embed_dim} and "
                       f"patch_size {self.patch_size} must be positive")
    if not 0 < self.temperature < 1:
      raise ValueError(f"config.text_stage.temperature {self.temperature} must be in (0, 1) "
                       f"(CLIP starts at 0.07)")


class ClipEncoder(nnx.Module):
  """Normalised latents [B, t, h, w, C] -> clip embedding [B, E] (not yet unit length)."""

  def __init__(self, config: CaptionClipConfig, in_channels: int, *, rngs: nnx.Rngs):
    self.config = config
    patch_values = in_channels * math.prod(config.patch_size)
    self.embed = layers.Dense(patch_values, config.width, axes=(None, axes.EMBED), rngs=rngs)
    self.blocks = nnx.List([
        text_encoder_lib.EncoderBlock(config.width, config.num_heads, config.mlp_ratio,
                                      rngs=rngs) for _ in range(config.depth)])
    self.final_norm = layers.RMSNorm(config.width, rngs=rngs)
    self.projection = layers.Dense(config.width, config.embed_dim, axes=(axes.EMBED, None),
                                   use_bias=False, rngs=rngs)

  @jax.named_scope("clip_encoder")
  def __call__(self, latents: jax.Array) -> jax.Array:
    grid = layers.check_patchable(latents.shape, self.config.patch_size)
    x = self.embed(layers.patchify(latents.astype(jnp.float32), self.config.patch_size))
    x = x + layers.sincos_embedding(layers.grid_positions(*grid), self.config.width)
    for block in self.blocks:
      x = block(x, None)
    return self.projection(self.final_norm(jnp.mean(x, axis=1)))


class CaptionClipModel(nnx.Module):
  """The text encoder (what the dit stage takes over), the clip encoder and the projection of
  the pooled text embedding into the shared space; see the module docstring.

  Attributes:
    text_encoder: `TextEncoder` of `config.text_encoder` (always trained here, whatever its
      `frozen` says: `frozen` is about the dit stage).
    clip_encoder: `ClipEncoder`.
    text_projection: pooled text [B, D] -> [B, E].
    logit_scale: log of the inverse temperature (learned).
  """

  def __init__(self, text_config: text_encoder_lib.TextEncoderConfig, config: CaptionClipConfig,
               in_channels: int, *, rngs: nnx.Rngs):
    self.text_encoder = text_encoder_lib.TextEncoder(
        dataclasses.replace(text_config, frozen=False), rngs=rngs)
    self.clip_encoder = ClipEncoder(config, in_channels, rngs=rngs)
    self.text_projection = layers.Dense(text_config.width, config.embed_dim,
                                        axes=(axes.EMBED, None), use_bias=False, rngs=rngs)
    self.logit_scale = nnx.Param(jnp.asarray(math.log(1.0 / config.temperature), jnp.float32))

  def __call__(self, tokens: jax.Array, token_mask: jax.Array,
               latents: jax.Array) -> tuple[jax.Array, jax.Array]:
    """tokens int [B, L], token_mask bool [B, L], latents [B, t, h, w, C] -> unit-length text and
    clip embeddings, float32 [B, E] each."""
    _, pooled = self.text_encoder(tokens, token_mask)
    text = self.text_projection(pooled.astype(jnp.float32))
    clip = self.clip_encoder(latents)
    return unit_length(text), unit_length(clip)


def unit_length(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """x [..., E] / its length (float32)."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + eps)


def inverse_temperature(logit_scale: jax.Array) -> jax.Array:
  """exp(logit_scale), capped at `MAX_LOGIT_SCALE`: what the similarities are multiplied by."""
  return jnp.exp(jnp.minimum(logit_scale, math.log(MAX_LOGIT_SCALE)))


def contrastive_loss(text: jax.Array, clip: jax.Array,
                     logit_scale: jax.Array) -> tuple[jax.Array, jax.Array]:
  """CLIP's symmetric cross-entropy of unit-length text and clip embeddings [B, E], the i-th of
  each a pair. Returns (loss, accuracy): accuracy is the fraction of captions and clips whose
  most similar partner in the batch is their own (chance 1/B)."""
  logits = inverse_temperature(logit_scale) * text @ clip.T  # [B captions, B clips]
  labels = jnp.arange(text.shape[0])
  text_to_clip = -jnp.mean(jax.nn.log_softmax(logits, axis=1)[labels, labels])
  clip_to_text = -jnp.mean(jax.nn.log_softmax(logits, axis=0)[labels, labels])
  correct = jnp.concatenate([jnp.argmax(logits, axis=1) == labels,
                             jnp.argmax(logits, axis=0) == labels])
  return (text_to_clip + clip_to_text) / 2, jnp.mean(correct.astype(jnp.float32))
