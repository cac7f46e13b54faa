"""Toy data distributions whose rectified-flow velocity E[eps - x0 | x_t] is known in closed form.

They stand in for a trained network wherever a test or a demo needs a velocity_fn with a known
right answer (the samplers' tests, the generation pipeline's tests).

Every coordinate of x0 is an independent 1-D Gaussian mixture sum_k pi_k N(mu_k, s_k^2) and
eps ~ N(0, 1), so x_t = (1 - t) x0 + t eps is a mixture of N((1 - t) mu_k, V_k) with
V_k = (1 - t)^2 s_k^2 + t^2. Within a component (eps, x0, x_t) are jointly Gaussian, which gives

    E[eps - x0 | x_t, k] = -mu_k + (t - (1 - t) s_k^2) (x_t - (1 - t) mu_k) / V_k,
    Var[eps - x0 | x_t, k] = 1 + s_k^2 - (t - (1 - t) s_k^2)^2 / V_k,

and the mixture's velocity is the posterior-weighted average over k. For one component the ODE
maps noise z at t = 1 to mu + s z at t = 0 exactly.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _per_frame(t: jax.Array, x: jax.Array) -> jax.Array:
  """Timesteps [B, t] broadcast against x [B, t, h, w, C]."""
  return jnp.reshape(t, t.shape + (1,) * (x.ndim - t.ndim)).astype(jnp.float32)


def gaussian_velocity(x: jax.Array, t: jax.Array, mean: float = 0.0,
                      std: float = 1.0) -> jax.Array:
  """Exact velocity for x0 ~ N(mean, std^2) per coordinate. x: [B, t, ...], t: [B, t]."""
  t = _per_frame(t, x)
  variance = (1 - t) ** 2 * std ** 2 + t ** 2
  return -mean + (t - (1 - t) * std ** 2) * (x - (1 - t) * mean) / variance


def gaussian_conditional_variance(t: np.ndarray, std: float) -> np.ndarray:
  """Var[eps - x0 | x_t] for x0 ~ N(mean, std^2): the minimum of the flow loss at time t."""
  variance = (1 - t) ** 2 * std ** 2 + t ** 2
  return 1 + std ** 2 - (t - (1 - t) * std ** 2) ** 2 / variance


def mixture_velocity(x: jax.Array, t: jax.Array, weights: Sequence[float],
                     means: Sequence[float], stds: Sequence[float]) -> jax.Array:
  """Exact velocity for x0 ~ sum_k weights_k N(means_k, stds_k^2) per coordinate."""
  t = _per_frame(t, x)
  log_posteriors, velocities = [], []
  for weight, mean, std in zip(weights, means, stds):
    variance = (1 - t) ** 2 * std ** 2 + t ** 2
    centred = x - (1 - t) * mean
    log_posteriors.append(np.log(weight) - 0.5 * jnp.log(variance)
                          - 0.5 * centred ** 2 / variance)
    velocities.append(-mean + (t - (1 - t) * std ** 2) * centred / variance)
  posteriors = jax.nn.softmax(jnp.stack(log_posteriors), axis=0)
  return jnp.sum(posteriors * jnp.stack(velocities), axis=0)
