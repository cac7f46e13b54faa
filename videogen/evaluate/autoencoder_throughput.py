r"""Encoder and decoder throughput of the video autoencoder, in video frames per second.

    python -m videogen.main benchmark --config=experiments/shapes.py:tiny --what=autoencoder

Measures the jitted `encode` (posterior moments) and `decode` separately on random videos of the
given shape, after one compiling call, as the best of `repeats` timed calls (the least disturbed
by other work on the machine). A frame is one video frame (not a latent frame) in both directions.
"""

from __future__ import annotations

import time
from typing import Callable

import jax
from flax import nnx

from videogen.models import autoencoder as autoencoder_lib



def _best_time(run: Callable[[], jax.Array], repeats: int) -> float:
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(run())
    best = min(best, time.perf_counter() - start)
  return best


def measure_throughput(config: autoencoder_lib.AutoencoderConfig, *, batch: int, frames: int,
                       height: int, width: int, repeats: int = 3,
                       seed: int = 0) -> dict[str, float]:
  """Times encode and decode of [batch, frames, height, width, 3] videos.

  Returns:
    {"encode_frames_per_second", "decode_frames_per_second", "encode_compile_seconds",
     "decode_compile_seconds"}.
  """
  with nnx.use_eager_sharding(False):
    model = autoencoder_lib.VideoAutoencoder(config, rngs=nnx.Rngs(seed))
  graphdef, state = nnx.split(model)
  encode = jax.jit(lambda state, video: nnx.merge(graphdef, state).encode(video)[0])
  decode = jax.jit(lambda state, latents: nnx.merge(graphdef, state).decode(latents))
  video = jax.random.uniform(jax.random.key(seed), (batch, frames, height, width, 3),
                             minval=-1.0, maxval=1.0)
  start = time.perf_counter()
  latents = jax.block_until_ready(encode(state, video))
  encode_compile = time.perf_counter() - start
  start = time.perf_counter()
  jax.block_until_ready(decode(state, latents))
  decode_compile = time.perf_counter() - start
  video_frames = batch * frames
  return {
      "encode_frames_per_second": video_frames / _best_time(lambda: encode(state, video), repeats),
      "decode_frames_per_second": video_frames / _best_time(lambda: decode(state, latents),
                                                            repeats),
      "encode_compile_seconds": encode_compile,
      "decode_compile_seconds": decode_compile,
  }
