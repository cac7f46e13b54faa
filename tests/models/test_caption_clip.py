"""videogen/models/caption_clip.py: the contrastive loss, the clip encoder and the whole model."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from videogen.models import caption_clip
from videogen.models.text_encoder import TextEncoderConfig

TEXT = TextEncoderConfig(vocab_size=40, max_length=8, width=16, depth=1, num_heads=2,
                         mlp_ratio=2.0, attention_backend="xla")
CLIP = caption_clip.CaptionClipConfig(width=24, depth=1, num_heads=2, mlp_ratio=2.0,
                                      embed_dim=8)


def make_model(text_config: TextEncoderConfig = TEXT,
               seed: int = 0) -> caption_clip.CaptionClipModel:
  with nnx.use_eager_sharding(False):
    return caption_clip.CaptionClipModel(text_config, CLIP, 4, rngs=nnx.Rngs(seed))


def test_the_loss_is_low_for_matched_pairs_chance_for_no_signal_high_for_swapped():
  embeddings = jnp.eye(4, 8)  # four orthogonal unit vectors
  scale = jnp.log(jnp.float32(caption_clip.MAX_LOGIT_SCALE))
  loss, accuracy = caption_clip.contrastive_loss(embeddings, embeddings, scale)
  assert float(loss) < 1e-6 and float(accuracy) == 1.0
  same = jnp.ones((4, 8)) / math.sqrt(8)  # every caption as close to every clip: log(B)
  loss, _ = caption_clip.contrastive_loss(same, same, scale)
  np.testing.assert_allclose(float(loss), math.log(4), rtol=1e-6)
  swapped = embeddings[jnp.array([1, 0, 3, 2])]
  loss, accuracy = caption_clip.contrastive_loss(embeddings, swapped, scale)
  assert float(loss) > 50 and float(accuracy) == 0.0


def test_the_inverse_temperature_is_capped():
  text = jnp.eye(2, 4)
  clip = unit(jnp.array([[1.0, 0.1, 0, 0], [0.1, 1.0, 0, 0]]))
  capped, _ = caption_clip.contrastive_loss(text, clip, jnp.float32(math.log(100.0)))
  beyond, _ = caption_clip.contrastive_loss(text, clip, jnp.float32(math.log(1e4)))
  assert float(beyond) == float(capped)


def unit(x: jax.Array) -> jax.Array:
  return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def test_the_clip_encoder_reads_frame_order_and_takes_images():
  """Directions of motion are in the order of the frames: reversed in time, a clip must not
  embed as itself. A one-frame clip (an image) embeds too."""
  model = make_model()
  clip = jax.random.normal(jax.random.key(0), (2, 3, 4, 4, 4))
  forward = model.clip_encoder(clip)
  backward = model.clip_encoder(clip[:, ::-1])
  assert forward.shape == (2, CLIP.embed_dim)
  assert float(jnp.max(jnp.abs(forward - backward))) > 1e-3
  assert model.clip_encoder(clip[:, :1]).shape == (2, CLIP.embed_dim)


def test_outputs_are_unit_length_and_the_padding_is_ignored():
  model = make_model()
  tokens = jnp.array([[5, 6, 7, 0, 0, 0, 0, 0], [9, 3, 0, 0, 0, 0, 0, 0]])
  mask = tokens > 0
  clips = jax.random.normal(jax.random.key(1), (2, 3, 4, 4, 4))
  text, clip = model(tokens, mask, clips)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(text), axis=-1), 1.0, rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(np.asarray(clip), axis=-1), 1.0, rtol=1e-5)
  other_padding = jnp.where(mask, tokens, 11)
  again, _ = model(other_padding, mask, clips)
  np.testing.assert_allclose(np.asarray(again), np.asarray(text), atol=1e-6)


@pytest.mark.parametrize("frozen", [False, True])
def test_training_pairs_captions_with_their_clips_even_when_the_dit_stage_freezes_the_encoder(
    frozen):
  """The text stage always trains the text encoder (`frozen` is the dit stage's setting): on
  eight caption-clip pairs, told apart by one word each, a few dozen Adam steps take the loss near
  0, with every pair matched, and move the text encoder."""
  model = make_model(TextEncoderConfig(**{**TEXT.__dict__, "frozen": frozen}))
  tokens = jnp.stack([jnp.array([1, 2, 10 + i, 3, 0, 0, 0, 0]) for i in range(8)])
  mask = tokens > 0
  clips = jax.random.normal(jax.random.key(2), (8, 3, 4, 4, 4))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  optimizer = optax.adam(3e-3)
  opt_state = optimizer.init(params)

  def loss_fn(params):
    text, clip = nnx.merge(graphdef, params, rest)(tokens, mask, clips)
    return caption_clip.contrastive_loss(text, clip, params["logit_scale"][...])

  @jax.jit
  def step(params, opt_state):
    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss, accuracy

  first, _ = loss_fn(params)
  text_before = jax.tree.map(np.asarray, params["text_encoder"])
  for _ in range(60):
    params, opt_state, loss, accuracy = step(params, opt_state)
  assert float(first) > 1.0
  assert float(loss) < 0.1 and float(accuracy) == 1.0
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(a - np.asarray(b)))),
                                       text_before, params["text_encoder"]))
  assert max(moved) > 1e-3


def test_bad_settings_are_refused():
  with pytest.raises(ValueError, match="not divisible by num_heads"):
    caption_clip.CaptionClipConfig(width=30, num_heads=4)
  with pytest.raises(ValueError, match="temperature"):
    caption_clip.CaptionClipConfig(temperature=1.5)
  with pytest.raises(ValueError, match="must be positive"):
    caption_clip.CaptionClipConfig(patch_size=(1, 0, 2))
