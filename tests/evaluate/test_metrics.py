"""videogen/evaluate/metrics.py: PSNR and SSIM against float64 NumPy references."""

import jax
import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from videogen.evaluate import metrics


def _numpy_psnr(videos, references, max_value):
  error = np.asarray(videos, np.float64) - np.asarray(references, np.float64)
  mse = np.mean(error ** 2, axis=(1, 2, 3, 4))
  return 10.0 * np.log10(max_value ** 2 / mse)


def _numpy_ssim(videos, references, max_value, size=11, sigma=1.5, k1=0.01, k2=0.03):
  """Direct 2D-window SSIM (not separable filtering), averaged per video."""
  offsets = np.arange(size) - (size - 1) / 2.0
  gauss = np.exp(-0.5 * (offsets / sigma) ** 2)
  window = np.outer(gauss, gauss)
  window /= window.sum()
  x = np.asarray(videos, np.float64)
  y = np.asarray(references, np.float64)

  def local_mean(image):  # image [H, W] -> [H - size + 1, W - size + 1]
    return np.einsum("ijkl,kl->ij", sliding_window_view(image, (size, size)), window)

  scores = np.zeros(x.shape[0])
  for b in range(x.shape[0]):
    maps = []
    for t in range(x.shape[1]):
      for c in range(x.shape[4]):
        a, r = x[b, t, :, :, c], y[b, t, :, :, c]
        mu_a, mu_r = local_mean(a), local_mean(r)
        var_a = local_mean(a * a) - mu_a ** 2
        var_r = local_mean(r * r) - mu_r ** 2
        cov = local_mean(a * r) - mu_a * mu_r
        c1, c2 = (k1 * max_value) ** 2, (k2 * max_value) ** 2
        maps.append(((2 * mu_a * mu_r + c1) * (2 * cov + c2))
                    / ((mu_a ** 2 + mu_r ** 2 + c1) * (var_a + var_r + c2)))
    scores[b] = np.mean(maps)
  return scores


def _pair(seed=0, shape=(3, 2, 16, 20, 3), noise=0.1):
  rng = np.random.default_rng(seed)
  references = rng.uniform(0.0, 1.0, shape)
  # Smooth structure plus noise of growing strength per video, so the scores differ.
  references = (references + np.roll(references, 1, axis=2) + np.roll(references, 1, axis=3)) / 3
  strengths = noise * (1 + np.arange(shape[0]))[:, None, None, None, None]
  videos = np.clip(references + strengths * rng.normal(size=shape), 0.0, 1.0)
  return videos.astype(np.float32), references.astype(np.float32)


def test_psnr_matches_numpy_reference():
  videos, references = _pair()
  np.testing.assert_allclose(metrics.psnr(videos, references),
                             _numpy_psnr(videos, references, 1.0), rtol=1e-5)


def test_ssim_matches_numpy_reference():
  videos, references = _pair()
  expected = _numpy_ssim(videos, references, 1.0)
  np.testing.assert_allclose(metrics.ssim(videos, references), expected, atol=1e-5)
  assert expected[0] > expected[1] > expected[2]  # more noise, lower SSIM


def test_ssim_matches_numpy_reference_with_other_window_and_range():
  videos, references = _pair(seed=1, shape=(2, 1, 9, 12, 2))
  scale = 255.0
  got = metrics.ssim(videos * scale, references * scale, max_value=scale, window_size=7,
                     sigma=1.0)
  expected = _numpy_ssim(videos * scale, references * scale, scale, size=7, sigma=1.0)
  np.testing.assert_allclose(got, expected, atol=1e-5)


def test_identical_videos_score_perfectly():
  videos, _ = _pair()
  np.testing.assert_allclose(metrics.ssim(videos, videos), 1.0, atol=1e-6)
  assert np.all(np.isinf(metrics.psnr(videos, videos)))


def test_psnr_follows_the_value_range():
  videos, references = _pair()
  base = metrics.psnr(videos, references)
  # Scaling values and range together changes nothing; doubling the range adds 20 log10(2) dB.
  np.testing.assert_allclose(metrics.psnr(videos * 255, references * 255, max_value=255.0),
                             base, rtol=1e-5)
  np.testing.assert_allclose(metrics.psnr(videos, references, max_value=2.0),
                             base + 20 * np.log10(2.0), rtol=1e-5)


def test_metrics_jit_and_differentiate():
  videos, references = _pair(shape=(1, 1, 12, 12, 3))
  grad = jax.jit(jax.grad(lambda v: metrics.ssim(v, references).sum()))(videos)
  assert np.all(np.isfinite(grad)) and np.abs(grad).sum() > 0


def test_bad_inputs_name_the_problem():
  videos, references = _pair(shape=(1, 1, 8, 8, 3))
  with pytest.raises(ValueError, match="smaller than the SSIM window"):
    metrics.ssim(videos, references)
  with pytest.raises(ValueError, match="one shape"):
    metrics.psnr(videos, references[:, :, :4])
