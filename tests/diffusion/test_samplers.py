"""videogen/diffusion/samplers.py: Euler and Heun on toy flows whose exact velocity is known."""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np
import pytest

from videogen import config as config_lib
from videogen import experiment as experiment_lib
from videogen.diffusion import conditioning
from videogen.diffusion import flow
from videogen.diffusion import samplers
from videogen.diffusion import toy

MEAN, STD = 1.5, 0.5


def _gaussian_field(x, t, conditioning=None):
  del conditioning
  return toy.gaussian_velocity(x, t, MEAN, STD)


def _noise(shape, seed=0):
  # NumPy noise: each new jax.random shape costs seconds of XLA compile on a CPU.
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _config(method="heun", num_steps=30, guidance_scale=1.0):
  return samplers.SamplerConfig(method=method, num_steps=num_steps, guidance_scale=guidance_scale)


def test_config_is_the_registered_section_and_round_trips():
  fields = {f.name: f for f in dataclasses.fields(experiment_lib.Experiment)}
  assert type(fields["sample"].default) is samplers.SamplerConfig
  section = config_lib.to_config_dict(samplers.SamplerConfig())
  assert config_lib.parse(samplers.SamplerConfig, section, "config.sample").shift is None
  section.shift = 3
  section.method = "euler"
  parsed = config_lib.parse(samplers.SamplerConfig, section, "config.sample")
  assert parsed.shift == 3.0 and parsed.method == "euler"
  section.method = "rk4"
  with pytest.raises(config_lib.ConfigError, match="choose one of: 'euler', 'heun'"):
    config_lib.parse(samplers.SamplerConfig, section, "config.sample")
  with pytest.raises(ValueError, match="num_steps = 0 must be >= 1"):
    samplers.SamplerConfig(num_steps=0)


def test_sampling_shift_defaults_to_the_training_shift():
  flow_config = flow.FlowConfig(base_tokens=256, max_shift=6.0)
  assert samplers.sampling_shift(samplers.SamplerConfig(), flow_config, 1024) == pytest.approx(2.0)
  assert samplers.sampling_shift(samplers.SamplerConfig(shift=1.5), flow_config, 1024) == 1.5


def test_timestep_grid_runs_from_one_to_zero_crowding_at_high_noise():
  grid = samplers.timestep_grid(10, 3.0)
  assert grid.shape == (11,) and grid[0] == 1.0 and grid[-1] == 0.0
  assert np.all(np.diff(grid) < 0)
  linear = np.linspace(1.0, 0.0, 11)
  assert np.all(grid[1:-1] > linear[1:-1])
  np.testing.assert_allclose(grid, flow.time_shift(linear, 3.0), rtol=1e-6)
  # An edit from t = 0.5 keeps the full grid's step size: inverse shift of 0.5 at s = 3 is 0.25,
  # so 10 * 0.25 = 2.5 -> 3 steps.
  partial = samplers.timestep_grid(10, 3.0, start_time=0.5)
  assert partial[0] == 0.5 and partial[-1] == 0.0 and len(partial) == 4
  with pytest.raises(ValueError, match="start_time = 0.0 must be in"):
    samplers.timestep_grid(10, 3.0, start_time=0.0)


@pytest.mark.parametrize("method, num_steps, tolerance", [("heun", 30, 5e-3), ("euler", 200, 5e-2)])
def test_samplers_carry_noise_onto_the_gaussian_along_the_exact_flow(method, num_steps, tolerance):
  # For x0 ~ N(mu, s^2) the ODE maps noise z to mu + s z exactly: a pointwise check.
  noise = _noise((64, 3, 4, 4, 2))
  out = samplers.sample(_gaussian_field, noise, config=_config(method, num_steps), shift=3.0,
                        progress=False)
  error = np.abs(np.asarray(out) - (MEAN + STD * np.asarray(noise)))
  assert error.max() < tolerance
  assert abs(out.mean() - MEAN) < 0.03 and abs(out.std() - STD) < 0.02


def test_heun_is_second_order_and_euler_first_order():
  noise = _noise((8, 2, 2, 2, 2))
  target = MEAN + STD * np.asarray(noise)

  def error(method, num_steps):
    out = samplers.sample(_gaussian_field, noise, config=_config(method, num_steps), shift=1.0,
                          progress=False)
    return np.abs(np.asarray(out) - target).max()

  assert error("heun", 10) / error("heun", 20) == pytest.approx(4.0, rel=0.25)
  assert error("euler", 20) / error("euler", 40) == pytest.approx(2.0, rel=0.2)


def test_heun_lands_on_a_two_component_mixture():
  weights, means, stds = (0.3, 0.7), (-2.0, 2.0), (0.3, 0.4)
  field = lambda x, t, c: toy.mixture_velocity(x, t, weights, means, stds)
  out = np.asarray(samplers.sample(field, _noise((128, 4, 4, 4, 2)), config=_config("heun", 30),
                                   shift=2.0, progress=False)).ravel()
  upper = out > 0
  assert upper.mean() == pytest.approx(0.7, abs=0.015)
  assert out[upper].mean() == pytest.approx(2.0, abs=0.03)
  assert out[~upper].mean() == pytest.approx(-2.0, abs=0.03)
  assert out[upper].std() == pytest.approx(0.4, rel=0.05)
  assert out[~upper].std() == pytest.approx(0.3, rel=0.05)


