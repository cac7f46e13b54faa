"""videogen/diffusion/conditioning.py: the latent frames given clean, in training and sampling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videogen.diffusion import conditioning
from videogen.diffusion import flow

_sample_mask = jax.jit(conditioning.sample_condition_mask, static_argnums=(1, 2, 3))


def _one_mode(mode: str, probability: float = 1.0) -> flow.FlowConfig:
  weights = tuple(float(m == mode) for m in conditioning.CONDITION_MODES)
  return flow.FlowConfig(condition_probability=probability, condition_weights=weights)


def _is_prefix(row):
  count = row.sum()
  return count > 0 and row[:count].all()


@pytest.mark.parametrize("mode", conditioning.CONDITION_MODES)
def test_each_mode_gives_its_frames_and_never_all(mode):
  frames = 6
  masks = np.asarray(_sample_mask(jax.random.key(0), 512, frames, _one_mode(mode)))
  counts = masks.sum(axis=1)
  assert np.all((counts >= 1) & (counts < frames))
  if mode == "first":
    assert np.all(masks == (np.arange(frames) == 0))
  elif mode == "last":
    assert np.all(masks == (np.arange(frames) == frames - 1))
  elif mode == "first_and_last":
    assert np.all(masks == np.isin(np.arange(frames), [0, frames - 1]))
  else:
    rows = masks if mode == "prefix" else masks[:, ::-1]
    assert all(_is_prefix(row) for row in rows)
    # Every length from 1 to frames - 1 occurs, roughly uniformly.
    np.testing.assert_allclose(np.bincount(counts, minlength=frames)[1:] / len(counts),
                               1 / (frames - 1), atol=0.06)


def test_conditioning_probability_and_mode_weights():
  config = flow.FlowConfig(condition_probability=0.3, condition_weights=(3.0, 1.0, 0.0, 0.0, 0.0))
  masks = np.asarray(_sample_mask(jax.random.key(1), 20_000, 4, config))
  conditioned = masks.any(axis=1)
  assert conditioned.mean() == pytest.approx(0.3, abs=0.015)
  first_share = (masks[conditioned] == (np.arange(4) == 0)).all(axis=1).mean()
  assert first_share == pytest.approx(0.75, abs=0.02)
  assert not np.asarray(_sample_mask(jax.random.key(1), 64, 4, _one_mode("first", 0.0))).any()


def test_draws_that_would_give_every_frame_give_none():
  # An image (one latent frame) has nothing left to generate once its frame is given; so does a
  # two-frame latent with first and last given.
  assert not np.asarray(_sample_mask(jax.random.key(0), 64, 1, _one_mode("first"))).any()
  assert not np.asarray(_sample_mask(jax.random.key(0), 64, 2, _one_mode("first_and_last"))).any()
  assert np.asarray(_sample_mask(jax.random.key(0), 64, 2, _one_mode("prefix")))[:, 0].all()


@pytest.mark.parametrize("mode", ["last", "suffix"])
def test_padding_frames_are_never_given_and_last_counts_from_the_valid_end(mode):
  lengths = np.array([3, 5, 2, 4] * 16)
  frame_valid = np.arange(5)[None, :] < lengths[:, None]
  masks = np.asarray(_sample_mask(jax.random.key(2), 64, 5, _one_mode(mode),
                                  frame_valid=jnp.asarray(frame_valid)))
  assert not masks[~frame_valid].any()
  for row, length in zip(masks, lengths):
    assert row[length - 1] and row.sum() < length
    assert _is_prefix(row[:length][::-1])


def test_the_same_key_gives_the_same_masks():
  config = flow.FlowConfig(condition_probability=0.5)
  first = _sample_mask(jax.random.key(7), 32, 5, config)
  np.testing.assert_array_equal(first, _sample_mask(jax.random.key(7), 32, 5, config))
  assert not np.array_equal(first, _sample_mask(jax.random.key(8), 32, 5, config))


@pytest.mark.parametrize("mode, count, expected", [
    ("none", 1, [0, 0, 0, 0, 0]),
    ("first", 1, [1, 0, 0, 0, 0]),
    ("last", 1, [0, 0, 0, 0, 1]),
    ("prefix", 2, [1, 1, 0, 0, 0]),
    ("suffix", 3, [0, 0, 1, 1, 1]),
    ("first_and_last", 1, [1, 0, 0, 0, 1]),
])
def test_mode_mask_for_sampling(mode, count, expected):
  np.testing.assert_array_equal(conditioning.mode_mask(mode, 5, count), np.array(expected, bool))


def test_mode_mask_refuses_what_cannot_be_sampled():
  with pytest.raises(ValueError, match="unknown conditioning mode 'middle'"):
    conditioning.mode_mask("middle", 5)
  with pytest.raises(ValueError, match="leaving nothing to generate"):
    conditioning.mode_mask("prefix", 5, count=5)
  with pytest.raises(ValueError, match="leaving nothing to generate"):
    conditioning.mode_mask("first", 1)


def test_place_frames_and_hold_frames():
  given = jnp.asarray(np.random.default_rng(0).normal(size=(2, 2, 3, 3, 4)), jnp.float32)
  mask = conditioning.mode_mask("first_and_last", 4)
  cond_latents = conditioning.place_frames(given, mask)
  assert cond_latents.shape == (2, 4, 3, 3, 4)
  np.testing.assert_array_equal(cond_latents[:, 0], given[:, 0])
  np.testing.assert_array_equal(cond_latents[:, 3], given[:, 1])
  x = jnp.full((2, 4, 3, 3, 4), 7.0)
  held = conditioning.hold_frames(x, cond_latents, jnp.asarray(mask))
  np.testing.assert_array_equal(held[:, 0], given[:, 0])
  np.testing.assert_array_equal(held[:, 3], given[:, 1])
  assert np.all(np.asarray(held[:, 1:3]) == 7.0)
  with pytest.raises(ValueError, match="gives 2 frames but 1 latent frames"):
    conditioning.place_frames(given[:, :1], mask)
