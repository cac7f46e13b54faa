"""Tests for data_pipelines/builders/video_folder.py: bucketing, skipped files, round trip."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import imageio_ffmpeg
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import video_io
from data_pipelines.builders import common
from data_pipelines.builders import video_folder

BUCKETS = ("9x32x48", "9x48x32", "5x32x32")


def _ramp(frames: int, height: int, width: int) -> np.ndarray:
  """Frame i is flat (20 * i, 100, 200), so its red level tells its index: uint8 [T, H, W, 3]."""
  video = np.zeros((frames, height, width, 3), np.uint8)
  video[..., 0] = (20 * np.arange(frames, dtype=np.uint8))[:, None, None]
  video[..., 1], video[..., 2] = 100, 200
  return video


def _encode(path: pathlib.Path, frames: np.ndarray, args: list[str], pix_fmt_in: str = "rgb24"):
  height, width = frames.shape[1:3]
  subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-y", "-f", "rawvideo",
                  "-pix_fmt", pix_fmt_in, "-s", f"{width}x{height}", "-r", "8", "-i", "-",
                  *args, str(path)], input=np.ascontiguousarray(frames).tobytes(), check=True)


# file -> (bucket it goes to, the index of its first kept frame)
GOOD = {
    "landscape.mp4": ("9x32x48", 1),   # 11 frames: the middle 9 start at frame 1
    "portrait.webm": ("9x48x32", 0),
    "square.gif": ("5x32x32", 2),      # 9 frames but no square 9-frame bucket: aspect first
    "nested/clip.mov": ("9x32x48", 0),
}
# file -> the reason it must be skipped for
BAD = {
    "zero.mp4": "empty",
    "truncated.mp4": "truncated",
    "cut_short.mp4": "truncated",
    "random.mp4": "undecodable",
    "grey.mov": "grey",
    "transparent.mov": "alpha",
    "latin1.mp4": "caption_not_utf8",
    "nocaption.mp4": "caption_missing",
    "blank.mp4": "caption_empty",
    "short.mp4": "too_short",
    "notes.md": "unsupported_format",
    "jsonl_latin1.gif": "caption_not_utf8",
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> pathlib.Path:
  """One good video per container and one file per kind of problem."""
  root = tmp_path_factory.mktemp("videos")
  (root / "nested").mkdir()
  video_io.write_video(root / "landscape.mp4", _ramp(11, 32, 48), fps=8)
  (root / "landscape.txt").write_text("a wide ramp\n", encoding="utf-8")
  _encode(root / "portrait.webm", _ramp(9, 48, 32), ["-c:v", "libvpx-vp9", "-lossless", "1"])
  video_io.write_video(root / "square.gif", _ramp(9, 40, 40), fps=8)
  _encode(root / "nested" / "clip.mov", _ramp(9, 64, 96),
          ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "10"])
  (root / "nested" / "clip.txt").write_text("a nested ramp", encoding="utf-8")

  (root / "zero.mp4").write_bytes(b"")
  whole = root.parent / "whole.mp4"
  _encode(whole, np.random.default_rng(0).integers(0, 256, (24, 32, 48, 3), np.uint8),
          ["-c:v", "libx264", "-pix_fmt", "yuv420p"])
  (root / "truncated.mp4").write_bytes(whole.read_bytes()[:whole.stat().st_size // 2])
  # write_video puts the mp4 index first: cut short, the file opens but ends inside a frame.
  video_io.write_video(whole, np.random.default_rng(2).integers(0, 256, (24, 32, 48, 3), np.uint8),
                       fps=8)
  (root / "cut_short.mp4").write_bytes(whole.read_bytes()[:whole.stat().st_size * 2 // 3])
  (root / "random.mp4").write_bytes(np.random.default_rng(1).integers(0, 256, 3000,
                                                                       np.uint8).tobytes())
  _encode(root / "grey.mov", _ramp(9, 32, 48)[..., :1].copy(), ["-c:v", "png"],
          pix_fmt_in="gray")
  rgba = np.concatenate([_ramp(9, 32, 48), np.full((9, 32, 48, 1), 100, np.uint8)], axis=-1)
  _encode(root / "transparent.mov", rgba, ["-c:v", "png"], pix_fmt_in="rgba")
  for name in ("latin1", "nocaption", "blank", "short"):
    video_io.write_video(root / f"{name}.mp4", _ramp(3 if name == "short" else 9, 32, 48), fps=8)
  (root / "latin1.txt").write_bytes("un caf\xe9".encode("latin-1"))
  (root / "blank.txt").write_text("  \n", encoding="utf-8")
  (root / "short.txt").write_text("too short", encoding="utf-8")
  (root / "notes.md").write_text("not a video", encoding="utf-8")
  video_io.write_video(root / "jsonl_latin1.gif", _ramp(9, 32, 48), fps=8)
  for name in ("zero", "truncated", "cut_short", "random", "grey", "transparent"):
    (root / f"{name}.txt").write_text(f"the {name} one", encoding="utf-8")
  lines = [
      json.dumps({"video": "portrait.webm", "caption": "a tall ramp"}).encode(),
      json.dumps({"video": "square.gif", "caption": "a square ramp \u00e9t\u00e9"}).encode(),
      b'{"video": "jsonl_latin1.gif", "caption": "caf\xe9"}',
      b"this line is not json",
      json.dumps({"video": "gone.mp4", "caption": "no such video"}).encode(),
  ]
  (root / video_folder.CAPTIONS_FILE).write_bytes(b"\n".join(lines) + b"\n")
  return root


@pytest.fixture(scope="module")
def built(folder, tmp_path_factory):
  out = tmp_path_factory.mktemp("tfds")
  report = video_folder.build_video_folder(folder, out, buckets=BUCKETS)
  return out, report


def test_choose_bucket_prefers_aspect_then_frames_then_no_enlarging():
  buckets = [(9, 32, 48), (17, 32, 48), (17, 64, 96), (17, 48, 32), (1, 32, 32)]
  # 3:2 landscape with 20 frames: the 3:2 buckets, the longer ones, the one not enlarging it.
  assert video_folder.choose_bucket(64, 96, 20, buckets) == (17, 64, 96)
  assert video_folder.choose_bucket(40, 60, 20, buckets) == (17, 32, 48)
  assert video_folder.choose_bucket(20, 30, 20, buckets) == (17, 32, 48)  # enlarges least
  assert video_folder.choose_bucket(64, 96, 10, buckets) == (9, 32, 48)   # too short for 17
  assert video_folder.choose_bucket(90, 60, 40, buckets) == (17, 48, 32)
  assert video_folder.choose_bucket(50, 50, 40, buckets) == (1, 32, 32)
  # frame_stride 2 keeps 10 of 20 frames: the 17-frame buckets no longer fit.
  assert video_folder.choose_bucket(64, 96, 20, buckets, frame_stride=2) == (9, 32, 48)
  assert video_folder.choose_bucket(64, 96, 8, buckets[:4]) is None


def test_centre_start_frame():
  assert video_folder.centre_start_frame(11, 9) == 1
  assert video_folder.centre_start_frame(9, 9) == 0
  assert video_folder.centre_start_frame(30, 9, frame_stride=2) == 6  # 15 kept, from 3 on


def test_report_lists_every_skipped_file_with_its_reason(built):
  out, report = built
  skipped = {s["file"]: s["reason"] for s in report["skipped"]}
  assert skipped == BAD
  assert all(s["detail"] and s["what_to_do"] for s in report["skipped"])
  assert {k["file"]: k["bucket"] for k in report["kept"]} == {f: b for f, (b, _) in GOOD.items()}
  assert report["num_kept"] == len(GOOD) and report["num_skipped"] == len(BAD)
  assert report["skipped_per_reason"]["caption_not_utf8"] == 2
  problems = " ".join(p["problem"] for p in report["caption_problems"])
  assert "not JSON" in problems and "gone.mp4" in problems
  on_disk = json.loads((out / "video_folder" / video_folder.REPORT_FILE).read_text())
  assert on_disk == report


def test_good_videos_round_trip_through_tfds_data_source(built):
  out, _ = built
  sources = tfds.data_source("video_folder", data_dir=out)
  assert sorted(sources) == sorted({b for b, _ in GOOD.values()})
  seen = {}
  for split, source in sources.items():
    frames, height, width = common.parse_shape(split)
    for i in range(len(source)):
      example = source[i]
      assert example["video"].shape == (frames, height, width, 3)
      assert example["video"].dtype == np.uint8
      seen[example["file"].decode()] = (split, example)
  assert sorted(seen) == sorted(GOOD)
  for file, (bucket, first_frame) in GOOD.items():
    split, example = seen[file]
    assert split == bucket
    assert example["fps"] == pytest.approx(8.0, abs=0.2)
    # Frame k of the clip is source frame first_frame + k, whose red level is 20 * that.
    red = example["video"][..., 0].mean(axis=(1, 2))
    expected = 20.0 * (first_frame + np.arange(len(red)))
    np.testing.assert_allclose(red, expected, atol=4.0, err_msg=file)
  captions = {f: e["caption"].decode() for f, (_, e) in seen.items()}
  assert captions["landscape.mp4"] == "a wide ramp"
  assert captions["square.gif"] == "a square ramp \u00e9t\u00e9"
  assert captions["portrait.webm"] == "a tall ramp"


def test_data_set_reads_back_without_the_builder_class(built):
  out, report = built
  sources = common.load(report["dataset_dir"])
  assert sum(len(s) for s in sources.values()) == len(GOOD)


def test_rebuild_with_other_buckets_is_refused(built, folder):
  out, _ = built
  with pytest.raises(ValueError, match="delete"):
    video_folder.build_video_folder(folder, out, buckets=("5x32x32",))


def test_folder_without_usable_video_fails_with_report(tmp_path):
  folder = tmp_path / "videos"
  folder.mkdir()
  (folder / "zero.mp4").write_bytes(b"")
  (folder / "zero.txt").write_text("empty", encoding="utf-8")
  with pytest.raises(ValueError, match="no usable video.*1 empty"):
    video_folder.build_video_folder(folder, tmp_path / "out", buckets=BUCKETS)
  report = json.loads((tmp_path / "out" / "video_folder" / video_folder.REPORT_FILE).read_text())
  assert report["skipped"][0]["file"] == "zero.mp4" and report["skipped"][0]["reason"] == "empty"


def test_command_line(folder, tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "data_pipelines.builders.video_folder", f"--folder={folder}",
       f"--out={tmp_path}", "--buckets=5x32x32"],
      capture_output=True, text=True, check=False, cwd=pathlib.Path(__file__).parents[3])
  assert result.returncode == 0, result.stderr[-2000:]
  assert "kept 4 videos" in result.stdout
  sources = common.load(tmp_path / "video_folder" / "1.0.0")
  assert list(sources) == ["5x32x32"] and len(sources["5x32x32"]) == 4