class _Recorder:
  """The Gaussian field, recording what the sampler feeds it (eager use only)."""

  def __init__(self):
    self.calls = []

  def __call__(self, x, t, conditioning=None):
    self.calls.append((np.asarray(x), np.asarray(t)))
    return _gaussian_field(x, t)


def _conditioning_request(shape, mode="first_and_last"):
  mask = conditioning.mode_mask(mode, shape[1])
  given = _noise((shape[0], int(mask.sum())) + shape[2:], seed=5) * 3.0
  return conditioning.place_frames(given, mask), np.broadcast_to(mask, shape[:2])


@pytest.mark.parametrize("jit, progress", [(True, True), (True, False), (False, False)])
def test_conditioning_frames_come_out_exactly_as_given(jit, progress):
  shape = (4, 5, 2, 2, 3)
  cond_latents, cond_mask = _conditioning_request(shape)
  out = samplers.sample(_gaussian_field, _noise(shape), config=_config("heun", 6), shift=2.0,
                        cond_latents=cond_latents, cond_mask=cond_mask, progress=progress, jit=jit)
  np.testing.assert_array_equal(np.asarray(out)[cond_mask], np.asarray(cond_latents)[cond_mask])
  free = ~cond_mask
  np.testing.assert_allclose(np.asarray(out)[free], MEAN + STD * np.asarray(_noise(shape))[free],
                             atol=0.05)


def test_the_network_sees_the_given_frames_at_timestep_zero_at_every_call():
  shape = (2, 4, 2, 2, 3)
  cond_latents, cond_mask = _conditioning_request(shape, "prefix")
  recorder = _Recorder()
  samplers.sample(recorder, _noise(shape), config=_config("heun", 4), shift=2.0,
                  cond_latents=cond_latents, cond_mask=cond_mask, progress=False, jit=False)
  grid = samplers.timestep_grid(4, 2.0)
  assert len(recorder.calls) == 8  # Heun: two calls per step
  expected_times = [t for now, later in zip(grid[:-1], grid[1:]) for t in (now, later)]
  for (x, t), time in zip(recorder.calls, expected_times):
    np.testing.assert_array_equal(x[cond_mask], np.asarray(cond_latents)[cond_mask])
    assert np.all(t[cond_mask] == 0.0)
    np.testing.assert_allclose(t[~cond_mask], time)


def test_guided_sampling_follows_the_guided_field():
  # Conditional branch: data mean +1; unconditional: data mean -1. Sampling with guidance w must
  # equal unguided sampling of v_u + w (v_c - v_u), computed here by hand.
  def field(x, t, conditioning):
    return toy.gaussian_velocity(x, t, 0.0, STD) + conditioning["mean_shift"][:, None, None, None,
                                                                               None]
  shape = (4, 3, 2, 2, 2)
  prompt = {"mean_shift": -jnp.ones(4)}
  null = {"mean_shift": jnp.ones(4)}
  guided = samplers.sample(field, _noise(shape), config=_config("euler", 8, guidance_scale=3.0),
                           shift=1.0, conditioning=prompt, negative_conditioning=null,
                           progress=False)
  by_hand = lambda x, t, c: (field(x, t, null) + 3.0 * (field(x, t, prompt) - field(x, t, null)))
  expected = samplers.sample(by_hand, _noise(shape), config=_config("euler", 8), shift=1.0,
                             progress=False)
  np.testing.assert_allclose(guided, expected, rtol=1e-5, atol=1e-5)
  # Guidance extrapolates away from the unconditional result, past the conditional one.
  run = functools.partial(samplers.sample, field, _noise(shape), config=_config("euler", 8),
                          shift=1.0, progress=False)
  conditional, unconditional = run(conditioning=prompt), run(conditioning=null)
  assert float(guided.mean()) > float(conditional.mean()) + 1.0
  assert float(conditional.mean()) > float(unconditional.mean()) + 1.0


def test_sampling_is_deterministic_and_both_loops_agree():
  noise = _noise((4, 3, 2, 2, 2))
  run = functools.partial(samplers.sample, _gaussian_field, config=_config("heun", 5), shift=2.0)
  first = run(noise, progress=False)
  np.testing.assert_array_equal(first, run(noise, progress=False))
  np.testing.assert_allclose(first, run(noise, progress=True), rtol=1e-6, atol=1e-6)
  assert not np.allclose(first, run(_noise((4, 3, 2, 2, 2), seed=1), progress=False))


