"""Tests for videogen/provenance/watermark.py: round trips, robustness, calibration, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import stats

from scipy import ndimage

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


def _generated_like(seed: int) -> np.ndarray:
  """uint8 [9, 32, 32, 3]: soft blobs of one colour drifting over black, like the main job's
  generated videos (busier than world clips: their edges are most of the detector's noise)."""
  rng = np.random.default_rng(seed)
  field = ndimage.gaussian_filter(rng.normal(size=(32, 64)), sigma=2, mode="wrap")
  field /= field.std()
  colour = rng.uniform(0, 255, size=3)
  cover = np.stack([np.clip((np.roll(field, -t, axis=1)[:, :32] - 0.8) * 2, 0, 1)
                    for t in range(9)])[..., None]
  return np.round(colour * cover).astype(np.uint8)


def test_survives_mp4_on_generated_like_32x32_clips(tmp_path):
  path = tmp_path / "marked.mp4"
  found = []
  for seed in range(8):
    video_io.write_video(path, watermark.embed(_generated_like(seed), KEY, PAYLOAD), fps=8)
    found.append(watermark.detect(video_io.read_video(path)[0], KEY))
  assert all(f.watermarked for f in found)
  assert sum(f.payload == PAYLOAD for f in found) >= 7
  # Without the watermark the same clips are not flagged.
  assert not any(watermark.detect(_generated_like(seed), KEY).watermarked for seed in range(8))


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
  assert 0.01 <= np.mean(p_values < 0.05) <= 0.09  # at most 0.05 + 2.7 binomial deviations
  for level in (0.2, 0.5):  # a valid p-value at every level, not only at 0.05
    assert np.mean(p_values < level) <= level + 2.7 * np.sqrt(level * (1 - level) / 200)
  assert np.allclose(scores, np.maximum(stats.norm.isf(p_values), -10.0))


def test_native_tail_is_the_null_distribution_over_keyed_signs():
  # Given the cells' values, the p-value of sum_i |c_i| is its tail over fair random signs.
  rng = np.random.default_rng(0)
  grid = rng.standard_t(2, size=(watermark.CELLS, watermark.CELLS))  # heavy tails on purpose
  layout = watermark._layout(KEY)
  draws = []
  for _ in range(4000):
    signs = rng.choice([-1.0, 1.0], size=layout.signs.shape)
    flipped = dataclasses.replace(layout, signs=signs)
    draws.append(np.sum(np.abs(watermark._native_correlations(grid, flipped))))
  draws = np.asarray(draws)
  for quantile in (0.5, 0.9, 0.99):
    threshold = float(np.quantile(draws, quantile))
    exact = watermark._abs_sum_tail(grid, layout, threshold)
    # Conservative (rounding up) by little: within Monte Carlo error of the empirical tail.
    tail = float(np.mean(draws >= threshold))
    assert tail - 0.01 <= exact <= tail + 4 * np.sqrt(tail * (1 - tail) / 4000) + 0.01


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


def test_soft_decoding_flips_only_the_least_reliable_bits():
  code = watermark._code_word(PAYLOAD)
  levels = np.where(code == 1, 2.0, -2.0)
  assert watermark._decode(levels) == PAYLOAD
  weak = levels.copy()
  weak[[3, 20]] = -0.1 * levels[[3, 20]]  # the two weakest bits read wrong: corrected
  assert watermark._decode(weak) == PAYLOAD
  strong = levels.copy()
  strong[5] = -levels[5]  # a confidently wrong bit is not among the flipped ones: no payload
  assert watermark._decode(strong) is None


def _mp4_margins(frames: np.ndarray) -> np.ndarray:
  """Each code bit's native correlation times its intended sign, on the frames saved as mp4."""
  grid = watermark._cell_sums(watermark._residual(watermark.saved_as_mp4(frames), 2), 2)
  return watermark._margins(grid, watermark._layout(KEY), 2.0 * watermark._code_word(PAYLOAD) - 1)


def test_informed_embedding_raises_the_margin_on_busy_clips_at_the_same_psnr():
  plain_sums, informed_sums = [], []
  for seed in (1, 4, 5):  # the busiest of the generated-like clips
    video = _generated_like(seed)
    plain = watermark.embed(video, KEY, PAYLOAD, informed_steps=0)
    informed = watermark.embed(video, KEY, PAYLOAD)
    assert abs(watermark.psnr(video, informed) - watermark.psnr(video, plain)) < 0.05
    assert watermark.psnr(video, informed) >= 40.0
    plain_sums.append(np.sum(_mp4_margins(plain)))
    informed_sums.append(np.sum(_mp4_margins(informed)))
  assert all(i > p for i, p in zip(informed_sums, plain_sums))
  assert np.mean(informed_sums) >= np.mean(plain_sums) + 3.0


def test_without_ffmpeg_the_plain_pattern_is_embedded(caplog, monkeypatch):
  # The default read-back saves the marked video as an mp4, which needs an ffmpeg; a machine
  # without one (the accelerator's) still gets watermarked frames.
  video = _generated_like(1)

  def none_found():
    raise RuntimeError("No ffmpeg exe could be found.")

  monkeypatch.setattr(video_io.imageio_ffmpeg, "get_ffmpeg_exe", none_found)
  marked = watermark.embed(video, KEY, PAYLOAD)
  np.testing.assert_array_equal(marked, watermark.embed(video, KEY, PAYLOAD, informed_steps=0))
  assert "no ffmpeg found" in caplog.text
  assert watermark.detect(marked, KEY).payload == PAYLOAD


def test_a_failed_read_back_embeds_the_plain_pattern_and_says_so(caplog):
  video = _generated_like(1)

  def no_space(frames):
    raise video_io.VideoWriteError("/tmp/x.mp4", "ffmpeg could not write it (No space left)")

  marked = watermark.embed(video, KEY, PAYLOAD, read_back=no_space)
  np.testing.assert_array_equal(marked, watermark.embed(video, KEY, PAYLOAD, informed_steps=0))
  assert "could not read the marked video back" in caplog.text
  assert watermark.detect(marked, KEY).payload == PAYLOAD
