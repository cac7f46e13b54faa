"""Rectified flow: the training objective, timestep sampling and the resolution-dependent shift.

Time convention: t = 0 is data, t = 1 is pure noise, and the path between them is a straight line

    x_t = (1 - t) x0 + t eps,        eps ~ N(0, I),

whose velocity dx_t/dt = eps - x0 is what the network predicts. Sampling integrates that velocity
from t = 1 down to t = 0 (`videogen.diffusion.samplers`).

Timesteps are drawn logit-normal (logit(t) ~ N(logit_mean, logit_std^2)) and then shifted towards
noise by the SD3 time shift

    shift(t, s) = s t / (1 + (s - 1) t),

with s growing with the number of tokens: more tokens carry more redundant signal, so the same t
destroys less of the content and training must spend more of its time at high noise. We use the
SD3 rule s = base_shift * sqrt(num_tokens / base_tokens) (it keeps the signal-to-noise ratio of a
token group fixed when the token count changes), clipped to [min_shift, max_shift]. The sampler
uses the same shift for its timestep grid, so training and sampling agree on where the steps go.

Frame conditioning (image-to-video, extension, loops, connecting clips) is one mechanism: a
per-latent-frame mask of frames given clean at timestep 0 and left out of the loss (see
`videogen.diffusion.conditioning`).

Options of the objective, each off by default (the defaults give the plain loss above bit for bit):
diffusion forcing (`frame_noise_prob`: some examples draw an independent t per latent frame),
the noise-level weighting min-SNR-gamma (`weighting="min_snr"`, see `timestep_weights`), a term on
the temporal differences of the predicted clean latents (`frame_difference_weight`, see
`frame_difference_loss`), a floor on the noise level of examples with frames given
(`condition_min_time`), and masked training (`mask_ratio`: the transformer sees and the loss
counts a random subset of each frame's tokens, drawn by `kept_tokens`). Every function here is
pure and jittable; the diffusion transformer's stage calls `training_inputs` and `flow_loss`
inside its loss:

    inputs = flow.training_inputs(rng, latents, num_tokens=n, config=flow_config)
    prediction = model(inputs.noisy_latents, inputs.timesteps, text, text_mask)
    loss = flow.flow_loss(prediction, inputs.target, inputs.loss_mask)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, NamedTuple, Optional

import jax
import jax.numpy as jnp

from videogen.diffusion import conditioning

# Keeps logit-normal draws away from exactly 0 and 1, where the shift and the loss weighting of
# some callers are singular; 1e-5 in t is far below any sampler step.
_TIME_EPSILON = 1e-5


@dataclasses.dataclass(frozen=True)
class FlowConfig:
  """The `config.diffusion` section: the rectified-flow training objective.

  Attributes:
    logit_mean: mean of logit(t) before the shift (0 puts the mode at t = 0.5).
    logit_std: standard deviation of logit(t) before the shift.
    base_shift: the time shift at `base_tokens` tokens.
    base_tokens: token count at which the shift is `base_shift`; the shift grows as
      sqrt(num_tokens / base_tokens).
    min_shift: lower clip of the shift (1 = no shift).
    max_shift: upper clip of the shift, so very long videos do not push every step to pure noise.
    caption_dropout: probability that a training caption is replaced by the null caption (an
      all-False token mask), which trains the unconditional branch of classifier-free guidance.
    condition_probability: probability that a training video gets some latent frames given clean
      (frame conditioning); the rest of the time no frame is given.
    condition_weights: relative weights of the conditioning modes, in the order of
      `conditioning.CONDITION_MODES` (first, last, prefix, suffix, first_and_last).
    condition_logit_mean, condition_logit_std: the logit-normal of t (before the same shift)
      for examples that get frames given; None = `logit_mean` / `logit_std`, one distribution
      for all. With frames given, motion words pay off only near t = 1, where the noised frames
      no longer show where objects went (measurements: docs/tiny_run.md).
    condition_min_time: examples with frames given draw t in [condition_min_time, 1] (their draw
      mapped affinely onto that range after the shift); 0 = the whole range. The first frame
      given at high noise is the setting where the caption alone decides where things go.
    frame_noise_prob: probability that an example without given frames draws an independent
      t per latent frame (diffusion forcing, Chen et al. 2024) instead of one for the whole
      clip, so the model learns to denoise a frame next to cleaner or noisier ones (what a
      pyramid sampler, `SamplerConfig.frame_schedule`, asks of it). 0 = off.
    weighting: "none" (the plain velocity MSE) or "min_snr" (min-SNR-gamma, Hang et al. 2023,
      see `timestep_weights`).
    min_snr_gamma: the gamma of "min_snr" (the paper's default is 5).
    frame_difference_weight: weight of `frame_difference_loss`, a term on the temporal
      differences of the predicted clean latents; 0 = off.
    mask_ratio: fraction of each token frame's tokens the transformer leaves out in training
      (masked training, MaskDiT: Zheng et al. 2023): its blocks see only the rest, and the loss
      counts only the rest, so a step costs about 1 - mask_ratio of the blocks' compute.
      Sampling always sees every token; MaskDiT's unmasking phase, which fits the transformer
      to the full sequence it samples with, is a continuation with mask_ratio 0.
      0 = off.
  """
  logit_mean: float = 0.0
  logit_std: float = 1.0
  base_shift: float = 1.0
  base_tokens: int = 256
  min_shift: float = 1.0
  max_shift: float = 6.0
  caption_dropout: float = 0.1
  condition_probability: float = 0.25
  condition_weights: tuple[float, ...] = (0.4, 0.1, 0.2, 0.15, 0.15)
  condition_logit_mean: Optional[float] = None
  condition_logit_std: Optional[float] = None
  condition_min_time: float = 0.0
  frame_noise_prob: float = 0.0
  weighting: Literal["none", "min_snr"] = "none"
  min_snr_gamma: float = 5.0
  frame_difference_weight: float = 0.0
  mask_ratio: float = 0.0

  def __post_init__(self):
    for name in ("logit_std", "condition_logit_std"):
      value = getattr(self, name)
      if value is not None and value <= 0:
        raise ValueError(f"{name} = {value} must be > 0 (try 1.0)")
    if self.base_tokens <= 0 or self.base_shift <= 0:
      raise ValueError(f"base_tokens = {self.base_tokens} and base_shift = {self.base_shift} "
                       f"must be > 0")
    if not 0 < self.min_shift <= self.max_shift:
      raise ValueError(f"need 0 < min_shift <= max_shift, got min_shift = {self.min_shift}, "
                       f"max_shift = {self.max_shift}")
    for name in ("caption_dropout", "condition_probability", "frame_noise_prob"):
      value = getattr(self, name)
      if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} = {value} must be a probability in [0, 1]")
    modes = conditioning.CONDITION_MODES
    if len(self.condition_weights) != len(modes):
      raise ValueError(f"condition_weights = {self.condition_weights} needs {len(modes)} "
                       f"entries, one per mode: {', '.join(modes)}")
    if any(w < 0 for w in self.condition_weights) or sum(self.condition_weights) <= 0:
      raise ValueError(f"condition_weights = {self.condition_weights} must be >= 0 with a "
                       f"positive sum")
    if not 0.0 <= self.condition_min_time < 1.0:
      raise ValueError(f"condition_min_time = {self.condition_min_time} must be in [0, 1) "
                       f"(try 0.7; 0 = the whole range)")
    if self.weighting not in ("none", "min_snr"):
      raise ValueError(f"weighting = {self.weighting!r} is unknown: choose 'none' or 'min_snr'")
    if self.min_snr_gamma <= 0:
      raise ValueError(f"min_snr_gamma = {self.min_snr_gamma} must be > 0 (try 5.0)")
    if self.frame_difference_weight < 0:
      raise ValueError(f"frame_difference_weight = {self.frame_difference_weight} must be >= 0 "
                       f"(0 = off)")
    if not 0.0 <= self.mask_ratio < 1.0:
      raise ValueError(f"mask_ratio = {self.mask_ratio} must be in [0, 1) (try 0.5; 0 = off)")
    if self.mask_ratio > 0 and self.frame_difference_weight > 0:
      raise ValueError("frame_difference_weight compares whole frames, which masked training "
                       "(mask_ratio > 0) never predicts: set one of them to 0")


class FlowTrainingInputs(NamedTuple):
  """What one training step feeds the network and the loss (a pytree, so it passes through jit).

  Attributes:
    noisy_latents: x_t, [B, t, h, w, C]; equal to the clean latents at conditioning frames.
    timesteps: per-latent-frame t, float32 [B, t]; 0 at conditioning frames; one t per
      example across its other frames, except under diffusion forcing (`frame_noise_prob`).
    target: the velocity eps - x0 to predict, [B, t, h, w, C].
    loss_mask: bool [B, t], True where a frame counts in the loss (valid and not given clean).
    condition_mask: bool [B, t], True where a frame was given clean.
  """
  noisy_latents: jax.Array
  timesteps: jax.Array
  target: jax.Array
  loss_mask: jax.Array
  condition_mask: jax.Array


def time_shift(t: jax.Array, shift: jax.Array | float) -> jax.Array:
  """The SD3 time shift s t / (1 + (s - 1) t): monotone, fixes 0 and 1, pushes t up for s > 1.

  Equivalent to multiplying the noise-to-signal ratio t / (1 - t) by s.
  """
  return shift * t / (1.0 + (shift - 1.0) * t)


def inverse_time_shift(t: jax.Array, shift: jax.Array | float) -> jax.Array:
  """The inverse of `time_shift`: t / (s - (s - 1) t)."""
  return t / (shift - (shift - 1.0) * t)


def resolution_shift(num_tokens: jax.Array | int, config: FlowConfig) -> jax.Array:
  """The time shift for a sequence of `num_tokens` tokens (scalar or per example).

  s = clip(base_shift * sqrt(num_tokens / base_tokens), min_shift, max_shift): non-decreasing in
  the token count.
  """
  unclipped = config.base_shift * jnp.sqrt(jnp.asarray(num_tokens, jnp.float32)
                                           / config.base_tokens)
  return jnp.clip(unclipped, config.min_shift, config.max_shift)


def resolution_shift_value(num_tokens: int, config: FlowConfig) -> float:
  """`resolution_shift` as a Python float, for static uses such as a sampler's timestep grid."""
  unclipped = config.base_shift * math.sqrt(num_tokens / config.base_tokens)
  return float(min(max(unclipped, config.min_shift), config.max_shift))


def sample_timesteps(rng: jax.Array, batch: int, num_tokens: jax.Array | int,
                     config: FlowConfig) -> jax.Array:
  """Training timesteps: logit-normal, then shifted for the token count.

  Args:
    rng: a PRNG key.
    batch: number of examples B.
    num_tokens: tokens per example (an int, or [B] for examples of different sizes).
    config: the flow config.

  Returns:
    float32 [B] in (0, 1).
  """
  return _logit_normal_times(rng, (batch,), num_tokens, config, config.logit_mean,
                             config.logit_std)


def _logit_normal_times(rng: jax.Array, shape: tuple[int, ...], num_tokens: jax.Array | int,
                        config: FlowConfig, mean: float, std: float) -> jax.Array:
  """Shifted logit-normal draws of `shape` ([B] or [B, t]); a per-example shift is [B]."""
  logits = mean + std * jax.random.normal(rng, shape, jnp.float32)
  shift = resolution_shift(num_tokens, config)
  if shift.ndim:
    shift = jnp.reshape(shift, shift.shape + (1,) * (len(shape) - shift.ndim))
  t = time_shift(jax.nn.sigmoid(logits), shift)
  return jnp.clip(t, _TIME_EPSILON, 1.0 - _TIME_EPSILON)


def frame_timesteps(t: jax.Array, condition_mask: jax.Array) -> jax.Array:
  """Per-latent-frame timesteps: t [B] everywhere except 0 at conditioning frames.

  Args:
    t: float [B].
    condition_mask: bool [B, t_frames], True = frame given clean.

  Returns:
    float32 [B, t_frames].
  """
  return jnp.where(condition_mask, 0.0, t[:, None]).astype(jnp.float32)


def expand_frames(values: jax.Array, like: jax.Array) -> jax.Array:
  """Appends trailing axes so that per-frame `values` [B, t, ...] broadcast against `like`."""
  return jnp.reshape(values, values.shape + (1,) * (like.ndim - values.ndim))


def noisy_input(x0: jax.Array, noise: jax.Array, t: jax.Array) -> jax.Array:
  """x_t = (1 - t) x0 + t eps.

  Args:
    x0: clean latents [B, t, h, w, C].
    noise: eps, same shape.
    t: timesteps, [B, t] per latent frame (or any shape that prefixes x0's).

  Returns:
    x_t in x0's dtype; exactly x0 where t = 0.
  """
  t = expand_frames(t, x0).astype(jnp.float32)
  mixed = (1.0 - t) * x0.astype(jnp.float32) + t * noise.astype(jnp.float32)
  # Where t = 0 keep x0 itself, so conditioning frames are bit-exact even in low precision.
  return jnp.where(t == 0.0, x0, mixed.astype(x0.dtype))


def velocity_target(x0: jax.Array, noise: jax.Array) -> jax.Array:
  """The regression target eps - x0 (float32)."""
  return noise.astype(jnp.float32) - x0.astype(jnp.float32)


def flow_loss(prediction: jax.Array, target: jax.Array,
              loss_mask: jax.Array | None = None, weights: jax.Array | None = None) -> jax.Array:
  """Mean (optionally weighted) squared error over the valid elements only.

  Args:
    prediction: the network's velocity, [B, t, h, w, C].
    target: `velocity_target(x0, noise)`, same shape.
    loss_mask: bool (or 0/1) mask of the elements that count, with a shape that prefixes the
      prediction's: [B, t] per latent frame, [B, t, h, w] per token, or the full shape. False at
      conditioning frames and padding. None counts everything.
    weights: optional float weights per frame ([B, t], `timestep_weights`) or of any shape that
      prefixes the prediction's; they scale each element's error but not the count it is
      divided by. None = 1.

  Returns:
    float32 scalar: sum(mask * weights * (prediction - target)^2) / (number of valid elements);
    0 when nothing is valid.
  """
  squared_error = jnp.square(prediction.astype(jnp.float32) - target.astype(jnp.float32))
  if weights is not None:
    squared_error = squared_error * expand_frames(weights.astype(jnp.float32), squared_error)
  if loss_mask is None:
    return jnp.mean(squared_error)
  weights = jnp.broadcast_to(expand_frames(loss_mask.astype(jnp.float32), squared_error),
                             squared_error.shape)
  return jnp.sum(weights * squared_error) / jnp.maximum(jnp.sum(weights), 1.0)


def timestep_weights(timesteps: jax.Array, config: FlowConfig) -> jax.Array | None:
  """Per-frame loss weights of the noise-level weighting, or None for "none" (unweighted).

  min-SNR-gamma (Hang et al. 2023) weights the error of the predicted clean latents x0 by
  min(SNR(t), gamma), whatever the network predicts. On the flow path x_t = (1 - t) x0 + t eps
  the signal-to-noise ratio is SNR(t) = ((1 - t) / t)^2, and the clean latents predicted from a
  velocity v are x_t - t v, so their error is t times the velocity's. The same weighting of the
  velocity's squared error is therefore

      w(t) = t^2 min(SNR(t), gamma) = min((1 - t)^2, gamma t^2),

  the flow counterpart of the paper's min(SNR, gamma) / (SNR + 1) for a diffusion v-prediction
  (there sigma_t^2 = 1 / (SNR + 1) plays the role of t^2). It caps the weight of the low-noise
  steps (SNR > gamma, t < 1 / (1 + sqrt(gamma))) at gamma t^2 and, like the paper's weights,
  tends to 0 at pure noise.

  Args:
    timesteps: t per latent frame, [B, t] (or any shape).
    config: the flow config.

  Returns:
    float32 weights shaped like `timesteps` (0 at given frames, t = 0), or None.
  """
  if config.weighting == "none":
    return None
  t = jnp.asarray(timesteps, jnp.float32)
  return jnp.minimum(jnp.square(1.0 - t), config.min_snr_gamma * jnp.square(t))


def frame_difference_loss(prediction: jax.Array, target: jax.Array, timesteps: jax.Array,
                          loss_mask: jax.Array, frame_valid: jax.Array) -> jax.Array:
  """Squared error of the temporal differences of the predicted clean latents.

  The clean latents predicted from a velocity v are x0_hat = x_t - t v, and the true ones are
  x0 = x_t - t (eps - x0), so x0_hat - x0 = -t (v - target) per frame. The term compares
  x0_hat[f + 1] - x0_hat[f] with x0[f + 1] - x0[f], i.e. the mean over counted pairs of
  |t[f + 1] e[f + 1] - t[f] e[f]|^2 with e = v - target: it asks for the right motion between
  neighbouring frames, not only the right frames. Given frames (t = 0) enter exactly clean.

  Args:
    prediction: the network's velocity, [B, t, h, w, C].
    target: eps - x0, same shape.
    timesteps: t per latent frame, [B, t].
    loss_mask: bool [B, t], True at frames that count in the loss.
    frame_valid: bool [B, t], False at padding frames (a pair counts when both frames are valid
      and at least one counts in the loss).

  Returns:
    float32 scalar: mean over the elements of the counted pairs; 0 when none (one-frame clips).
  """
  t = expand_frames(jnp.asarray(timesteps, jnp.float32), prediction)
  error = t * (prediction.astype(jnp.float32) - target.astype(jnp.float32))
  squared = jnp.square(error[:, 1:] - error[:, :-1])  # [B, t - 1, h, w, C]
  pairs = (loss_mask[:, 1:] | loss_mask[:, :-1]) & frame_valid[:, 1:] & frame_valid[:, :-1]
  weights = jnp.broadcast_to(expand_frames(pairs.astype(jnp.float32), squared), squared.shape)
  return jnp.sum(weights * squared) / jnp.maximum(jnp.sum(weights), 1.0)


def kept_count(tokens_per_frame: int, mask_ratio: float) -> int:
  """Tokens of a frame that masked training keeps: (1 - mask_ratio) of them, at least one."""
  return max(1, round((1.0 - mask_ratio) * tokens_per_frame))


def kept_tokens(rng: jax.Array, batch: int, frames: int, tokens_per_frame: int,
                mask_ratio: float) -> jax.Array:
  """Which tokens masked training keeps: int [batch, frames, kept_count], for each example and
  token frame a uniformly drawn subset of [0, tokens_per_frame), in increasing order."""
  order = jnp.argsort(jax.random.uniform(rng, (batch, frames, tokens_per_frame)), axis=-1)
  return jnp.sort(order[..., :kept_count(tokens_per_frame, mask_ratio)], axis=-1)


def drop_captions(rng: jax.Array, token_mask: jax.Array, probability: float) -> jax.Array:
  """Replaces each caption by the null caption with the given probability.

  Args:
    rng: a PRNG key.
    token_mask: bool [B, L], True at real text tokens.
    probability: chance of dropping each example's caption.

  Returns:
    bool [B, L]: all False for dropped captions (the null conditioning the sampler's
    unconditional branch uses), unchanged otherwise.
  """
  keep = jax.random.bernoulli(rng, 1.0 - probability, (token_mask.shape[0],))
  return token_mask & keep[:, None]


def training_inputs(rng: jax.Array, latents: jax.Array, *, num_tokens: jax.Array | int,
                    config: FlowConfig, frame_valid: jax.Array | None = None,
                    noise: jax.Array | None = None) -> FlowTrainingInputs:
  """Everything the flow objective draws for one batch: noise, timesteps, conditioning frames.

  Args:
    rng: a PRNG key (split here into noise, timestep and conditioning keys).
    latents: clean latents x0, [B, t, h, w, C].
    num_tokens: tokens per example seen by the transformer (sets the time shift).
    config: the flow config.
    frame_valid: optional bool [B, t], False at padding frames after each video's end: they are
      left out of the loss, and the conditioning modes count only the valid frames ("last" is
      the last valid frame).
    noise: optional eps; drawn from N(0, I) when None.

  Returns:
    `FlowTrainingInputs`.
  """
  noise_rng, time_rng, condition_rng = jax.random.split(rng, 3)
  batch, latent_frames = latents.shape[:2]
  if noise is None:
    noise = jax.random.normal(noise_rng, latents.shape, jnp.float32).astype(latents.dtype)
  condition_mask = conditioning.sample_condition_mask(condition_rng, batch, latent_frames, config,
                                                      frame_valid=frame_valid)
  t = sample_timesteps(time_rng, batch, num_tokens, config)
  if config.condition_logit_mean is not None or config.condition_logit_std is not None:
    # Its own stream, so the examples without given frames draw exactly what they would anyway.
    given_t = _logit_normal_times(
        jax.random.fold_in(time_rng, 1), (batch,), num_tokens, config,
        config.logit_mean if config.condition_logit_mean is None else config.condition_logit_mean,
        config.logit_std if config.condition_logit_std is None else config.condition_logit_std)
    t = jnp.where(jnp.any(condition_mask, axis=1), given_t, t)
  if config.condition_min_time > 0:
    low = config.condition_min_time
    t = jnp.where(jnp.any(condition_mask, axis=1), low + (1.0 - low) * t, t)
  loss_mask = ~condition_mask
  if frame_valid is not None:
    loss_mask = loss_mask & frame_valid
  timesteps = frame_timesteps(t, condition_mask)
  if config.frame_noise_prob > 0:
    # Diffusion forcing, for examples without given frames; own streams, as above.
    forced = jax.random.bernoulli(jax.random.fold_in(time_rng, 2), config.frame_noise_prob,
                                  (batch,)) & ~jnp.any(condition_mask, axis=1)
    per_frame = _logit_normal_times(jax.random.fold_in(time_rng, 3), (batch, latent_frames),
                                    num_tokens, config, config.logit_mean, config.logit_std)
    timesteps = jnp.where(forced[:, None], per_frame, timesteps)
  return FlowTrainingInputs(
      noisy_latents=noisy_input(latents, noise, timesteps),
      timesteps=timesteps,
      target=velocity_target(latents, noise),
      loss_mask=loss_mask,
      condition_mask=condition_mask)
