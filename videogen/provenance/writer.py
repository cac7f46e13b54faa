"""The one writer of generated videos: watermark the frames, write the file, sign it.

    stamp = writer.Stamp.for_workdir(workdir)        # the workdir's keys, created on first use
    written = stamp.write(["red.mp4", "red.gif"], frames, fps,
                          claim={"mode": "t2v", "seed": 0, "prompt": "a red circle"})
    written.paths, written.payload                    # the files, the 4 watermark bytes

Every command that writes generated frames (generate, the Python API's `Pipeline.save`, the main
job's gallery, the evaluation's videos) writes them through a `Stamp`, so that each file carries:

  * an invisible watermark (`watermark.embed`, applied to the frames before encoding, so the
    mp4, the gif and the png all carry it), keyed by WORKDIR/provenance/watermark.key or the
    user's `key_file`. Its 4-byte payload is the first 2 bytes of the checkpoint hash and a
    2-byte generation counter (big endian): the counter lives in
    WORKDIR/provenance/generation_counter and is taken under a file lock, once per generation
    (every file of one generation carries the same payload); the payload keeps its low 16 bits.
    In a workdir the counter cannot be written to (shared read-only), 2 random bytes, with a
    warning. `detect` reads the payload back: which checkpoint, which generation.
  * a signed C2PA manifest (`manifest.sign`, for .mp4, .gif and .png) whose claim holds the
    generator, its version and the time (filled in by `manifest.sign`), the checkpoint hash,
    the watermark payload (hex, null when off) and the caller's mode, seed and prompt (left out
    with `include_prompt=False`).

The checkpoint hash is "sha256:<hex>" of the diffusion stage's checkpoint step number and the
bytes of its small metadata files (`CHECKPOINT_FILES`: orbax's record of the save, with its
timestamps; the experiment it was trained with; the arrays' names, shapes and dtypes), not of the
arrays: cheap on a multi-GB checkpoint, and different for every save. It says which checkpoint
made a video, not that the weights are untouched. A workdir without a checkpoint hashes to
"unknown" (payload prefix 0000).

The keys are secrets: a `Stamp` holds the watermark key and the signing key's path, and never
logs, prints or shows them (its repr leaves the key out); the files written hold neither.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import os
import pathlib
from typing import Any, Sequence

import numpy as np
from absl import logging

from data_pipelines import video_io
from videogen import workdir as workdir_lib
from videogen.provenance import keys
from videogen.provenance import manifest as manifest_lib
from videogen.provenance import watermark as watermark_lib

PathLike = str | os.PathLike
# The files of a checkpoint step the hash reads, relative to its folder; a missing one is skipped.
CHECKPOINT_FILES = ("_CHECKPOINT_METADATA", "config/metadata", "state/_METADATA")
COUNTER_FILE = "generation_counter"
UNKNOWN_CHECKPOINT = "unknown"
# What `write` writes: a video file per suffix, or one frame as a PNG.
VIDEO_SUFFIXES = video_io.WRITE_SUFFIXES
IMAGE_SUFFIX = ".png"


def checkpoint_hash(workdir: PathLike, *, step: int | None = None,
                    stage: str = workdir_lib.DIT_STAGE) -> str:
  """"sha256:<hex>" of a checkpoint step's number and metadata files (see the module docstring).

  Args:
    workdir: the run's directory.
    step: the checkpoint step; None: the newest.
    stage: the stage whose checkpoint.

  Returns:
    The hash, or UNKNOWN_CHECKPOINT when the stage has no checkpoint.
  """
  workdir = os.fspath(workdir)
  step = workdir_lib.latest_step(workdir, stage) if step is None else step
  folder = pathlib.Path(workdir_lib.checkpoint_dir(workdir, stage)) / str(step)
  if step is None or not folder.is_dir():
    return UNKNOWN_CHECKPOINT
  digest = hashlib.sha256(f"videogen checkpoint {stage} {step}\n".encode())
  for name in CHECKPOINT_FILES:
    path = folder / name
    if path.is_file():
      data = path.read_bytes()
      digest.update(f"{name} {len(data)}\n".encode())
      digest.update(data)
  return f"sha256:{digest.hexdigest()}"


def _checkpoint_prefix(checkpoint: str) -> bytes:
  """The payload's first 2 bytes: the checkpoint hash's first 2 bytes, 0000 when unknown."""
  if not checkpoint.startswith("sha256:"):
    return bytes(2)
  return bytes.fromhex(checkpoint.removeprefix("sha256:")[:4])


def _take_count(path: pathlib.Path) -> int:
  """The counter's value, incremented in the file under an exclusive lock (processes that
  generate side by side each get their own)."""
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
  with os.fdopen(fd, "r+", encoding="ascii") as file:
    fcntl.flock(file, fcntl.LOCK_EX)  # released when the file closes
    text = file.read().strip()
    count = int(text) if text.isdigit() else 0
    file.seek(0)
    file.truncate()
    file.write(f"{count + 1}\n")
    file.flush()
    os.fsync(file.fileno())
  return count


@dataclasses.dataclass(frozen=True)
class Written:
  """What `Stamp.write` wrote.

  Attributes:
    paths: the files, in the order given.
    frames: uint8 [T, H, W, 3], the frames the files hold (watermarked unless it is off).
    payload: the watermark's PAYLOAD_BYTES bytes; None with the watermark off.
    claim: the manifest's videogen.generation assertion; None without a manifest.
  """
  paths: list[str]
  frames: np.ndarray
  payload: bytes | None
  claim: dict[str, Any] | None


@dataclasses.dataclass(frozen=True)
class Stamp:
  """How generated videos are written: the watermark key, the signer, the checkpoint's hash.

  Build it once per workdir with `for_workdir`; `write` then marks, writes and signs each video.

  Attributes:
    checkpoint: the checkpoint hash (`checkpoint_hash`).
    key: the watermark key; None: the watermark is off. Never shown (repr=False).
    signer: (signing key path, certificate path); None: no manifest.
    include_prompt: whether the manifest holds the prompt.
    counter: the generation counter's file; None: random counters.
  """
  checkpoint: str
  key: bytes | None = dataclasses.field(default=None, repr=False)
  signer: tuple[pathlib.Path, pathlib.Path] | None = None
  include_prompt: bool = True
  counter: pathlib.Path | None = None

  @classmethod
  def for_workdir(cls, workdir: PathLike, *, watermark: bool = True,
                  key_file: PathLike | None = None, manifest: bool = True,
                  include_prompt: bool = True, step: int | None = None) -> Stamp:
    """The stamp of a workdir's generated videos, its keys read (or created on first use).

    Args:
      workdir: the trained run; its keys and counter live in WORKDIR/provenance/.
      watermark: False writes the frames unmarked (said in one log line).
      key_file: a watermark key elsewhere (64 hex digits, owner-only), e.g. when the workdir is
        shared for generation without its keys; never created.
      manifest: False writes no C2PA manifest.
      include_prompt: False keeps the prompt out of the manifest.
      step: the checkpoint step that generates; None: the newest.

    A workdir that cannot hold new keys (shared read-only) still generates with `key_file`:
    without a signing key there, the files go unsigned, with a warning.

    Raises:
      keys.KeyFileError: a key file is missing (`key_file`), unreadable, accessible by others
        or malformed, or the workdir's watermark key cannot be created.
    """
    workdir = os.fspath(workdir)
    key = None
    if watermark:
      try:
        key = keys.watermark_key(workdir, key_file=key_file)
      except OSError as error:  # keys.KeyFileError is a ValueError: only the file system's
        raise keys.KeyFileError(
            f"cannot create the watermark key in {keys.provenance_dir(workdir)} "
            f"({error.strerror}): pass --key=FILE with a key kept elsewhere, or "
            f"--watermark=false") from None
    else:
      logging.warning("The watermark is off (--watermark=false): the videos written from %s "
                      "carry no invisible watermark.", workdir)
    signer = None
    if manifest:
      try:
        signer = keys.signer_files(workdir)
      except OSError as error:
        logging.warning("Cannot create the signing key in %s (%s): the files are written "
                        "without a C2PA manifest.", keys.provenance_dir(workdir), error.strerror)
    return cls(checkpoint=checkpoint_hash(workdir, step=step), key=key, signer=signer,
               include_prompt=include_prompt,
               counter=keys.provenance_dir(workdir) / COUNTER_FILE)

  @property
  def watermarking(self) -> bool:
    return self.key is not None

  def next_payload(self) -> bytes:
    """A new generation's payload: the checkpoint prefix and the next counter value."""
    count = None
    if self.counter is not None:
      try:
        self.counter.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        count = _take_count(self.counter)
      except OSError as error:
        logging.warning("Cannot update the generation counter %s (%s): the watermark carries "
                        "a random counter instead.", self.counter, error.strerror)
    number = (count % 2**16).to_bytes(2, "big") if count is not None else os.urandom(2)
    return _checkpoint_prefix(self.checkpoint) + number

  def mark(self, frames: np.ndarray) -> tuple[np.ndarray, bytes | None]:
    """(frames uint8 [T, H, W, 3] watermarked with a new payload, the payload); the frames as
    they are and None with the watermark off."""
    if self.key is None:
      return frames, None
    payload = self.next_payload()
    return watermark_lib.embed(frames, self.key, payload), payload

  def sign(self, path: PathLike, *, claim: dict[str, Any],
           payload: bytes | None) -> dict[str, Any] | None:
    """Embeds the signed manifest in a written file; returns its assertion (None: no manifest).

    Args:
      claim: the caller's fields: "mode" and "seed" (None when unknown), "prompt", any others.
      payload: the watermark payload the file carries, or None.
    """
    if self.signer is None:
      return None
    key_path, cert_path = self.signer
    full = {**claim, "checkpoint": self.checkpoint,
            "watermark": None if payload is None else payload.hex()}
    return manifest_lib.sign(path, key_path=key_path, cert_path=cert_path, claim=full,
                             include_prompt=self.include_prompt)

  def write(self, paths: Sequence[PathLike], frames: np.ndarray, fps: float, *,
            claim: dict[str, Any]) -> Written:
    """Writes one generated video to each of `paths`, watermarked alike, each signed.

    Args:
      paths: .mp4 and .gif files (`video_io.write_video`), or a .png for a single frame.
      frames: uint8 [T, H, W, 3].
      fps: frames per second of the videos (unused for a .png).
      claim: see `sign`.

    Raises:
      ValueError: a suffix other than .mp4, .gif or .png, a .png for more than one frame, or
        frames that are not uint8 [T, H, W, 3].
      video_io.VideoWriteError: a file could not be written.
    """
    frames = np.asarray(frames)
    for path in paths:
      suffix = pathlib.Path(path).suffix.lower()
      if suffix not in (*VIDEO_SUFFIXES, IMAGE_SUFFIX):
        raise ValueError(f"cannot write {path}: name it .mp4, .gif or .png")
      if suffix == IMAGE_SUFFIX and len(frames) != 1:
        raise ValueError(f"cannot write {path}: a .png holds one image, the video has "
                         f"{len(frames)} frames; name it .mp4 or .gif")
    marked, payload = self.mark(frames)
    assertion = None
    for path in paths:
      if pathlib.Path(path).suffix.lower() == IMAGE_SUFFIX:
        video_io.write_image(path, marked[0])
      else:
        video_io.write_video(path, marked, fps)
      assertion = self.sign(path, claim=claim, payload=payload)
    return Written(paths=[os.fspath(path) for path in paths], frames=marked, payload=payload,
                   claim=assertion)
