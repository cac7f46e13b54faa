r"""The `detect` command: does a video carry this workdir's watermark, is its manifest valid?

    python -m videogen.main detect --input=red.mp4 --workdir=runs/tiny
    python -m videogen.main detect --input=runs/tiny/gallery --key=secrets/watermark.key

`--input` is a video (.mp4, .gif, .webm, .mov), an image (.png, .jpg) or a folder, searched
recursively for them. The watermark key is WORKDIR/provenance/watermark.key, or `--key=FILE`;
detecting never creates one. Prints one JSON line per file:

  {"path": "red.mp4", "watermarked": true, "p_value": 1.9e-15, "payload": "e0b10000",
   "manifest": "valid", "trusted": true}

  watermarked  p_value < videogen.provenance.watermark.P_THRESHOLD.
  p_value      the probability that a video without this key's watermark scores as high
               (calibrated: uniform on unwatermarked videos).
  payload      the 4 payload bytes in hex when watermarked and their CRC holds, else null: the
               first 2 bytes of the checkpoint's hash, then the workdir's generation counter
               (`videogen.provenance.writer`).
  manifest     the C2PA manifest: "valid", "invalid" (e.g. the media changed after signing) or
               "absent".
  trusted      with --workdir (when it holds its signing CA): whether the manifest's signer is
               that workdir's.

A file that cannot be read gets a line with `path` and `error`; in a folder, the others are still
read and the command ends with exit code 1. A missing key or input, an `--input` file that
cannot be read, or a folder without videos or images, is one line on stderr and exit code 2
(`videogen.exit_codes`).
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any


from data_pipelines import video_io
from videogen import exit_codes
from videogen import experiment as experiment_lib
from videogen.provenance import keys
from videogen.provenance import manifest
from videogen.provenance import watermark

VIDEO_SUFFIXES: tuple[str, ...] = video_io.VIDEO_SUFFIXES
IMAGE_SUFFIXES: tuple[str, ...] = video_io.IMAGE_SUFFIXES


def find_files(path: pathlib.Path) -> list[pathlib.Path]:
  """`path` itself, or the videos and images in the folder `path` and below, sorted (hidden files
  and folders left out)."""
  if not path.is_dir():
    return [path]
  suffixes = VIDEO_SUFFIXES + IMAGE_SUFFIXES
  return sorted(found for found in path.rglob("*")
                if found.is_file() and found.suffix.lower() in suffixes
                and not any(part.startswith(".") for part in found.relative_to(path).parts))


def check_file(path: pathlib.Path, key: bytes, trust_anchor: pathlib.Path | None
               ) -> dict[str, Any]:
  """The JSON line of one file (see the module docstring).

  Raises:
    video_io.VideoDecodeError: the file cannot be read.
    ValueError: its frames are too small to carry the watermark.
  """
  found = watermark.detect(video_io.read_frames(path), key)
  verification = manifest.verify(path, trust_anchor=trust_anchor)
  line: dict[str, Any] = {
      "path": str(path), "watermarked": bool(found.watermarked), "p_value": found.p_value,
      "payload": None if found.payload is None else found.payload.hex(),
      "manifest": verification.status}
  if trust_anchor is not None:
    line["trusted"] = bool(verification.trusted)
  return line


def command(experiment: experiment_lib.Experiment | None, workdir: str | None, *,
            input: str | None = None, key: str | None = None) -> int:
  """`python -m videogen.main detect`: see the module docstring.

  Args:
    experiment: unused (detection needs no model).
    workdir: the run whose watermark key (and signing CA) to use.
    input: a video, an image or a folder of them (named after the flag, as main calls it).
    key: a watermark key file, instead of the workdir's.

  Returns:
    0 every file was read, 1 some could not be, 2 a usage error.
  """
  del experiment
  if not input:
    return exit_codes.refuse("detect needs --input=PATH: a video, an image or a folder of them")
  if workdir is None and key is None:
    return exit_codes.refuse("detect needs the watermark key: pass --workdir=DIR (the run that "
                             "made the videos) or --key=FILE")
  try:
    secret = keys.watermark_key(workdir, key_file=key, create=False)
  except keys.KeyFileError as error:
    return exit_codes.refuse(error)
  trust_anchor = keys.trust_anchor_file(workdir) if workdir is not None else None
  path = pathlib.Path(input)
  if not path.exists():
    return exit_codes.refuse(f"--input={input} does not exist: pass a video, an image or a "
                             f"folder")
  files = find_files(path)
  if not files:
    return exit_codes.refuse(f"--input={input} holds no videos or images (any of "
                             f"{', '.join(VIDEO_SUFFIXES + IMAGE_SUFFIXES)})")
  failed = 0
  for file in files:
    try:
      line = check_file(file, secret, trust_anchor)
    except (OSError, ValueError) as error:  # VideoDecodeError is a ValueError
      line = {"path": str(file), "error": str(error)}
      failed += 1
    print(json.dumps(line), flush=True)
  if failed and path.is_file():  # the one file asked about: a mistake in what was asked
    return exit_codes.refuse(line["error"])
  if failed:
    print(f"error: {failed} of {len(files)} files could not be read", file=sys.stderr)
  return exit_codes.FAILED if failed else exit_codes.DONE
