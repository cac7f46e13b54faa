"""Motion channels: the world's ground truth as two more latent channels (docs/learning_curve.md).

    python docs/studies/motion_channels.py SOURCE_CACHE NEW_CACHE GAIN

Copies a latent cache (WORKDIR/latent_cache of a run of experiments/shapes.py:tiny) and appends to
every latent two channels: each object's velocity in pixels per frame (x, y; from frame k-1 to
k+1, coverage-weighted like the renderer's colours, 0 on the background and in images), averaged
over each latent cell (4x4 pixels; latent frame 0 is frame 0, latent frame k frames 2k-1 and 2k),
times GAIN / scale_factor, so that the transformer sees GAIN x the velocity. Training and sampling
on it need the two extra channels let through: `git apply docs/studies/motion_channels.patch`,
`VG_MOTION=2` in the environment and `--config.dit.in_channels=10`.
"""
import json
import os
import shutil
import sys

import numpy as np

from data_pipelines.shapes import world

source, target, gain = sys.argv[1], sys.argv[2], float(sys.argv[3])
SCALE_FACTOR = 0.28  # experiments/shapes.py:tiny's autoencoder.scale_factor
config = world.WorldConfig()


def velocity_field(index: int, frames: int, height: int, width: int) -> np.ndarray:
  """[T, H, W, 2]: the velocity (pixels per frame) of the object drawn at each pixel."""
  field = np.zeros((frames, height, width, 2), np.float32)
  if frames == 1:
    return field
  scene = world.sample_scene(index, seed=0, split="train", config=config)
  pixel_x = np.arange(width, dtype=np.float32) + 0.5
  pixel_y = np.arange(height, dtype=np.float32) + 0.5
  for i in world._draw_order(scene):  # pylint: disable=protected-access
    obj = scene.objects[i]
    centers = world.simulate(obj, frames=frames, height=height, width=width,
                             fps=scene.fps).centers * [width, height]
    velocity = np.gradient(centers, axis=0).astype(np.float32)
    dx = pixel_x[None, None, :] - centers[:, 0].astype(np.float32)[:, None, None]
    dy = pixel_y[None, :, None] - centers[:, 1].astype(np.float32)[:, None, None]
    alpha = world._coverage(obj.shape, dx, dy,  # pylint: disable=protected-access
                            obj.half_extent * min(height, width))[..., None]
    field = field * (1.0 - alpha) + velocity[:, None, None, :] * alpha
  return field


def to_latent_grid(field: np.ndarray, frames: int, height: int, width: int) -> np.ndarray:
  """[T, H, W, 2] -> [frames, height, width, 2], as the 2x4x4 causal autoencoder groups pixels."""
  cell = field.shape[1] // height
  pooled = field.reshape(field.shape[0], height, cell, width, cell, 2).mean(axis=(2, 4))
  groups = [pooled[0]] + [pooled[2 * k - 1:2 * k + 1].mean(axis=0) for k in range(1, frames)]
  return np.stack(groups)


meta = json.load(open(os.path.join(source, "meta.json")))
if os.path.exists(target):
  shutil.rmtree(target)
shutil.copytree(source, target)
for bucket_id, bucket in enumerate(meta["buckets"]):
  frames, height, width = (int(v) for v in bucket["spec"].split(":")[0].split("x"))
  latents = np.load(os.path.join(source, f"bucket{bucket_id}_latents.npy"))
  indices = np.load(os.path.join(source, f"bucket{bucket_id}_index.npy"))
  motion = np.stack([to_latent_grid(velocity_field(int(i), frames, height, width),
                                    *latents.shape[1:4]) for i in indices])
  latents = np.concatenate([latents, (motion * gain / SCALE_FACTOR).astype(latents.dtype)], -1)
  np.save(os.path.join(target, f"bucket{bucket_id}_latents.npy"), latents)
  bucket["latent_shape"] = list(latents.shape[1:])
  print(f"{bucket['spec']}: {latents.shape}, mean |velocity| {np.abs(motion).mean():.3f} px/frame")
with open(os.path.join(target, "meta.json"), "w") as f:
  json.dump(meta, f, indent=1, sort_keys=True)