@pytest.mark.parametrize("strength", [0.3, 0.8])
def test_edit_from_a_partly_noised_video_follows_the_flow_from_there(strength):
  shape = (16, 2, 2, 2, 2)
  latents = _noise(shape, seed=2) * 2.0
  start = samplers.edit_start(latents, _noise(shape, seed=3), strength)
  np.testing.assert_allclose(start, (1 - strength) * latents + strength * _noise(shape, seed=3),
                             rtol=1e-6, atol=1e-6)
  out = samplers.sample(_gaussian_field, start, config=_config("heun", 30), shift=2.0,
                        start_time=strength, progress=False)
  # The exact flow of N(mu, s^2) from time s: z = (x_s - (1 - s) mu) / sqrt(V_s), x_0 = mu + s z.
  variance = (1 - strength) ** 2 * STD ** 2 + strength ** 2
  expected = MEAN + STD * (np.asarray(start) - (1 - strength) * MEAN) / np.sqrt(variance)
  np.testing.assert_allclose(out, expected, atol=5e-3)


def test_bad_requests_are_refused_with_a_hint():
  noise = _noise((2, 3, 2, 2, 2))
  with pytest.raises(ValueError, match="without cond_latents"):
    samplers.sample(_gaussian_field, noise, config=_config(), shift=1.0,
                    cond_mask=np.array([True, False, False]), progress=False)
  with pytest.raises(ValueError, match="needs an unconditional branch"):
    samplers.sample(_gaussian_field, noise, config=_config(guidance_scale=4.0), shift=1.0,
                    progress=False)


def _pyramid(method="heun", num_steps=30, lag=0.25):
  return dataclasses.replace(_config(method, num_steps), frame_schedule="pyramid", frame_lag=lag)


def test_pyramid_grid_settles_earlier_frames_first():
  lag, shift, frames = 0.25, 3.0, 5
  grid = samplers.frame_timestep_grid(10, shift, frames, lag)
  # 10 * (1 + 4 * 0.25) = 20 steps.
  assert grid.shape == (21, frames)
  np.testing.assert_array_equal(grid[0], 1.0)
  np.testing.assert_array_equal(grid[-1], 0.0)
  assert np.all(np.diff(grid, axis=0) <= 0)  # no frame ever gets noisier
  assert np.all(np.diff(grid, axis=1) >= 0)  # at every step a frame is no noisier than the next
  settled = np.argmax(grid == 0.0, axis=0)  # first step at which each frame is clean
  assert np.all(np.diff(settled) > 0)
  # Where neither is clipped, frame f lags frame f - 1 by `lag` in unshifted time.
  unshifted = flow.inverse_time_shift(grid.astype(np.float64), shift)
  inside = (unshifted[:, 1:] < 1.0 - 1e-6) & (unshifted[:, :-1] > 1e-6)
  assert inside.sum() > 20
  np.testing.assert_allclose(np.diff(unshifted, axis=1)[inside], lag, atol=1e-5)
  # Causal (lag 1): frame f starts only when frame f - 1 is done.
  causal = samplers.frame_timestep_grid(4, shift, 3, 1.0)
  for f in range(1, 3):
    assert np.all(causal[causal[:, f] < 1.0, f - 1] == 0.0)


def test_pyramid_sampling_feeds_per_frame_times_and_follows_the_exact_flow():
  # The Gaussian field is per coordinate, so each frame follows its own ODE: staggering the
  # frames must still carry noise z to mu + s z.
  noise = _noise((16, 4, 2, 2, 2))
  out = samplers.sample(_gaussian_field, noise, config=_pyramid(), shift=3.0, progress=False)
  np.testing.assert_allclose(np.asarray(out), MEAN + STD * np.asarray(noise), atol=5e-3)
  recorder = _Recorder()
  samplers.sample(recorder, noise[:2], config=_pyramid("euler", 4, 0.5), shift=2.0,
                  progress=False, jit=False)
  grid = samplers.frame_timestep_grid(4, 2.0, 4, 0.5)
  assert len(recorder.calls) == len(grid) - 1
  for (_, t), row in zip(recorder.calls, grid[:-1]):
    np.testing.assert_array_equal(t, np.broadcast_to(row, t.shape))


def test_pyramid_holds_given_frames_and_refuses_edits():
  shape = (2, 4, 2, 2, 3)
  cond_latents, cond_mask = _conditioning_request(shape, "first")
  out = samplers.sample(_gaussian_field, _noise(shape), config=_pyramid("heun", 6), shift=2.0,
                        cond_latents=cond_latents, cond_mask=cond_mask, progress=True)
  np.testing.assert_array_equal(np.asarray(out)[cond_mask], np.asarray(cond_latents)[cond_mask])
  np.testing.assert_allclose(np.asarray(out)[~cond_mask],
                             MEAN + STD * np.asarray(_noise(shape))[~cond_mask], atol=0.05)
  with pytest.raises(ValueError, match="frame_schedule=together"):
    samplers.sample(_gaussian_field, _noise(shape), config=_pyramid(), shift=2.0,
                    start_time=0.5, progress=False)
  with pytest.raises(ValueError, match="frame_lag = 0.0 must be in"):
    _pyramid(lag=0.0)
