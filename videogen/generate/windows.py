"""Shapes a generation request is cut into: valid frame counts and sizes, and sampling windows.

A clip has 1 + F k pixel frames (F the autoencoder's temporal compression: the first frame is
encoded alone); frames that continue a clip come in whole groups of F; sizes are multiples of the
autoencoder's downsampling times the transformer's patch. A video longer than the model's window
is made window by window (`plan_windows`), each window one sampling call over latent frames:

    [ context | new | extra | suffix ]

See `videogen.generate.pipeline` for how the generator fills and decodes each window.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from absl import logging


def round_frames(frames: int, temporal_factor: int, *, continuing: bool,
                 what: str = "frames") -> int:
  """The valid frame count nearest to `frames`, with a logged warning when it differs.

  A fresh clip starts with a frame encoded alone, so it has 1 + F k frames (k >= 0); frames that
  continue a clip come in whole groups of F (F k, k >= 1).

  Args:
    frames: the requested count.
    temporal_factor: F, the autoencoder's temporal compression.
    continuing: whether the frames continue existing ones.
    what: how the count is called in the warning (e.g. "--frames").
  """
  if continuing:
    groups = max(1, math.floor(frames / temporal_factor + 0.5))
    valid = temporal_factor * groups
    form = f"a multiple of {temporal_factor}"
  else:
    groups = max(0, math.floor((frames - 1) / temporal_factor + 0.5))
    valid = 1 + temporal_factor * groups
    form = f"1 + {temporal_factor}k"
  if valid != frames:
    logging.warning("%s = %d is not %s (the autoencoder's temporal compression is %d): "
                    "generating %d frames instead", what, frames, form, temporal_factor, valid)
  return valid


def round_size(size: int, multiple: int, what: str) -> int:
  """`size` rounded to the nearest positive multiple of `multiple`, warning when it changes."""
  valid = max(multiple, multiple * math.floor(size / multiple + 0.5))
  if valid != size:
    logging.warning("%s = %d is not a multiple of %d (autoencoder downsampling x transformer "
                    "patch): using %d", what, size, multiple, valid)
  return valid


@dataclasses.dataclass(frozen=True)
class Window:
  """One sampling call, in latent frames: [context | new | extra | suffix].

  Attributes:
    context: latent frames given at the start (the end of what exists); 0 starts a fresh clip.
    new: latent frames generated and kept.
    suffix: latent frames given at the end (the start of what must follow).
    extra: latent frames generated after the new ones and dropped: they pad the last window of a
      long video to the full window, so that it reuses the compiled shape of the others.
  """
  context: int
  new: int
  suffix: int
  extra: int = 0

  @property
  def total(self) -> int:
    return self.context + self.new + self.extra + self.suffix

  def mask(self) -> np.ndarray:
    """bool [total], True at the given frames."""
    frames = np.arange(self.total)
    return (frames < self.context) | (frames >= self.total - self.suffix)

  def new_pixel_frames(self, temporal_factor: int) -> int:
    """Pixel frames the new latents decode to: F per latent, plus the lone first frame of a
    fresh clip."""
    if self.context:
      return temporal_factor * self.new
    return 1 + temporal_factor * (self.new - 1)


def plan_windows(new_latent_frames: int, *, window: int | None, overlap: int,
                 history: int, suffix: int, pad_last: bool = True) -> list[Window]:
  """Splits a generation of `new_latent_frames` into sampling windows.

  Args:
    new_latent_frames: latent frames to generate in all (>= 1).
    window: the most latent frames one sampling call holds; None = everything in one call.
    overlap: latent frames each window is given from the end of what exists (>= 1).
    history: latent frames that exist before the first window (0 for a fresh clip).
    suffix: latent frames given at the end of the last window.
    pad_last: when there are several windows and the last has no suffix, fill it up to the
      window with `extra` frames (one compiled shape for every window of a long video).

  Returns:
    The windows in order; their `new` sum to `new_latent_frames`, only the last has a suffix,
    and every window holds at most `window` latent frames.

  Raises:
    ValueError: the window cannot hold a context, one new frame and the suffix.
  """
  if new_latent_frames < 1:
    raise ValueError(f"nothing to generate: new_latent_frames = {new_latent_frames}")
  if overlap < 1:
    raise ValueError(f"overlap = {overlap} must be >= 1 latent frame")
  if window is not None and window < overlap + suffix + 1:
    raise ValueError(
        f"a window of {window} latent frames cannot hold {overlap} given + 1 new + {suffix} "
        f"suffix latent frames: use a longer window or a smaller overlap")
  windows = []
  remaining, available = new_latent_frames, history
  while remaining > 0:
    context = min(overlap, available)
    capacity = math.inf if window is None else window - context
    if remaining + suffix <= capacity:
      extra = 0
      if pad_last and windows and not suffix:
        extra = capacity - remaining
      windows.append(Window(context, remaining, suffix, extra))
      break
    # The last window must keep at least one new frame beside the suffix.
    new = capacity if suffix == 0 else min(capacity, remaining - 1)
    windows.append(Window(context, new, 0))
    remaining -= new
    available += new
  return windows
