"""The generation modes, each a thin layer over `Generator.generate` (one conditioning mechanism).

    result = modes.text_to_video(generator, "a red circle moving right", frames=17)
    result.video             # uint8 [T, H, W, 3]
    result.real_time_factor  # seconds of new video per second of compute

Every mode says which pixel frames are given before and after the new ones (see
`videogen.generate.pipeline`), and assembles the output with the given frames kept verbatim:

  mode             given frames                         output
  t2v              none                                 new (1 + F k frames)
  t2i              none                                 new (1 frame)
  i2v              before = the image                   image + new (F k)
  extend           before = the video                   video + new (F k)
  extend_backward  after = the video                    new (1 + F k) + video
  connect          before = clip 1, after = clip 2      clip 1 + new (F k) + clip 2
  loop             a t2v clip, then before = after = it clip + new (F k); plays seamlessly on repeat
  edit             none; sampling starts from the input's latents noised to t = strength

Frame counts (`frames`) count the *new* frames and are rounded to the nearest valid count with a
logged warning; inputs are scaled and centre-cropped to the output size (by default the first
input's size, rounded to the models' multiple).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable

import numpy as np
from absl import logging

from videogen.generate import pipeline
from videogen.generate import windows as windows_lib

# mode -> (number of input videos it takes, one line of help).
MODES: dict[str, tuple[int, str]] = {
    "t2v": (0, "text to video"),
    "t2i": (0, "text to image (one frame)"),
    "i2v": (1, "image to video: --input is an image (or a video: its first frame) that opens "
               "the video"),
    "extend": (1, "extend --input forwards by --frames frames"),
    "extend_backward": (1, "extend --input backwards: --frames new frames lead into it"),
    "loop": (0, "a seamless loop: a clip of --frames frames, then --bridge_frames leading from "
                "its end back to its start"),
    "connect": (2, "--frames new frames leading from the end of --input to the start of "
                   "--input2"),
    "edit": (1, "edit --input to match the prompt (SDEdit); --strength in (0, 1]: higher "
                "changes more"),
}


@dataclasses.dataclass
class Generated:
  """A generated video and what it cost.

  Attributes:
    video: uint8 [T, H, W, 3], the whole output (given frames verbatim).
    new_frames: how many of its frames were generated.
    seconds: wall-clock seconds of the generation (encoding, sampling, decoding; no file I/O).
    fps: its frame rate.
    mode: the mode that made it.
  """
  video: np.ndarray
  new_frames: int
  seconds: float
  fps: float
  mode: str

  @property
  def real_time_factor(self) -> float:
    """Seconds of generated video per second of compute (> 1 is faster than real time)."""
    return self.new_frames / self.fps / max(self.seconds, 1e-9)

  def summary(self) -> str:
    return (f"{self.mode}: {self.new_frames} new frames ({self.new_frames / self.fps:.2f} s of "
            f"video at {self.fps:g} fps) of {len(self.video)} in {self.seconds:.2f} s: real-time "
            f"factor {self.real_time_factor:.3f}")


def _as_video(frames: np.ndarray, what: str) -> np.ndarray:
  frames = np.asarray(frames)
  if frames.ndim == 3:
    frames = frames[None]
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
    raise ValueError(f"{what} must be uint8 frames [T, H, W, 3] (or one image [H, W, 3]), got "
                     f"{frames.dtype} {frames.shape}")
  return frames


def _fit_inputs(generator: pipeline.Generator, inputs: list[np.ndarray], height: int | None,
                width: int | None) -> tuple[list[np.ndarray], int, int]:
  """Rounds the output size (default: the first input's) and scales every input to it."""
  height, width = generator.fit_size(height, width,
                                     like=inputs[0].shape[1:3] if inputs else None)
  return [pipeline.fit_frames(x, height, width) for x in inputs], height, width


def _finish(generator: pipeline.Generator, mode: str, parts: list[np.ndarray], new_frames: int,
            start: float) -> Generated:
  return Generated(video=np.concatenate(parts, axis=0), new_frames=new_frames,
                   seconds=time.perf_counter() - start, fps=generator.fps, mode=mode)


def text_to_video(generator: pipeline.Generator, prompt: str, *, frames: int | None = None,
                  height: int | None = None, width: int | None = None,
                  **options: Any) -> Generated:
  """A video from text. `options`: negative_prompt, steps, guidance, sampler, seed."""
  start = time.perf_counter()
  new = generator.generate(prompt, frames=frames, height=height, width=width, **options)
  return _finish(generator, "t2v", [new], len(new), start)


def text_to_image(generator: pipeline.Generator, prompt: str, *, height: int | None = None,
                  width: int | None = None, **options: Any) -> Generated:
  """One frame from text (an image is a one-frame video): video [1, H, W, 3]."""
  start = time.perf_counter()
  new = generator.generate(prompt, frames=1, height=height, width=width, **options)
  return _finish(generator, "t2i", [new], len(new), start)


def image_to_video(generator: pipeline.Generator, prompt: str, image: np.ndarray, *,
                   frames: int | None = None, height: int | None = None,
                   width: int | None = None, **options: Any) -> Generated:
  """A video that opens with `image` (uint8 [H, W, 3]; a video's first frame is used).

  `frames` is the whole video's length including the image (rounded to 1 + F k).
  """
  start = time.perf_counter()
  (image,), height, width = _fit_inputs(generator, [_as_video(image, "image")[:1]], height,
                                        width)
  total = generator.default_shape[0] if frames is None else frames
  total = windows_lib.round_frames(total, generator.temporal_factor, continuing=False,
                                   what="frames")
  if total == 1:
    logging.warning("image-to-video with 1 frame is the image itself; generating %d frames",
                    1 + generator.temporal_factor)
    total = 1 + generator.temporal_factor
  new = generator.generate(prompt, frames=total - 1, height=height, width=width, before=image,
                           **options)
  return _finish(generator, "i2v", [image, new], len(new), start)


def extend(generator: pipeline.Generator, prompt: str, video: np.ndarray, *,
           frames: int | None = None, backward: bool = False, height: int | None = None,
           width: int | None = None, **options: Any) -> Generated:
  """`video` with `frames` new frames after it (or before it, `backward=True`)."""
  start = time.perf_counter()
  (video,), height, width = _fit_inputs(generator, [_as_video(video, "video")], height, width)
  if backward:
    new = generator.generate(prompt, frames=frames, height=height, width=width, after=video,
                             **options)
    return _finish(generator, "extend_backward", [new, video], len(new), start)
  new = generator.generate(prompt, frames=frames, height=height, width=width, before=video,
                           **options)
  return _finish(generator, "extend", [video, new], len(new), start)


def connect(generator: pipeline.Generator, prompt: str, first: np.ndarray, second: np.ndarray,
            *, frames: int | None = None, height: int | None = None, width: int | None = None,
            **options: Any) -> Generated:
  """`first`, then `frames` new frames, then `second`: a transition from one clip to the other."""
  start = time.perf_counter()
  (first, second), height, width = _fit_inputs(
      generator, [_as_video(first, "the first clip"), _as_video(second, "the second clip")],
      height, width)
  new = generator.generate(prompt, frames=frames, height=height, width=width, before=first,
                           after=second, **options)
  return _finish(generator, "connect", [first, new, second], len(new), start)


def loop(generator: pipeline.Generator, prompt: str, *, frames: int | None = None,
         bridge_frames: int | None = None, height: int | None = None, width: int | None = None,
         **options: Any) -> Generated:
  """A video that plays seamlessly on repeat: a clip, then a bridge from its end to its start.

  Args:
    frames: the clip's length (1 + F k); default the generator's default clip.
    bridge_frames: the closing bridge's length (a multiple of F); default about a third of the
      clip.
  """
  if bridge_frames is not None and bridge_frames < 1:
    raise ValueError(f"bridge_frames = {bridge_frames} must be at least 1 (or None: about a "
                     f"third of the clip)")
  start = time.perf_counter()
  clip = generator.generate(prompt, frames=frames, height=height, width=width, **options)
  if bridge_frames is None:
    factor = generator.temporal_factor
    bridge_frames = factor * max(1, round(len(clip) / 3 / factor))
  bridge = generator.generate(prompt, frames=bridge_frames, before=clip, after=clip, stream=1,
                              **options)
  return _finish(generator, "loop", [clip, bridge], len(clip) + len(bridge), start)


def edit(generator: pipeline.Generator, prompt: str, video: np.ndarray, *,
         strength: float = 0.6, frames: int | None = None, height: int | None = None,
         width: int | None = None, **options: Any) -> Generated:
  """`video` re-imagined to follow `prompt` (SDEdit), keeping its layout and motion.

  Args:
    strength: in (0, 1]: the noise level sampling starts from; higher departs further from the
      input (1 ignores it).
    frames: how many of the input's frames to edit (default all, trimmed to 1 + F k).
  """
  start = time.perf_counter()
  (video,), height, width = _fit_inputs(generator, [_as_video(video, "video")], height, width)
  factor = generator.temporal_factor
  usable = 1 + factor * ((len(video) - 1) // factor)
  if frames is None or frames > usable:
    if frames is not None or usable != len(video):
      logging.warning("editing the first %d of the input's %d frames (a clip has 1 + %dk frames)",
                      usable, len(video), factor)
    frames = usable
  new = generator.generate(prompt, frames=frames, height=height, width=width,
                           edit_source=video, strength=strength, **options)
  return _finish(generator, "edit", [new], len(new), start)


def run(generator: pipeline.Generator, mode: str, prompt: str, *,
        inputs: tuple[np.ndarray, ...] = (), frames: int | None = None,
        height: int | None = None, width: int | None = None, strength: float = 0.6,
        bridge_frames: int | None = None, **options: Any) -> Generated:
  """Dispatches one request by mode name (what the `generate` command and manifests call).

  Raises:
    ValueError: an unknown mode, or the wrong number of inputs for it.
  """
  if mode not in MODES:
    raise ValueError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
  needed, help_text = MODES[mode]
  if len(inputs) != needed:
    flags = ["--input", "--input2"][:needed]
    raise ValueError(f"mode {mode!r} ({help_text}) takes {needed} input(s)"
                     f"{': give ' + ' and '.join(flags) if flags else ''}; got {len(inputs)}")
  size = dict(height=height, width=width)
  calls: dict[str, Callable[[], Generated]] = {
      "t2v": lambda: text_to_video(generator, prompt, frames=frames, **size, **options),
      "t2i": lambda: text_to_image(generator, prompt, **size, **options),
      "i2v": lambda: image_to_video(generator, prompt, inputs[0][:1], frames=frames, **size,
                                    **options),
      "extend": lambda: extend(generator, prompt, inputs[0], frames=frames, **size, **options),
      "extend_backward": lambda: extend(generator, prompt, inputs[0], frames=frames,
                                        backward=True, **size, **options),
      "loop": lambda: loop(generator, prompt, frames=frames, bridge_frames=bridge_frames,
                           **size, **options),
      "connect": lambda: connect(generator, prompt, inputs[0], inputs[1], frames=frames, **size,
                                 **options),
      "edit": lambda: edit(generator, prompt, inputs[0], strength=strength, frames=frames,
                           **size, **options),
  }
  return calls[mode]()
