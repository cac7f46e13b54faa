"""The Python API: load a trained workdir once, then generate many videos without recompiling.

    import videogen
    model = videogen.load("runs/tiny")                         # restores the EMA weights once
    result = model.generate("a red circle moving right", seed=0)  # compiles this shape once
    model.save(result, "red.mp4")                              # .mp4, .gif or .png
    again = model.generate("a blue square moving down", seed=1)   # same shape: no compilation

`result.video` is uint8 [T, H, W, 3]; `result.fps`, `result.seed`, `result.steps` say how it was
made. `save` writes it through `videogen.provenance.writer`: the file carries an invisible
watermark keyed by WORKDIR/provenance/watermark.key (created on first use; `load(...,
key_file=FILE)` uses another; `load(..., watermark=False)` turns it off) and a signed C2PA
manifest (`include_prompt=False` leaves the prompt out of it); `result.video` itself stays
unmarked.

The command line (`python -m videogen.main generate`) pays loading and compilation on every call;
a `Pipeline` pays them once per process and per shape, which is what notebooks and services want.

This is a facade, not a second pipeline: `load` is `videogen.generate.pipeline.load`, and
`Pipeline.generate` dispatches to `videogen.generate.modes` (t2v, t2i, i2v, extend,
extend_backward, loop, connect, edit), whose `Generator` jits the networks with their parameters
as arguments, so every later request of a shape reuses the compiled programs.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any, Union

import jax
import numpy as np

from data_pipelines import video_io
from videogen import experiment as experiment_lib
from videogen.generate import modes
from videogen.generate import pipeline
from videogen.provenance import writer

# A video or image: uint8 frames [T, H, W, 3], one image [H, W, 3], or a file to read them from.
Frames = Union[np.ndarray, str, os.PathLike]

# mode -> the keyword arguments of `Pipeline.generate` that carry its input frames, in the order
# `modes.run` takes them.
MODE_INPUTS: dict[str, tuple[str, ...]] = {
    "t2v": (),
    "t2i": (),
    "i2v": ("image",),
    "extend": ("video",),
    "extend_backward": ("video",),
    "loop": (),
    "connect": ("video", "video2"),
    "edit": ("video",),
}
SAVE_SUFFIXES: tuple[str, ...] = (".mp4", ".gif", ".png")
_EXAMPLE_PROMPT = "a red circle moving right"


@dataclasses.dataclass
class Result(modes.Generated):
  """A generated video (`modes.Generated`: video uint8 [T, H, W, 3], new_frames, seconds, fps,
  mode) and the sampler settings that made it.

  Attributes:
    seed: the noise seed (the same seed, prompt and settings give the same video).
    steps: sampler steps.
    prompt: the prompt it was made from.
  """
  seed: int
  steps: int
  prompt: str


def _read_frames(frames: Frames, name: str) -> np.ndarray:
  """An input as uint8 [T, H, W, 3]: a file is read, an image [H, W, 3] becomes one frame."""
  if isinstance(frames, (str, os.PathLike)):
    return video_io.read_frames(frames)
  frames = np.asarray(frames)
  if frames.ndim == 3:
    frames = frames[None]
  if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
    raise ValueError(f"{name} must be uint8 frames [T, H, W, 3], one image [H, W, 3] or a file "
                     f"path, got {frames.dtype} {frames.shape}: convert floats in [0, 1] with "
                     f"np.clip(x * 255, 0, 255).round().astype(np.uint8)")
  return frames


class Pipeline:
  """A trained model in memory: `generate` many videos, each shape compiled once per process.

  Attributes:
    generator: the underlying `videogen.generate.pipeline.Generator` (models, tokenizer,
      default shape, fps).
    stamp: how `save` watermarks and signs (`videogen.provenance.writer.Stamp.for_workdir`).
  """

  def __init__(self, generator: pipeline.Generator, stamp: writer.Stamp):
    self.generator = generator
    self.stamp = stamp

  @property
  def fps(self) -> float:
    """The frame rate of the generated videos."""
    return self.generator.fps

  @property
  def default_shape(self) -> tuple[int, int, int]:
    """(frames, height, width) of a request that gives none: the training clip's."""
    return self.generator.default_shape

  def generate(self, prompt: str, *, mode: str = "t2v", frames: int | None = None,
               height: int | None = None, width: int | None = None, steps: int | None = None,
               guidance: float | None = None, negative_prompt: str | None = None,
               seed: int | None = None, sampler: str | None = None, image: Frames | None = None,
               video: Frames | None = None, video2: Frames | None = None,
               strength: float = 0.6, bridge_frames: int | None = None) -> Result:
    """Generates one video.

    Args:
      prompt: what the video shows, e.g. "a red circle moving right" (not empty).
      mode: "t2v" (text to video), "t2i" (one frame), "i2v" (opens with `image`), "extend" and
        "extend_backward" (`video` with new frames after or before it), "loop" (plays seamlessly
        on repeat), "connect" (new frames from the end of `video` to the start of `video2`),
        "edit" (`video` re-imagined to follow the prompt, SDEdit). See `videogen.generate.modes`.
      frames: the video's length (t2v, i2v, edit, loop's clip) or the new frames (extend,
        connect); rounded to what the autoencoder takes, with a warning. None: the training
        clip's length.
      height, width: the frame size (rounded to the models' multiple); None: the input's, or
        the training size.
      steps, guidance, negative_prompt, seed, sampler: sampler settings; None: the experiment's
        `config.sample`.
      image, video, video2: the mode's inputs (see `MODE_INPUTS`): uint8 [T, H, W, 3] or [H, W, 3]
        arrays, or video/image files.
      strength: edit strength in (0, 1]: higher departs further from `video`.
      bridge_frames: the loop's closing bridge length; None: about a third of the clip.

    Returns:
      A `Result`: `video` uint8 [T, H, W, 3] (given frames verbatim), `fps`, `seed`, `steps`,
      `new_frames`, `seconds`, `real_time_factor`.

    Raises:
      ValueError: an empty prompt, an unknown mode, missing or extra inputs for the mode, or
        settings the models cannot take; FileNotFoundError: an input file that does not exist.
    """
    if not isinstance(prompt, str) or not prompt.strip():
      raise ValueError(f"prompt is empty ({prompt!r}): describe the video, e.g. "
                       f"model.generate({_EXAMPLE_PROMPT!r})")
    if mode not in MODE_INPUTS:
      raise ValueError(f"unknown mode {mode!r}: choose one of {', '.join(MODE_INPUTS)}")
    given = {"image": image, "video": video, "video2": video2}
    wanted = MODE_INPUTS[mode]
    missing = [name for name in wanted if given[name] is None]
    extra = [name for name, value in given.items() if value is not None and name not in wanted]
    if missing or extra:
      takes = " and ".join(f"{name}=" for name in wanted) or "no input frames"
      raise ValueError(f"mode {mode!r} ({modes.MODES[mode][1]}) takes {takes}; "
                       + (f"pass {', '.join(f'{n}=' for n in missing)}" if missing else
                          f"drop {', '.join(f'{n}=' for n in extra)}"))
    inputs = tuple(_read_frames(given[name], name) for name in wanted)
    options = {name: value for name, value in dict(
        steps=steps, guidance=guidance, negative_prompt=negative_prompt, seed=seed,
        sampler=sampler).items() if value is not None}
    # The settings the request resolves to (validated before any compute).
    config = self.generator.sampler_config(**options)
    generated = modes.run(self.generator, mode, prompt, inputs=inputs, frames=frames,
                          height=height, width=width, strength=strength,
                          bridge_frames=bridge_frames, **options)
    return Result(**{field.name: getattr(generated, field.name)
                     for field in dataclasses.fields(modes.Generated)},
                  seed=config.seed, steps=config.num_steps, prompt=prompt)

  def save(self, video: Result | np.ndarray, path: str | os.PathLike, *,
           fps: float | None = None) -> str:
    """Writes a video to `path`, watermarked and signed by `stamp`, and returns the path.

    ".mp4" (H.264) and ".gif" hold the whole video; ".png" holds one frame (an image, e.g. a t2i
    result), or for a longer video a contact sheet of up to 8 of its frames. A `Result`'s mode,
    seed and prompt go into the manifest; bare frames' are unknown (null).

    Args:
      video: a `Result`, or uint8 frames [T, H, W, 3] (or one image [H, W, 3]).
      path: the file; its folder is created.
      fps: frames per second; None: the result's (or the model's).

    Every process that calls it writes (in a multi-process run, call it from process 0 only
    unless each process has its own disk).
    """
    claim: dict[str, Any] = {"mode": None, "seed": None}
    if isinstance(video, Result):
      claim = {"mode": video.mode, "seed": video.seed, "prompt": video.prompt}
    if isinstance(video, modes.Generated):
      fps = video.fps if fps is None else fps
      video = video.video
    if isinstance(video, (str, os.PathLike)):
      raise ValueError(f"save(video, path) takes a Result or frames first, got {video!r}")
    frames = _read_frames(video, "video")
    path = pathlib.Path(path)
    suffix = path.suffix.lower()
    if suffix not in SAVE_SUFFIXES:
      raise ValueError(f"cannot save {path}: name the file {', '.join(SAVE_SUFFIXES)}")
    if suffix != ".png" or len(frames) == 1:
      self.stamp.write([path], frames, self.fps if fps is None else fps, claim=claim)
    else:
      marked, payload = self.stamp.mark(frames)
      video_io.write_contact_sheet(path, [marked])
      self.stamp.sign(path, claim=claim, payload=payload)
    return str(path)


