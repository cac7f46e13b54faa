"""videogen/diffusion/guidance.py: classifier-free guidance, both branches in one call."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from videogen.diffusion import guidance


def test_cfg_combine_matches_the_hand_computation():
  v_cond = jnp.array([1.0, -2.0, 0.5])
  v_uncond = jnp.array([0.0, 1.0, 0.5])
  # w = 3: v_u + 3 (v_c - v_u) = [3, 1 - 9, 0.5].
  np.testing.assert_allclose(guidance.cfg_combine(v_cond, v_uncond, 3.0), [3.0, -8.0, 0.5])
  np.testing.assert_allclose(guidance.cfg_combine(v_cond, v_uncond, 1.0), v_cond)
  np.testing.assert_allclose(guidance.cfg_combine(v_cond, v_uncond, 0.0), v_uncond)


class _RecordingVelocity:
  """v = scale * x + offset * t, per example, with scale and offset read from the conditioning."""

  def __init__(self):
    self.batch_sizes = []

  def __call__(self, x, t, conditioning):
    self.batch_sizes.append(x.shape[0])
    scale = conditioning["scale"][:, None, None, None, None]
    offset = conditioning["offset"][:, None, None, None, None]
    return scale * x + offset * t[..., None, None, None]


def test_guided_velocity_runs_both_branches_in_one_batch():
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, 2, 2, 2, 4)), jnp.float32)
  t = jnp.asarray(rng.uniform(size=(3, 2)), jnp.float32)
  prompt = {"scale": jnp.array([1.0, 2.0, 3.0]), "offset": jnp.array([0.5, 0.5, -1.0])}
  negative = {"scale": jnp.array([0.0, 1.0, -1.0]), "offset": jnp.array([0.0, 2.0, 1.0])}
  velocity_fn = _RecordingVelocity()
  guided = guidance.guided_velocity(velocity_fn, x, t, prompt, negative, scale=4.0)
  assert velocity_fn.batch_sizes == [6]
  v_cond = velocity_fn(x, t, prompt)
  v_uncond = velocity_fn(x, t, negative)
  np.testing.assert_allclose(guided, v_uncond + 4.0 * (v_cond - v_uncond), rtol=1e-5, atol=1e-5)
  assert not np.allclose(guided, v_cond)


def test_scale_one_runs_only_the_conditional_branch():
  x = jnp.ones((2, 1, 1, 1, 1))
  t = jnp.full((2, 1), 0.5)
  prompt = {"scale": jnp.array([2.0, 3.0]), "offset": jnp.array([1.0, 1.0])}
  velocity_fn = _RecordingVelocity()
  guided = guidance.guided_velocity(velocity_fn, x, t, prompt, None, scale=1.0)
  assert velocity_fn.batch_sizes == [2]
  np.testing.assert_allclose(guided[:, 0, 0, 0, 0], [2.5, 3.5])


def test_guidance_without_a_negative_branch_or_with_a_mismatched_one_is_an_error():
  x = jnp.ones((2, 1, 1, 1, 1))
  t = jnp.full((2, 1), 0.5)
  prompt = {"scale": jnp.ones(2), "offset": jnp.ones(2)}
  with pytest.raises(ValueError, match="needs an unconditional branch"):
    guidance.guided_velocity(_RecordingVelocity(), x, t, prompt, None, scale=2.0)
  with pytest.raises(ValueError, match="must have the structure of conditioning"):
    guidance.guided_velocity(_RecordingVelocity(), x, t, prompt, {"scale": jnp.ones(2)}, scale=2.0)
