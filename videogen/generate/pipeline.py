"""The generation pipeline: prompt -> uint8 video [T, H, W, 3], from modules or a trained workdir.

    generator = pipeline.load("runs/tiny")                 # restores the dit stage's EMA weights
    frames = generator.generate("a red circle moving right", frames=17, height=32, width=32)

`Generator` holds the models in memory (the autoencoder, the text encoder, the diffusion
transformer) with the tokenizer and the configs; tests build it from tiny randomly initialised
modules, `load` builds it from a workdir's checkpoints onto any mesh. The user-facing modes
(text-to-video, image-to-video, extension, loops, connecting clips, editing) live in
`videogen.generate.modes` and are thin layers over `Generator.generate`, the one mechanism:

    [ given prefix | new latent frames | given suffix ]      one sampling window

Given latent frames are held clean at timestep 0 while the others are denoised
(`samplers.sample(cond_latents=..., cond_mask=...)`, as in training's frame conditioning). The
given frames always come from *pixels* (`before`, the frames the new ones continue; `after`, the
frames they lead into), encoded as follows:

  prefix  the last 1 + F (c - 1) frames of `before`, encoded as a clip of their own -> c latents.
          The autoencoder is causal, so these are exactly the latents the start of a clip has:
          latent 0 a lone frame, then groups of F frames; this is what training's "first" and
          "prefix" modes show the model.
  suffix  the first c F frames of `after`, behind one copy of its first frame, encoded -> latents
          1..c (by causality, the same as encoding that copy followed by the whole clip). In the
          final video these groups follow generated frames, whereas the encoder saw the clip's
          first frame held still before them (the causal padding of any clip's start): an
          approximation confined to the encoder's receptive field, at the seam only.

Windows. A video longer than the model's window (`window_frames`, by default the longest training
clip) is made window by window (planned by `videogen.generate.windows`): each next window is
given the last `overlap` latent frames of what exists so far (re-encoded from its decoded pixels,
so the given frames sit where the model saw them in training: latent 0 a lone frame) and
generates the rest of its window. Only the last window holds the suffix; a last window without
one is filled up to the full window with frames that are then dropped, so every window runs the
same compiled shape. Each window is decoded whole (its given frames are the causal decoder's
past) and only its new frames are kept, so the caller's given pixel frames appear verbatim in the
final video and the seams are the only new content. Memory does not grow with the video's
length beyond the output itself: the output is allocated once and filled window by window, and
only the last frames that the next window's context needs are kept aside; one progress bar counts
the frames of the whole video.

Context noise. With `context_noise` = s > 0 a window's given frames are shown to the transformer
noised to min(s, t) (t the time of the frames it denoises) and with that timestep, instead of
clean at timestep 0; the sampler still holds them, so the output keeps them exactly. s = 1 re-noises
them along with the new frames (they then steer the new frames as a noisy image of the same time
would); small s only hides the autoencoder's re-encoding error the model never saw in training.
With `context_clean_below` = c > 0 they are shown clean again once t < c: the early steps, where
the layout is decided, read the given frames loosely; the late ones match them exactly.

Compilation. The networks are jitted once with their parameters as arguments, so a shape is
compiled once and reused by every later request of that shape (`samplers.sample(jit=False)`).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import logging
from flax import nnx

from data_pipelines import transforms
from videogen import experiment as experiment_lib
from videogen import pixels
from videogen import workdir as workdir_lib
from videogen.diffusion import conditioning as conditioning_lib
from videogen.diffusion import distillation
from videogen.diffusion import flow
from videogen.diffusion import samplers
from videogen.generate import windows as windows_lib
from videogen.models import text_to_video
from videogen.parallel import mesh as mesh_lib
from videogen.parallel import sharding as sharding_lib

# Frames per second written when the experiment does not say (the procedural world's rate).
DEFAULT_FPS = 8.0
# Latent frames given from `before` (prefix) and `after` (suffix) unless the caller says otherwise.
# Two prefix latents carry 1 + F frames, enough to show the model the motion it must continue.
DEFAULT_OVERLAP = 2
DEFAULT_SUFFIX_OVERLAP = 1


# ------------------------------------------------------------------------------------------------
# Inputs.
# ------------------------------------------------------------------------------------------------


def fit_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
  """Scales uint8 frames [T, H, W, 3] to cover height x width, then centre-crops (as training
  data is fitted); returns the frames themselves when they already have that size."""
  frames = np.asarray(frames)
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
    raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
  return transforms.resize_and_crop(frames, height, width)


# ------------------------------------------------------------------------------------------------
# The generator.
# ------------------------------------------------------------------------------------------------


def _patch_size(dit: nnx.Module) -> tuple[int, int, int]:
  """The transformer's (time, height, width) patch on the latent; (1, 1, 1) if it has none."""
  config = getattr(dit, "config", None)
  patch = getattr(config, "patch_size", None)
  if patch is None:
    return (1, 1, 1)
  if isinstance(patch, int):
    return (1, patch, patch)
  return tuple(int(p) for p in patch)


# (mesh, rules as sorted tuples, sequence-parallel method): the kernels trace the models'
# activation constraints for it.
ShardingKey = tuple[jax.sharding.Mesh, tuple[tuple[str, tuple[str, ...]], ...], str]


