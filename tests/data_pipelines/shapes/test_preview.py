"""Tests of the preview command `python -m data_pipelines.shapes`."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import numpy as np

from data_pipelines import video_io
from data_pipelines.shapes import preview
from data_pipelines.shapes import world

ROOT = pathlib.Path(__file__).resolve().parents[3]


def test_preview_command_writes_videos_manifest_and_contact_sheet(tmp_path):
  out = tmp_path / "preview"
  result = subprocess.run(
      [sys.executable, "-m", "data_pipelines.shapes", "--num", "2", "--out", str(out),
       "--height", "16", "--width", "24", "--frames", "3", "--seed", "4", "--split", "test"],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  lines = (out / preview.MANIFEST).read_text().splitlines()
  assert len(lines) == 2
  for index, line in enumerate(lines):
    record = json.loads(line)
    expected = world.generate(index, seed=4, frames=3, height=16, width=24, split="test")
    assert record["caption"] == expected["caption"]
    assert record["description"] == expected["description"]
    assert record["video"].endswith(".mp4") and record["gif"].endswith(".gif")
    for obj, truth in zip(record["objects"], expected["objects"]):
      assert {"color", "shape", "size", "direction", "track", "bounces"} <= set(obj)
      np.testing.assert_allclose(obj["track"], truth["track"])
      assert len(obj["track"]) == 3
    frames, fps = video_io.read_video(out / record["video"])
    assert frames.shape == (3, 16, 24, 3) and fps == expected["fps"]
    gif, _ = video_io.read_video(out / record["gif"])
    # The world's few colours survive the GIF palette to within a level or two.
    assert gif.shape == expected["video"].shape
    assert np.abs(gif.astype(int) - expected["video"]).max() <= 2
  assert (out / preview.CONTACT_SHEET).stat().st_size > 0


def test_write_preview_rejects_zero_samples(tmp_path):
  try:
    preview.write_preview(tmp_path, num=0, frames=3, height=16, width=16)
  except ValueError as error:
    assert "--num" in str(error)
  else:
    raise AssertionError("num=0 must be an error")
