"""Tests for data_pipelines/buckets.py: the bucket grammar and the step schedule."""

from __future__ import annotations

import numpy as np
import pytest

from data_pipelines import buckets


def test_parse_bucket_reads_shape_batch_and_weight():
  assert buckets.parse_bucket("9x32x48:8") == buckets.Bucket(9, 32, 48, 8, 1.0)
  bucket = buckets.parse_bucket("1x32x32:16:0.25")
  assert (bucket.shape, bucket.global_batch, bucket.weight) == ((1, 32, 32), 16, 0.25)
  assert buckets.parse_bucket(str(bucket)) == bucket


@pytest.mark.parametrize("spec", ["9x32:8", "9x32x32", "0x32x32:8", "9x32x0:8", "9x32x32:0",
                                  "9x32x32:8:0", "9x32x32:8:-1", "9x32x32:8:abc", "nine", ""])
def test_parse_bucket_rejects_bad_specs(spec):
  with pytest.raises(ValueError, match="bucket"):
    buckets.parse_bucket(spec)


def test_bucket_mix_is_deterministic_and_follows_the_weights():
  parsed = [buckets.parse_bucket(s) for s in ("3x16x16:8", "1x16x16:16:0.5", "5x16x16:8:1.5")]
  steps = np.arange(30_000)
  ids = buckets.BucketSchedule(parsed, seed=3).bucket_ids(steps)
  np.testing.assert_array_equal(ids, buckets.BucketSchedule(parsed, seed=3).bucket_ids(steps))
  assert (ids != buckets.BucketSchedule(parsed, seed=4).bucket_ids(steps)).mean() > 0.3
  shares = np.bincount(ids, minlength=3) / len(ids)
  np.testing.assert_allclose(shares, [1 / 3, 1 / 6, 1 / 2], atol=0.015)
  # Not a fixed cycle: switches happen at irregular steps.
  assert 0.4 < (ids[1:] != ids[:-1]).mean() < 0.8


def test_examples_before_is_the_running_sum_of_batch_sizes_across_blocks():
  parsed = [buckets.parse_bucket(s) for s in ("3x16x16:8", "1x16x16:24:0.5")]
  schedule = buckets.BucketSchedule(parsed, seed=1)
  steps = np.arange(40_001)
  ids = schedule.bucket_ids(steps)
  sizes = np.array([8, 24])[ids]
  before_all = np.concatenate([[0], np.cumsum(sizes)])
  for step in (0, 1, 2, 16_383, 16_384, 16_385, 32_768, 40_000, 5):  # out of order on purpose
    in_bucket = sizes[:step][ids[:step] == ids[step]].sum()
    assert schedule.examples_before(step) == (before_all[step], in_bucket), step