def _constraints(sharding: ShardingKey | None) -> contextlib.AbstractContextManager[None]:
  """Inside a kernel: the activation-sharding context of `sharding`; nothing for None."""
  if sharding is None:
    return contextlib.nullcontext()
  return sharding_lib.activation_sharding(sharding[0], dict(sharding[1]), sharding[2])


@functools.partial(jax.jit, static_argnums=0, static_argnames="sharding")
def _apply_text_encoder(graphdef: nnx.GraphDef, state: nnx.State, ids: jax.Array,
                        mask: jax.Array, *, sharding: ShardingKey | None = None
                        ) -> tuple[jax.Array, jax.Array]:
  """ids, mask [B, L] -> (embeddings [B, L, D], pooled [B, D])."""
  with _constraints(sharding):
    return nnx.merge(graphdef, state)(ids, mask)


@functools.partial(jax.jit, static_argnums=0, static_argnames="sharding")
def _apply_dit(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array, t: jax.Array,
               cond: dict[str, jax.Array], *, sharding: ShardingKey | None = None) -> jax.Array:
  """The velocity [B, t, h, w, C] at latents x [B, t, h, w, C] and timesteps t [B, t]."""
  model = nnx.merge(graphdef, state)
  pooled = cond["pooled"] if model.config.pooled_dim is not None else None
  # A distilled student's conditioning also carries the step's size (distillation.STEP_SIZE).
  extra = ({"step_sizes": cond[distillation.STEP_SIZE]} if distillation.STEP_SIZE in cond
           else {})
  with _constraints(sharding):
    return model(x, t, cond["context"], cond["context_mask"], pooled, **extra)


@functools.partial(jax.jit, static_argnums=(0, 3), static_argnames="sharding")
def _encode_video(graphdef: nnx.GraphDef, state: nnx.State, video: jax.Array,
                  chunk_latent_frames: int, *, sharding: ShardingKey | None = None) -> jax.Array:
  """video [B, T, H, W, 3] in [-1, 1] -> normalised posterior-mean latents [B, t, h, w, C].

  In chunks of `chunk_latent_frames` latent frames (bounded memory; equal to one pass).
  """
  model = nnx.merge(graphdef, state)
  with _constraints(sharding):
    mean, _ = model.encode_chunked(video, chunk_latent_frames)
  return model.normalize_latents(mean)


@functools.partial(jax.jit, static_argnums=0, static_argnames="sharding")
def _decode_chunk(graphdef: nnx.GraphDef, state: nnx.State, latents: jax.Array,
                  cache: Any, *, sharding: ShardingKey | None = None) -> tuple[jax.Array, Any]:
  """Normalised latents [B, c, h, w, C] -> (uint8 frames, the causal decoder's carried frames).

  `cache` is None for the first chunk of a video, then what the previous chunk returned.
  """
  model = nnx.merge(graphdef, state)
  latents = model.denormalize_latents(latents).astype(jnp.dtype(model.config.dtype))
  with _constraints(sharding):
    video, cache = model.decoder(latents, cache)
  return pixels.to_uint8(video.astype(jnp.float32)), cache


@jax.jit
def _noised_given(x: jax.Array, t: jax.Array, given: jax.Array, noise: jax.Array,
                  mask: jax.Array, level: jax.Array, clean_below: jax.Array
                  ) -> tuple[jax.Array, jax.Array]:
  """x [B, t, h, w, C] and timesteps [B, t] with the given frames (mask [t]) noised to
  min(level, the other frames' time) (0 below clean_below), and that time as their timestep
  (see "Context noise")."""
  new_time = jnp.max(t, axis=1, keepdims=True)  # [B, 1]
  times = jnp.where(new_time < clean_below, 0.0, jnp.minimum(new_time, level))
  noisy = flow.noisy_input(jnp.broadcast_to(given, x.shape), jnp.broadcast_to(noise, x.shape),
                           jnp.broadcast_to(times, t.shape))
  return (jnp.where(mask[None, :, None, None, None], noisy.astype(x.dtype), x),
          jnp.where(mask[None, :], times, t))


