"""ODE samplers for rectified flow: Euler and Heun over a shifted timestep grid, with guidance.

The learned velocity v(x_t, t) = E[eps - x0 | x_t] defines an ODE dx/dt = v whose solution carries
noise at t = 1 to data at t = 0. The samplers integrate it over a grid of `num_steps` steps,
linear in time and then pushed towards noise by the same time shift training used for this token
count (`flow.time_shift`), so that the steps go where training put its timesteps.

    shift = samplers.sampling_shift(sample_config, flow_config, num_tokens)
    noise = samplers.initial_noise(jax.random.key(sample_config.seed), (B, t, h, w, C))
    latents = samplers.sample(velocity_fn, noise, config=sample_config, shift=shift,
                              conditioning=text, negative_conditioning=null_text)

`velocity_fn(x [B, t, h, w, C], timesteps [B, t], conditioning) -> [B, t, h, w, C]` is the
network (see `videogen.diffusion.guidance` for the conditioning pytree and guidance). Given frames
(`cond_latents`, `cond_mask`; see `videogen.diffusion.conditioning`) are held at their latents at
every step and fed with timestep 0, so the result equals them bit for bit at those frames.

Sampling is a pure function of the noise: the same noise (the same seed) gives the same video.

Compilation: with `jit=True` (the default) the step, or with `progress=False` the whole loop, is
jitted afresh for each `sample` call with velocity_fn traced inside, so whatever it closes over
(a model's parameters) is read at that call and never goes stale. To sample many requests from one
model without recompiling the network each time, jit the network yourself with its parameters
as arguments and pass `jit=False`; the sampler's own arithmetic per step is then a few small
eager ops:

    @jax.jit
    def network(state, x, t, text):
      return nnx.merge(graphdef, state)(x, t, text)
    latents = samplers.sample(lambda x, t, text: network(state, x, t, text), noise, ...,
                              jit=False)
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Literal, Optional

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from videogen.diffusion import conditioning as conditioning_lib
from videogen.diffusion import flow
from videogen.diffusion import guidance


FRAME_SCHEDULES = ("together", "pyramid", "image_first")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """The `config.sample` section: how videos are sampled.

  Attributes:
    method: "euler" (one network call per step) or "heun" (two per step, second order; the
      last step too, since the flow's velocity is defined at t = 0).
    num_steps: steps from t = 1 to t = 0.
    guidance_scale: classifier-free guidance weight w; 1 disables guidance (one branch only).
    shift: time shift of the grid; None uses the training shift for the video's token count
      (`flow.resolution_shift_value`), which is what the model was trained for.
    negative_prompt: the unconditional branch's prompt; "" is the null caption.
    seed: seed of the initial noise; the same seed gives the same video.
    frame_schedule: "together" (every latent frame at the same time); "pyramid": earlier
      frames settle first, frame f's (unshifted) time lagging frame f - 1's by `frame_lag`
      (`frame_timestep_grid`), so the first frames are set before the caption steers the later
      ones; meant for a model trained with diffusion forcing (`FlowConfig.frame_noise_prob`).
      "image_first": a fresh clip's first latent frame is sampled alone, as an image, and the
      rest with it given (image-to-video), so the caption decides where things go from a
      settled start (Emu Video's factorisation); the generation pipeline does this, `sample`
      itself runs it as "together".
    frame_lag: the pyramid's lag between neighbouring latent frames, in (0, 1] of unshifted
      time; 1 is causal (a frame starts when the one before it is done). The pyramid takes
      about num_steps * (1 + (t - 1) frame_lag) steps for t latent frames, so every frame gets
      the step size of the plain grid.
  """
  method: Literal["euler", "heun"] = "heun"
  num_steps: int = 30
  guidance_scale: float = 4.0
  shift: Optional[float] = None
  negative_prompt: str = ""
  seed: int = 0
  frame_schedule: Literal["together", "pyramid", "image_first"] = "together"
  frame_lag: float = 0.25

  def __post_init__(self):
    if self.num_steps < 1:
      raise ValueError(f"num_steps = {self.num_steps} must be >= 1 (try 30)")
    if self.shift is not None and self.shift <= 0:
      raise ValueError(f"shift = {self.shift} must be > 0, or None for the training shift")
    if self.frame_schedule not in FRAME_SCHEDULES:
      raise ValueError(f"frame_schedule = {self.frame_schedule!r} is unknown: choose one of "
                       f"{', '.join(FRAME_SCHEDULES)}")
    if not 0.0 < self.frame_lag <= 1.0:
      raise ValueError(f"frame_lag = {self.frame_lag} must be in (0, 1] (try 0.25; 1 = causal)")


def sampling_shift(config: SamplerConfig, flow_config: flow.FlowConfig, num_tokens: int) -> float:
  """The grid's time shift: `config.shift` if set, else the training shift for `num_tokens`."""
  if config.shift is not None:
    return config.shift
  return flow.resolution_shift_value(num_tokens, flow_config)


def timestep_grid(num_steps: int, shift: float, start_time: float = 1.0) -> np.ndarray:
  """The times the sampler visits, from `start_time` down to 0.

  Uniform in unshifted time, then shifted: with s > 1 the steps crowd at high noise. A start
  below 1 (editing) keeps the step size of the full grid, so it takes proportionally fewer steps.

  Args:
    num_steps: steps of the full grid from 1 to 0.
    shift: the time shift s.
    start_time: the first time, in (0, 1].

  Returns:
    float32 [n + 1], strictly decreasing from start_time to exactly 0 (n = num_steps when
    start_time = 1).
  """
  if not 0.0 < start_time <= 1.0:
    raise ValueError(f"start_time = {start_time} must be in (0, 1]; an edit strength of 0 "
                     f"would leave the video unchanged")
  unshifted_start = float(flow.inverse_time_shift(np.float64(start_time), shift))
  steps = max(1, math.ceil(num_steps * unshifted_start - 1e-9))
  unshifted = np.linspace(unshifted_start, 0.0, steps + 1, dtype=np.float64)
  grid = flow.time_shift(unshifted, shift)
  grid[0], grid[-1] = start_time, 0.0
  return grid.astype(np.float32)


def frame_timestep_grid(num_steps: int, shift: float, latent_frames: int,
                        lag: float) -> np.ndarray:
  """The pyramid schedule: per-frame times where earlier latent frames settle first.

  A progress variable u runs uniformly from 1 + (t - 1) lag down to 0 in steps of the plain
  grid's size 1 / num_steps; frame f sits at the unshifted time clip(u - (t - 1 - f) lag, 0, 1),
  lag behind frame f - 1, and is then shifted as `timestep_grid` does. Every frame starts at 1,
  ends at exactly 0 and never goes up; frame 0 reaches 0 first.

  Args:
    num_steps: steps of the plain grid from 1 to 0.
    shift: the time shift s.
    latent_frames: t.
    lag: offset between neighbouring frames in unshifted time, in (0, 1].

  Returns:
    float32 [n + 1, t] with n = ceil(num_steps (1 + (t - 1) lag)).
  """
  span = 1.0 + (latent_frames - 1) * lag
  steps = max(1, math.ceil(num_steps * span - 1e-9))
  progress = np.linspace(span, 0.0, steps + 1, dtype=np.float64)
  offsets = (latent_frames - 1 - np.arange(latent_frames)) * lag  # [t]: frame 0 is furthest ahead
  unshifted = np.clip(progress[:, None] - offsets[None, :], 0.0, 1.0)
  grid = flow.time_shift(unshifted, shift)
  grid[0], grid[-1] = 1.0, 0.0
  return grid.astype(np.float32)


def initial_noise(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
  """The starting noise x_1 ~ N(0, I) for a key (the seed fixes the video)."""
  return jax.random.normal(key, shape, dtype)


def edit_start(latents: jax.Array, noise: jax.Array, strength: float) -> jax.Array:
  """SDEdit's start: the input video's latents noised to t = strength.

  Sample from it with `sample(edit_start(...), ..., start_time=strength)`. Strength 1 ignores the
  input; smaller strengths keep more of it.

  Args:
    latents: [B, t, h, w, C] of the video to edit.
    noise: eps of the same shape.
    strength: in (0, 1].
  """
  t = jnp.full(latents.shape[:2], strength, jnp.float32)
  return flow.noisy_input(latents, noise, t)


def _velocity(velocity_fn: guidance.VelocityFn, x: jax.Array, t: jax.Array, *,
              guidance_scale: float, conditioning: Any, negative_conditioning: Any,
              cond_latents: jax.Array | None, cond_mask: jax.Array | None) -> jax.Array:
  """The guided velocity at time t with the given frames held and at timestep 0. float32."""
  frame_times = jnp.full(x.shape[:2], t, jnp.float32)
  if cond_mask is not None:
    x = conditioning_lib.hold_frames(x, cond_latents, cond_mask)
    frame_times = jnp.where(cond_mask, 0.0, frame_times)
  return guidance.guided_velocity(velocity_fn, x, frame_times, conditioning,
                                  negative_conditioning, guidance_scale)


def sampler_step(velocity_fn: guidance.VelocityFn, x: jax.Array, t_now: jax.Array,
                 t_next: jax.Array, *, method: str, guidance_scale: float, conditioning: Any = None,
                 negative_conditioning: Any = None, cond_latents: jax.Array | None = None,
                 cond_mask: jax.Array | None = None) -> jax.Array:
  """One Euler or Heun step of the flow ODE from t_now to t_next (< t_now).

  Args:
    velocity_fn: the network, see the module docstring.
    x: x at t_now, [B, t, h, w, C].
    t_now, t_next: scalar times, or [t] per latent frame (the pyramid schedule).
    method: "euler" or "heun". Heun averages the slopes at both ends (two network calls).
    guidance_scale: classifier-free guidance weight.
    conditioning, negative_conditioning: the two branches' pytrees.
    cond_latents, cond_mask: given frames ([B, t, h, w, C], bool [B, t]) or None.

  Returns:
    x at t_next, in x's dtype, with the given frames equal to cond_latents.
  """
  velocity = functools.partial(
      _velocity, velocity_fn, guidance_scale=guidance_scale, conditioning=conditioning,
      negative_conditioning=negative_conditioning, cond_latents=cond_latents, cond_mask=cond_mask)
  hold = (lambda y: y) if cond_mask is None else (
      lambda y: conditioning_lib.hold_frames(y, cond_latents, cond_mask))
  x32 = x.astype(jnp.float32)
  dt = t_next - t_now
  if jnp.ndim(dt):
    dt = jnp.reshape(dt, (1, -1) + (1,) * (x.ndim - 2))  # [t] -> per frame of x
  slope = velocity(x, t_now)
  if method == "euler":
    x_next = x32 + dt * slope
  elif method == "heun":
    x_euler = hold((x32 + dt * slope).astype(x.dtype))
    x_next = x32 + dt * 0.5 * (slope + velocity(x_euler, t_next))
  else:
    raise ValueError(f"unknown sampler method {method!r}; choose 'euler' or 'heun'")
  return hold(x_next.astype(x.dtype))


def sample(velocity_fn: guidance.VelocityFn, noise: jax.Array, *, config: SamplerConfig,
           shift: float, conditioning: Any = None, negative_conditioning: Any = None,
           cond_latents: jax.Array | None = None, cond_mask: jax.Array | None = None,
           start_time: float = 1.0, progress: bool = True, jit: bool = True) -> jax.Array:
  """Integrates the flow ODE from `start_time` to 0: noise in, latents out.

  Args:
    velocity_fn: `velocity_fn(x [B, t, h, w, C], timesteps [B, t], conditioning) -> velocity`.
    noise: x at start_time, [B, t, h, w, C] float: pure noise (`initial_noise`) for
      start_time = 1, `edit_start(latents, noise, strength)` for editing. Its dtype is the
      sampler state's.
    config: method, num_steps, guidance_scale.
    shift: the grid's time shift (`sampling_shift`).
    conditioning: the prompt's conditioning pytree, leaves [B, ...] (None: unconditional model).
    negative_conditioning: the null caption's / negative prompt's pytree, shaped like
      conditioning; needed when config.guidance_scale != 1.
    cond_latents: [B, t, h, w, C], the given frames' latents (other frames ignored).
    cond_mask: bool [B, t] or [t], True = frame given (held at cond_latents, timestep 0).
    start_time: first time of the grid; < 1 for editing.
    progress: show a tqdm bar over the steps (a Python loop over a jitted step); when False
      the whole loop runs as one jitted `fori_loop`.
    jit: jit the step (and loop). Set False when velocity_fn is already jitted and must not be
      retraced, or to run eagerly for debugging.

  Returns:
    x at t = 0, [B, t, h, w, C] in noise's dtype; equal to cond_latents at the given frames.
  """
  if not jnp.issubdtype(noise.dtype, jnp.floating):
    raise ValueError(f"noise must be a float array, got {noise.dtype}")
  if noise.ndim < 2:
    raise ValueError(f"noise must be [B, t, ...], got shape {noise.shape}")
  if cond_mask is not None:
    if cond_latents is None:
      raise ValueError("cond_mask was given without cond_latents: pass the given frames' "
                       "latents (conditioning.place_frames builds them)")
    if cond_latents.shape != noise.shape:
      raise ValueError(f"cond_latents {cond_latents.shape} must have the shape of noise "
                       f"{noise.shape}")
    cond_mask = jnp.broadcast_to(jnp.asarray(cond_mask, bool), noise.shape[:2])
  if config.frame_schedule == "pyramid":
    if start_time != 1.0:
      raise ValueError("the pyramid frame schedule starts every frame from pure noise; editing "
                       "(start_time < 1) needs --config.sample.frame_schedule=together")
    grid = frame_timestep_grid(config.num_steps, shift, noise.shape[1], config.frame_lag)
  else:
    grid = timestep_grid(config.num_steps, shift, start_time)
  step = functools.partial(sampler_step, velocity_fn, method=config.method,
                           guidance_scale=config.guidance_scale)
  branches = dict(conditioning=conditioning, negative_conditioning=negative_conditioning,
                  cond_latents=cond_latents, cond_mask=cond_mask)
  x = noise
  if cond_mask is not None:
    x = conditioning_lib.hold_frames(x, cond_latents, cond_mask)
  if jit and not progress:
    # Jitted afresh per call (not cached): velocity_fn may close over parameters that change.
    return jax.jit(functools.partial(_integrate, step))(x, jnp.asarray(grid), branches)
  step_fn = jax.jit(step) if jit else step
  with tqdm.tqdm(total=len(grid) - 1, desc="sampling", unit="step", disable=not progress,
                 leave=False) as bar:
    for t_now, t_next in zip(grid[:-1], grid[1:]):
      x = step_fn(x, jnp.asarray(t_now, jnp.float32), jnp.asarray(t_next, jnp.float32),
                  **branches)
      if progress:
        x.block_until_ready()  # So the bar shows computed steps, not dispatched ones.
      bar.update(1)
  return x


def _integrate(step, x: jax.Array, grid: jax.Array, branches: dict[str, Any]) -> jax.Array:
  """All steps of the grid in one compiled loop."""
  def body(i, x):
    return step(x, grid[i], grid[i + 1], **branches)
  return jax.lax.fori_loop(0, grid.shape[0] - 1, body, x)
