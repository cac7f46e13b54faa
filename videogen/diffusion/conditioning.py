"""Frame conditioning: one mechanism for image-to-video, extension, loops and connecting clips.

Some latent frames are *given*: during training they are the clean latents at timestep 0 and are
left out of the loss; at sampling they are held at the given latents at every step and fed with
timestep 0, while the other frames are denoised around them. A per-latent-frame bool mask
[B, t] (True = given) says which. The generation modes map onto the training modes:

    image-to-video        "first"           (the image's latent as frame 0)
    extend forwards       "prefix"          (the end of a clip as the first frames)
    extend backwards      "suffix"          (the start of a clip as the last frames)
    loop                  "first_and_last"  (the same latent at both ends)
    connect two clips     "first_and_last"  (the end of one clip, the start of the other)
    edit / plain t2v      "none"

During training a mode is drawn per example (`sample_condition_mask`); at generation the
pipeline builds the mask with `mode_mask` and the latents with `place_frames`.
"""

from __future__ import annotations

from typing import Protocol

import jax
import jax.numpy as jnp
import numpy as np


class ConditionDraw(Protocol):
  """What `sample_condition_mask` reads of its config: `flow.FlowConfig` has both fields.

  A protocol rather than FlowConfig itself, so that this module imports nothing from flow.py
  (which imports it).
  """
  condition_probability: float
  condition_weights: tuple[float, ...]

# The modes drawn in training, in the order of `FlowConfig.condition_weights`.
CONDITION_MODES: tuple[str, ...] = ("first", "last", "prefix", "suffix", "first_and_last")
INFERENCE_MODES: tuple[str, ...] = ("none",) + CONDITION_MODES


def mode_mask(mode: str, latent_frames: int, count: int = 1) -> np.ndarray:
  """The frames one conditioning mode gives, for building a sampling request.

  Args:
    mode: one of `INFERENCE_MODES`.
    latent_frames: t, the number of latent frames to generate.
    count: how many frames "prefix" and "suffix" give (the other modes ignore it).

  Returns:
    bool [t], True = frame given.

  Raises:
    ValueError: for an unknown mode, or one that would give every frame (nothing to generate).
  """
  if mode not in INFERENCE_MODES:
    raise ValueError(f"unknown conditioning mode {mode!r}; choose one of: "
                     f"{', '.join(INFERENCE_MODES)}")
  if count < 1:
    raise ValueError(f"count = {count} must be >= 1")
  frames = np.arange(latent_frames)
  if mode == "none":
    mask = np.zeros(latent_frames, bool)
  elif mode == "first":
    mask = frames == 0
  elif mode == "last":
    mask = frames == latent_frames - 1
  elif mode == "prefix":
    mask = frames < count
  elif mode == "suffix":
    mask = frames >= latent_frames - count
  else:
    mask = (frames == 0) | (frames == latent_frames - 1)
  if mask.all():
    raise ValueError(f"mode {mode!r} (count={count}) would give all {latent_frames} latent "
                     f"frames, leaving nothing to generate: ask for more frames or fewer given")
  return mask


def place_frames(given: jax.Array, mask: np.ndarray) -> jax.Array:
  """Spreads given latent frames onto the positions a mask marks, zeros elsewhere.

  Args:
    given: [B, k, h, w, C], the given frames in time order.
    mask: bool [t] (static) with exactly k True entries.

  Returns:
    cond_latents [B, t, h, w, C] for the sampler.
  """
  mask = np.asarray(mask, bool)
  positions = np.flatnonzero(mask)
  if len(positions) != given.shape[1]:
    raise ValueError(f"the mask gives {len(positions)} frames but {given.shape[1]} latent frames "
                     f"were passed: pass one latent frame per True entry of the mask")
  batch, _, *frame_shape = given.shape
  cond_latents = jnp.zeros((batch, len(mask), *frame_shape), given.dtype)
  return cond_latents.at[:, positions].set(given)


def hold_frames(x: jax.Array, cond_latents: jax.Array, cond_mask: jax.Array) -> jax.Array:
  """x with the given frames replaced, bit for bit, by the conditioning latents.

  Args:
    x: [B, t, h, w, C].
    cond_latents: [B, t, h, w, C] (values at frames that are not given are ignored).
    cond_mask: bool [B, t] or [t], True = given.
  """
  cond_mask = jnp.broadcast_to(cond_mask, x.shape[:2])
  cond_mask = jnp.reshape(cond_mask, cond_mask.shape + (1,) * (x.ndim - 2))
  return jnp.where(cond_mask, cond_latents.astype(x.dtype), x)


def sample_condition_mask(rng: jax.Array, batch: int, latent_frames: int, config: ConditionDraw,
                          frame_valid: jax.Array | None = None) -> jax.Array:
  """Training draw of the frames given clean, one mode per example.

  With probability `config.condition_probability` an example gets a mode drawn with
  `config.condition_weights` over first / last / prefix / suffix / first_and_last (prefix and
  suffix lengths uniform in [1, n - 1] for n valid frames); otherwise no frame is given. A draw
  that would give every valid frame (e.g. "first" on a one-frame image) gives none instead, so
  there is always something to learn.

  Args:
    rng: a PRNG key.
    batch: B.
    latent_frames: t.
    config: the flow config, or anything with its `condition_probability` and
      `condition_weights`.
    frame_valid: optional bool [B, t], False at padding frames after each video's end; "last"
      and "suffix" then count from the last valid frame.

  Returns:
    bool [B, t], True = frame given clean (never a padding frame).
  """
  use_rng, mode_rng, length_rng = jax.random.split(rng, 3)
  if frame_valid is None:
    frame_valid = jnp.ones((batch, latent_frames), bool)
  num_valid = jnp.sum(frame_valid, axis=1, dtype=jnp.int32)[:, None]  # [B, 1]
  conditioned = jax.random.bernoulli(use_rng, config.condition_probability, (batch, 1))
  weights = jnp.asarray(config.condition_weights, jnp.float32)
  mode = jax.random.choice(mode_rng, len(CONDITION_MODES), (batch,), p=weights / weights.sum())
  # Prefix/suffix length in [1, n - 1]; n = 1 yields 1, which the all-given rule below clears.
  uniform = jax.random.uniform(length_rng, (batch, 1))
  length = 1 + jnp.floor(uniform * jnp.maximum(num_valid - 1, 1)).astype(jnp.int32)
  frames = jnp.arange(latent_frames)[None, :]  # [1, t]
  first = frames == 0
  last = frames == num_valid - 1
  candidates = jnp.stack([
      jnp.broadcast_to(first, (batch, latent_frames)),
      last,
      frames < length,
      (frames >= num_valid - length) & (frames < num_valid),
      first | last,
  ], axis=1)  # [B, modes, t]
  mask = jnp.take_along_axis(candidates, mode[:, None, None], axis=1)[:, 0]
  mask = mask & conditioned & frame_valid
  gives_everything = jnp.sum(mask, axis=1, keepdims=True) >= num_valid
  return mask & ~gives_everything