def load(workdir: str | os.PathLike, experiment: experiment_lib.Experiment | None = None, *,
         step: int | None = None, mesh: jax.sharding.Mesh | None = None,
         progress: bool = True, watermark: bool = True, key_file: str | os.PathLike | None = None,
         include_prompt: bool = True, **generator_kwargs: Any) -> Pipeline:
  """Loads a trained workdir (the diffusion stage's EMA weights, the frozen autoencoder and the
  tokenizer) for generation, and its provenance keys for `save` (created on first use).

  Args:
    workdir: a run's directory, written by `python -m videogen.main run` or `train`.
    experiment: the validated experiment; None: the one saved with the checkpoint.
    step: which checkpoint; None: the newest.
    mesh: where the parameters go; None: the experiment's mesh over all devices.
    progress: show progress bars while sampling and decoding.
    watermark: False: `save` writes the frames without the invisible watermark.
    key_file: a watermark key file instead of WORKDIR/provenance/watermark.key.
    include_prompt: False keeps the prompt out of the signed manifests.
    **generator_kwargs: passed to `videogen.generate.pipeline.Generator` (e.g. `window_frames`).

  Raises:
    FileNotFoundError: the workdir, its checkpoint or its tokenizer is missing; the message says
      how to train one.
    videogen.provenance.keys.KeyFileError: `key_file` is missing, unreadable or malformed.
  """
  workdir = os.fspath(workdir)
  if not os.path.isdir(workdir):
    raise FileNotFoundError(
        f"workdir {workdir} does not exist: pass a trained run's directory, or train one with "
        f"`python -m videogen.main run --config=experiments/shapes.py:tiny --workdir={workdir}`")
  generator = pipeline.load(workdir, experiment, step=step, mesh=mesh, progress=progress,
                            **generator_kwargs)
  return Pipeline(generator, writer.Stamp.for_workdir(workdir, watermark=watermark,
                                                      key_file=key_file,
                                                      include_prompt=include_prompt, step=step))
