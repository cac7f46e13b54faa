r"""Per-token attribute maps of a latent cache's clips, from the procedural world's ground truth.

    python docs/studies/attribute_features.py WORKDIR/latent_cache

Writes `bucket<b>_features.npy`, float32 [rows, t', h', w', F], beside the cache's arrays: for each
token of the transformer's grid (one latent frame, `--token_pixels` square pixels), the objects'
attributes weighted by the share of the token each covers, then the background weighted by what is
left. F = shapes + colours + sizes + motions + backgrounds (24 in the default world), then one
channel more: the token's weight in the alignment (its objects' cover plus 0.1). The
representation-alignment study (docs/learning_curve.md) aligns the transformer's hidden tokens
with these maps: the world's exact answer to "what is here, and where is it going", standing in
for a pre-trained video encoder's features, which this project cannot download.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from data_pipelines.shapes import vocabulary
from data_pipelines.shapes import world as world_lib


_BACKGROUND_WEIGHT = 0.1


def feature_names() -> list[str]:
  return ([f"shape:{s}" for s in vocabulary.SHAPES] + [f"colour:{c}" for c in vocabulary.COLORS]
          + [f"size:{s}" for s in vocabulary.SIZES] + [f"motion:{m}" for m in vocabulary.MOTIONS]
          + [f"background:{b}" for b in vocabulary.BACKGROUNDS])


def _one_hot(values: tuple[str, ...], value: str) -> np.ndarray:
  out = np.zeros(len(values), np.float32)
  out[values.index(value)] = 1.0
  return out


def latent_frame_groups(frames: int, temporal_factor: int) -> list[list[int]]:
  """The pixel frames each latent frame of the causal autoencoder encodes: the first alone, then
  groups of `temporal_factor`."""
  groups = [[0]]
  for start in range(1, frames, temporal_factor):
    groups.append(list(range(start, min(start + temporal_factor, frames))))
  return groups


def scene_features(index: int, *, seed: int, world: world_lib.WorldConfig, frames: int,
                   height: int, width: int, temporal_factor: int,
                   token_pixels: int) -> np.ndarray:
  """[t', H / token_pixels, W / token_pixels, F] for scene `index` of the train split."""
  scene = world_lib.sample_scene(index, seed=seed, split="train", config=world)
  short_side = min(height, width)
  pixel_x = np.arange(width, dtype=np.float32) + 0.5
  pixel_y = np.arange(height, dtype=np.float32) + 0.5
  groups = latent_frame_groups(frames, temporal_factor)
  grid = (len(groups), height // token_pixels, width // token_pixels)
  features = np.zeros((*grid, len(feature_names())), np.float32)  # the weight comes last
  covered = np.zeros(grid, np.float32)
  for obj in scene.objects:
    centers = world_lib.simulate(obj, frames=frames, height=height, width=width,
                                 fps=world.fps).centers
    dx = pixel_x[None, None, :] - (centers[:, 0] * width).astype(np.float32)[:, None, None]
    dy = pixel_y[None, :, None] - (centers[:, 1] * height).astype(np.float32)[:, None, None]
    alpha = world_lib._coverage(obj.shape, dx, dy, obj.half_extent * short_side)  # [T, H, W]
    per_latent = np.stack([alpha[g].mean(axis=0) for g in groups])  # [t', H, W]
    share = per_latent.reshape(grid[0], grid[1], token_pixels, grid[2], token_pixels).mean(
        axis=(2, 4))
    attributes = np.concatenate([
        _one_hot(vocabulary.SHAPES, obj.shape), _one_hot(tuple(vocabulary.COLORS), obj.color),
        _one_hot(vocabulary.SIZES, obj.size), _one_hot(vocabulary.MOTIONS, obj.direction),
        np.zeros(len(vocabulary.BACKGROUNDS), np.float32)])
    features += share[..., None] * attributes
    covered += share
  background = np.concatenate([np.zeros(features.shape[-1] - len(vocabulary.BACKGROUNDS)),
                               _one_hot(tuple(vocabulary.BACKGROUNDS), scene.background)])
  features += np.clip(1.0 - covered, 0.0, 1.0)[..., None] * background.astype(np.float32)
  # The last channel is the token's weight in the alignment: its objects' cover, plus a tenth, so
  # that the background tokens (about 7 in 8) weigh about as much together as the objects' do.
  weight = _BACKGROUND_WEIGHT + np.clip(covered, 0.0, 1.0)
  return np.concatenate([features, weight[..., None]], axis=-1)


def main(argv: list[str]) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("cache")
  parser.add_argument("--token_pixels", type=int, default=8,
                      help="pixels per token side: the autoencoder's 4 times the patch's 2")
  parser.add_argument("--temporal_factor", type=int, default=2)
  args = parser.parse_args(argv)
  with open(os.path.join(args.cache, "meta.json")) as f:
    meta = json.load(f)
  fingerprint = meta["fingerprint"]
  data = fingerprint["data"]
  if data["source"] != "shapes" or data["split"] != "train":
    print(f"error: {args.cache} caches source {data['source']!r}, split {data['split']!r}; "
          f"only the procedural world's train split has ground truth", file=sys.stderr)
    return 2
  world_fields = dict(data["world"])
  world_fields["held_out"] = tuple(world_fields["held_out"])
  world_fields["backgrounds"] = tuple(world_fields["backgrounds"])
  world = world_lib.WorldConfig(**world_fields)
  seed = fingerprint["data_seed"]
  for bucket_id, bucket in enumerate(meta["buckets"]):
    frames, height, width = (int(v) for v in bucket["spec"].split(":")[0].split("x"))
    indices = np.load(os.path.join(args.cache, f"bucket{bucket_id}_index.npy"))
    rows = np.stack([scene_features(int(i), seed=seed, world=world, frames=frames,
                                    height=height, width=width,
                                    temporal_factor=args.temporal_factor,
                                    token_pixels=args.token_pixels) for i in indices])
    expected = tuple(bucket["latent_shape"][:1])
    if rows.shape[1:2] != expected:
      print(f"error: bucket {bucket_id} has {rows.shape[1]} latent frames here, the cache "
            f"{expected[0]}", file=sys.stderr)
      return 2
    path = os.path.join(args.cache, f"bucket{bucket_id}_features.npy")
    np.save(path, rows)
    print(f"{path}: {rows.shape}, objects cover {rows[..., -1].mean() - _BACKGROUND_WEIGHT:.3f} "
          f"of tokens")
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
