r"""The `generate` command: prompt -> video file(s) from a trained workdir.

    python -m videogen.main generate --workdir=runs/tiny --prompt="a red circle moving right" \
        --out=red.mp4 [--mode=t2v --frames=17 --height=32 --width=48 --steps=30 --guidance=4 \
        --sampler=heun --seed=0 --negative_prompt="..." --input=clip.mp4 --input2=other.mp4 \
        --strength=0.6 --bridge_frames=8]

writes red.mp4 and red.gif beside it (`--mode=t2i --out=red.png` writes one PNG), and prints the
real-time factor (seconds of video per second of compute). The experiment is the one saved with
the workdir's checkpoint (`--config` replaces it). `--prompts_file=requests.jsonl` generates one
video per line instead, each line a JSON object with the keys of `Request` (only "prompt" is
required; the flags are the defaults), into the folder `--out` (default WORKDIR/generated), each
named after its line and prompt (`003-a-red-circle.mp4`) unless the line gives "out", with
`manifest.jsonl` (one line per video: its request with the sampler settings actually used, files,
shape and timing) and a gallery page `index.html`.

Modes (`--mode`, see `videogen.generate.modes`): t2v, t2i, i2v (--input: an image or a video's
first frame), extend and extend_backward (--input, --frames new frames), connect (--input,
--input2, --frames between them), loop (--frames, --bridge_frames), edit (--input, --strength).
Frame counts the autoencoder cannot take are rounded with a warning.

Provenance (`videogen.provenance.writer`): every file written carries an invisible watermark
keyed by WORKDIR/provenance/watermark.key (created on first use; `--key=FILE` uses another) whose
payload is the checkpoint's hash prefix and a generation counter, and a signed C2PA manifest (the
mode, seed, checkpoint hash and prompt; `--manifest_prompt=false` leaves the prompt out).
`--watermark=false` writes the frames unmarked. `python -m videogen.main detect` reads both.

Everything that can be checked before the model is loaded is: values out of range, missing inputs,
outputs that cannot be written (their folder is created), sizes that cannot fit in memory
(`pipeline.estimate_memory`). Each such mistake, and any other that stops the one video (a missing
checkpoint, an input that cannot be decoded, a file that cannot be written), is one line on
stderr that says what to do, with exit code 2 (`videogen.exit_codes`); with --prompts_file, a
line that fails is listed in the manifest and the others still run, with exit code 1. A prompt
with words no training caption holds gets a one-line warning and is generated anyway.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
import sys
from typing import Any, Callable, Optional

import jax
import numpy as np
import sentencepiece as spm

from data_pipelines import video_io
from videogen import exit_codes
from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from videogen.generate import gallery
from videogen.generate import modes
from videogen.generate import pipeline
from videogen.parallel import memory
from videogen.provenance import keys
from videogen.provenance import writer

# Request fields that are not strings: (accepted types, how the error names them).
_KINDS: dict[str, tuple[Any, str]] = {
    **{name: (int, "an integer") for name in ("frames", "height", "width", "steps", "seed",
                                               "bridge_frames")},
    "guidance": ((int, float), "a number"),
    "strength": ((int, float), "a number"),
}
# Request fields with a range: (whether a value is in it, what the error says about it).
_RANGES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "frames": (lambda v: v >= 1, "must be at least 1: the frames to make (e.g. 17)"),
    "height": (lambda v: v >= 1, "must be a positive number of pixels (e.g. 32)"),
    "width": (lambda v: v >= 1, "must be a positive number of pixels (e.g. 32)"),
    "steps": (lambda v: v >= 1, "must be at least 1 (e.g. 30)"),
    "guidance": (lambda v: math.isfinite(v) and v >= 0,
                 "must be >= 0: 1 turns guidance off, larger follows the prompt more closely "
                 "(e.g. 4)"),
    "strength": (lambda v: 0 < v <= 1, "must be in (0, 1]: small keeps more of the input, 1 "
                                       "ignores it"),
    "bridge_frames": (lambda v: v >= 1, "must be at least 1 (or leave it unset: about a third "
                                        "of the clip)"),
    "sampler": (lambda v: v in ("euler", "heun"), "must be 'euler' or 'heun'"),
}
# Where the command line's values come from, in `Request.from_mapping(..., where=FLAGS)`.
FLAGS = "flags"
# Characters of an output name made from a prompt (the slug).
_SLUG_LENGTH = 48


def _named(where: str, name: str, value: Any) -> str:
  """How an error names a value: `--frames=0` on the command line, `file:3: frames = 0` in a
  prompts file."""
  if where == FLAGS:
    quoted = isinstance(value, str) and (not value or any(c.isspace() for c in value))
    return f"--{name}={value!r}" if quoted else f"--{name}={value}"
  return f"{where}: {name} = {value!r}"


@dataclasses.dataclass(frozen=True)
class Request:
  """One video to generate: the flags of the command, or one line of a prompts file.

  Attributes:
    prompt: what to show (required, not empty).
    mode: one of `modes.MODES`.
    negative_prompt: the unconditional branch's prompt (None: the experiment's, "" by default).
    frames: new frames (see `modes`), >= 1; None: the training clip length.
    height, width: the frame size, >= 1; None: the input's, or the training size.
    steps, guidance, sampler, seed: sampler settings (None: the experiment's `config.sample`);
      steps >= 1, guidance >= 0, sampler "euler" or "heun".
    input, input2: video or image files the mode takes.
    strength: edit strength in (0, 1].
    bridge_frames: the loop's closing bridge length, >= 1.
    out: the output file (.mp4 with a .gif beside it, .gif, or .png for t2i); in a prompts file,
      relative to the output folder.
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
    """A request from a JSON object (or the flags), unset keys taken from `defaults`.

    Args:
      values: the keys of `Request`.
      where: names the source in errors: `FLAGS`, or e.g. "prompts.jsonl:3".
      defaults: values for the keys `values` lacks.
      require_prompt: whether a prompt (and the mode's inputs) must be given.

    Raises:
      ValueError: an unknown key, a value of the wrong type or out of range, an empty prompt, or
        the wrong inputs for the mode, naming `where`.
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
        raise ValueError(f"{_named(where, name, value)} must be {description}")
      in_range, rule = _RANGES.get(name, (None, ""))
      if value is not None and in_range is not None and not in_range(value):
        raise ValueError(f"{_named(where, name, value)} {rule}")
    mode = merged.get("mode", "t2v")
    if mode not in modes.MODES:
      raise ValueError(f"{_named(where, 'mode', mode)}; choose one of: {', '.join(modes.MODES)}")
    prompt = merged.get("prompt")
    if require_prompt and (not isinstance(prompt, str) or not prompt.strip()):
      example = ("--prompt='a red circle moving right'" if where == FLAGS
                 else "\"prompt\": \"a red circle moving right\"")
      raise ValueError(f"{where}: the prompt is empty: give one, e.g. {example}")
    needed, help_text = modes.MODES[mode]
    given = [name for name in ("input", "input2") if merged.get(name)]
    if require_prompt and len(given) != needed:
      prefix = "--" if where == FLAGS else ""
      wanted = " and ".join(prefix + name for name in ["input", "input2"][:needed]) or "no input"
      raise ValueError(f"{where}: mode {mode!r} ({help_text}) takes {wanted}; got "
                       f"{', '.join(prefix + name for name in given) or 'none'}")
    merged.setdefault("prompt", "")
    return cls(**merged)

  def output_paths(self, out_dir: str | None = None) -> list[str]:
    """The files this request writes: `out` (in `out_dir`), and for an .mp4 the .gif beside it."""
    out = os.path.join(out_dir, self.out) if out_dir else self.out
    if out is None:
      return []
    if pathlib.Path(out).suffix.lower() == ".mp4":
      return [out, str(pathlib.Path(out).with_suffix(".gif"))]
    return [out]

  def check_files(self, where: str, out_dir: str | None = None) -> None:
    """Checks, before any model is loaded, that the inputs can be read (an image is read, a video
    probed: a file cut short after its header is found only when it is read) and the outputs
    can be written.

    Creates the output's folder (a file in the way, an unwritable folder or a wrong suffix is an
    error).

    Raises:
      FileNotFoundError, ValueError: naming `where` and the file.
    """
    for name in ("input", "input2"):
      path = getattr(self, name)
      if not path:
        continue
      if not os.path.exists(path):
        raise FileNotFoundError(f"{_named(where, name, path)} does not exist: pass an existing "
                                f"video (.mp4, .gif, .webm, .mov) or image (.png, .jpg)")
      try:
        video_io.check_frames_file(path)
      except video_io.VideoDecodeError as error:
        raise ValueError(f"{_named(where, name, path)}: {error.message}") from error
    if not self.out:
      return
    suffix = pathlib.Path(self.out).suffix.lower()
    if suffix == ".png" and self.mode != "t2i":
      raise ValueError(f"{_named(where, 'out', self.out)}: a .png holds one image: use "
                       f"--mode=t2i for an image, or name the output .mp4 (a .gif is written "
                       f"beside it) or .gif")
    if suffix not in (".mp4", ".gif", ".png"):
      raise ValueError(f"{_named(where, 'out', self.out)}: name the output .mp4 (a .gif is "
                       f"written beside it) or .gif" + (", or .png" if self.mode == "t2i" else ""))
    paths = self.output_paths(out_dir)
    for path in paths:
      try:
        video_io.check_writable(path)
      except video_io.VideoWriteError as error:
        beside = "" if path == paths[0] else f" (the .gif beside it, {path})"
        raise ValueError(f"{_named(where, 'out', self.out)}{beside}: {error.message}") from error

  def options(self) -> dict[str, Any]:
    """The sampler settings that are set, as `Generator.generate` keywords."""
    values = dict(negative_prompt=self.negative_prompt, steps=self.steps,
                  guidance=self.guidance, sampler=self.sampler, seed=self.seed)
    return {k: v for k, v in values.items() if v is not None}


def output_name(request: Request, number: int) -> str:
  """The output file of a prompts file's line `number`: its `out`, else named after the line and
  the prompt, e.g. "003-a-red-circle-moving-right.mp4" (".png" for t2i)."""
  if request.out:
    return request.out
  slug = re.sub(r"[^a-z0-9]+", "-", request.prompt.lower()).strip("-")
  slug = slug[:_SLUG_LENGTH].rstrip("-") or "video"
  return f"{number:03d}-{slug}{'.png' if request.mode == 't2i' else '.mp4'}"


def write_outputs(video: np.ndarray, out: str, fps: float, *, stamp: writer.Stamp,
                  claim: dict[str, Any]) -> writer.Written:
  """Writes `out` (.mp4, .gif, or .png for one frame) and, for an .mp4, the .gif beside it,
  watermarked and signed by `stamp` (one payload for both files).

  Args:
    claim: the manifest's fields for this video (`writer.Stamp.sign`).

  Returns:
    What was written: `paths` (each exists: a failed write raises), the payload.

  Raises:
    ValueError: another suffix, or a .png for more than one frame.
    video_io.VideoWriteError: a file could not be written.
  """
  suffix = pathlib.Path(out).suffix.lower()
  if suffix == ".png":
    if len(video) != 1:
      raise ValueError(f"--out={out}: a .png holds one image, the video has {len(video)} frames: "
                       f"use --mode=t2i, or name the output .mp4 or .gif")
    return stamp.write([out], video, fps, claim=claim)
  if suffix not in (".mp4", ".gif"):
    raise ValueError(f"--out={out}: name the output .mp4 (a .gif is written beside it) or .gif")
  paths = [out]
  if suffix == ".mp4":
    paths.append(str(pathlib.Path(out).with_suffix(".gif")))
  return stamp.write(paths, video, fps, claim=claim)


def resolved(generator: pipeline.Generator, request: Request) -> Request:
  """`request` with the sampler settings it leaves unset filled in from the generator's."""
  config = generator.sampler_config(**request.options())
  return dataclasses.replace(request, steps=config.num_steps, guidance=config.guidance_scale,
                             sampler=config.method, seed=config.seed,
                             negative_prompt=config.negative_prompt)


