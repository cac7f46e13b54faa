"""Few-step sampling by trajectory (flow-map) distillation: the grids, the teacher's trajectories,
the pairs a student learns, and the student's sampler.

A teacher samples with its own sampler (e.g. Heun, 20 steps, classifier-free guidance: 40 network
passes per branch pair). A student with a step-size embedding (`DiTConfig.step_size_embedding`)
learns to jump along the teacher's trajectories in one pass per step, guidance folded in:

    x_s = x_t + (s - t) * v_student(x_t, t, d = t - s)

should land on the teacher's state at s (Luhman & Luhman 2021, "Knowledge distillation in
iterative generative models"; the step-size conditioning of shortcut models, Frans et al. 2024,
and of flow maps, "Align Your Flow", Sabour et al. 2025). The student's grids of 1, 2, ..., K steps
are the teacher's grid (`samplers.timestep_grid`, the same time shift) with K steps thinned: with
K a multiple of each step count, the grid of n steps holds every (K / n)-th point of the K-step
grid, so one teacher trajectory recorded at the K + 1 points of the finest grid teaches every
schedule.

    grid = student_grid(4, shift)                          # [5] times, 1 -> 0
    states = teacher_states(velocity_fn, noise, config=teacher_config, shift=shift,
                            points=4, conditioning=text, negative_conditioning=null_text)
    pairs = schedule_pairs((1, 2, 4), 4)                   # (i, j, steps) of grid points i -> j
    latents = sample_student(student_fn, noise, num_steps=2, shift=shift, conditioning=text)
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from videogen.diffusion import conditioning as conditioning_lib
from videogen.diffusion import samplers

# The conditioning pytree's key that carries the step size [B] to a student's velocity_fn.
STEP_SIZE = "step_size"


def check_steps(student_steps: tuple[int, ...], teacher_steps: int) -> int:
  """The finest student schedule K, after checking that the grids nest.

  Raises:
    ValueError: a step count below 1, one that does not divide K, or K not dividing the
      teacher's steps (then the student's grid points would fall between the teacher's).
  """
  if not student_steps or any(n < 1 for n in student_steps):
    raise ValueError(f"student_steps = {student_steps} must be step counts >= 1, e.g. (1, 2, 4)")
  finest = max(student_steps)
  if any(finest % n for n in student_steps):
    raise ValueError(f"student_steps = {student_steps}: each must divide the largest ({finest}), "
                     f"so that their grids share points, e.g. (1, 2, 4)")
  if teacher_steps % finest:
    raise ValueError(f"the teacher's {teacher_steps} steps must be a multiple of the student's "
                     f"{finest}: set teacher_steps to e.g. {5 * finest}")
  return finest


def student_grid(num_steps: int, shift: float, start_time: float = 1.0) -> np.ndarray:
  """The times of an n-step student: the sampler's grid of n steps (float32 [n + 1], 1 -> 0)."""
  return samplers.timestep_grid(num_steps, shift, start_time)


def schedule_pairs(student_steps: tuple[int, ...], finest: int) -> np.ndarray:
  """Every step of every student schedule, as grid points of the finest grid.

  Returns:
    int32 [P, 3]: rows (i, j, n): a step of the n-step schedule from the finest grid's point i to
    point j > i (so from time grid[i] down to grid[j]).
  """
  rows = []
  for n in sorted(set(student_steps)):
    stride = finest // n
    rows += [(k * stride, (k + 1) * stride, n) for k in range(n)]
  return np.asarray(rows, np.int32)


def pair_probabilities(pairs: np.ndarray) -> np.ndarray:
  """float32 [P]: each schedule gets the same share, split evenly over its steps (so the one
  step of the 1-step schedule is drawn as often as all four of the 4-step one together)."""
  schedules = np.unique(pairs[:, 2])
  weights = np.array([1.0 / np.sum(pairs[:, 2] == n) for n in pairs[:, 2]]) / len(schedules)
  return weights.astype(np.float32)


