"""Text conditioning for the diffusion transformer: a small transformer encoder.

    encoder = TextEncoder(TextEncoderConfig.tiny(), rngs=nnx.Rngs(0))
    embeddings, pooled = encoder(tokens, mask)      # "text": [B, L, D], [B, D]
    embeddings, pooled = encoder(labels)            # "class": [B, 1, D], [B, D]

Text mode: sentencepiece ids [B, L] -> token + learned position embeddings -> pre-norm transformer
blocks (bidirectional self-attention over the valid tokens) -> RMSNorm. Padded positions come out
as zeros; `pooled` is the mean over the valid tokens (zeros for a fully padded caption, which is
how the trainer drops captions for classifier-free guidance).

Class mode exists only so that `summary` reproduces the DiT paper's parameter table
(experiments/dit_paper.py): a label embedding of num_classes + 1 rows (the paper's extra "null"
class for guidance is part of its count), looked up by label. No data set here carries labels, so
nothing trains it (the dit stage refuses it).

The encoder is trained jointly with the transformer by default; `frozen=True` asks the stage to
leave its parameters out of the optimizer (its trainable filter), and stops gradients at its
outputs so no backward pass runs through it.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

from videogen.models import attention as attention_lib
from videogen.models import layers
from videogen.parallel import axes
from videogen.parallel import sharding


@dataclasses.dataclass(frozen=True)
class TextEncoderConfig:
  """The `config.text_encoder` section.

  Attributes:
    mode: "text" (token ids -> transformer) or "class" (label embedding, measured only).
    vocab_size: sentencepiece vocabulary size (must match the tokenizer's).
    max_length: longest token sequence (must match the tokenizer's max_length).
    num_classes: number of class labels in class mode (the table has one more, "null", row).
    width: embedding width D (the DiT's context_dim / pooled_dim).
    depth, num_heads, mlp_ratio: transformer size in text mode.
    frozen: keep the encoder fixed while the transformer trains.
    dtype, param_dtype, attention_backend: as in `DiTConfig`.
  """
  mode: Literal["text", "class"] = "text"
  vocab_size: int = 512
  max_length: int = 48
  num_classes: int = 1000
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_ratio: float = 4.0
  frozen: bool = False
  dtype: layers.DTypeName = "float32"
  param_dtype: layers.DTypeName = "float32"
  attention_backend: attention_lib.Backend = "auto"

  def __post_init__(self):
    if self.mode == "text" and self.width % self.num_heads:
      raise ValueError(f"text encoder width {self.width} is not divisible by num_heads "
                       f"{self.num_heads}")
    if min(self.vocab_size, self.max_length, self.num_classes, self.width) < 1:
      raise ValueError("vocab_size, max_length, num_classes and width must be positive")

  @property
  def context_length(self) -> int:
    """Tokens the encoder emits per sample: max_length in text mode, 1 in class mode."""
    return self.max_length if self.mode == "text" else 1

  @classmethod
  def tiny(cls, **overrides) -> TextEncoderConfig:
    """CPU size: width 128, depth 2, 4 heads, 512-piece vocabulary, 48 tokens."""
    return cls(**overrides)

  @classmethod
  def small(cls, **overrides) -> TextEncoderConfig:
    """One-GPU size: width 512, depth 6, 8 heads, 4096-piece vocabulary, 64 tokens."""
    settings = dict(vocab_size=4096, max_length=64, width=512, depth=6, num_heads=8,
                    dtype="bfloat16")
    return cls(**{**settings, **overrides})

  @classmethod
  def classes(cls, num_classes: int, width: int, **overrides) -> TextEncoderConfig:
    """Class-conditional mode: `num_classes` labels (+ null) embedded at `width`."""
    return cls(**{"mode": "class", "num_classes": num_classes, "width": width, **overrides})


class EncoderBlock(nnx.Module):
  """Pre-norm transformer block: x + attn(norm(x)), x + mlp(norm(x)). x: [B, L, D].

  Also the block of the caption-clip model's clip encoder (`videogen.models.caption_clip`).
  """

  def __init__(self, width: int, num_heads: int, mlp_ratio: float, *,
               backend: attention_lib.Backend = "auto", dtype: jnp.dtype = jnp.float32,
               param_dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    common = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.attention_norm = layers.RMSNorm(width, **common)
    self.attention = layers.Attention(width, num_heads, backend=backend, **common)
    self.mlp_norm = layers.RMSNorm(width, **common)
    self.mlp = layers.MLP(width, int(width * mlp_ratio), **common)

  @jax.named_scope("encoder_block")
  def __call__(self, x: jax.Array, mask: jax.Array | None) -> jax.Array:
    x = x + self.attention(self.attention_norm(x), mask=mask)
    return sharding.constrain(x + self.mlp(self.mlp_norm(x)), axes.TOKENS)


class TextEncoder(nnx.Module):
  """Token ids (or class labels) -> (embeddings, pooled); see the module docstring."""

  def __init__(self, config: TextEncoderConfig, *, rngs: nnx.Rngs):
    self.config = config
    dtype, param_dtype = layers.dtype_of(config.dtype), layers.dtype_of(config.param_dtype)
    self.dtype = dtype
    init = nnx.initializers.normal(0.02)
    is_text = config.mode == "text"
    rows = config.vocab_size if is_text else config.num_classes + 1
    row_axis = axes.VOCAB if is_text else None  # 1001 class rows rarely divide a mesh axis.
    self.embedding = nnx.Param(nnx.with_partitioning(init, (row_axis, axes.EMBED))(
        rngs.params(), (rows, config.width), param_dtype))
    self.positions = nnx.Param(nnx.with_partitioning(init, (None, axes.EMBED))(
        rngs.params(), (config.max_length, config.width), param_dtype)) if is_text else None
    self.blocks = nnx.List([
        EncoderBlock(config.width, config.num_heads, config.mlp_ratio,
                     backend=config.attention_backend, dtype=dtype, param_dtype=param_dtype,
                     rngs=rngs) for _ in range(config.depth)] if is_text else [])
    self.final_norm = layers.RMSNorm(config.width, dtype=dtype, param_dtype=param_dtype,
                                     rngs=rngs) if is_text else None

  @jax.named_scope("text_encoder")
  def __call__(self, tokens: jax.Array,
               mask: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Text mode: tokens int [B, L], mask bool [B, L] -> ([B, L, D], [B, D]).

    Class mode: labels int [B] in [0, num_classes], no mask -> ([B, 1, D], [B, D]).
    """
    if self.config.mode == "class":
      if mask is not None:
        raise ValueError("class mode takes labels only, no mask")
      embeddings, pooled = self._classes(tokens)
    else:
      embeddings, pooled = self._text(tokens, mask)
    if self.config.frozen:
      embeddings, pooled = jax.lax.stop_gradient((embeddings, pooled))
    return embeddings, pooled

  def _classes(self, labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    if labels.ndim != 1:
      raise ValueError(f"class mode takes labels of shape [batch], got {labels.shape}; for "
                       f"token ids set config.text_encoder.mode='text'")
    pooled = jnp.take(self.embedding[...], labels, axis=0).astype(self.dtype)  # [B, D]
    return pooled[:, None, :], pooled

  def _text(self, tokens: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    if tokens.ndim != 2:
      raise ValueError(f"text mode takes token ids of shape [batch, length], got {tokens.shape}")
    length = tokens.shape[1]
    if length > self.config.max_length:
      raise ValueError(f"{length} tokens exceed config.text_encoder.max_length "
                       f"{self.config.max_length}: raise max_length or truncate in the tokenizer")
    if mask is None:
      raise ValueError("text mode needs the token mask (bool [batch, length], False at padding)")
    mask = mask.astype(bool)
    x = jnp.take(self.embedding[...], tokens, axis=0) + self.positions[...][None, :length]
    x = sharding.constrain(x.astype(self.dtype), axes.TOKENS)
    attention_mask = mask[:, None, None, :]  # padded keys are never attended to.
    for block in self.blocks:
      x = block(x, attention_mask)
    x = self.final_norm(x)
    weights = mask[..., None].astype(jnp.float32)
    embeddings = (x.astype(jnp.float32) * weights).astype(self.dtype)  # padding -> zeros
    embeddings = sharding.constrain(embeddings, axes.TOKENS)
    counts = jnp.maximum(jnp.sum(weights, axis=1), 1.0)  # a fully padded caption pools to zero
    pooled = (jnp.sum(embeddings.astype(jnp.float32), axis=1) / counts).astype(self.dtype)
    return embeddings, pooled
