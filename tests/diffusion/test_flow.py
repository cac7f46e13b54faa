"""videogen/diffusion/flow.py: the rectified-flow objective, timestep sampling and the shift."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videogen import config as config_lib
from videogen import experiment as experiment_lib
from videogen.diffusion import flow
from videogen.diffusion import toy


def _logit(t):
  t = np.asarray(t, np.float64)
  return np.log(t) - np.log1p(-t)


def test_config_is_the_registered_section_and_round_trips():
  fields = {f.name: f for f in dataclasses.fields(experiment_lib.Experiment)}
  assert type(fields["diffusion"].default) is flow.FlowConfig
  section = config_lib.to_config_dict(flow.FlowConfig())
  section.logit_std = 2  # an int where a float is declared
  parsed = config_lib.parse(flow.FlowConfig, section, "config.diffusion")
  assert parsed == flow.FlowConfig(logit_std=2.0)


@pytest.mark.parametrize("key, value, message", [
    ("caption_dropout", 1.5, "caption_dropout = 1.5 must be a probability"),
    ("condition_weights", (1.0, 1.0), "needs 5 entries"),
    ("condition_weights", (0.0, 0.0, 0.0, 0.0, 0.0), "positive sum"),
    ("min_shift", 8.0, "min_shift <= max_shift"),
    ("condition_logit_std", 0.0, "condition_logit_std = 0.0 must be > 0"),
    ("frame_noise_prob", -0.1, "frame_noise_prob = -0.1 must be a probability"),
    ("condition_min_time", 1.0, "condition_min_time = 1.0 must be in"),
    ("weighting", "snr", "weighting = 'snr'; choose one of"),
    ("min_snr_gamma", 0.0, "min_snr_gamma = 0.0 must be > 0"),
    ("frame_difference_weight", -1.0, "frame_difference_weight = -1.0 must be >= 0"),
    ("mask_ratio", 1.0, "mask_ratio = 1.0 must be in"),
])
def test_config_rejects_bad_values(key, value, message):
  section = config_lib.to_config_dict(flow.FlowConfig())
  section[key] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.parse(flow.FlowConfig, section, "config.diffusion")


def test_time_shift_fixes_ends_is_monotone_and_inverts():
  t = np.linspace(0.0, 1.0, 101)
  for shift in (0.5, 1.0, 3.0):
    shifted = np.asarray(flow.time_shift(t, shift))
    assert shifted[0] == 0.0 and shifted[-1] == pytest.approx(1.0)
    assert np.all(np.diff(shifted) > 0)
    np.testing.assert_allclose(flow.inverse_time_shift(shifted, shift), t, atol=1e-12)
  # s > 1 moves every interior time towards noise and multiplies the odds t / (1 - t) by s.
  interior = t[1:-1]
  shifted = np.asarray(flow.time_shift(interior, 3.0))
  assert np.all(shifted > interior)
  np.testing.assert_allclose(_logit(shifted) - _logit(interior), np.log(3.0), atol=1e-9)


def test_resolution_shift_grows_with_tokens_and_is_clipped():
  config = flow.FlowConfig(base_shift=1.0, base_tokens=256, min_shift=1.0, max_shift=4.0)
  tokens = np.array([16, 64, 256, 512, 1024, 2048, 4096, 16384])
  shifts = np.asarray(flow.resolution_shift(tokens, config))
  assert np.all(np.diff(shifts) >= 0)
  np.testing.assert_allclose(shifts, np.clip(np.sqrt(tokens / 256), 1.0, 4.0), rtol=1e-6)
  # Strictly increasing between the clips, and the static helper agrees with the traced one.
  assert shifts[3] < shifts[4] < shifts[5]
  for count, shift in zip(tokens, shifts):
    assert flow.resolution_shift_value(int(count), config) == pytest.approx(float(shift), rel=1e-6)


def test_sample_timesteps_are_logit_normal_then_shifted():
  config = flow.FlowConfig(logit_mean=0.5, logit_std=0.8, base_tokens=256, max_shift=8.0)
  key = jax.random.key(0)
  unshifted = np.asarray(flow.sample_timesteps(key, 40_000, 256, config))
  assert np.all((unshifted > 0) & (unshifted < 1))
  logits = _logit(unshifted)
  assert logits.mean() == pytest.approx(0.5, abs=0.02)
  assert logits.std() == pytest.approx(0.8, abs=0.02)
  # Four times the tokens: shift 2, so every logit moves up by exactly log 2 (same key).
  shifted = np.asarray(flow.sample_timesteps(key, 40_000, 1024, config))
  np.testing.assert_allclose(_logit(shifted) - logits, np.log(2.0), atol=1e-3)
  # Per-example token counts are allowed.
  per_example = flow.sample_timesteps(key, 4, jnp.array([256, 1024, 256, 1024]), config)
  np.testing.assert_allclose(per_example, [unshifted[0], shifted[1], unshifted[2], shifted[3]],
                             rtol=1e-6)


def test_sample_timesteps_is_deterministic_for_a_key():
  config = flow.FlowConfig()
  first = flow.sample_timesteps(jax.random.key(3), 16, 512, config)
  again = flow.sample_timesteps(jax.random.key(3), 16, 512, config)
  other = flow.sample_timesteps(jax.random.key(4), 16, 512, config)
  np.testing.assert_array_equal(first, again)
  assert not np.allclose(first, other)


def test_noisy_input_interpolates_and_is_exact_at_time_zero():
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.normal(size=(2, 3, 2, 2, 4)), jnp.bfloat16)
  noise = jnp.asarray(rng.normal(size=x0.shape), jnp.bfloat16)
  t = jnp.array([[0.0, 0.5, 1.0], [0.25, 0.0, 0.75]])
  x_t = flow.noisy_input(x0, noise, t)
  assert x_t.dtype == jnp.bfloat16
  expected = ((1 - t[..., None, None, None]) * x0.astype(jnp.float32)
              + t[..., None, None, None] * noise.astype(jnp.float32))
  np.testing.assert_allclose(np.asarray(x_t, np.float32), expected, atol=2e-2)
  np.testing.assert_array_equal(np.asarray(x_t[0, 0]), np.asarray(x0[0, 0]))
  np.testing.assert_array_equal(np.asarray(x_t[1, 1]), np.asarray(x0[1, 1]))
  np.testing.assert_array_equal(np.asarray(x_t[0, 2]), np.asarray(noise[0, 2]))


def _gaussian_batch(seed, shape, mean, std):
  # Test data from NumPy: each new jax.random shape costs seconds of XLA compile on CPU.
  rng = np.random.default_rng(seed)
  x0 = jnp.asarray(mean + std * rng.normal(size=shape), jnp.float32)
  noise = jnp.asarray(rng.normal(size=shape), jnp.float32)
  return x0, noise


def test_flow_loss_of_the_exact_velocity_is_the_conditional_variance():
  mean, std, time = 1.5, 0.5, 0.3
  x0, noise = _gaussian_batch(0, (64, 4, 8, 8, 4), mean, std)
  t = jnp.full(x0.shape[:2], time)
  x_t = flow.noisy_input(x0, noise, t)
  target = flow.velocity_target(x0, noise)
  exact = toy.gaussian_velocity(x_t, t, mean, std)
  minimum = float(toy.gaussian_conditional_variance(np.float64(time), std))
  assert float(flow.flow_loss(exact, target)) == pytest.approx(minimum, rel=0.02)
  # Any other field does worse: a bias b adds b^2, a wrong scale more.
  assert float(flow.flow_loss(exact + 0.3, target)) == pytest.approx(minimum + 0.09, rel=0.03)
  assert float(flow.flow_loss(1.2 * exact, target)) > minimum + 0.05


def test_flow_loss_averages_over_valid_elements_only():
  prediction, target = _gaussian_batch(0, (2, 4, 3, 3, 2), 0.0, 1.0)
  frame_mask = jnp.array([[False, True, True, True], [True, True, False, False]])
  loss = flow.flow_loss(prediction, target, frame_mask)
  errors = np.square(np.asarray(prediction) - np.asarray(target))
  assert float(loss) == pytest.approx(errors[np.asarray(frame_mask)].mean(), rel=1e-6)
  # Changing the prediction at excluded frames leaves the loss as is; at a valid one it does not.
  changed = prediction.at[0, 0].add(100.0).at[1, 3].add(-50.0)
  assert float(flow.flow_loss(changed, target, frame_mask)) == pytest.approx(float(loss), rel=1e-6)
  assert float(flow.flow_loss(prediction.at[0, 1].add(1.0), target, frame_mask)) > float(loss)
  # A per-token mask [B, t, h, w] counts tokens; an all-False mask gives 0, not NaN.
  token_mask = jnp.zeros(prediction.shape[:4], bool).at[1, 2, 0, 1].set(True)
  assert float(flow.flow_loss(prediction, target, token_mask)) == pytest.approx(
      errors[1, 2, 0, 1].mean(), rel=1e-6)
  assert float(flow.flow_loss(prediction, target, jnp.zeros((2, 4), bool))) == 0.0


def test_masked_training_refuses_the_frame_difference_term():
  with pytest.raises(ValueError, match="frame_difference_weight compares whole frames"):
    flow.FlowConfig(mask_ratio=0.5, frame_difference_weight=0.5)


@pytest.mark.parametrize("per_frame, ratio, count", [(16, 0.5, 8), (16, 0.25, 12), (16, 0.99, 1),
                                                     (1, 0.5, 1)])
def test_kept_tokens_are_a_sorted_random_subset_of_each_frame(per_frame, ratio, count):
  assert flow.kept_count(per_frame, ratio) == count
  keep = np.asarray(flow.kept_tokens(jax.random.key(0), 4, 3, per_frame, ratio))
  assert keep.shape == (4, 3, count)
  assert keep.min() >= 0 and keep.max() < per_frame
  assert np.all(np.diff(keep, axis=-1) > 0)  # increasing, so no token twice
  if count < per_frame:
    assert len({tuple(row) for row in keep.reshape(-1, count)}) > 1  # frames draw their own
  np.testing.assert_array_equal(flow.kept_tokens(jax.random.key(0), 4, 3, per_frame, ratio), keep)


def test_drop_captions_nulls_whole_captions_at_the_configured_rate():
  token_mask = jnp.arange(12)[None, :] < jnp.arange(1, 4001)[:, None] % 12 + 1  # [4000, 12]
  dropped = np.asarray(flow.drop_captions(jax.random.key(0), token_mask, 0.2))
  kept_rows = dropped.any(axis=1)
  np.testing.assert_array_equal(dropped[kept_rows], np.asarray(token_mask)[kept_rows])
  assert (~kept_rows).mean() == pytest.approx(0.2, abs=0.02)
  assert not np.asarray(flow.drop_captions(jax.random.key(0), token_mask, 1.0)).any()
  np.testing.assert_array_equal(flow.drop_captions(jax.random.key(0), token_mask, 0.0),
                                token_mask)


def test_training_inputs_hold_conditioning_frames_clean_and_out_of_the_loss():
  config = flow.FlowConfig(condition_probability=0.5)
  latents, _ = _gaussian_batch(1, (64, 5, 2, 2, 3), 0.0, 1.0)
  frame_valid = jnp.arange(5)[None, :] < jnp.where(jnp.arange(64) % 4 == 0, 3, 5)[:, None]
  inputs = jax.jit(lambda rng, x: flow.training_inputs(
      rng, x, num_tokens=20, config=config, frame_valid=frame_valid))(jax.random.key(2), latents)
  condition = np.asarray(inputs.condition_mask)
  assert 0.3 < condition.any(axis=1).mean() < 0.7
  assert np.all(np.asarray(inputs.timesteps)[condition] == 0.0)
  assert np.all(np.asarray(inputs.timesteps)[~condition] > 0.0)
  # One timestep per example across its noised frames.
  times = np.where(condition, np.nan, np.asarray(inputs.timesteps))
  np.testing.assert_allclose(np.nanmax(times, axis=1), np.nanmin(times, axis=1))
  np.testing.assert_array_equal(np.asarray(inputs.noisy_latents)[condition],
                                np.asarray(latents)[condition])
  np.testing.assert_array_equal(inputs.loss_mask, ~condition & np.asarray(frame_valid))
  # The target is eps - x0 for the eps that made x_t: x_t = x0 + t (eps - x0).
  t = np.asarray(inputs.timesteps)[..., None, None, None]
  np.testing.assert_allclose(inputs.noisy_latents, latents + t * np.asarray(inputs.target),
                             atol=1e-5)


def test_examples_with_given_frames_draw_their_own_noise_level():
  latents, _ = _gaussian_batch(2, (256, 5, 2, 2, 3), 0.0, 1.0)
  shared = flow.FlowConfig(condition_probability=0.5)
  own = dataclasses.replace(shared, condition_logit_mean=4.0, condition_logit_std=0.3)
  make = jax.jit(lambda x: (flow.training_inputs(jax.random.key(7), x, num_tokens=20,
                                                 config=shared),
                            flow.training_inputs(jax.random.key(7), x, num_tokens=20,
                                                 config=own)))
  before, after = make(latents)
  given = np.asarray(after.condition_mask).any(axis=1)
  np.testing.assert_array_equal(after.condition_mask, before.condition_mask)
  assert 0.3 < given.mean() < 0.7
  t_before = np.asarray(before.timesteps).max(axis=1)
  t_after = np.asarray(after.timesteps).max(axis=1)
  # Without given frames: exactly the draw of the shared distribution.
  np.testing.assert_array_equal(t_after[~given], t_before[~given])
  # With: logit(t) ~ N(4, 0.3) shifted by min_shift 1, so t = sigmoid(4 +- 4 std) > 0.94.
  assert t_after[given].min() > 0.94
  assert t_before[given].min() < 0.5  # the shared draw spreads over (0, 1)
  np.testing.assert_allclose(np.median(t_after[given]), 1.0 / (1.0 + np.exp(-4.0)), atol=0.01)
  # Only the noise level moved: x_t = x0 + t (eps - x0) still holds, given frames stay clean.
  t = np.asarray(after.timesteps)[..., None, None, None]
  np.testing.assert_allclose(after.noisy_latents, latents + t * np.asarray(after.target),
                             atol=1e-5)
  np.testing.assert_array_equal(after.target, before.target)


def test_training_inputs_with_the_exact_field_reach_the_analytic_minimum():
  mean, std = -0.5, 0.7
  config = flow.FlowConfig(condition_probability=0.3)
  latents, noise = _gaussian_batch(5, (256, 3, 8, 8, 4), mean, std)
  # Jitted: one compile is much faster on CPU than the many small ones of eager dispatch.
  inputs = jax.jit(lambda rng, x, eps: flow.training_inputs(
      rng, x, num_tokens=192, config=config, noise=eps))(jax.random.key(6), latents, noise)
  prediction = jax.jit(toy.gaussian_velocity)(inputs.noisy_latents, inputs.timesteps, mean, std)
  loss = float(flow.flow_loss(prediction, inputs.target, inputs.loss_mask))
  mask = np.asarray(inputs.loss_mask)
  t = np.asarray(inputs.timesteps, np.float64)
  expected = toy.gaussian_conditional_variance(t, std)[mask].mean()
  assert loss == pytest.approx(expected, rel=0.02)


def test_default_training_inputs_are_the_plain_draw():
  """With every recipe option off, the inputs are built from the three plain draws alone (no
  extra randomness consumed, no per-frame noise levels, no weights)."""
  config = flow.FlowConfig(condition_probability=0.5)
  latents, _ = _gaussian_batch(8, (32, 4, 2, 2, 3), 0.0, 1.0)
  rng = jax.random.key(11)
  inputs = flow.training_inputs(rng, latents, num_tokens=16, config=config)
  noise_rng, time_rng, condition_rng = jax.random.split(rng, 3)
  noise = jax.random.normal(noise_rng, latents.shape, jnp.float32)
  mask = flow.conditioning.sample_condition_mask(condition_rng, 32, 4, config)
  timesteps = flow.frame_timesteps(flow.sample_timesteps(time_rng, 32, 16, config), mask)
  np.testing.assert_array_equal(inputs.timesteps, timesteps)
  np.testing.assert_array_equal(inputs.condition_mask, mask)
  np.testing.assert_array_equal(inputs.noisy_latents, flow.noisy_input(latents, noise, timesteps))
  np.testing.assert_array_equal(inputs.target, flow.velocity_target(latents, noise))
  assert flow.timestep_weights(inputs.timesteps, config) is None


def test_diffusion_forcing_draws_a_noise_level_per_frame_for_some_examples():
  latents, _ = _gaussian_batch(9, (512, 5, 2, 2, 3), 0.0, 1.0)
  plain = flow.FlowConfig(condition_probability=0.25, min_shift=3.0)
  forcing = dataclasses.replace(plain, frame_noise_prob=0.5)
  make = jax.jit(lambda x: (
      flow.training_inputs(jax.random.key(4), x, num_tokens=20, config=plain),
      flow.training_inputs(jax.random.key(4), x, num_tokens=20, config=forcing)))
  before, after = make(latents)
  np.testing.assert_array_equal(after.condition_mask, before.condition_mask)
  given = np.asarray(after.condition_mask).any(axis=1)
  times = np.asarray(after.timesteps)
  per_frame = times.max(axis=1) > times.min(axis=1) + 1e-6
  per_frame &= ~given
  # About half of the examples without given frames; none with given frames.
  assert 0.4 < per_frame.sum() / (~given).sum() < 0.6
  assert not np.any(per_frame & given)
  # The other examples keep exactly their plain draw.
  np.testing.assert_array_equal(times[~per_frame], np.asarray(before.timesteps)[~per_frame])
  # Per-frame levels follow the same shifted logit-normal: median shift(0.5, 3) = 0.75.
  forced = times[per_frame]
  assert np.all((forced > 0) & (forced < 1))
  np.testing.assert_allclose(np.median(forced), 0.75, atol=0.03)
  # Independent across frames: neighbouring frames are uncorrelated.
  assert abs(np.corrcoef(forced[:, 0], forced[:, 1])[0, 1]) < 0.15
  t = times[..., None, None, None]
  np.testing.assert_allclose(after.noisy_latents, latents + t * np.asarray(after.target),
                             atol=1e-5)
  np.testing.assert_array_equal(after.loss_mask, before.loss_mask)


def test_given_frames_can_be_held_to_high_noise_levels():
  latents, _ = _gaussian_batch(10, (256, 5, 2, 2, 3), 0.0, 1.0)
  plain = flow.FlowConfig(condition_probability=0.5, condition_weights=(1.0, 0, 0, 0, 0))
  high = dataclasses.replace(plain, condition_min_time=0.8)
  make = jax.jit(lambda x: (
      flow.training_inputs(jax.random.key(5), x, num_tokens=20, config=plain),
      flow.training_inputs(jax.random.key(5), x, num_tokens=20, config=high)))
  before, after = make(latents)
  given = np.asarray(after.condition_mask).any(axis=1)
  np.testing.assert_array_equal(np.asarray(after.condition_mask)[given, 0], True)
  t_before = np.asarray(before.timesteps).max(axis=1)
  t_after = np.asarray(after.timesteps).max(axis=1)
  assert t_after[given].min() >= 0.8 and t_before[given].min() < 0.5
  # Affine onto [0.8, 1]: the order of the draws is kept.
  np.testing.assert_allclose(t_after[given], 0.8 + 0.2 * t_before[given], rtol=1e-6)
  np.testing.assert_array_equal(t_after[~given], t_before[~given])
  np.testing.assert_array_equal(after.loss_mask, ~np.asarray(after.condition_mask))


def test_min_snr_weights_are_min_snr_gamma_on_the_clean_latent_error():
  """w(t) |v - u|^2 equals min(SNR(t), gamma) |x0_hat - x0|^2 with SNR = ((1 - t) / t)^2 and
  x0_hat = x_t - t v: the paper's weighting, whatever the network predicts."""
  gamma = 5.0
  config = flow.FlowConfig(weighting="min_snr", min_snr_gamma=gamma)
  x0, noise = _gaussian_batch(12, (6, 40, 2, 2, 1), 0.3, 0.8)
  t = jnp.asarray(np.linspace(0.01, 0.99, 240).reshape(6, 40), jnp.float32)
  x_t = flow.noisy_input(x0, noise, t)
  prediction = flow.velocity_target(x0, noise) + jnp.asarray(
      np.random.default_rng(1).normal(size=x0.shape), jnp.float32)
  weights = flow.timestep_weights(t, config)
  loss = float(flow.flow_loss(prediction, flow.velocity_target(x0, noise), None, weights))
  t64 = np.asarray(t, np.float64)[..., None, None, None]
  x0_hat = np.asarray(x_t, np.float64) - t64 * np.asarray(prediction, np.float64)
  snr = ((1 - t64) / t64) ** 2
  expected = np.mean(np.minimum(snr, gamma) * (x0_hat - np.asarray(x0, np.float64)) ** 2)
  assert loss == pytest.approx(expected, rel=1e-4)
  # The published shape: SNR-capped below t* = 1 / (1 + sqrt(gamma)), (1 - t)^2 above.
  w = np.asarray(weights, np.float64)
  t_star = 1 / (1 + np.sqrt(gamma))
  low, high = t64[..., 0, 0, 0] < t_star, t64[..., 0, 0, 0] > t_star
  np.testing.assert_allclose(w[low], gamma * np.asarray(t, np.float64)[low] ** 2, rtol=1e-5)
  np.testing.assert_allclose(w[high], (1 - np.asarray(t, np.float64)[high]) ** 2, rtol=1e-5)
  assert float(flow.timestep_weights(jnp.zeros(3), config).max()) == 0.0


