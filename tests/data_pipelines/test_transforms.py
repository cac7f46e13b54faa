"""Tests for data_pipelines/transforms.py: fitting videos to a bucket, in plain NumPy."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines import buckets
from data_pipelines import transforms


def test_select_frames_takes_a_window_and_repeats_the_last_frame():
  video = np.arange(5)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
  np.testing.assert_array_equal(transforms.select_frames(video, 3, 1)[:, 0, 0, 0], [1, 2, 3])
  np.testing.assert_array_equal(transforms.select_frames(video, 4, 3)[:, 0, 0, 0], [3, 4, 4, 4])
  with pytest.raises(ValueError, match="outside"):
    transforms.select_frames(video, 2, 5)


def test_resize_and_crop_keeps_the_aspect_ratio_and_crops_the_centre():
  # Three vertical stripes of 16 columns: a 16x16 crop of the 16x48 frame is the middle one.
  stripes = np.zeros((2, 16, 48, 3), np.uint8)
  stripes[:, :, :16] = 30
  stripes[:, :, 16:32] = 120
  stripes[:, :, 32:] = 250
  out = transforms.resize_and_crop(stripes, 16, 16)
  assert out.shape == (2, 16, 16, 3) and out.dtype == np.uint8
  assert (out == 120).all()
  # The same image at twice the size, then shrunk: the middle stripe again (away from its edges).
  big = np.repeat(np.repeat(stripes, 2, axis=1), 2, axis=2)
  out = transforms.resize_and_crop(big, 16, 16)
  assert (out[:, :, 2:-2] == 120).all()


def test_resize_is_smooth_and_bounded():
  ramp = np.broadcast_to(np.linspace(0, 240, 64)[None, None, :, None], (1, 64, 64, 3))
  ramp = np.rint(ramp).astype(np.uint8)
  small = transforms.resize_and_crop(ramp, 32, 32)
  # A linear ramp stays linear under a symmetric filter (away from the edges).
  expected = (ramp[0, 0, 0::2, 0].astype(float) + ramp[0, 0, 1::2, 0]) / 2
  np.testing.assert_allclose(small[0, 0, 2:-2, 0], expected[2:-2], atol=1.0)
  constant = np.full((1, 7, 9, 3), 77, np.uint8)
  assert (transforms.resize_and_crop(constant, 20, 13) == 77).all()
  checker = (np.indices((8, 8)).sum(axis=0) % 2 * 255).astype(np.uint8)
  checker = np.broadcast_to(checker[None, :, :, None], (1, 8, 8, 3))
  up = transforms.resize_and_crop(checker, 24, 24)
  assert up.min() >= 0 and up.max() <= 255 and 100 < up.mean() < 155
  np.testing.assert_array_equal(transforms.resize_and_crop(checker, 8, 8), checker)


def test_fit_video_gives_exactly_the_bucket_shape_from_the_start_frame():
  # Frame i is flat grey 10 * i: the window's first frame tells where it started.
  video = (10 * np.arange(6, dtype=np.uint8))[:, None, None, None] * np.ones((1, 12, 20, 3),
                                                                               np.uint8)
  out = transforms.fit_video(video, buckets.parse_bucket("4x8x8:1"), start=3)
  assert out.shape == (4, 8, 8, 3)
  np.testing.assert_array_equal(out[:, 0, 0, 0], [30, 40, 50, 50])
