"""Tests for videogen/provenance/watermark_benchmark.py: it measures, and its table shows it."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines import video_io
from data_pipelines.shapes import world
from videogen.provenance import watermark
from videogen.provenance import watermark_benchmark

KEY = b"test-watermark-key-0123456789abc"


def _clips(count: int, size: int, seed: int) -> list[np.ndarray]:
  return [world.generate(i, seed=seed, frames=9, height=size, width=size)["video"]
          for i in range(count)]


def test_conditions_keep_the_frames_they_promise(tmp_path):
  video = _clips(1, 40, seed=0)[0]
  assert watermark_benchmark._crop(video, 0.1).shape == (9, 32, 32, 3)
  assert watermark_benchmark._rescale(video, 0.5).shape == video.shape
  assert not np.array_equal(watermark_benchmark._rescale(video, 0.5), video)  # detail is lost
  brighter = watermark_benchmark._brightness(video, 1.2)
  assert brighter.dtype == np.uint8 and brighter.astype(int).sum() > video.astype(int).sum()
  saved = tmp_path / "clip.mp4"
  video_io.write_video(saved, video, fps=8)
  assert watermark_benchmark.CONDITIONS["first_half"](saved, tmp_path).shape[0] == 4
  assert watermark_benchmark.CONDITIONS["gif"](saved, tmp_path).shape == video.shape


def test_run_measures_detection_false_positives_and_psnr():
  conditions = {name: watermark_benchmark.CONDITIONS[name] for name in ("mp4", "crop_10%")}
  results = watermark_benchmark.run({"64x64": _clips(2, 64, seed=0)}, KEY,
                                    null_videos_by_size={"64x64": _clips(3, 64, seed=1)},
                                    conditions=conditions)
  measured = results["64x64"]
  assert measured["videos"] == 2 and measured["null_videos"] == 5
  assert measured["psnr_min"] >= 40.0
  assert measured["false_positive_rate"] == 0.0
  for name in conditions:
    assert measured["conditions"][name] == {"detection_rate": 1.0, "bit_accuracy": 1.0,
                                            "payload_rate": 1.0}
  assert measured["wrong_payloads"] == 0
  table = watermark_benchmark.format_table(results)
  assert "64x64" in table and "crop_10%: detect / bits / payload" in table
  assert "wrong payloads (all conditions)" in table and "0 of 4" in table
  assert "1.000 / 1.000 / 1.000" in table and "2 / 5" in table


def test_payloads_are_distinct_and_sized():
  payloads = {watermark_benchmark.payload_for(i) for i in range(50)}
  assert len(payloads) == 50
  assert all(len(p) == watermark.PAYLOAD_BYTES for p in payloads)


def test_a_scorer_sees_the_unmarked_and_the_marked_mp4s_and_the_table_shows_both():
  videos = _clips(2, 32, seed=2)
  seen = []

  def scorer(scored):
    seen.append([np.asarray(v) for v in scored])
    # An "accuracy" that tells marked from unmarked frames apart: its mean pixel parity.
    return {"parity_accuracy": float(np.mean([np.mean(v % 2) for v in scored])),
            "unscored_accuracy": None}

  conditions = {"mp4": watermark_benchmark.CONDITIONS["mp4"]}
  results = watermark_benchmark.run({"32x32": videos}, KEY, conditions=conditions,
                                    scorers_by_size={"32x32": scorer})
  unmarked, marked = seen  # scored twice, the unmarked mp4s first, in the set's order
  assert len(unmarked) == len(marked) == 2
  for original, plain, watermarked in zip(videos, unmarked, marked):
    assert plain.shape == watermarked.shape == original.shape
    assert watermark.detect(watermarked, KEY).watermarked
    assert not watermark.detect(plain, KEY).watermarked
  accuracies = results["32x32"]["accuracies"]
  assert set(accuracies) == {"parity_accuracy"}  # None (nothing to score) is left out
  change = abs(accuracies["parity_accuracy"]["marked"] - accuracies["parity_accuracy"]["unmarked"])
  assert watermark_benchmark.largest_accuracy_change(results["32x32"]) == 100.0 * change
  table = watermark_benchmark.format_table(results)
  assert "analyzer parity_accuracy (unmarked / marked)" in table
  assert "analyzer: largest change (points)" in table


def test_embed_options_reach_the_embedder():
  videos = _clips(1, 32, seed=3)
  conditions = {"mp4": watermark_benchmark.CONDITIONS["mp4"]}
  plain = watermark_benchmark.run({"32x32": videos}, KEY, conditions=conditions,
                                  embed_options={"informed_steps": 0})
  marked = watermark.embed(videos[0], KEY, watermark_benchmark.payload_for(0), informed_steps=0)
  assert plain["32x32"]["psnr_min"] == watermark.psnr(videos[0], marked)
  with pytest.raises(ValueError, match="informed_steps"):
    watermark_benchmark.run({"32x32": videos}, KEY, conditions=conditions,
                            embed_options={"informed_steps": -1})
