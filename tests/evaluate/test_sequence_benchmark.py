"""videogen/evaluate/sequence_benchmark.py: per-device attention memory falls with the sequence
size, for Ulysses and the ring (compiled memory analyses on fake CPU devices)."""

from __future__ import annotations

import pytest

from videogen.evaluate import benchmark
from videogen.evaluate import sequence_benchmark


@pytest.fixture(scope="module")
def result(devices):
  return sequence_benchmark.figures(4, 8, tokens=1024)


@pytest.mark.parametrize("method", sequence_benchmark.METHODS)
def test_attention_memory_per_device_falls_with_the_sequence_size(result, method):
  rows = {row["sequence"]: row for row in result["rows"] if row["method"] == method}
  assert sorted(rows) == [1, 2, 4, 8]
  if method == "ulysses":
    assert "unavailable" in rows[8]  # 4 heads do not split 8 ways
    del rows[8]
  one = rows[1]
  # The logits dominate: at N = 4 a device holds well under half of what one device does.
  assert rows[4]["temp_bytes"] < 0.5 * one["temp_bytes"]
  assert rows[4]["train_temp_bytes"] < 0.5 * one["train_temp_bytes"]
  sizes = sorted(rows)
  for smaller, larger in zip(sizes, sizes[1:]):
    assert rows[larger]["temp_bytes"] < rows[smaller]["temp_bytes"]
    # q, k, v are split over the tokens: 1/N of them per device.
    assert rows[larger]["argument_bytes"] * larger == one["argument_bytes"]


def test_the_table_names_every_row(result):
  table = sequence_benchmark.format_table(result)
  assert "1024 tokens, 4 heads x 8" in table
  assert table.count("ulysses") == 4 and table.count("ring ") == 4
  assert "unavailable: 4 heads do not split 8 ways" in table


def test_the_benchmark_command_knows_the_part():
  assert benchmark.SEQUENCE_PARALLEL in benchmark.WHAT
  assert benchmark.SEQUENCE_PARALLEL not in benchmark.PARTS  # not part of "all"
