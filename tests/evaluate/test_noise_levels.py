"""videogen/evaluate/noise_levels.py: per-level scores, with fake edit functions whose answers are
known (the command: tests/evaluate/test_command.py)."""

from __future__ import annotations


import numpy as np
import pytest

from data_pipelines.shapes import vocabulary
from videogen.evaluate import noise_levels


def _keep_below(threshold):
  """Returns the clip itself below `threshold`, and an empty gray frame from there up."""
  gray = np.array(vocabulary.BACKGROUNDS["gray"], np.uint8)

  def edit(caption, video, level, seed):
    del caption, seed
    return video.copy() if level < threshold else np.broadcast_to(gray, video.shape).copy()

  return edit


def test_levels_score_what_the_model_kept():
  report = noise_levels.score_levels(_keep_below(0.6), levels=(0.3, 0.5, 0.9, 1.0), clips=12,
                                     progress=False)
  assert list(report["levels"]) == ["0.3", "0.5", "0.9", "1"]
  assert report["clips"] == 12 and (report["frames"], report["height"]) == (9, 32)
  for level in ("0.3", "0.5"):  # the ground truth itself: the analyzer's own accuracy
    for figure in noise_levels.FIGURES:
      assert report["levels"][level][figure] >= 0.9, (level, figure)
  for level in ("0.9", "1"):  # nothing drawn: no object found, so no attribute right
    figures = report["levels"][level]
    assert figures["color_accuracy"] == figures["shape_accuracy"] == 0.0
    assert figures["count_accuracy"] == 0.0
  table = noise_levels.format_table(report).splitlines()
  assert table[0].split() == ["level", "color", "shape", "size", "direction", "count"]
  assert [line.split()[0] for line in table[1:]] == ["0.3", "0.5", "0.9", "1"]


def test_the_reconstruction_row_scores_the_autoencoder_alone():
  gray = np.array(vocabulary.BACKGROUNDS["gray"], np.uint8)
  seen = []

  def reconstruct(video):
    seen.append(video.shape)
    return np.broadcast_to(gray, video.shape).copy()  # an autoencoder that loses everything

  report = noise_levels.score_levels(_keep_below(2.0), levels=(0.5,), clips=6,
                                     reconstruct_fn=reconstruct, progress=False)
  assert seen == [(9, 32, 32, 3)] * 6
  assert list(report) == ["clips", "frames", "height", "width", "reconstruction", "levels"]
  assert report["reconstruction"]["color_accuracy"] == 0.0
  assert report["reconstruction"]["count_accuracy"] == 0.0
  assert report["levels"]["0.5"]["color_accuracy"] >= 0.9  # the edits keep the clips
  table = noise_levels.format_table(report).splitlines()
  assert [line.split()[0] for line in table[1:]] == ["recon", "0.5"]
  assert table[1].split()[1:] == ["0.000"] * 5
  with pytest.raises(ValueError, match="reconstruction function returned"):
    noise_levels.score_levels(_keep_below(2.0), levels=(0.5,), clips=1, progress=False,
                              reconstruct_fn=lambda v: v[1:])


def test_the_caption_and_seed_reach_the_edit_function():
  seen = []

  def edit(caption, video, level, seed):
    seen.append((caption, level, seed))
    return video

  noise_levels.score_levels(edit, levels=(0.5,), clips=3, seed=7, progress=False)
  assert [(level, seed) for _, level, seed in seen] == [(0.5, 7), (0.5, 8), (0.5, 9)]
  assert all(" on a " in caption and "background" in caption for caption, _, _ in seen)


@pytest.mark.parametrize("levels", [(), (0.0,), (1.5,), (0.5, 0.5)])
def test_bad_levels_are_refused(levels):
  with pytest.raises(ValueError, match="noise levels"):
    noise_levels.check_levels(levels)


def test_an_edit_that_changes_the_shape_is_an_error():
  with pytest.raises(ValueError, match="must keep the clip's shape"):
    noise_levels.score_levels(lambda c, v, l, s: v[:5], levels=(0.5,), clips=1, progress=False)