class Generator:
  """Prompt -> video with in-memory models. See the module docstring for the mechanism.

  Shapes: pixel frames are uint8 [T, H, W, 3]; latents are [1, t, h, w, C], normalised for the
  diffusion transformer (`autoencoder.normalize_latents`).
  """

  def __init__(self, *, autoencoder: nnx.Module, text_encoder: nnx.Module, dit: nnx.Module,
               tokenizer: Any, flow_config: flow.FlowConfig,
               sample_config: samplers.SamplerConfig | None = None,
               window_frames: int | None = None, overlap: int = DEFAULT_OVERLAP,
               suffix_overlap: int = DEFAULT_SUFFIX_OVERLAP,
               default_shape: tuple[int, int, int] = (9, 32, 32), fps: float = DEFAULT_FPS,
               chunk_latent_frames: int = 4, progress: bool = True,
               context_noise: float = 0.0, context_clean_below: float = 0.0,
               sharding: tuple[jax.sharding.Mesh, sharding_lib.Rules] | tuple[
                   jax.sharding.Mesh, sharding_lib.Rules, str] | None = None,
               student: nnx.Module | None = None, student_steps: int = 0):
    """Builds the generator (nothing is compiled until the first request).

    Args:
      autoencoder: a `VideoAutoencoder` (`encode`, `decoder`, `normalize_latents`, config).
      text_encoder: `text_encoder(tokens [B, L], mask [B, L]) -> (embeddings [B, L, D],
        pooled [B, D])`.
      dit: `dit(latents [B, t, h, w, C], timesteps [B, t], context, context_mask, pooled) ->
        velocity [B, t, h, w, C]`.
      tokenizer: `encode(texts) -> (ids int32 [N, L], mask bool [N, L])`, with `pad_id` and
        `max_length`.
      flow_config: the training objective's config (its time shift sets the sampling grid).
      sample_config: default sampler settings (steps, guidance, method, seed, negative prompt).
      window_frames: the most pixel frames one sampling call generates (rounded to 1 + F k);
        longer videos are made window by window. None: any length in one call.
      overlap: latent frames each window is given from what precedes it.
      suffix_overlap: latent frames given from what must follow (connect, loop, extend
        backwards).
      default_shape: (frames, height, width) when a request gives none (the training clip's).
      fps: frame rate of the written videos and of the real-time factor.
      chunk_latent_frames: latent frames encoded or decoded per step (bounded memory; one
        progress bar step each).
      progress: show progress bars.
      context_noise: in [0, 1], the noise level the transformer sees given frames at (see
        "Context noise" in the module docstring); 0 shows them clean.
      context_clean_below: in [0, 1], the time below which given frames are shown clean.
      sharding: (mesh, logical-axis rules) the modules' parameters live on: the kernels are
        traced with the models' activation constraints (`sharding.activation_sharding`),
        optionally with a third entry, `config.mesh.sequence_parallel` (default "auto"). None:
        no constraints (XLA propagates the parameters' shardings alone).
      student: a distilled few-step transformer (`DiTConfig.step_size_embedding`, from the
        distill stage), used instead of `dit` and its sampler for requests of at most
        `student_steps` steps: one pass per step, guidance folded in. None: always the teacher.
      student_steps: the most steps the student samples with (its finest schedule).
    """
    # Hashable, so that it is part of the kernels' compilation key: a kernel traced for one mesh
    # (or none) is never reused for another.
    self._sharding = None if sharding is None else (
        sharding[0], tuple(sorted((name, tuple(axes)) for name, axes in sharding[1].items())),
        sharding[2] if len(sharding) > 2 else "auto")
    self.autoencoder = autoencoder
    self.text_encoder = text_encoder
    self.dit = dit
    self.tokenizer = tokenizer
    self.flow_config = flow_config
    self.sample_config = sample_config or samplers.SamplerConfig()
    ae_config = autoencoder.config
    self.temporal_factor: int = ae_config.temporal_factor
    self.patch_size = _patch_size(dit)
    self.spatial_multiple: tuple[int, int] = (ae_config.spatial_factor * self.patch_size[1],
                                              ae_config.spatial_factor * self.patch_size[2])
    if overlap < 1 or suffix_overlap < 1:
      raise ValueError(f"overlap = {overlap} and suffix_overlap = {suffix_overlap} must be >= 1")
    self.window_frames = window_frames
    self.overlap = overlap
    self.suffix_overlap = suffix_overlap
    self.window_latents = self._window_latents()
    self.default_shape = default_shape
    self.fps = float(fps)
    if chunk_latent_frames < 1:
      raise ValueError(f"chunk_latent_frames = {chunk_latent_frames} must be >= 1")
    self.chunk_latent_frames = chunk_latent_frames
    self.progress = progress
    self.context_noise = _check_context_noise(context_noise)
    self.context_clean_below = _check_context_noise(context_clean_below, "context_clean_below")

    # Split once: the jitted functions below take the graph as a static argument and the
    # parameters as arguments, so each input shape is compiled once (and shared by every
    # generator built from the same architecture).
    self._ae_graph, self._ae_state = nnx.split(autoencoder)
    self._text_graph, self._text_state = nnx.split(text_encoder)
    self._dit_graph, self._dit_state = nnx.split(dit)
    if student is not None and student_steps < 1:
      raise ValueError(f"student_steps = {student_steps}: a distilled student needs the most "
                       f"steps it samples with (its distill_stage.max_steps), at least 1")
    self.student = student
    self.student_steps = student_steps if student is not None else 0
    if student is not None:
      self._student_graph, self._student_state = nnx.split(student)

  def with_windows(self, *, window_frames: int | None = None, overlap: int | None = None,
                   context_noise: float | None = None,
                   context_clean_below: float | None = None) -> Generator:
    """A generator sharing these models with other window settings (None keeps this one's)."""
    changed = copy.copy(self)
    if overlap is not None:
      if overlap < 1:
        raise ValueError(f"overlap = {overlap} must be >= 1")
      changed.overlap = overlap
    if window_frames is not None:
      changed.window_frames = window_frames
    changed.window_latents = changed._window_latents()
    if context_noise is not None:
      changed.context_noise = _check_context_noise(context_noise)
    if context_clean_below is not None:
      changed.context_clean_below = _check_context_noise(context_clean_below,
                                                         "context_clean_below")
    return changed

  def _window_latents(self) -> int | None:
    """Latent frames of one sampling window for `window_frames` (None: no limit)."""
    if self.window_frames is None:
      return None
    frames = windows_lib.round_frames(self.window_frames, self.temporal_factor, continuing=False,
                                      what="window_frames")
    # The window must hold the given frames of both ends and one new latent frame.
    return max(1 + (frames - 1) // self.temporal_factor, self.overlap + self.suffix_overlap + 1)

  def plan_windows(self, new_latent_frames: int, *, history: int = 0, suffix: int = 0,
                   pad_last: bool = True) -> list[windows_lib.Window]:
    """The sampling windows `generate` uses for `new_latent_frames` (`windows.plan_windows` with
    this generator's window and overlap)."""
    return windows_lib.plan_windows(new_latent_frames, window=self.window_latents,
                                    overlap=self.overlap, history=history, suffix=suffix,
                                    pad_last=pad_last)

  # -- shapes ---------------------------------------------------------------------------------

  def fit_size(self, height: int | None, width: int | None,
               like: tuple[int, int] | None = None) -> tuple[int, int]:
    """(height, width) rounded to what the models accept.

    Args:
      height, width: the requested size; None fills a side from `like` (the other side scaled by
        its aspect ratio when one side is given), else from the default shape.
      like: (height, width) of an input whose size the output takes by default.

    Raises:
      ValueError: a size below 1.
    """
    for name, size in (("height", height), ("width", width)):
      if size is not None and size < 1:
        raise ValueError(f"{name} = {size} must be a positive number of pixels (e.g. 32)")
    default_height, default_width = like or self.default_shape[1:]
    if height is None and width is None:
      height, width = default_height, default_width
    elif height is None:
      height = round(width * default_height / default_width) if like else default_height
    elif width is None:
      width = round(height * default_width / default_height) if like else default_width
    return (windows_lib.round_size(height, self.spatial_multiple[0], "height"),
            windows_lib.round_size(width, self.spatial_multiple[1], "width"))

  def latent_frames(self, frames: int) -> int:
    """Latent frames of a clip of 1 + F k pixel frames."""
    return 1 + (frames - 1) // self.temporal_factor

  def num_tokens(self, latent_frames: int, height: int, width: int) -> int:
    """Tokens the transformer sees for one window (sets the sampling grid's time shift)."""
    ae_factor = self.autoencoder.config.spatial_factor
    patch_t, patch_h, patch_w = self.patch_size
    return (math.ceil(latent_frames / patch_t) * (height // ae_factor // patch_h)
            * (width // ae_factor // patch_w))

  # -- text -----------------------------------------------------------------------------------

  def encode_prompt(self, prompt: str) -> dict[str, jax.Array]:
    """The conditioning pytree of one prompt; "" is the null caption (an all-False mask).

    Returns:
      {"context": [1, L, D], "context_mask": bool [1, L], "pooled": [1, D]}.
    """
    if not isinstance(prompt, str):
      raise TypeError(f"a prompt must be a string, got {type(prompt).__name__}: {prompt!r}")
    if prompt.strip():
      ids, mask = self.tokenizer.encode([prompt])
    else:
      # The null caption: what training's caption dropout feeds the unconditional branch.
      length = self.tokenizer.max_length
      ids = np.full((1, length), getattr(self.tokenizer, "pad_id", 0), np.int32)
      mask = np.zeros((1, length), bool)
    embeddings, pooled = _apply_text_encoder(self._text_graph, self._text_state,
                                             jnp.asarray(ids), jnp.asarray(mask),
                                             sharding=self._sharding)
    return {"context": embeddings, "context_mask": jnp.asarray(mask), "pooled": pooled}

  # -- pixels <-> latents ---------------------------------------------------------------------

  def encode(self, frames: np.ndarray) -> jax.Array:
    """uint8 [T, H, W, 3] with T = 1 + F k -> normalised latents [1, 1 + k, h, w, C]."""
    frames = np.asarray(frames)
    if (frames.shape[0] - 1) % self.temporal_factor:
      raise ValueError(f"cannot encode {frames.shape[0]} frames: a clip has 1 + "
                       f"{self.temporal_factor}k frames")
    video = jnp.asarray(pixels.to_model_range(frames))[None]
    return _encode_video(self._ae_graph, self._ae_state, video, self.chunk_latent_frames,
                         sharding=self._sharding)

  def decode(self, latents: jax.Array, *, desc: str = "decoding",
             progress: bool = True) -> np.ndarray:
    """Normalised latents [1, t, h, w, C] -> uint8 frames [1 + F (t - 1), H, W, 3].

    Runs `chunk_latent_frames` latent frames per call, carrying the causal decoder's past frames
    from one call to the next (equal to one pass), with a progress bar (unless `progress` is
    False).
    """
    outputs, cache = [], None
    starts = range(0, latents.shape[1], self.chunk_latent_frames)
    for start in tqdm.tqdm(starts, desc=desc, unit="chunk", leave=False,
                           disable=not (self.progress and progress) or len(starts) < 2):
      chunk = latents[:, start:start + self.chunk_latent_frames]
      video, cache = _decode_chunk(self._ae_graph, self._ae_state, chunk, cache,
                                   sharding=self._sharding)
      outputs.append(np.asarray(video[0]))
    return np.concatenate(outputs, axis=0)

  def prefix_latents(self, before: np.ndarray, count: int) -> jax.Array:
    """The last 1 + F (count - 1) frames of `before` encoded as a clip: [1, count, h, w, C]."""
    frames = before[len(before) - (1 + self.temporal_factor * (count - 1)):]
    return self.encode(frames)

  def suffix_latents(self, after: np.ndarray, count: int) -> jax.Array:
    """The first count F frames of `after` (edge-padded if shorter) as latent groups.

    They are encoded behind one copy of `after[0]`, which stands for the frames that will precede
    them (see the module docstring); returns [1, count, h, w, C].
    """
    needed = self.temporal_factor * count
    frames = after[:needed]
    if len(frames) < needed:
      frames = np.concatenate([frames, np.repeat(frames[-1:], needed - len(frames), axis=0)])
    return self.encode(np.concatenate([frames[:1], frames]))[:, 1:]

  # -- sampling -------------------------------------------------------------------------------

  def sampler_config(self, *, steps: int | None = None, guidance: float | None = None,
                     sampler: str | None = None, seed: int | None = None,
                     negative_prompt: str | None = None) -> samplers.SamplerConfig:
    """The default sampler config with the given settings replaced (validated)."""
    changes = dict(num_steps=steps, guidance_scale=guidance, method=sampler, seed=seed,
                   negative_prompt=negative_prompt)
    changes = {k: v for k, v in changes.items() if v is not None}
    if "method" in changes and changes["method"] not in ("euler", "heun"):
      raise ValueError(f"sampler = {changes['method']!r}: choose 'euler' or 'heun'")
    if guidance is not None and not (math.isfinite(guidance) and guidance >= 0):
      raise ValueError(f"guidance = {guidance} must be >= 0: 1 turns guidance off, larger follows "
                       f"the prompt more closely (e.g. 4)")
    return dataclasses.replace(self.sample_config, **changes)

  def velocity(self, x: jax.Array, t: jax.Array, cond: dict[str, jax.Array]) -> jax.Array:
    """The transformer's velocity at latents x [B, t, h, w, C] and timesteps t [B, t] (jitted),
    for a conditioning pytree from `encode_prompt` (no guidance)."""
    return _apply_dit(self._dit_graph, self._dit_state, x, t, cond, sharding=self._sharding)

  def student_velocity(self, x: jax.Array, t: jax.Array, cond: dict[str, jax.Array]) -> jax.Array:
    """The student's velocity (jitted); cond also holds the step size [B]
    (`distillation.STEP_SIZE`)."""
    return _apply_dit(self._student_graph, self._student_state, x, t, cond,
                      sharding=self._sharding)

  def uses_student(self, steps: int) -> bool:
    """Whether a request of `steps` sampler steps runs the distilled student."""
    return self.student is not None and steps <= self.student_steps

  def generate(self, prompt: str, *, frames: int | None = None, height: int | None = None,
               width: int | None = None, before: np.ndarray | None = None,
               after: np.ndarray | None = None, edit_source: np.ndarray | None = None,
               strength: float = 1.0, negative_prompt: str | None = None,
               steps: int | None = None, guidance: float | None = None,
               sampler: str | None = None, seed: int | None = None,
               stream: int = 0, context_noise: float | None = None) -> np.ndarray:
    """Generates new frames that follow `before` and lead into `after`.

    Args:
      prompt: the text (must not be empty).
      frames: how many new frames; rounded (with a warning) to 1 + F k for a fresh clip, to a
        multiple of F when continuing `before`. None: the default clip length.
      height, width: the frame size (rounded to the models' multiple); None takes the size of
        `before`/`after`/`edit_source`, or the default.
      before: uint8 [Tb, H, W, 3], frames the new ones continue (its last frames are given).
      after: uint8 [Ta, H, W, 3], frames the new ones lead into (its first frames are given).
      edit_source: uint8 [frames, H, W, 3], a video to edit (SDEdit): sampling starts from its
        latents noised to t = strength instead of pure noise. Not with `before`.
      strength: edit strength in (0, 1]; 1 ignores the source.
      negative_prompt, steps, guidance, sampler, seed: override the sampler config.
      stream: folded into the seed's key, so that several calls of one request (a loop's clip
        and its closing bridge) draw different noise.
      context_noise: the given frames' noise level (see "Context noise"); None: the
        generator's.

    Returns:
      uint8 [frames, H, W, 3], the new frames only.
    """
    if not isinstance(prompt, str) or not prompt.strip():
      raise ValueError(f"prompt is empty ({prompt!r}): pass a description such as "
                       f"--prompt='a red circle moving right'")
    if frames is not None and frames < 1:
      raise ValueError(f"frames = {frames} must be at least 1: the frames to make (e.g. 17)")
    config = self.sampler_config(steps=steps, guidance=guidance, sampler=sampler, seed=seed,
                                 negative_prompt=negative_prompt)
    context_noise = (self.context_noise if context_noise is None
                     else _check_context_noise(context_noise))
    given = [x for x in (before, after, edit_source) if x is not None]
    height, width = self.fit_size(height, width, like=given[0].shape[1:3] if given else None)
    before, after, edit_source = (None if x is None else fit_frames(x, height, width)
                                  for x in (before, after, edit_source))
    factor = self.temporal_factor
    continuing = before is not None
    if edit_source is not None:
      if continuing:
        raise ValueError("edit_source cannot be combined with before: edit a clip on its own")
      if not 0.0 < strength <= 1.0:
        raise ValueError(f"edit strength = {strength} must be in (0, 1]: small keeps more of the "
                         f"input video, 1 ignores it")
      frames = len(edit_source) if frames is None else frames
    if frames is None:
      frames = factor * (self.latent_frames(self.default_shape[0]) - 1) if continuing else (
          self.default_shape[0])
    frames = windows_lib.round_frames(frames, factor, continuing=continuing)
    new_latents = frames // factor if continuing else self.latent_frames(frames)
    source_latents = None
    if edit_source is not None:
      usable = 1 + factor * ((len(edit_source) - 1) // factor)
      if frames > usable:
        logging.warning("editing %d frames: the input has %d (a clip has 1 + %dk frames)",
                        usable, len(edit_source), factor)
        frames = usable
      new_latents = self.latent_frames(frames)
      source_latents = self.encode(edit_source[:frames])

    history = self.latent_frames(len(before)) if continuing else 0
    suffix = 0 if after is None else min(self.suffix_overlap,
                                         max(1, len(after) // factor))
    # An edit has no source latents to start the padding frames from: no padded window.
    windows = self.plan_windows(new_latents, history=history, suffix=suffix,
                                pad_last=edit_source is None)
    suffix_given = None if after is None else self.suffix_latents(after, suffix)
    cond = self.encode_prompt(prompt)
    student = self.uses_student(config.num_steps)
    if student:
      if config.frame_schedule != "together":
        raise ValueError(f"the distilled student samples every frame together, not "
                         f"frame_schedule={config.frame_schedule!r}: pass more than "
                         f"{self.student_steps} steps to use the teacher, or set "
                         f"config.sample.frame_schedule='together'")
      # The student has its own sampler and the guidance distilled in: say what it does not use.
      unused = [f"the {config.method} sampler", f"guidance_scale {config.guidance_scale:g}",
                "the negative prompt"] + ([f"context_noise {context_noise:g}"]
                                          if context_noise > 0 else [])
      logging.info("using the distilled student (%d steps); not used: %s", config.num_steps,
                   ", ".join(unused))
    negative = None if config.guidance_scale == 1.0 or student else self.encode_prompt(
        config.negative_prompt)
    key = jax.random.fold_in(jax.random.key(config.seed), stream)

    # The output is filled in place; `tail` keeps the frames the next window's context needs.
    video = np.empty((frames, height, width, 3), np.uint8)
    tail_frames = 1 + factor * (self.overlap - 1)
    tail = before[-tail_frames:] if continuing else video[:0]
    filled = 0  # pixel frames of the output made so far
    offset = 0  # latent frames of the new clip generated so far
    several = len(windows) > 1
    bar = tqdm.tqdm(total=frames, desc=f"generating {frames} frames", unit="frame", leave=False,
                    disable=not self.progress or not several)
    for index, window in enumerate(windows):
      parts, mask = [], window.mask()
      if window.context:
        parts.append(self.prefix_latents(tail, window.context))
      if window.suffix:
        parts.append(suffix_given)
      latent_shape = (1, window.total, height // self.autoencoder.config.spatial_factor,
                      width // self.autoencoder.config.spatial_factor,
                      self.autoencoder.config.latent_channels)
      window_key = jax.random.fold_in(key, index)
      if (config.frame_schedule == "image_first" and not window.context and window.total > 1
          and source_latents is None):
        # The clip's first latent frame (the first video frame alone) sampled as an image, from
        # the noise a one-frame request of this seed draws, then given to the rest.
        parts.insert(0, self._sample_image(latent_shape, window_key,
                                           config, cond, negative, several))
        mask = mask.copy()
        mask[0] = True
      noise = samplers.initial_noise(window_key, latent_shape)
      cond_latents = (conditioning_lib.place_frames(jnp.concatenate(parts, axis=1), mask)
                      if parts else None)
      start, start_time = noise, 1.0
      if source_latents is not None:
        # SDEdit: the new frames start from the source's latents at the same times, noised.
        source = source_latents[:, offset:offset + window.new]
        placed = jnp.zeros(latent_shape, source.dtype).at[
            :, window.context:window.context + window.new].set(source)
        start, start_time = samplers.edit_start(placed, noise, strength), strength
      shift = samplers.sampling_shift(config, self.flow_config,
                                      self.num_tokens(window.total, height, width))
      if student:
        latents = distillation.sample_student(
            self.student_velocity, start, num_steps=config.num_steps, shift=shift,
            conditioning=cond, cond_latents=cond_latents,
            cond_mask=None if cond_latents is None else mask, start_time=start_time)
      else:
        velocity = self.velocity
        if cond_latents is not None and context_noise > 0:
          velocity = self._noisy_context_velocity(
              cond_latents,
              samplers.initial_noise(jax.random.fold_in(window_key, 1), latent_shape),
              mask, context_noise)
        latents = samplers.sample(
            velocity, start, config=config, shift=shift, conditioning=cond,
            negative_conditioning=negative, cond_latents=cond_latents,
            cond_mask=None if cond_latents is None else mask, start_time=start_time,
            progress=self.progress and not several, jit=False)
      decoded = self.decode(latents, progress=not several)
      first = 0 if not window.context else 1 + factor * (window.context - 1)
      new_frames = decoded[first:first + window.new_pixel_frames(factor)]
      video[filled:filled + len(new_frames)] = new_frames
      filled += len(new_frames)
      tail = np.concatenate([tail, new_frames])[-tail_frames:]
      offset += window.new
      bar.update(len(new_frames))
    bar.close()
    if filled != frames:
      raise AssertionError(f"the windows made {filled} frames of the {frames} planned")
    return video

  def _sample_image(self, latent_shape: tuple[int, ...], key: jax.Array,
                    config: samplers.SamplerConfig, cond: dict[str, jax.Array],
                    negative: dict[str, jax.Array] | None, several: bool) -> jax.Array:
    """One latent frame of `latent_shape`'s size sampled from noise: [1, 1, h, w, C]."""
    image_shape = (latent_shape[0], 1, *latent_shape[2:])
    factor = self.autoencoder.config.spatial_factor
    shift = samplers.sampling_shift(config, self.flow_config, self.num_tokens(
        1, image_shape[2] * factor, image_shape[3] * factor))
    return samplers.sample(
        self.velocity, samplers.initial_noise(key, image_shape),
        config=dataclasses.replace(config, frame_schedule="together"), shift=shift,
        conditioning=cond, negative_conditioning=negative,
        progress=self.progress and not several, jit=False)

  def _noisy_context_velocity(self, given: jax.Array, noise: jax.Array, mask: np.ndarray,
                              level: float):
    """`velocity` that sees the given frames (mask [t]) noised (see "Context noise")."""
    mask = jnp.asarray(mask)
    level, clean_below = jnp.float32(level), jnp.float32(self.context_clean_below)

    def velocity(x: jax.Array, t: jax.Array, cond: dict[str, jax.Array]) -> jax.Array:
      batch = x.shape[0]  # both guidance branches see the same noised frames
      x, t = _noised_given(x, t, jnp.repeat(given, batch // given.shape[0], axis=0),
                           jnp.repeat(noise, batch // noise.shape[0], axis=0), mask, level,
                           clean_below)
      return self.velocity(x, t, cond)

    return velocity


def _check_context_noise(level: float, name: str = "context_noise") -> float:
  if not 0.0 <= level <= 1.0:
    raise ValueError(f"{name} = {level} must be in [0, 1] (a time of the flow): see \"Context "
                     f"noise\" in videogen.generate.pipeline")
  return float(level)


# ------------------------------------------------------------------------------------------------
# Loading a trained workdir.
# ------------------------------------------------------------------------------------------------

def load(workdir: str, experiment: experiment_lib.Experiment | None = None, *,
         mesh: jax.sharding.Mesh | None = None, step: int | None = None,
         **generator_kwargs: Any) -> Generator:
  """Restores a trained workdir's models (EMA weights) onto `mesh` and builds a `Generator`.

  The diffusion stage's checkpoint holds the whole sampling model (`TextToVideoModel`): its
  trainable variables (the transformer and the text encoder, restored from their EMA) and its
  frozen ones (the autoencoder, copied from the autoencoder stage). Only those two parts of the
  train state are read; the optimizer state stays on disk.

  Args:
    workdir: the run's directory (WORKDIR/checkpoints/dit/<step>/, WORKDIR/tokenizer.model).
    experiment: the validated experiment; None reads the one saved with the checkpoint.
    mesh: where the parameters go, sharded by the experiment's logical-axis rules; None builds
      the experiment's mesh over all devices.
    step: which checkpoint (default: the newest).
    **generator_kwargs: passed to `Generator` (e.g. `progress=False`, `window_frames=...`).

  Raises:
    FileNotFoundError: no checkpoint or no tokenizer, naming the path and the command that
      makes it.
  """
  # The student was distilled from the newest teacher: an older checkpoint samples without it.
  newest = step is None
  step = workdir_lib.require_step(workdir, workdir_lib.DIT_STAGE) if step is None else step
  if experiment is None:
    experiment = workdir_lib.saved_experiment(workdir, workdir_lib.DIT_STAGE, step)
  # The tokenizer is read before the (slow) restore, so a broken workdir fails at once.
  tokenizer = workdir_lib.load_tokenizer(workdir, experiment)
  graphdef, params, frozen = text_to_video.abstract_model(
      experiment.autoencoder, experiment.text_encoder, experiment.dit)
  mesh = mesh_lib.create_mesh(experiment.mesh) if mesh is None else mesh
  model, _ = workdir_lib.restore_model(workdir, workdir_lib.DIT_STAGE, graphdef, params, frozen,
                                       experiment=experiment, mesh=mesh, step=step)

  kwargs = dict(experiment_defaults(experiment))
  if newest:
    kwargs.update(load_student(workdir, experiment, mesh))
  kwargs.update(generator_kwargs)
  return Generator(autoencoder=model.autoencoder, text_encoder=model.text_encoder,
                   dit=model.dit, tokenizer=tokenizer,
                   flow_config=experiment.diffusion,
                   sample_config=experiment.sample,
                   sharding=(mesh, experiment.mesh.rules, experiment.mesh.sequence_parallel),
                   **kwargs)


def load_student(workdir: str, experiment: experiment_lib.Experiment,
                 mesh: jax.sharding.Mesh) -> dict[str, Any]:
  """{"student": the distill stage's transformer (EMA), "student_steps": K} when the workdir
  has a distill checkpoint (`videogen.train.distill_stage`), else {}.

  The student samples with the teacher's autoencoder and text encoder (the distill stage keeps
  them frozen), so only its transformer is kept.
  """
  if workdir_lib.latest_step(workdir, workdir_lib.DISTILL_STAGE) is None:
    return {}
  saved = workdir_lib.saved_experiment(workdir, workdir_lib.DISTILL_STAGE)
  student_config = dataclasses.replace(saved.dit, step_size_embedding=True)
  graphdef, params, frozen = text_to_video.abstract_model(
      experiment.autoencoder, experiment.text_encoder, student_config,
      trained=text_to_video.student_trainable())
  model, step = workdir_lib.restore_model(workdir, workdir_lib.DISTILL_STAGE, graphdef, params,
                                          frozen, experiment=experiment, mesh=mesh)
  logging.info("the workdir has a distilled student (step %d): --steps <= %d use it", step,
               saved.distill_stage.max_steps)
  return {"student": model.dit, "student_steps": saved.distill_stage.max_steps}


def experiment_defaults(experiment: experiment_lib.Experiment) -> dict[str, Any]:
  """Generator settings an experiment implies: its longest training clip is the window and the
  default shape, its world's frame rate the fps."""
  data = experiment.data
  if data is None:
    return {}
  longest = max(data.parsed_buckets(), key=lambda bucket: bucket.frames)
  return dict(window_frames=longest.frames, default_shape=longest.shape,
              fps=float(getattr(getattr(data, "world", None), "fps", DEFAULT_FPS)))


# ------------------------------------------------------------------------------------------------
# Memory a request needs, before anything is loaded.
# ------------------------------------------------------------------------------------------------

# Bytes of a float32 value: attention logits and the decoder's output are float32.
_FLOAT32 = 4


@dataclasses.dataclass(frozen=True)
class MemoryEstimate:
  """A lower bound of the memory one request needs, from its shape alone.

  Attributes:
    frames, height, width: the output's shape (as the generator rounds it).
    tokens: the transformer's tokens in one sampling window.
    video_bytes: the finished video, uint8 [frames, height, width, 3].
    decode_bytes: one decoded chunk of frames in float32, before it becomes uint8.
    attention_bytes: one layer's attention logits (float32, every guidance branch and head) where
      the attention backend materialises them (XLA's reference attention), else 0.
  """
  frames: int
  height: int
  width: int
  tokens: int
  video_bytes: int
  decode_bytes: int
  attention_bytes: int

  @property
  def total_bytes(self) -> int:
    return self.video_bytes + self.decode_bytes + self.attention_bytes


def _materialises_attention(backend: str, dtype: str, platform: str) -> bool:
  """Whether `attention.dot_product_attention` builds the [B, N, T, T] logits on `platform`."""
  if backend != "auto":
    return backend == "xla"
  # "auto" runs cuDNN flash attention on GPUs at 16 bits and splash on TPUs (no logits in memory).
  return platform == "cpu" or (platform == "gpu" and dtype not in ("bfloat16", "float16"))


def estimate_memory(experiment: experiment_lib.Experiment, *, frames: int | None = None,
                    height: int | None = None, width: int | None = None,
                    guidance: float | None = None, platform: str | None = None,
                    chunk_latent_frames: int = 4) -> MemoryEstimate:
  """A lower bound of the memory a request of this shape needs (see `MemoryEstimate`).

  Only what must exist at once is counted: the output video, one decoded chunk and one layer's
  attention logits over the longest window; weights, the other activations and the runtime's
  scratch come on top. A request above the machine's memory therefore cannot run (XLA fails to
  allocate, or the kernel kills the process); one below it may still not.

  Args:
    experiment: the experiment of the trained workdir (its models, sampler and data shapes).
    frames, height, width: the request's (None: the training clip's, as `load` sets it).
    guidance: the guidance scale (None: config.sample's); 1 runs one branch, else two.
    platform: "cpu", "gpu" or "tpu" (default: JAX's default backend).
    chunk_latent_frames: latent frames decoded per call (`Generator`'s default).
  """
  defaults = experiment_defaults(experiment)
  default_frames, default_height, default_width = defaults.get("default_shape", (9, 32, 32))
  ae, dit = experiment.autoencoder, experiment.dit
  temporal, spatial = ae.temporal_factor, ae.spatial_factor
  patch_t, patch_h, patch_w = _patch_size(dit)
  nearest = lambda size, multiple: max(multiple, multiple * math.floor(size / multiple + 0.5))
  frames = 1 + temporal * max(0, math.floor(
      ((default_frames if frames is None else frames) - 1) / temporal + 0.5))
  height = nearest(default_height if height is None else height, spatial * patch_h)
  width = nearest(default_width if width is None else width, spatial * patch_w)
  latent_frames = 1 + (frames - 1) // temporal
  window_frames = defaults.get("window_frames")
  if window_frames is not None:
    latent_frames = min(latent_frames, max(1 + (window_frames - 1) // temporal,
                                           DEFAULT_OVERLAP + DEFAULT_SUFFIX_OVERLAP + 1))
  tokens = (math.ceil(latent_frames / patch_t) * (height // spatial // patch_h)
            * (width // spatial // patch_w))
  guidance = experiment.sample.guidance_scale if guidance is None else guidance
  attention_bytes = 0
  if _materialises_attention(dit.attention_backend, dit.dtype, platform or jax.default_backend()):
    attention_bytes = (1 if guidance == 1.0 else 2) * dit.num_heads * tokens ** 2 * _FLOAT32
  chunk_frames = min(frames, temporal * chunk_latent_frames)
  return MemoryEstimate(frames=frames, height=height, width=width, tokens=tokens,
                        video_bytes=frames * height * width * 3,
                        decode_bytes=chunk_frames * height * width * 3 * _FLOAT32,
                        attention_bytes=attention_bytes)
