"""Tests for data_pipelines/hashing.py: counter-based hashes that the loader's batches rest on."""

from __future__ import annotations

import numpy as np

from data_pipelines import hashing


def test_hashes_are_pinned():
  # Every saved run's batches depend on these values: a change here changes every batch, so it
  # must come with a new loader state version.
  np.testing.assert_array_equal(
      hashing.hash_ints(0, hashing.SALT_BUCKET, np.arange(3)),
      np.array([3337356709842545974, 4984638300454652132, 17526510723138061590], np.uint64))
  np.testing.assert_allclose(hashing.uniform(0, hashing.SALT_FRAMES, np.arange(3)),
                             [0.32724913359558805, 0.5357704001433947, 0.1993709300766232],
                             rtol=0, atol=0)


def test_python_ints_wrap_modulo_2_to_the_64():
  assert hashing.hash_ints(7, -1, 2**64 + 5) == hashing.hash_ints(7, 2**64 - 1, 5)


def test_arrays_broadcast_and_match_elementwise_scalars():
  positions = np.arange(5)
  together = hashing.hash_ints(3, np.array([[0], [1]]), positions)
  assert together.shape == (2, 5) and together.dtype == np.uint64
  for stream in (0, 1):
    for position in positions:
      assert together[stream, position] == hashing.hash_ints(3, stream, int(position))


def test_uniform_is_in_the_unit_interval_and_salts_keep_streams_apart():
  salts = [hashing.SALT_BUCKET, hashing.SALT_CAPTION, hashing.SALT_FRAMES, hashing.SALT_EPOCH]
  assert len(set(salts)) == len(salts)
  draws = [hashing.uniform(0, salt, np.arange(20_000)) for salt in salts]
  for values in draws:
    assert values.dtype == np.float64 and values.min() >= 0.0 and values.max() < 1.0
    assert abs(values.mean() - 0.5) < 0.01
  # Two salts give unrelated streams, not shifted or equal ones.
  assert abs(np.corrcoef(draws[0], draws[2])[0, 1]) < 0.03
