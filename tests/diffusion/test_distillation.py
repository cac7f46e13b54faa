"""videogen/diffusion/distillation.py: nested grids, the schedules' steps, the teacher's recorded
trajectory and the student's sampler, on velocity fields whose ODE is solved exactly."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videogen.diffusion import distillation
from videogen.diffusion import samplers

SHAPE = (2, 3, 4, 4, 2)


@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_the_student_grids_are_points_of_the_finest_and_of_the_teachers(shift):
  finest = distillation.student_grid(4, shift)
  teacher = samplers.timestep_grid(20, shift)
  for n in (1, 2, 4):
    grid = distillation.student_grid(n, shift)
    np.testing.assert_array_equal(grid, finest[::4 // n])
    np.testing.assert_array_equal(grid, teacher[::20 // n])


def test_schedule_pairs_cover_each_schedule_and_draw_each_equally():
  pairs = distillation.schedule_pairs((1, 2, 4), 4)
  assert pairs.tolist() == [[0, 4, 1], [0, 2, 2], [2, 4, 2], [0, 1, 4], [1, 2, 4], [2, 3, 4],
                            [3, 4, 4]]
  probabilities = distillation.pair_probabilities(pairs)
  np.testing.assert_allclose(probabilities.sum(), 1.0, rtol=1e-6)
  for n in (1, 2, 4):
    np.testing.assert_allclose(probabilities[pairs[:, 2] == n].sum(), 1 / 3, rtol=1e-6)


@pytest.mark.parametrize("student_steps, teacher_steps, match", [
    ((1, 3, 4), 20, "each must divide"), ((1, 2, 4), 10, "multiple of the student's"),
    ((0, 2), 4, ">= 1")])
def test_grids_that_do_not_nest_are_refused(student_steps, teacher_steps, match):
  with pytest.raises(ValueError, match=match):
    distillation.check_steps(student_steps, teacher_steps)


def _affine_velocity(x, t, cond):
  """v = a (a constant per sample, from the conditioning): x(t) = x(1) + (t - 1) a exactly, for
  Euler and Heun alike; the null caption's a is 0, so guidance scales it by w."""
  return jnp.broadcast_to(cond["a"][:, None, None, None, None], x.shape) + 0.0 * t[
      :, :, None, None, None]


@pytest.mark.parametrize("method", ["euler", "heun"])
def test_teacher_states_are_the_teachers_trajectory_at_the_student_grid(method):
  noise = jax.random.normal(jax.random.key(0), SHAPE)
  a = jnp.asarray([1.0, -2.0])
  config = samplers.SamplerConfig(method=method, num_steps=8, guidance_scale=3.0)
  states = jax.jit(lambda noise: distillation.teacher_states(
      _affine_velocity, noise, config=config, shift=3.0, points=4, conditioning={"a": a},
      negative_conditioning={"a": jnp.zeros(2)}))(noise)
  assert states.shape == (2, 5, *SHAPE[1:])
  grid = distillation.student_grid(4, 3.0)
  guided = 3.0 * a  # w * v_cond + (1 - w) * v_null
  for k, t in enumerate(grid):
    expected = noise + (t - 1.0) * guided[:, None, None, None, None]
    np.testing.assert_allclose(states[:, k], expected, atol=1e-5)
  # The last point is what the teacher's own sampler gives.
  final = samplers.sample(_affine_velocity, noise, config=config, shift=3.0,
                          conditioning={"a": a}, negative_conditioning={"a": jnp.zeros(2)},
                          progress=False)
  np.testing.assert_allclose(states[:, -1], final, atol=1e-5)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_the_student_makes_one_pass_per_step_with_its_step_size(steps):
  noise = jax.random.normal(jax.random.key(1), SHAPE)
  seen = []

  def velocity(x, t, cond):
    seen.append((np.asarray(t), np.asarray(cond[distillation.STEP_SIZE])))
    return _affine_velocity(x, t, cond)

  a = jnp.asarray([0.5, 2.0])
  out = distillation.sample_student(velocity, noise, num_steps=steps, shift=3.0,
                                    conditioning={"a": a})
  np.testing.assert_allclose(out, noise - a[:, None, None, None, None], atol=1e-5)
  grid = distillation.student_grid(steps, 3.0)
  assert len(seen) == steps
  for (t, size), t_now, t_next in zip(seen, grid[:-1], grid[1:]):
    np.testing.assert_array_equal(t, np.full(SHAPE[:2], t_now))
    np.testing.assert_allclose(size, np.full(SHAPE[0], t_now - t_next), rtol=1e-6)


def test_the_student_holds_given_frames_at_timestep_zero():
  noise = jax.random.normal(jax.random.key(2), SHAPE)
  given = jax.random.normal(jax.random.key(3), SHAPE)
  mask = jnp.asarray([True, False, False])
  times = []

  def velocity(x, t, cond):
    times.append(np.asarray(t))
    return _affine_velocity(x, t, cond)

  out = distillation.sample_student(velocity, noise, num_steps=2, shift=1.0,
                                    conditioning={"a": jnp.ones(2)}, cond_latents=given,
                                    cond_mask=mask)
  np.testing.assert_array_equal(out[:, 0], given[:, 0])
  np.testing.assert_allclose(out[:, 1:], noise[:, 1:] - 1.0, atol=1e-5)
  assert all(np.all(t[:, 0] == 0.0) and np.all(t[:, 1:] > 0.0) for t in times)
