"""videogen/diffusion/toy.py: the closed-form velocities really are E[eps - x0 | x_t]."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videogen.diffusion import toy

WEIGHTS, MEANS, STDS = (0.3, 0.7), (-2.0, 1.0), (0.3, 0.6)


def _mixture_batch(seed, shape, time):
  rng = np.random.default_rng(seed)
  component = rng.random(shape) < WEIGHTS[1]
  x0 = np.where(component, MEANS[1] + STDS[1] * rng.normal(size=shape),
                MEANS[0] + STDS[0] * rng.normal(size=shape))
  noise = rng.normal(size=shape)
  x_t = (1 - time) * x0 + time * noise
  return jnp.asarray(x_t, jnp.float32), noise - x0


@pytest.mark.parametrize("time", [0.2, 0.6, 0.95])
def test_mixture_velocity_is_the_conditional_mean(time):
  # The conditional mean is the one function of x_t whose residual is uncorrelated with every
  # function of x_t; check a few, with a Monte Carlo tolerance.
  x_t, target = _mixture_batch(0, (200_000, 1), time)
  velocity = jax.jit(toy.mixture_velocity, static_argnums=(2, 3, 4))(
      x_t, jnp.full((200_000, 1), time), WEIGHTS, MEANS, STDS)
  residual = target - np.asarray(velocity, np.float64)
  x = np.asarray(x_t, np.float64)
  for probe in (np.ones_like(x), x, np.tanh(x), np.sign(x)):
    assert abs(np.mean(residual * probe)) < 0.015
  # A field that is off by a little fails the same check.
  assert abs(np.mean((residual - 0.1) * np.ones_like(x))) > 0.05


def test_one_component_mixture_is_the_gaussian_and_noise_time_is_x_minus_the_mean():
  x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 3, 2, 2, 1)), jnp.float32)
  t = jnp.asarray(np.random.default_rng(2).uniform(size=(4, 3)), jnp.float32)
  np.testing.assert_allclose(toy.mixture_velocity(x, t, (1.0,), (0.7,), (0.4,)),
                             toy.gaussian_velocity(x, t, 0.7, 0.4), rtol=1e-5, atol=1e-5)
  # At t = 1, x_t is the noise alone, so E[eps - x0 | x_1] = x_1 - E[x0].
  ones = jnp.ones((4, 3))
  mixture_mean = sum(w * m for w, m in zip(WEIGHTS, MEANS))
  np.testing.assert_allclose(toy.mixture_velocity(x, ones, WEIGHTS, MEANS, STDS),
                             x - mixture_mean, rtol=1e-5, atol=1e-5)
