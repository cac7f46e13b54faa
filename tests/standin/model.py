"""A small transformer that stands in for the real models in the trainer's tests.

    model = StandinModel(StandinConfig(), rngs=nnx.Rngs(0))
    y = model(x)            # x: [B, L, features] -> y: [B, L, features]

Pre-norm blocks of full self-attention and an MLP over a sequence of feature vectors. It has the
parameter kinds of the real models (dense EMBED/MLP weights, attention HEADS/KV weights,
float32 norm scales), each with logical axis names, and at its default size (about 3.2M parameters)
FSDP over 8 devices shards it in earnest. The stand-in stage (`tests.standin.stage`) trains it on
synthetic regression data.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from videogen.models import attention
from videogen.parallel import axes
from videogen.parallel import mesh as mesh_lib

# The token vectors of this test-only model: an axis name of its own, replicated, beside the
# package's rules table (which holds only the names the package's models use).
FEATURES = "features"
RULES = {**mesh_lib.DEFAULT_RULES, FEATURES: ()}

DType = Literal["float32", "bfloat16", "float16"]


@dataclasses.dataclass(frozen=True)
class StandinConfig:
  """The stand-in model and its synthetic data (`config.standin`).

  Attributes:
    features: size of each input/output token vector.
    embed: model width.
    mlp: hidden width of each MLP.
    heads: attention heads; head_dim: width of each head.
    depth: number of blocks.
    dtype: compute dtype; param_dtype: storage dtype of the parameters.
    batch_size: global batch size of the synthetic data.
    lengths: the sequence lengths (buckets) batches come in; each batch has one of them.
    num_batches: distinct batches in one epoch of the synthetic data.
  """
  features: int = 16
  embed: int = 256
  mlp: int = 1024
  heads: int = 4
  head_dim: int = 64
  depth: int = 4
  dtype: DType = "float32"
  param_dtype: DType = "float32"
  batch_size: int = 16
  lengths: tuple[int, ...] = (16, 32)
  num_batches: int = 1024

  def __post_init__(self):
    if not self.lengths or any(length < 1 for length in self.lengths):
      raise ValueError(f"standin.lengths = {self.lengths}: give at least one positive length")


def _param(rngs: nnx.Rngs, init: nnx.Initializer, shape: Sequence[int],
           axes: tuple[str | None, ...], dtype: jnp.dtype) -> nnx.Param:
  return nnx.Param(nnx.with_partitioning(init, axes)(rngs.params(), tuple(shape), dtype))


class RMSNorm(nnx.Module):
  """Root-mean-square norm over the last axis, computed in float32.

  x: [..., D] -> [..., D] in the input dtype.
  """

  def __init__(self, dim: int, *, param_dtype: jnp.dtype, rngs: nnx.Rngs):
    self.scale = _param(rngs, nnx.initializers.ones_init(), (dim,), (axes.NORM,), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + 1e-6)
    return (normed * self.scale[...].astype(jnp.float32)).astype(x.dtype)


class StandinBlock(nnx.Module):
  """x + attention(norm(x)), then x + mlp(norm(x)). x: [B, L, embed] -> [B, L, embed]."""

  def __init__(self, config: StandinConfig, *, rngs: nnx.Rngs):
    param_dtype = jnp.dtype(config.param_dtype)
    self.dtype = jnp.dtype(config.dtype)
    dense = nnx.initializers.lecun_normal()
    heads_shape = (config.embed, config.heads, config.head_dim)
    self.attention_norm = RMSNorm(config.embed, param_dtype=param_dtype, rngs=rngs)
    heads_axes = (axes.EMBED, axes.HEADS, axes.KV)
    self.query = _param(rngs, dense, heads_shape, heads_axes, param_dtype)
    self.key = _param(rngs, dense, heads_shape, heads_axes, param_dtype)
    self.value = _param(rngs, dense, heads_shape, heads_axes, param_dtype)
    self.out = _param(rngs, nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2),
                      (config.heads, config.head_dim, config.embed),
                      (axes.HEADS, axes.KV, axes.EMBED), param_dtype)
    self.mlp_norm = RMSNorm(config.embed, param_dtype=param_dtype, rngs=rngs)
    self.mlp_in = _param(rngs, dense, (config.embed, config.mlp), (axes.EMBED, axes.MLP),
                         param_dtype)
    self.mlp_out = _param(rngs, dense, (config.mlp, config.embed), (axes.MLP, axes.EMBED),
                          param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    cast = lambda p: p[...].astype(self.dtype)
    h = self.attention_norm(x)
    q = jnp.einsum("bld,dnh->blnh", h, cast(self.query))
    k = jnp.einsum("bld,dnh->blnh", h, cast(self.key))
    v = jnp.einsum("bld,dnh->blnh", h, cast(self.value))
    attended = attention.dot_product_attention(q, k, v, backend="xla")
    x = x + jnp.einsum("blnh,nhd->bld", attended, cast(self.out))
    h = self.mlp_norm(x)
    hidden = jax.nn.gelu(jnp.einsum("bld,dm->blm", h, cast(self.mlp_in)))
    return x + jnp.einsum("blm,md->bld", hidden, cast(self.mlp_out))


class StandinModel(nnx.Module):
  """features -> embed, `depth` blocks, norm, embed -> features. x: [B, L, F] -> [B, L, F]."""

  def __init__(self, config: StandinConfig, *, rngs: nnx.Rngs):
    param_dtype = jnp.dtype(config.param_dtype)
    self.dtype = jnp.dtype(config.dtype)
    dense = nnx.initializers.lecun_normal()
    self.embed_in = _param(rngs, dense, (config.features, config.embed),
                           (FEATURES, axes.EMBED), param_dtype)
    self.blocks = nnx.List([StandinBlock(config, rngs=rngs) for _ in range(config.depth)])
    self.final_norm = RMSNorm(config.embed, param_dtype=param_dtype, rngs=rngs)
    # A small read-out: the model starts near 0, the mean of the targets.
    self.embed_out = _param(rngs, nnx.initializers.normal(0.02), (config.embed, config.features),
                            (axes.EMBED, FEATURES), param_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    h = jnp.einsum("blf,fd->bld", x.astype(self.dtype), self.embed_in[...].astype(self.dtype))
    for block in self.blocks:
      h = block(h)
    h = self.final_norm(h)
    return jnp.einsum("bld,df->blf", h, self.embed_out[...].astype(self.dtype))