def generate_one(generator: pipeline.Generator, request: Request, out: str,
                 stamp: writer.Stamp) -> dict[str, Any]:
  """Runs one request and writes its files through `stamp`; returns its manifest entry.

  The entry's request holds the sampler settings actually used (seed, steps, ...), so that the
  same video can be made again from it; "watermark" is the payload the files carry (hex; None
  with the watermark off).
  """
  inputs = tuple(video_io.read_frames(path) for path in (request.input, request.input2) if path)
  result = modes.run(generator, request.mode, request.prompt, inputs=inputs,
                     frames=request.frames, height=request.height, width=request.width,
                     strength=request.strength, bridge_frames=request.bridge_frames,
                     **request.options())
  used = resolved(generator, request)
  files, payload = [], None
  if jax.process_index() == 0:
    claim = {"mode": request.mode, "seed": used.seed, "prompt": request.prompt}
    written = write_outputs(result.video, out, generator.fps, stamp=stamp, claim=claim)
    files, payload = written.paths, written.payload
  print(f"{out}: {result.summary()}", flush=True)
  return {"request": dataclasses.asdict(used), "files": files,
          "watermark": None if payload is None else payload.hex(),
          "shape": list(result.video.shape), "new_frames": result.new_frames,
          "seconds": round(result.seconds, 3), "fps": result.fps,
          "real_time_factor": round(result.real_time_factor, 4)}