def test_weights_scale_each_frame_but_not_the_count():
  prediction = jnp.ones((2, 3, 1, 1, 2))
  target = jnp.zeros_like(prediction)
  weights = jnp.asarray([[1.0, 2.0, 3.0], [0.0, 0.0, 6.0]])
  mask = jnp.asarray([[True, True, False], [True, True, True]])
  # Valid elements: 5 frames x 2 = 10; weighted sum: (1 + 2 + 0 + 0 + 6) x 2 = 18.
  assert float(flow.flow_loss(prediction, target, mask, weights)) == pytest.approx(1.8)
  assert float(flow.flow_loss(prediction, target, mask)) == 1.0


def test_frame_difference_loss_compares_the_motion_of_the_predicted_clean_latents():
  x0, noise = _gaussian_batch(13, (4, 5, 2, 2, 3), 0.0, 1.0)
  t = jnp.asarray(np.random.default_rng(2).uniform(0.05, 0.95, (4, 5)), jnp.float32)
  t = t.at[:, 0].set(0.0)  # frame 0 given
  x_t = flow.noisy_input(x0, noise, t)
  target = flow.velocity_target(x0, noise)
  prediction = target + jnp.asarray(np.random.default_rng(3).normal(size=x0.shape), jnp.float32)
  loss_mask = jnp.ones((4, 5), bool).at[:, 0].set(False)
  valid = jnp.ones((4, 5), bool).at[3, 3:].set(False)  # example 3 ends after 3 frames
  loss = float(flow.frame_difference_loss(prediction, target, t, loss_mask & valid, valid))
  t64 = np.asarray(t, np.float64)[..., None, None, None]
  x0_hat = np.asarray(x_t, np.float64) - t64 * np.asarray(prediction, np.float64)
  # The given frame's predicted clean latent is the clean latent itself.
  np.testing.assert_allclose(x0_hat[:, 0], np.asarray(x0)[:, 0], atol=1e-6)
  squared = (np.diff(x0_hat, axis=1) - np.diff(np.asarray(x0, np.float64), axis=1)) ** 2
  pairs = np.ones((4, 4), bool)
  pairs[3, 2:] = False  # pairs (2, 3) and (3, 4) touch padding
  assert loss == pytest.approx(squared[pairs].mean(), rel=1e-4)
  # An error of the clean latents that is the same in every frame has no motion: no loss.
  offset = jnp.asarray(np.random.default_rng(4).normal(size=(4, 1, 2, 2, 3)), jnp.float32)
  noisy = t.at[:, 0].set(0.5)
  still_error = target - offset / noisy[..., None, None, None]
  moving = flow.frame_difference_loss(still_error, target, noisy, jnp.ones((4, 5), bool),
                                      jnp.ones((4, 5), bool))
  assert float(moving) == pytest.approx(0.0, abs=1e-6)
  assert float(flow.frame_difference_loss(prediction[:, :1], target[:, :1], t[:, :1],
                                          loss_mask[:, :1], valid[:, :1])) == 0.0
