"""Fitting stored videos to a bucket's shape: plain NumPy, no framework.

    clip = select_frames(video, frames=9, start=3)    # a window of 9 frames from frame 3
    clip = resize_and_crop(clip, height=32, width=48)  # cover 32x48 keeping the aspect, crop centre
    clip = fit_video(video, bucket, start=3)           # both, to exactly the bucket's shape
"""

from __future__ import annotations

import numpy as np

from data_pipelines import buckets as buckets_lib


def select_frames(video: np.ndarray, frames: int, start: int) -> np.ndarray:
  """Takes `frames` consecutive frames from `start`, repeating the last frame if the clip ends.

  Args:
    video: [T, H, W, C].
    frames: how many frames to return.
    start: the first frame, 0 <= start < T.

  Returns:
    [frames, H, W, C], same dtype.
  """
  length = video.shape[0]
  if length == 0:
    raise ValueError("the video has no frames")
  if not 0 <= start < length:
    raise ValueError(f"start={start} is outside the video's {length} frames")
  indices = np.minimum(np.arange(start, start + frames), length - 1)
  return video[indices]


def _resize_weights(in_size: int, out_size: int) -> np.ndarray:
  """float32 [out_size, in_size]: antialiased linear interpolation (a triangle filter).

  Sample centres are aligned (half-pixel convention); when shrinking, the triangle widens by the
  scale so that every input pixel contributes (no aliasing).
  """
  scale = in_size / out_size
  support = max(scale, 1.0)
  centres = (np.arange(out_size, dtype=np.float64) + 0.5) * scale - 0.5
  distance = np.abs(np.arange(in_size, dtype=np.float64)[None, :] - centres[:, None]) / support
  weights = np.maximum(0.0, 1.0 - distance)
  # Near the edges, the renormalisation stands in for clamped (edge-extended) sampling.
  weights /= weights.sum(axis=1, keepdims=True)
  return weights.astype(np.float32)


def resize_and_crop(video: np.ndarray, height: int, width: int) -> np.ndarray:
  """Scales a video to cover height x width (keeping its aspect ratio), then centre-crops.

  Args:
    video: uint8 [T, H, W, C].
    height: output height.
    width: output width.

  Returns:
    uint8 [T, height, width, C].
  """
  _, in_height, in_width, _ = video.shape
  if (in_height, in_width) == (height, width):
    return video
  scale = max(height / in_height, width / in_width)
  # The scaled size that covers the target; the crop below removes the excess of one side.
  scaled_height = max(height, round(in_height * scale))
  scaled_width = max(width, round(in_width * scale))
  top = (scaled_height - height) // 2
  left = (scaled_width - width) // 2
  rows = _resize_weights(in_height, scaled_height)[top:top + height]
  cols = _resize_weights(in_width, scaled_width)[left:left + width]
  resized = np.einsum("yh,thwc,xw->tyxc", rows, video.astype(np.float32), cols, optimize=True)
  return np.clip(np.rint(resized), 0, 255).astype(np.uint8)


def fit_video(video: np.ndarray, bucket: buckets_lib.Bucket, start: int) -> np.ndarray:
  """A stored video -> exactly the bucket's shape: frames from `start`, then resize and crop."""
  return resize_and_crop(select_frames(video, bucket.frames, start), bucket.height, bucket.width)
