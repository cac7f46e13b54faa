"""Tests for videogen/provenance/writer.py: one payload per generation, marked, written, signed."""

from __future__ import annotations

import logging
import os
import stat

import numpy as np
import pytest

from data_pipelines import video_io
from data_pipelines.shapes import world
from videogen.provenance import keys
from videogen.provenance import manifest
from videogen.provenance import watermark
from videogen.provenance import writer
from tests.helpers import provenance

CLAIM = {"mode": "t2v", "seed": 3, "prompt": "a large red circle moving right"}


@pytest.fixture(scope="module")
def clip():
  return world.generate(1, seed=0, frames=9, height=64, width=64)["video"]


def _fake_checkpoint(workdir, step: int = 7) -> None:
  """A checkpoint step folder with orbax's small metadata files and one 'array' file."""
  folder = workdir / "checkpoints" / "dit" / str(step)
  (folder / "config").mkdir(parents=True)
  (folder / "state" / "d").mkdir(parents=True)
  (folder / "_CHECKPOINT_METADATA").write_text('{"commit_timestamp_nsecs": 1}')
  (folder / "config" / "metadata").write_text('{"dit": {"depth": 1}}')
  (folder / "state" / "_METADATA").write_text('{"tree": "shapes"}')
  (folder / "state" / "d" / "0123").write_bytes(b"\x00" * 4096)


def test_one_generation_marks_every_file_alike_and_signs_each(tmp_path, clip):
  workdir = tmp_path / "run"
  stamp = writer.Stamp.for_workdir(workdir)
  paths = [tmp_path / "out" / "red.mp4", tmp_path / "out" / "red.gif"]
  written = stamp.write(paths, clip, 8, claim=CLAIM)
  assert written.paths == [str(p) for p in paths]
  assert written.payload == bytes(2) + (0).to_bytes(2, "big")  # no checkpoint: prefix 0000
  assert 40.0 <= watermark.psnr(clip, written.frames) < 45.0  # invisible, yet marked
  key = keys.watermark_key(workdir, create=False)
  for path in paths:
    found = watermark.detect(video_io.read_video(path)[0], key)
    assert found.watermarked and found.payload == written.payload
    verification = manifest.verify(path)
    assert verification.status == manifest.VALID
    assert {name: verification.claim[name] for name in CLAIM} == CLAIM
    assert verification.claim["checkpoint"] == writer.UNKNOWN_CHECKPOINT
    assert verification.claim["watermark"] == written.payload.hex()
  # The next generation gets the next counter value; a png holds one frame.
  image = stamp.write([tmp_path / "out" / "red.png"], clip[:1], 8, claim={**CLAIM, "mode": "t2i"})
  assert image.payload == bytes(2) + (1).to_bytes(2, "big")
  found = watermark.detect(video_io.read_image(tmp_path / "out" / "red.png")[None], key)
  assert found.watermarked and found.payload == image.payload
  assert manifest.verify(tmp_path / "out" / "red.png").claim["mode"] == "t2i"
  counter = workdir / "provenance" / writer.COUNTER_FILE
  assert counter.read_text() == "2\n" and stat.S_IMODE(os.stat(counter).st_mode) == 0o600


def test_the_counter_is_kept_per_workdir_and_wraps_in_the_payload(tmp_path):
  stamp = writer.Stamp.for_workdir(tmp_path / "run", manifest=False)
  stamp.counter.write_text(f"{2**16 + 5}\n")
  assert stamp.next_payload()[2:] == (5).to_bytes(2, "big")
  again = writer.Stamp.for_workdir(tmp_path / "run", manifest=False)  # a later process
  assert again.next_payload()[2:] == (6).to_bytes(2, "big")


def test_an_unwritable_counter_gives_a_random_one_with_a_warning(tmp_path, monkeypatch, caplog):
  stamp = writer.Stamp.for_workdir(tmp_path / "run", manifest=False)

  def refuse(path):
    raise PermissionError(13, "Read-only file system", str(path))

  monkeypatch.setattr(writer, "_take_count", refuse)
  with caplog.at_level(logging.WARNING):
    payloads = {stamp.next_payload() for _ in range(8)}
  assert "Read-only file system" in caplog.text and "random counter" in caplog.text
  assert len(payloads) > 1  # random, not a constant fallback


def test_watermark_off_writes_the_frames_as_they_are_and_says_so(tmp_path, caplog):
  # 32x32: few enough colours for a lossless gif.
  clip = world.generate(1, seed=0, frames=9, height=32, width=32)["video"]
  with caplog.at_level(logging.INFO):
    stamp = writer.Stamp.for_workdir(tmp_path / "run", watermark=False)
  said = [r for r in caplog.records if "watermark is off" in r.getMessage()]
  assert len(said) == 1 and "--watermark=false" in said[0].getMessage()
  path = tmp_path / "plain.gif"
  written = stamp.write([path], clip, 8, claim=CLAIM)
  assert written.payload is None and written.frames is clip
  np.testing.assert_array_equal(video_io.read_video(path)[0], clip)  # a lossless gif
  assert not (tmp_path / "run" / "provenance" / "watermark.key").exists()  # no key needed
  assert not (tmp_path / "run" / "provenance" / writer.COUNTER_FILE).exists()
  verification = manifest.verify(path)
  assert verification.status == manifest.VALID and verification.claim["watermark"] is None
  # Detected with another workdir's key, the plain video is not flagged.
  other = provenance.pin_watermark_key(tmp_path / "other", "other")
  found = watermark.detect(video_io.read_video(path)[0], other)
  assert not found.watermarked and found.payload is None