def teacher_states(velocity_fn: Any, noise: jax.Array, *, config: samplers.SamplerConfig,
                   shift: float, points: int, conditioning: Any = None,
                   negative_conditioning: Any = None, params: Any = None) -> jax.Array:
  """Integrates the teacher's ODE from noise and records its state on the student's finest grid.

  Args:
    velocity_fn: the teacher, `velocity_fn(x, timesteps [B, t], conditioning) -> velocity`.
    noise: x at t = 1, [B, t, h, w, C].
    config: the teacher's sampler (method, num_steps, guidance_scale); num_steps must be a
      multiple of `points`.
    shift: the grid's time shift (the same for teacher and student).
    points: K, the finest student schedule's steps.
    conditioning, negative_conditioning: the two branches' pytrees, leaves [B, ...].
    params: when given, velocity_fn is `velocity_fn(params, x, timesteps, conditioning)`, and
      params (e.g. a split NNX module's state) are carried through the loop as an argument
      (a module's variables cannot be closed over by `lax.fori_loop`'s body).

  Returns:
    float32 [B, K + 1, t, h, w, C]: the teacher's x at `student_grid(K, shift)`'s times (the
    first is the noise itself).
  """
  check_steps((points,), config.num_steps)
  grid = jnp.asarray(samplers.timestep_grid(config.num_steps, shift))
  stride = config.num_steps // points

  def body(i, carry):
    x, states, carried = carry
    network = velocity_fn if params is None else functools.partial(velocity_fn, carried)
    x = samplers.sampler_step(network, x, grid[i], grid[i + 1], method=config.method,
                              guidance_scale=config.guidance_scale, conditioning=conditioning,
                              negative_conditioning=negative_conditioning)
    # Step i lands on teacher point i + 1; every stride-th one is a student grid point.
    point = (i + 1) // stride
    recorded = jnp.where((i + 1) % stride == 0, x, states[:, point])
    return x, states.at[:, point].set(recorded), carried

  x = noise.astype(jnp.float32)
  states = jnp.zeros((x.shape[0], points + 1, *x.shape[1:]), jnp.float32).at[:, 0].set(x)
  _, states, _ = jax.lax.fori_loop(0, config.num_steps, body, (x, states, params))
  return states


def student_step(velocity_fn: Any, x: jax.Array, t_now: jax.Array, t_next: jax.Array, *,
                 conditioning: dict[str, Any], cond_latents: jax.Array | None = None,
                 cond_mask: jax.Array | None = None) -> jax.Array:
  """One student step x_s = x_t + (s - t) v(x_t, t, d = t - s): one network pass, no guidance.

  Given frames (cond_latents, cond_mask) are held at their latents with timestep 0, as the
  teacher's sampler holds them.
  """
  frame_times = jnp.full(x.shape[:2], t_now, jnp.float32)
  if cond_mask is not None:
    x = conditioning_lib.hold_frames(x, cond_latents, cond_mask)
    frame_times = jnp.where(cond_mask, 0.0, frame_times)
  step_size = jnp.full((x.shape[0],), t_now - t_next, jnp.float32)
  velocity = velocity_fn(x, frame_times, {**conditioning, STEP_SIZE: step_size})
  x_next = (x.astype(jnp.float32) + (t_next - t_now) * velocity).astype(x.dtype)
  if cond_mask is not None:
    x_next = conditioning_lib.hold_frames(x_next, cond_latents, cond_mask)
  return x_next


def sample_student(velocity_fn: Any, noise: jax.Array, *, num_steps: int, shift: float,
                   conditioning: dict[str, Any], cond_latents: jax.Array | None = None,
                   cond_mask: jax.Array | None = None, start_time: float = 1.0) -> jax.Array:
  """The student's few-step sampler: noise [B, t, h, w, C] at start_time -> latents at t = 0.

  Args:
    velocity_fn: the student, `velocity_fn(x, timesteps [B, t], conditioning)`, where
      conditioning[STEP_SIZE] is the step's size [B]; jit it yourself (a few eager ops per step
      here).
    num_steps: n (the grid of n steps, thinned proportionally for start_time < 1, as the
      teacher's sampler does for editing).
    shift: the grid's time shift (`samplers.sampling_shift`), the one the student learned.
    conditioning: the prompt's pytree (a dict; the student has no unconditional branch).
    cond_latents, cond_mask: given frames as in `samplers.sample` ([B, t, h, w, C],
      bool [B, t] or [t]).
    start_time: the grid's first time (editing starts below 1).

  Returns:
    x at t = 0 in noise's dtype, equal to cond_latents at the given frames.
  """
  if num_steps < 1 or not math.isfinite(num_steps):
    raise ValueError(f"num_steps = {num_steps} must be >= 1")
  if cond_mask is not None:
    cond_mask = jnp.broadcast_to(jnp.asarray(cond_mask, bool), noise.shape[:2])
  grid = student_grid(num_steps, shift, start_time)
  x = noise
  if cond_mask is not None:
    x = conditioning_lib.hold_frames(x, cond_latents, cond_mask)
  for t_now, t_next in zip(grid[:-1], grid[1:]):
    x = student_step(velocity_fn, x, jnp.float32(t_now), jnp.float32(t_next),
                     conditioning=conditioning, cond_latents=cond_latents, cond_mask=cond_mask)
  return x
