r"""Encoder and decoder throughput of the video autoencoder, in video frames per second.

    python -m videogen.evaluate.autoencoder_throughput --preset=tiny --batch=8 --frames=9 \
        --height=32 --width=32

Measures the jitted `encode` (posterior moments) and `decode` separately on random videos of the
given shape, after one compiling call, as the best of `--repeats` timed calls (the least disturbed
by other work on the machine). A frame is one video frame (not a latent frame) in both directions.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Callable

from absl import app
from absl import flags
import jax
from flax import nnx

from videogen.models import autoencoder as autoencoder_lib

PRESETS: dict[str, Callable[[], autoencoder_lib.AutoencoderConfig]] = {
    "tiny": autoencoder_lib.AutoencoderConfig.tiny,
    "standard": autoencoder_lib.AutoencoderConfig.standard,
}


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


def _define_flags() -> None:
  """Command-line flags, defined only when this module runs as a program: imported beside
  `videogen.main` (which has its own --frames, --height, ...), module-level flags would clash."""
  flags.DEFINE_enum("preset", "tiny", list(PRESETS), "Autoencoder preset.")
  flags.DEFINE_integer("batch", 8, "Videos per call.")
  flags.DEFINE_integer("frames", 9, "Frames per video (1 + temporal factor * k).")
  flags.DEFINE_integer("height", 32, "Frame height (a multiple of the spatial factor).")
  flags.DEFINE_integer("width", 32, "Frame width (a multiple of the spatial factor).")
  flags.DEFINE_integer("repeats", 3, "Timed calls; the best one counts.")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Compute dtype.")


def main(argv: list[str]) -> None:
  del argv
  args = flags.FLAGS
  config = dataclasses.replace(PRESETS[args.preset](), dtype=args.dtype)
  results = measure_throughput(config, batch=args.batch, frames=args.frames,
                               height=args.height, width=args.width, repeats=args.repeats)
  shape = f"{args.batch}x{args.frames}x{args.height}x{args.width}"
  print(f"{args.preset} ({config.temporal_factor}x{config.spatial_factor}x"
        f"{config.spatial_factor}, {config.dtype}) on {jax.devices()[0].device_kind}, "
        f"batch {shape}:")
  for name, value in results.items():
    print(f"  {name}: {value:.2f}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
