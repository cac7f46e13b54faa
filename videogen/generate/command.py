r"""The `generate` command: prompt -> video file(s) from a trained workdir.

    python -m videogen.main generate --workdir=runs/tiny --prompt="a red circle moving right" \
        --out=red.mp4 [--mode=t2v --frames=17 --height=32 --width=48 --steps=30 --guidance=4 \
        --sampler=heun --seed=0 --negative_prompt="..." --input=clip.mp4 --input2=other.mp4 \
        --strength=0.6 --bridge_frames=8]

writes red.mp4 and red.gif beside it, and prints the real-time factor (seconds of video per second
of compute). The experiment is the one saved with the workdir's checkpoint (`--config` replaces
it). `--prompts_file=requests.jsonl` generates one video per line instead, each line a JSON object
with the keys of `Request` (only "prompt" is required; the flags are the defaults), into the folder
`--out` (default WORKDIR/generated), with `manifest.jsonl` (one line per video: its request, files,
shape and timing) and a gallery page `index.html`.

Modes (`--mode`, see `videogen.generate.modes`): t2v, t2i, i2v (--input: an image or a video's
first frame), extend and extend_backward (--input, --frames new frames), connect (--input,
--input2, --frames between them), loop (--frames, --bridge_frames), edit (--input, --strength).
Frame counts the autoencoder cannot take are rounded with a warning; missing checkpoints,
missing or undecodable inputs and empty prompts are errors that say what to do (exit code 1;
2 for a usage error).
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys
from typing import Any, Optional

import jax
import numpy as np
from absl import logging

from data_pipelines import video_io
from videogen import experiment as experiment_lib
from videogen.generate import gallery
from videogen.generate import modes
from videogen.generate import pipeline

IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
# Request fields that are not strings: (accepted types, how the error names them).
_KINDS: dict[str, tuple[Any, str]] = {
    **{name: (int, "an integer") for name in ("frames", "height", "width", "steps", "seed",
                                               "bridge_frames")},
    "guidance": ((int, float), "a number"),
    "strength": ((int, float), "a number"),
}


@dataclasses.dataclass(frozen=True)
class Request:
  """One video to generate: the flags of the command, or one line of a prompts file.

  Attributes:
    prompt: what to show (required, not empty).
    mode: one of `modes.MODES`.
    negative_prompt: the unconditional branch's prompt (None: the experiment's, "" by default).
    frames: new frames (see `modes`); None: the training clip length.
    height, width: the frame size; None: the input's, or the training size.
    steps, guidance, sampler, seed: sampler settings (None: the experiment's `config.sample`).
    input, input2: video or image files the mode takes.
    strength: edit strength in (0, 1].
    bridge_frames: the loop's closing bridge length.
    out: the output file (.mp4 or .gif); in a prompts file, relative to the output folder.
  """
  prompt: str
  mode: str = "t2v"
  negative_prompt: Optional[str] = None
  frames: Optional[int] = None
  height: Optional[int] = None
  width: Optional[int] = None
  steps: Optional[int] = None
  guidance: Optional[float] = None
  sampler: Optional[str] = None
  seed: Optional[int] = None
  input: Optional[str] = None
  input2: Optional[str] = None
  strength: float = 0.6
  bridge_frames: Optional[int] = None
  out: Optional[str] = None

  @classmethod
  def from_mapping(cls, values: dict[str, Any], where: str, defaults: Request | None = None, *,
                   require_prompt: bool = True) -> Request:
    """A request from a JSON object, unset keys taken from `defaults`.

    Raises:
      ValueError: an unknown key, a value of the wrong type or an empty prompt, naming `where`
        (e.g. "prompts.jsonl:3").
    """
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
      raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}; a request may hold: "
                       f"{', '.join(names)}")
    merged = dataclasses.asdict(defaults) if defaults else {}
    merged.update(values)
    for name, value in merged.items():
      expected, description = _KINDS.get(name, (str, "a string"))
      if value is not None and (not isinstance(value, expected) or isinstance(value, bool)):
        raise ValueError(f"{where}: {name} = {value!r} must be {description}")
    if merged.get("mode", "t2v") not in modes.MODES:
      raise ValueError(f"{where}: mode = {merged['mode']!r}; choose one of: "
                       f"{', '.join(modes.MODES)}")
    prompt = merged.get("prompt")
    if require_prompt and (not isinstance(prompt, str) or not prompt.strip()):
      raise ValueError(f"{where}: the prompt is empty: give one, e.g. "
                       f"\"prompt\": \"a red circle moving right\"")
    mode = merged.get("mode", "t2v")
    needed, help_text = modes.MODES[mode]
    given = [name for name in ("input", "input2") if merged.get(name)]
    if require_prompt and len(given) != needed:
      wanted = " and ".join(["input", "input2"][:needed]) or "no input"
      raise ValueError(f"{where}: mode {mode!r} ({help_text}) takes {wanted}; got "
                       f"{', '.join(given) or 'none'}")
    merged.setdefault("prompt", "")
    return cls(**merged)

  def check_files(self, where: str) -> None:
    """Checks, before any model is loaded, that the inputs exist and the output can be written.

    Raises:
      FileNotFoundError, ValueError: naming `where` and the file.
    """
    for path in (self.input, self.input2):
      if path and not os.path.exists(path):
        raise FileNotFoundError(f"{where}: input {path} does not exist: pass an existing video "
                                f"(.mp4, .gif, .webm, .mov) or image (.png, .jpg)")
    if self.out and pathlib.Path(self.out).suffix.lower() not in (".mp4", ".gif"):
      raise ValueError(f"{where}: out = {self.out}: name the output .mp4 (a .gif is written "
                       f"beside it) or .gif")

  def options(self) -> dict[str, Any]:
    """The sampler settings that are set, as `Generator.generate` keywords."""
    values = dict(negative_prompt=self.negative_prompt, steps=self.steps,
                  guidance=self.guidance, sampler=self.sampler, seed=self.seed)
    return {k: v for k, v in values.items() if v is not None}


def read_input(path: str) -> np.ndarray:
  """A video or image file as uint8 frames [T, H, W, 3] (an image is one frame).

  Raises:
    FileNotFoundError / video_io.VideoDecodeError: missing or unreadable, naming the file.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"input {path} does not exist: pass an existing video (.mp4, .gif, "
                            f".webm, .mov) or image (.png, .jpg)")
  if pathlib.Path(path).suffix.lower() in IMAGE_SUFFIXES:
    return video_io.read_image(path)[None]
  frames, _ = video_io.read_video(path)
  return frames


