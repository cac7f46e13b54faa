"""Buckets: the static batch shapes a run trains on, their grammar, and which step draws which.

    bucket = parse_bucket("1x32x32:16:0.25")   # 1 frame of 32x32, global batch 16, weight 0.25
    schedule = BucketSchedule([parse_bucket("9x32x32:8"), bucket], seed=0)
    schedule.bucket_id(step)                   # which bucket step `step` draws from
    schedule.examples_before(step)             # where its examples start in the example streams

Every answer is a pure function of (seed, step), so a resumed run draws the same buckets.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Sequence

import numpy as np

from data_pipelines import hashing

_BUCKET_SPEC = re.compile(
    r"^(?P<frames>\d+)x(?P<height>\d+)x(?P<width>\d+):(?P<batch>\d+)(?::(?P<weight>[^:]+))?$")


@dataclasses.dataclass(frozen=True)
class Bucket:
  """One static batch shape: `global_batch` videos of `frames` x `height` x `width`.

  `weight` is the bucket's share of training steps, relative to the other buckets' weights.
  """
  frames: int
  height: int
  width: int
  global_batch: int
  weight: float = 1.0

  @property
  def shape(self) -> tuple[int, int, int]:
    """(frames, height, width)."""
    return (self.frames, self.height, self.width)

  def __str__(self) -> str:
    return f"{self.frames}x{self.height}x{self.width}:{self.global_batch}:{self.weight:g}"


def parse_bucket(spec: str) -> Bucket:
  """Parses "FRAMESxHEIGHTxWIDTH:GLOBAL_BATCH[:WEIGHT]", e.g. "9x32x32:8" or "1x32x32:16:0.25".

  Raises:
    ValueError: the spec is malformed, or a size, the batch or the weight is not positive.
  """
  match = _BUCKET_SPEC.match(spec.replace(" ", "")) if isinstance(spec, str) else None
  if match is None:
    raise ValueError(
        f"bad bucket {spec!r}: write FRAMESxHEIGHTxWIDTH:GLOBAL_BATCH[:WEIGHT], e.g. '9x32x32:8' "
        f"or '1x32x32:16:0.25'")
  frames, height, width, batch = (int(match[k]) for k in ("frames", "height", "width", "batch"))
  try:
    weight = float(match["weight"]) if match["weight"] is not None else 1.0
  except ValueError:
    raise ValueError(f"bad bucket {spec!r}: the weight {match['weight']!r} is not a number, "
                     f"e.g. '1x32x32:16:0.25'") from None
  if min(frames, height, width) <= 0:
    raise ValueError(f"bad bucket {spec!r}: frames, height and width must be positive")
  if batch <= 0:
    raise ValueError(f"bad bucket {spec!r}: the global batch must be positive")
  if not (weight > 0 and math.isfinite(weight)):
    raise ValueError(f"bad bucket {spec!r}: the weight must be a positive number")
  return Bucket(frames, height, width, batch, weight)


class BucketSchedule:
  """Which bucket each step draws from, and where its examples start in the example streams.

  All pure functions of (seed, step). `examples_before(k)` counts the examples of steps 0..k-1,
  in all buckets and in step k's own bucket; the sums are computed in vectorised blocks and
  cached, so that jumping to step 10^7 on resume costs well under a second.
  """

  _BLOCK = 1 << 14

  def __init__(self, buckets: Sequence[Bucket], seed: int):
    self.buckets = tuple(buckets)
    self.seed = seed
    weights = np.array([b.weight for b in self.buckets], dtype=np.float64)
    self._cumulative = np.cumsum(weights / weights.sum())
    self._batch_sizes = np.array([b.global_batch for b in self.buckets], dtype=np.int64)
    # Per bucket, the examples before block b, for the blocks summed so far: [blocks, buckets].
    self._block_starts = [np.zeros(len(self.buckets), dtype=np.int64)]
    self._cached_block = -1
    self._cached_offsets = np.zeros((0, len(self.buckets)), dtype=np.int64)

  def bucket_ids(self, steps: np.ndarray) -> np.ndarray:
    """int [N]: the bucket index of each step."""
    steps = np.asarray(steps, dtype=np.int64)
    if len(self.buckets) == 1:
      return np.zeros(steps.shape, dtype=np.int64)
    draws = hashing.uniform(self.seed, hashing.SALT_BUCKET, steps)
    # The minimum guards against the last cumulative weight rounding to just below 1.
    return np.minimum(np.searchsorted(self._cumulative, draws, side="right"),
                      len(self.buckets) - 1)

  def bucket_id(self, step: int) -> int:
    return int(self.bucket_ids(np.array([step]))[0])

  def examples_before(self, step: int) -> tuple[int, int]:
    """(examples of steps 0..step-1 in all buckets, those in step `step`'s bucket)."""
    bucket_id = self.bucket_id(step)
    if len(self.buckets) == 1:
      return (step * int(self._batch_sizes[0]),) * 2
    block, within = divmod(step, self._BLOCK)
    while len(self._block_starts) <= block:
      sizes = self._block_sizes(len(self._block_starts) - 1)
      self._block_starts.append(self._block_starts[-1] + sizes.sum(axis=0))
    if self._cached_block != block:
      # Exclusive running sums within the block: [BLOCK, buckets].
      self._cached_offsets = np.cumsum(self._block_sizes(block), axis=0)
      self._cached_offsets = np.concatenate(
          [np.zeros_like(self._cached_offsets[:1]), self._cached_offsets[:-1]])
      self._cached_block = block
    per_bucket = self._block_starts[block] + self._cached_offsets[within]
    return int(per_bucket.sum()), int(per_bucket[bucket_id])

  def _block_sizes(self, block: int) -> np.ndarray:
    """int [BLOCK, buckets]: each step's batch size in its own bucket's column."""
    steps = np.arange(block * self._BLOCK, (block + 1) * self._BLOCK, dtype=np.int64)
    ids = self.bucket_ids(steps)
    sizes = np.zeros((len(steps), len(self.buckets)), dtype=np.int64)
    sizes[np.arange(len(steps)), ids] = self._batch_sizes[ids]
    return sizes
