"""Tests for videogen/provenance/watermark.py: round trips, robustness, calibration, errors."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines import video_io
from data_pipelines.shapes import world
from videogen.provenance import watermark

KEY = b"test-watermark-key-0123456789abc"
PAYLOAD = bytes([0xC0, 0xFF, 0xEE, 0x42])


def _clip(index: int, size: int, seed: int = 0) -> np.ndarray:
  """A procedural world clip, uint8 [9, size, size, 3]."""
  return world.generate(index, seed=seed, frames=9, height=size, width=size)["video"]


@pytest.mark.parametrize("size", [32, 64])
def test_round_trip_recovers_payload(size):
  marked = watermark.embed(_clip(0, size), KEY, PAYLOAD)
  found = watermark.detect(marked, KEY)
  assert found.watermarked and found.p_value < 1e-8
  assert found.payload == PAYLOAD
  assert found.bits == tuple(np.unpackbits(np.frombuffer(PAYLOAD, np.uint8)))
  assert found.cell == watermark.cell_size(size, size)
  assert found.offset == (0, 0)


def test_survives_mp4(tmp_path):
  path = tmp_path / "marked.mp4"
  video_io.write_video(path, watermark.embed(_clip(1, 64), KEY, PAYLOAD), fps=8)
  found = watermark.detect(video_io.read_video(path)[0], KEY)
  assert found.watermarked and found.payload == PAYLOAD


def test_crop_is_found_at_its_offset():
  marked = watermark.embed(_clip(2, 64), KEY, PAYLOAD)
  found = watermark.detect(marked[:, 6:-6, 5:-7], KEY)
  assert found.watermarked and found.payload == PAYLOAD
  assert found.offset == (6, 5)


def test_first_half_of_the_frames_suffices():
  marked = watermark.embed(_clip(3, 64), KEY, PAYLOAD)
  found = watermark.detect(marked[:4], KEY)
  assert found.watermarked and found.payload == PAYLOAD


@pytest.mark.parametrize("index", range(4))
def test_unwatermarked_video_is_not_flagged(index):
  found = watermark.detect(_clip(index, 64, seed=5), KEY)
  assert not found.watermarked and found.payload is None
  assert found.p_value > 0.01


def test_wrong_key_does_not_detect():
  marked = watermark.embed(_clip(4, 64), KEY, PAYLOAD)
  found = watermark.detect(marked, b"another-key-of-32-bytes-00000000")
  assert not found.watermarked and found.payload is None


def test_payloads_differ_in_pattern_only_through_the_key_and_bits():
  a = watermark.pattern(KEY, PAYLOAD, 64, 64)
  b = watermark.pattern(KEY, bytes(4), 64, 64)
  c = watermark.pattern(b"another-key-of-32-bytes-00000000", PAYLOAD, 64, 64)
  assert set(np.unique(a)) == {-1.0, 1.0}
  assert abs(float(np.mean(a))) < 0.1  # balanced signs: no visible mean shift
  # Another payload or key gives a nearly uncorrelated pattern.
  assert abs(float(np.mean(a * b))) < 0.3 and abs(float(np.mean(a * c))) < 0.2


@pytest.mark.parametrize("background", ["black", "gray"])
def test_psnr_is_at_least_40_db(background):
  config = world.WorldConfig(backgrounds=(background,))
  video = world.generate(6, seed=0, frames=9, height=64, width=64, config=config)["video"]
  marked = watermark.embed(video, KEY, PAYLOAD)
  assert 40.0 <= watermark.psnr(video, marked) < 45.0  # invisible, yet the budget is used
  assert watermark.detect(marked, KEY).payload == PAYLOAD


def test_p_value_is_calibrated_on_unwatermarked_clips():
  found = [watermark.detect(_clip(i, 32, seed=3), KEY) for i in range(200)]
  scores, p_values = np.array([f.score for f in found]), np.array([f.p_value for f in found])
  assert 0.02 <= np.mean(p_values < 0.05) <= 0.09  # 0.05 +- 2.7 binomial standard deviations
  assert abs(float(np.mean(scores))) < 0.2 and 0.85 < float(np.std(scores)) < 1.15


def test_crc8_matches_the_standard_check_value():
  assert watermark._crc8(b"123456789") == 0xF4  # CRC-8 (poly 0x07, init 0) check value


def test_errors_say_what_to_pass():
  video = _clip(0, 32)
  with pytest.raises(ValueError, match="exactly 4 bytes"):
    watermark.embed(video, KEY, b"\x01\x02")
  with pytest.raises(ValueError, match="at least 16"):
    watermark.embed(video, b"short", PAYLOAD)
  with pytest.raises(ValueError, match="uint8"):
    watermark.detect(video.astype(np.float32) / 255.0, KEY)
  with pytest.raises(ValueError, match="too small"):
    watermark.detect(video[:, :15, :15], KEY)