def write_outputs(video: np.ndarray, out: str, fps: float) -> list[str]:
  """Writes `out` (.mp4 or .gif) and, for an .mp4, the .gif beside it. Returns the paths."""
  suffix = pathlib.Path(out).suffix.lower()
  if suffix not in (".mp4", ".gif"):
    raise ValueError(f"--out={out}: name the output .mp4 (a .gif is written beside it) or .gif")
  paths = [out]
  if suffix == ".mp4":
    paths.append(str(pathlib.Path(out).with_suffix(".gif")))
  for path in paths:
    video_io.write_video(path, video, fps=fps)
  return paths


def generate_one(generator: pipeline.Generator, request: Request, out: str) -> dict[str, Any]:
  """Runs one request and writes its files; returns its manifest entry."""
  inputs = tuple(read_input(path) for path in (request.input, request.input2) if path)
  result = modes.run(generator, request.mode, request.prompt, inputs=inputs,
                     frames=request.frames, height=request.height, width=request.width,
                     strength=request.strength, bridge_frames=request.bridge_frames,
                     **request.options())
  files = write_outputs(result.video, out, generator.fps) if jax.process_index() == 0 else []
  print(f"{out}: {result.summary()}", flush=True)
  return {"request": dataclasses.asdict(request), "files": files,
          "shape": list(result.video.shape), "new_frames": result.new_frames,
          "seconds": round(result.seconds, 3), "fps": result.fps,
          "real_time_factor": round(result.real_time_factor, 4)}