def read_requests(path: str, defaults: Request,
                  out_dir: str | None = None) -> list[tuple[str, Request]]:
  """The requests of a JSONL prompts file (blank lines skipped), each with where it was read.

  Each request's `out` is set: the line's own, or `output_name`'s (unique by its line number).

  Args:
    path: the prompts file.
    defaults: the values of keys a line leaves out (the command's flags).
    out_dir: the output folder; when given, each output is checked to be writable there.

  Returns:
    ("FILE:LINE", request) pairs in file order.

  Raises:
    FileNotFoundError, ValueError: naming the file and line.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"--prompts_file={path} does not exist")
  with open(path, "rb") as file:
    lines = file.read().split(b"\n")
  requests: list[tuple[str, Request]] = []
  writers: dict[str, str] = {}  # output path -> the line that writes it
  for number, raw in enumerate(lines, 1):
    where = f"{path}:{number}"
    try:
      line = raw.decode("utf-8")
    except UnicodeDecodeError as error:
      raise ValueError(f"{where}: not UTF-8 text (byte {raw[error.start]:#04x} at column "
                       f"{error.start + 1}): save the file as UTF-8") from error
    if not line.strip():
      continue
    try:
      values = json.loads(line)
    except json.JSONDecodeError as error:
      raise ValueError(f"{where}: not a JSON object ({error}); write one request per line, e.g. "
                       f"{{\"prompt\": \"a red circle\"}}") from error
    if not isinstance(values, dict):
      raise ValueError(f"{where}: expected a JSON object, got {values!r}")
    request = Request.from_mapping(values, where, defaults)
    request = dataclasses.replace(request, out=output_name(request, number))
    request.check_files(where, out_dir)
    for output in request.output_paths():
      key = os.path.normpath(output)
      if key in writers:
        raise ValueError(f"{where}: out = {request.out!r} writes {output}, as {writers[key]} "
                         f"does: give each line its own \"out\"")
      writers[key] = where
    requests.append((where, request))
  if not requests:
    raise ValueError(f"{path} holds no requests: write one JSON object per line")
  return requests


def generate_many(generator: pipeline.Generator, requests: list[Request], out_dir: str,
                  stamp: writer.Stamp) -> tuple[str, int]:
  """Generates every request into `out_dir` (written through `stamp`); writes manifest.jsonl and
  index.html there.

  A request without `out` is named by `output_name` after its position. A request that fails (an
  input that cannot be decoded, a shape a mode refuses, a file that cannot be written) is logged
  and recorded in the manifest with its error; the others still run.

  Returns:
    (the manifest's path, the number of failed requests).
  """
  os.makedirs(out_dir, exist_ok=True)
  entries, cards, failed = [], [], 0
  for index, request in enumerate(requests):
    name = output_name(request, index + 1)
    try:
      entry = generate_one(generator, request, os.path.join(out_dir, name), stamp)
    except (OSError, ValueError) as error:
      print(f"error: {name} ({request.prompt!r}): {error}", file=sys.stderr)
      entries.append({"request": dataclasses.asdict(request), "error": str(error)})
      failed += 1
      continue
    entries.append(entry)
    relative = [os.path.relpath(path, out_dir) for path in entry["files"]]
    if relative:
      used = entry["request"]
      cards.append(gallery.GalleryEntry(
          prompt=request.prompt, video=relative[0],
          gif=relative[1] if len(relative) > 1 else None,
          note=f"{request.mode}, seed {used['seed']}, {used['steps']} {used['sampler']} steps"))
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


# ------------------------------------------------------------------------------------------------
# Checks before the model is loaded.
# ------------------------------------------------------------------------------------------------


def _size(count: float) -> str:
  for unit, scale in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
    if count >= scale:
      return f"{count / scale:.1f} {unit}"
  return f"{count / 2**10:.1f} KiB"


def check_memory(experiment: experiment_lib.Experiment, request: Request, where: str,
                 available: int | None = None) -> None:
  """Refuses a request whose shape cannot fit in this machine's memory (`estimate_memory`).

  Args:
    available: bytes the devices have (default: `memory.devices_memory_bytes`); None unknown.

  Raises:
    ValueError: it needs more than `available`, saying how much and why.
  """
  available = memory.devices_memory_bytes() if available is None else available
  if available is None:
    return
  # A size the inputs set is unknown here: counted at its smallest (the estimate stays a bound).
  sized_by_input = modes.MODES[request.mode][0] > 0
  smallest = 1 if sized_by_input else None
  estimate = pipeline.estimate_memory(
      experiment, frames=1 if request.mode == "t2i" else request.frames,
      height=request.height if request.height is not None else smallest,
      width=request.width if request.width is not None else smallest,
      guidance=request.guidance)
  if estimate.total_bytes <= available:
    return
  given = {name: getattr(request, name) for name in ("frames", "height", "width")
           if getattr(request, name) is not None}
  if where == FLAGS:
    subject = " ".join(_named(FLAGS, k, v) for k, v in given.items()) or "the training size"
  else:
    subject = f"{where}: " + (", ".join(f"{k} = {v}" for k, v in given.items())
                              or "the training size")
  parts = [f"the video alone is {_size(estimate.video_bytes)}"]
  if estimate.attention_bytes:
    parts.insert(0, f"attention over its {estimate.tokens:,} tokens holds "
                    f"{_size(estimate.attention_bytes)} per layer")
  raise ValueError(
      f"{subject}: a {estimate.frames}x{estimate.height}x{estimate.width} video needs at least "
      f"{_size(estimate.total_bytes)} ({'; '.join(parts)}); this machine has "
      f"{_size(available)}: ask for fewer frames or a smaller size")


def _unknown_words(prompt: str, known: frozenset[str]) -> list[str]:
  return list(dict.fromkeys(w for w in workdir_lib.words(prompt) if w not in known))


def _words_the_tokenizer_lacks(prompt: str, tokenizer: Any) -> list[str]:
  """The prompt's words that the tokenizer can only spell with byte or <unk> pieces: characters
  no training caption held (a word of known letters passes: the tokenizer cannot tell)."""
  proto = getattr(tokenizer, "model_proto", None)
  if proto is None:
    return []
  processor = spm.SentencePieceProcessor(model_proto=proto)
  return [word for word in dict.fromkeys(workdir_lib.words(prompt))
          if any(processor.is_byte(i) or processor.is_unknown(i) for i in processor.encode(word))]


def _quoted(words: list[str]) -> str:
  quoted = [repr(w) for w in words]
  return " or ".join([", ".join(quoted[:-1]), quoted[-1]] if len(quoted) > 1 else quoted)


def warn_unknown_words(requests: list[tuple[str, Request]], known: frozenset[str] | None,
                       source: str, tokenizer: Any = None) -> None:
  """Prints one warning line per prompt with words the model never saw in training.

  Args:
    requests: (where, request) pairs.
    known: the training captions' words (`workdir.read_tokenizer_words`); None: ask `tokenizer`.
    source: where `known` comes from, named in the warning.
    tokenizer: the run's tokenizer, for a workdir that did not record its captions' words.
  """
  for where, request in requests:
    if known is not None:
      unknown = _unknown_words(request.prompt, known)
      why = f"no training caption says {_quoted(unknown)}"
      where_known = f" (the words it knows: {source})"
    elif tokenizer is not None:
      unknown = _words_the_tokenizer_lacks(request.prompt, tokenizer)
      why = f"the tokenizer never saw the characters of {_quoted(unknown)} in training"
      where_known = ""
    else:
      unknown = []
    if unknown:
      them = "that word" if len(unknown) == 1 else "those words"
      print(f"warning: {_named(where, 'prompt', request.prompt)}: {why}, so the model cannot "
            f"follow {them}{where_known}", file=sys.stderr, flush=True)


def command(experiment: experiment_lib.Experiment | None, workdir: str | None, *,
            prompts_file: str | None = None, watermark: bool = True,
            manifest_prompt: bool = True, key: str | None = None, **flags: Any) -> int:
  """`python -m videogen.main generate`: see the module docstring.

  Args:
    experiment: the validated experiment (from --config), or None for the workdir's own.
    workdir: the trained run.
    prompts_file: a JSONL file of requests; its lines default to `flags`.
    watermark: False writes the videos without the invisible watermark.
    manifest_prompt: False keeps the prompt out of the signed manifests.
    key: a watermark key file instead of WORKDIR/provenance/watermark.key.
    **flags: the command line's request fields (`Request`'s names); None where not given.

  Exit codes (`videogen.exit_codes`): 0 written; 2 nothing written, one line on stderr says
  what to change; 1 some lines of the prompts file failed (the others are written).
  """
  if not workdir:
    return exit_codes.refuse("generate needs --workdir=DIR (a trained run: its checkpoints and "
                             "tokenizer)")
  defaults = {f.name: flags[f.name] for f in dataclasses.fields(Request)
              if flags.get(f.name) is not None}
  if not prompts_file and not defaults.get("prompt"):
    return exit_codes.refuse("generate needs --prompt='a red circle moving right' (or "
                             "--prompts_file=FILE.jsonl)")
  if not prompts_file and not defaults.get("out"):
    return exit_codes.refuse("generate needs --out=FILE.mp4 (a .gif is written beside it)")
  try:
    # Everything that can fail without the model fails here, before it is loaded.
    if prompts_file:
      out_dir = defaults.pop("out", None) or os.path.join(workdir, "generated")
      try:
        video_io.check_writable(os.path.join(out_dir, "manifest.jsonl"))
      except video_io.VideoWriteError as error:
        raise ValueError(f"--out={out_dir} (the output folder): {error.message}") from error
      requests = read_requests(prompts_file, Request.from_mapping(defaults, FLAGS,
                                                                  require_prompt=False), out_dir)
    else:
      request = Request.from_mapping(defaults, FLAGS)
      request.check_files(FLAGS)
      requests = [(FLAGS, request)]
    if experiment is None:
      experiment = workdir_lib.saved_experiment(workdir, workdir_lib.DIT_STAGE)
    for where, request in requests:
      check_memory(experiment, request, where)
    known = workdir_lib.read_tokenizer_words(workdir, experiment)
    source = workdir_lib.tokenizer_words_path(workdir_lib.tokenizer_path(workdir, experiment))
    warn_unknown_words(requests, known, source)
    if watermark and key is not None:
      keys.watermark_key(key_file=key)  # a bad --key fails before the slow load

    generator = pipeline.load(workdir, experiment)
    # Keys are created (on first use) only in a workdir that holds a model.
    stamp = writer.Stamp.for_workdir(workdir, watermark=watermark, key_file=key,
                                     include_prompt=manifest_prompt)
    if known is None:
      warn_unknown_words(requests, None, source, generator.tokenizer)
    if prompts_file:
      _, failed = generate_many(generator, [request for _, request in requests], out_dir,
                                stamp)
      return exit_codes.FAILED if failed else exit_codes.DONE
    (_, request), = requests
    generate_one(generator, request, request.out, stamp)
    return exit_codes.DONE
  except (OSError, ValueError) as error:  # anything else is a bug: it keeps its traceback
    return exit_codes.refuse(error)
