"""videogen/generate/windows.py: valid frame counts and sizes, and the window plan."""

import logging

import numpy as np
import pytest

from videogen.generate import windows


@pytest.mark.parametrize("frames, continuing, expected", [
    (9, False, 9), (8, False, 9), (10, False, 11), (1, False, 1), (0, False, 1), (2, False, 3),
    (4, True, 4), (5, True, 6), (1, True, 2), (0, True, 2),
])
def test_round_frames_picks_the_nearest_valid_count(frames, continuing, expected, caplog):
  with caplog.at_level(logging.WARNING):
    assert windows.round_frames(frames, 2, continuing=continuing) == expected
  assert ("generating" in caplog.text) == (frames != expected)


def test_round_frames_with_temporal_factor_four():
  assert windows.round_frames(16, 4, continuing=False) == 17
  assert windows.round_frames(14, 4, continuing=False) == 13
  assert windows.round_frames(7, 4, continuing=True) == 8


def test_round_size():
  assert windows.round_size(16, 4, "height") == 16
  assert windows.round_size(18, 4, "height") == 20
  assert windows.round_size(17, 4, "height") == 16
  assert windows.round_size(1, 4, "width") == 4


@pytest.mark.parametrize("total, window, overlap, history, suffix", [
    (5, 5, 2, 0, 0), (9, 5, 2, 0, 0), (8, 5, 2, 0, 0), (3, 5, 2, 3, 0), (10, 5, 2, 3, 1),
    (2, 5, 2, 4, 1), (7, None, 2, 0, 1), (12, 4, 1, 1, 2), (1, 5, 2, 0, 1),
])
def test_plan_windows_properties(total, window, overlap, history, suffix):
  plan = windows.plan_windows(total, window=window, overlap=overlap, history=history,
                              suffix=suffix)
  assert sum(w.new for w in plan) == total
  assert all(w.new >= 1 for w in plan)
  assert [w.suffix for w in plan] == [0] * (len(plan) - 1) + [suffix]
  if window is not None:
    assert all(w.total <= window for w in plan)
    if len(plan) > 1 and not suffix:  # the last window is padded to the shape of the others
      assert plan[-1].total == window
  assert all(w.extra == 0 for w in plan[:-1])
  available = history
  for w in plan:
    assert w.context == min(overlap, available)
    available += w.new


def test_plan_windows_exact():
  # 15 frames at F = 2 are 8 latent frames: a full first window, then 3 new after 2 given.
  assert windows.plan_windows(8, window=5, overlap=2, history=0, suffix=0) == [
      windows.Window(0, 5, 0), windows.Window(2, 3, 0)]
  assert windows.plan_windows(4, window=None, overlap=2, history=3, suffix=1) == [
      windows.Window(2, 4, 1)]
  # 17 frames are 9 latent frames: the last window makes 1 frame and 2 that are dropped.
  assert windows.plan_windows(9, window=5, overlap=2, history=0, suffix=0) == [
      windows.Window(0, 5, 0), windows.Window(2, 3, 0), windows.Window(2, 1, 0, extra=2)]
  assert windows.plan_windows(9, window=5, overlap=2, history=0, suffix=0, pad_last=False)[
      -1] == windows.Window(2, 1, 0)


def test_plan_windows_rejects_a_window_too_small_for_its_given_frames():
  with pytest.raises(ValueError, match="cannot hold"):
    windows.plan_windows(4, window=3, overlap=2, history=2, suffix=1)


def test_window_mask_and_new_pixel_frames():
  window = windows.Window(2, 3, 1)
  np.testing.assert_array_equal(window.mask(), [True, True, False, False, False, True])
  np.testing.assert_array_equal(windows.Window(1, 1, 1, extra=1).mask(),
                                [True, False, False, True])
  assert window.new_pixel_frames(4) == 12
  assert windows.Window(0, 3, 0).new_pixel_frames(4) == 9
