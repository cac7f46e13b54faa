"""Tests for data_pipelines/sources.py: example index -> a video of the bucket's shape, captions."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from data_pipelines import buckets
from data_pipelines import sources
from data_pipelines import transforms
from data_pipelines.builders import shapes_world
from data_pipelines.shapes import world


def test_shapes_source_renders_the_world_at_the_bucket_shape():
  source = sources.ShapesSource(world.WorldConfig(), split="train", seed=4)
  bucket = buckets.parse_bucket("3x16x24:8")
  assert source.num_examples is None
  example = source.example(5, bucket, frame_draw=0.7)
  sample = world.generate(5, seed=4, frames=3, height=16, width=24, split="train")
  np.testing.assert_array_equal(example["video"], sample["video"])
  assert (example["caption"], example["description"]) == (sample["caption"],
                                                          sample["description"])
  assert source.captions(5, bucket) == (sample["caption"], sample["description"])


@pytest.fixture(scope="module")
def shapes_world_dir(tmp_path_factory):
  """6 clips of 5 frames of 24x40, built by the shapes_world builder."""
  return shapes_world.build(tmp_path_factory.mktemp("tfds"), "5x24x40",
                            num_examples={"train": 6, "test": 0, "held_out": 0})


def test_tfds_source_fits_a_window_of_each_record(shapes_world_dir):
  source = sources.TfdsSource(str(shapes_world_dir), split="train")
  records = sources.open_tfds(str(shapes_world_dir), "train")
  assert source.num_examples == len(records) == 6
  bucket = buckets.parse_bucket("3x16x16:8")
  record = records[2]
  # frame_draw in [0, 1) picks the window's start among the 5 - 3 + 1 possible ones.
  for frame_draw, start in ((0.0, 0), (0.5, 1), (0.99, 2)):
    example = source.example(2, bucket, frame_draw)
    np.testing.assert_array_equal(example["video"],
                                  transforms.fit_video(record["video"], bucket, start))
  assert example["caption"] == record["caption"].decode()
  assert source.captions(2, bucket) == (record["caption"].decode(),
                                        record["description"].decode())


def test_tfds_source_travels_to_workers_without_its_open_records(shapes_world_dir):
  source = sources.TfdsSource(str(shapes_world_dir), split="train")
  bucket = buckets.parse_bucket("1x16x16:8")
  expected = source.example(0, bucket, 0.0)["video"]  # opens the records
  state = source.__getstate__()
  assert state["_records"] is None
  copy = pickle.loads(pickle.dumps(source))
  np.testing.assert_array_equal(copy.example(0, bucket, 0.0)["video"], expected)
