"""videogen/evaluate/autoencoder_throughput.py: the benchmark runs and reports positive rates."""

import math

from videogen.evaluate import autoencoder_throughput
from videogen.models import autoencoder


def test_measure_throughput_reports_every_figure():
  config = autoencoder.AutoencoderConfig(
      base_channels=4, patch_size=2, channel_multipliers=(1,), spatial_downsample=(),
      temporal_downsample=(), latent_channels=2, middle_attention=False)
  results = autoencoder_throughput.measure_throughput(config, batch=1, frames=3, height=8,
                                                      width=8, repeats=1)
  assert set(results) == {"encode_frames_per_second", "decode_frames_per_second",
                          "encode_compile_seconds", "decode_compile_seconds"}
  assert all(math.isfinite(v) and v > 0 for v in results.values())