def read_requests(path: str, defaults: Request) -> list[Request]:
  """The requests of a JSONL prompts file (blank lines skipped).

  Raises:
    FileNotFoundError, ValueError: naming the file and line.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"--prompts_file={path} does not exist")
  requests = []
  with open(path, encoding="utf-8") as file:
    for number, line in enumerate(file, 1):
      if not line.strip():
        continue
      try:
        values = json.loads(line)
      except json.JSONDecodeError as error:
        raise ValueError(f"{path}:{number}: not a JSON object ({error}); write one request per "
                         f"line, e.g. {{\"prompt\": \"a red circle\"}}") from error
      if not isinstance(values, dict):
        raise ValueError(f"{path}:{number}: expected a JSON object, got {values!r}")
      request = Request.from_mapping(values, f"{path}:{number}", defaults)
      request.check_files(f"{path}:{number}")
      requests.append(request)
  if not requests:
    raise ValueError(f"{path} holds no requests: write one JSON object per line")
  return requests


def generate_many(generator: pipeline.Generator, requests: list[Request],
                  out_dir: str) -> tuple[str, int]:
  """Generates every request into `out_dir`; writes manifest.jsonl and index.html there.

  A request that fails (an input that cannot be decoded, a shape a mode refuses) is logged and
  recorded in the manifest with its error; the others still run.

  Returns:
    (the manifest's path, the number of failed requests).
  """
  os.makedirs(out_dir, exist_ok=True)
  entries, cards, failed = [], [], 0
  for index, request in enumerate(requests):
    name = request.out or f"{index:03d}_{request.mode}.mp4"
    try:
      entry = generate_one(generator, request, os.path.join(out_dir, name))
    except (FileNotFoundError, ValueError) as error:
      logging.error("request %d (%r) failed: %s", index, request.prompt, error)
      print(f"error: request {index} ({request.prompt!r}): {error}", file=sys.stderr)
      entries.append({"request": dataclasses.asdict(request), "error": str(error)})
      failed += 1
      continue
    entries.append(entry)
    relative = [os.path.relpath(path, out_dir) for path in entry["files"]]
    if relative and relative[0].endswith(".mp4"):
      cards.append(gallery.GalleryEntry(
          prompt=request.prompt, video=relative[0], gif=relative[1] if len(relative) > 1 else None,
          note=f"{request.mode}, seed {request.seed if request.seed is not None else 'default'}"))
  manifest = os.path.join(out_dir, "manifest.jsonl")
  if jax.process_index() == 0:
    with open(manifest, "w", encoding="utf-8") as file:
      for entry in entries:
        file.write(json.dumps(entry, sort_keys=True) + "\n")
    if cards:
      gallery.write_index(out_dir, cards, title=f"videogen: {len(cards)} generated videos")
  done = [e for e in entries if "error" not in e]
  total_frames = sum(e["new_frames"] for e in done)
  total_seconds = sum(e["seconds"] for e in done)
  print(f"{len(done)} videos ({failed} failed), {total_frames} new frames in "
        f"{total_seconds:.1f} s: real-time factor "
        f"{total_frames / generator.fps / max(total_seconds, 1e-9):.3f}; manifest {manifest}",
        flush=True)
  return manifest, failed


def command(experiment: experiment_lib.Experiment | None, workdir: str | None, *,
            prompts_file: str | None = None, **flags: Any) -> int:
  """`python -m videogen.main generate`: see the module docstring.

  Args:
    experiment: the validated experiment (from --config), or None for the workdir's own.
    workdir: the trained run.
    prompts_file: a JSONL file of requests; its lines default to `flags`.
    **flags: the command line's request fields (`Request`'s names); None where not given.

  Exit codes: 0 written, 1 a request or a workdir problem (message on stderr), 2 a usage error.
  """
  if not workdir:
    print("generate needs --workdir=DIR (a trained run: its checkpoints and tokenizer)",
          file=sys.stderr)
    return 2
  defaults = {f.name: flags[f.name] for f in dataclasses.fields(Request)
              if flags.get(f.name) is not None}
  if not prompts_file and not defaults.get("prompt"):
    print("generate needs --prompt='a red circle moving right' (or --prompts_file=FILE.jsonl)",
          file=sys.stderr)
    return 2
  if not prompts_file and not defaults.get("out"):
    print("generate needs --out=FILE.mp4 (a .gif is written beside it)", file=sys.stderr)
    return 2
  try:
    if prompts_file:
      out_dir = defaults.pop("out", None) or os.path.join(workdir, "generated")
      requests = read_requests(prompts_file, Request.from_mapping(defaults, "flags",
                                                                  require_prompt=False))
      generator = pipeline.load(workdir, experiment)
      _, failed = generate_many(generator, requests, out_dir)
      return 1 if failed else 0
    request = Request.from_mapping(defaults, "flags")
    request.check_files("flags")
    generator = pipeline.load(workdir, experiment)
    generate_one(generator, request, request.out)
    return 0
  except (FileNotFoundError, ValueError, TypeError) as error:
    logging.error("%s", error)
    print(f"error: {error}", file=sys.stderr)
    return 1
