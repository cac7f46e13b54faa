"""Does the watermark change what the analyzer reads more than any other change of its size?

    python docs/studies/analyzer_control.py VIDEOS.npz 200 KEYS PATTERNS

VIDEOS.npz holds generated videos (arrays "videos" and "nulls", uint8 [N, T, H, W, 3]) of the
generation suite's text-to-video prompts in order, seeds 0, 1, ... (what `benchmark
--what=watermark` generates from a trained workdir; see docs/provenance.md). The first N of them
(the "videos" first, then the "nulls") are scored by the analyzer against their prompts from
their saved mp4s: unmarked, watermarked with KEYS different keys, and with PATTERNS unkeyed random
patterns of the same kind (a +-1 sign per 2x2-pixel cell along the luma direction, the same in
every frame, dithered) at about the same PSNR. Prints each set's accuracies and its change from
the unmarked set in points.
"""
import json
import pathlib
import sys
import tempfile

import numpy as np

from data_pipelines import video_io
from data_pipelines.shapes import world
from videogen.evaluate import scoring
from videogen.evaluate import suite as suite_lib
from videogen.provenance import watermark
from videogen.provenance import watermark_benchmark

path, count, keys, patterns = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
data = np.load(path)
generated = list(data["videos"]) + list(data["nulls"])
videos = generated[:count]
# The suite the benchmark prompted them with, sized for all of them (the order depends on it).
prompts = suite_lib.build_suite(
    suite_lib.GenerationEvalConfig(scenes_per_group=-(-len(generated) // 4), modes=()),
    world_config=world.WorldConfig(), default_shape=videos[0].shape[:3]).prompts[:count]


def accuracies(frames):
  """The analyzer's figures of the videos as saved (mp4) and read back."""
  saved = []
  with tempfile.TemporaryDirectory() as scratch:
    for index, video in enumerate(frames):
      path = pathlib.Path(scratch) / f"{index}.mp4"
      video_io.write_video(path, video, fps=8)
      saved.append(video_io.read_video(path)[0])
  return scoring.score_videos(saved, prompts)


LUMA = np.array([0.299, 0.587, 0.114])
DIRECTION = LUMA / np.sqrt(np.mean(LUMA ** 2))  # the watermark's colour direction, mean square 1


def random_pattern(video, seed):
  rng = np.random.default_rng(seed)
  cells = rng.choice([-1.0, 1.0], size=(video.shape[1] // 2 + 1, video.shape[2] // 2 + 1))
  signs = np.kron(cells, np.ones((2, 2)))[:video.shape[1], :video.shape[2]]
  amplitude = 255.0 / 10 ** (watermark.DEFAULT_PSNR / 20)
  changed = (video + amplitude * signs[None, :, :, None] * DIRECTION
             + rng.uniform(-0.5, 0.5, video.shape))
  return np.round(np.clip(changed, 0, 255)).astype(np.uint8)


sets = {"unmarked": videos}
for k in range(keys):
  key = f"analyzer control key {k}".encode().ljust(32, b"!")
  sets[f"watermark, key {k}"] = [
      watermark.embed(video, key, payload=watermark_benchmark.payload_for(index))
      for index, video in enumerate(videos)]
for k in range(patterns):
  sets[f"random pattern {k}"] = [random_pattern(video, 1000 * k + index)
                                 for index, video in enumerate(videos)]
base = None
for name, frames in sets.items():
  psnr = np.mean([scoring.psnr(a, b) for a, b in zip(frames, videos)])
  figures = accuracies(frames)
  base = base or figures
  change = {k: round(100 * (v - base[k]), 1) for k, v in figures.items()
            if v is not None and base[k] is not None}
  print(f"{name}: PSNR {psnr:.1f} dB", json.dumps({k: round(v, 3) for k, v in figures.items()
                                                  if v is not None}))
  print(f"  change (points): {json.dumps(change)}, largest {max(map(abs, change.values()))}",
        flush=True)