def test_the_prompt_stays_out_on_request_and_a_key_file_is_used_as_given(tmp_path, clip):
  key_file = tmp_path / "elsewhere.key"
  fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
  os.write(fd, (b"5a" * 32) + b"\n")
  os.close(fd)
  stamp = writer.Stamp.for_workdir(tmp_path / "run", key_file=key_file, include_prompt=False)
  path = tmp_path / "red.mp4"
  written = stamp.write([path], clip, 8, claim=CLAIM)
  assert not (tmp_path / "run" / "provenance" / "watermark.key").exists()
  found = watermark.detect(video_io.read_video(path)[0], b"\x5a" * 32)
  assert found.watermarked and found.payload == written.payload
  claim = manifest.verify(path).claim
  assert "prompt" not in claim and claim["seed"] == CLAIM["seed"]
  assert CLAIM["prompt"].encode() not in path.read_bytes()
  with pytest.raises(keys.KeyFileError, match="does not exist"):
    writer.Stamp.for_workdir(tmp_path / "run", key_file=tmp_path / "missing.key")


def test_the_key_is_never_shown(tmp_path, clip, caplog):
  with caplog.at_level(logging.DEBUG):
    stamp = writer.Stamp.for_workdir(tmp_path / "run")
    stamp.write([tmp_path / "red.mp4"], clip, 8, claim=CLAIM)
  assert stamp.key is not None
  for shown in (repr(stamp), str(stamp), caplog.text):
    assert stamp.key.hex() not in shown and repr(stamp.key) not in shown
  assert stamp.key not in (tmp_path / "red.mp4").read_bytes()
  assert stamp.key.hex().encode() not in (tmp_path / "red.mp4").read_bytes()


def test_the_checkpoint_hash_reads_the_metadata_not_the_arrays(tmp_path):
  workdir = tmp_path / "run"
  _fake_checkpoint(workdir)
  first = writer.checkpoint_hash(workdir, step=7)
  assert first.startswith("sha256:") and len(first) == len("sha256:") + 64
  assert writer.checkpoint_hash(workdir, step=7) == first  # stable
  step = workdir / "checkpoints" / "dit" / "7"
  (step / "state" / "d" / "0123").write_bytes(b"\x01" * 4096)  # the arrays are not read
  assert writer.checkpoint_hash(workdir, step=7) == first
  (step / "config" / "metadata").write_text('{"dit": {"depth": 2}}')  # another experiment
  second = writer.checkpoint_hash(workdir, step=7)
  assert second != first
  (step / "_CHECKPOINT_METADATA").write_text('{"commit_timestamp_nsecs": 2}')  # another save
  assert writer.checkpoint_hash(workdir, step=7) not in (first, second)
  assert writer.checkpoint_hash(workdir, step=8) == writer.UNKNOWN_CHECKPOINT
  assert writer.checkpoint_hash(tmp_path / "empty") == writer.UNKNOWN_CHECKPOINT


def test_the_payload_starts_with_the_checkpoint_hash(tmp_path):
  workdir = tmp_path / "run"
  _fake_checkpoint(workdir)
  stamp = writer.Stamp(checkpoint=writer.checkpoint_hash(workdir, step=7),
                       key=b"k" * 32, counter=tmp_path / "counter")
  payload = stamp.next_payload()
  assert payload[:2].hex() == stamp.checkpoint.removeprefix("sha256:")[:4]
  assert payload[2:] == bytes(2) and len(payload) == watermark.PAYLOAD_BYTES


def test_wrong_outputs_are_refused_before_anything_is_written(tmp_path, clip):
  stamp = writer.Stamp.for_workdir(tmp_path / "run", manifest=False)
  with pytest.raises(ValueError, match=r"a \.png holds one image, the video has 9 frames"):
    stamp.write([tmp_path / "a.mp4", tmp_path / "a.png"], clip, 8, claim=CLAIM)
  with pytest.raises(ValueError, match=r"name it \.mp4, \.gif or \.png"):
    stamp.write([tmp_path / "a.webm"], clip, 8, claim=CLAIM)
  assert not (tmp_path / "a.mp4").exists()
  assert not (tmp_path / "run" / "provenance" / writer.COUNTER_FILE).exists()  # no number spent


def test_a_read_only_workdir_generates_with_a_key_elsewhere_unsigned(tmp_path, clip, monkeypatch,
                                                                     caplog):
  def read_only(*args, **kwargs):
    raise PermissionError(30, "Read-only file system")

  key_file = tmp_path / "elsewhere.key"
  fd = os.open(key_file, os.O_WRONLY | os.O_CREAT, 0o600)
  os.write(fd, (b"e1" * 32) + b"\n")
  os.close(fd)
  monkeypatch.setattr(keys, "signer_files", read_only)
  with caplog.at_level(logging.WARNING):
    stamp = writer.Stamp.for_workdir(tmp_path / "run", key_file=key_file)
  assert stamp.signer is None and "without a C2PA manifest" in caplog.text
  written = stamp.write([tmp_path / "red.mp4"], clip, 8, claim=CLAIM)
  assert written.claim is None and manifest.verify(tmp_path / "red.mp4").status == manifest.ABSENT
  assert watermark.detect(video_io.read_video(tmp_path / "red.mp4")[0], b"\xe1" * 32).watermarked
  # Without a key elsewhere, the workdir's own key cannot be made: say what to pass.
  monkeypatch.setattr(keys, "_write_new", read_only)
  with pytest.raises(keys.KeyFileError, match=r"Read-only file system\): pass --key=FILE"):
    writer.Stamp.for_workdir(tmp_path / "run")
