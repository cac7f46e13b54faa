"""Tests for data_pipelines/builders/shapes_world.py: the built data set equals the world."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines.builders import common
from data_pipelines.builders import shapes_world
from data_pipelines.shapes import world

COUNTS = {"train": 3, "test": 2, "held_out": 2}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = tmp_path_factory.mktemp("tfds")
  shapes_world.build(path, "9x32x32", num_examples=COUNTS, seed=5)
  return path


def test_configs_are_named_frames_by_height_by_width():
  configs = {c.name: (c.frames, c.height, c.width)
             for c in shapes_world.ShapesWorld.BUILDER_CONFIGS}
  assert configs["9x32x32"] == (9, 32, 32)
  assert configs["17x48x80"] == (17, 48, 80)
  assert configs["1x64x64"] == (1, 64, 64)


def test_read_back_equals_world_generate(data_dir):
  sources = tfds.data_source("shapes_world/9x32x32", data_dir=data_dir)
  assert {split: len(source) for split, source in sources.items()} == COUNTS
  for split, source in sources.items():
    for index in range(len(source)):
      example = source[index]
      sample = world.generate(index, seed=5, frames=9, height=32, width=32, split=split)
      assert example["index"] == index
      assert example["video"].shape == (9, 32, 32, 3) and example["video"].dtype == np.uint8
      np.testing.assert_array_equal(example["video"], sample["video"])
      for key in ("caption", "description", "background"):
        assert example[key].decode() == sample[key]
      assert example["fps"] == sample["fps"]
      assert json.loads(example["objects"]) == sample["objects"]


def test_splits_differ_and_seed_matters(data_dir):
  sources = common.load(common.dataset_dir(data_dir, "shapes_world", "9x32x32"))
  videos = [sources[split][0]["video"] for split in COUNTS]
  assert not np.array_equal(videos[0], videos[1]) and not np.array_equal(videos[0], videos[2])
  other_seed = world.generate(0, seed=6, frames=9, height=32, width=32)["video"]
  assert not np.array_equal(videos[0], other_seed)


def test_rebuilding_with_other_settings_is_refused(data_dir):
  shapes_world.build(data_dir, "9x32x32", num_examples=COUNTS, seed=5)  # same: reused
  with pytest.raises(ValueError, match="examples.*Delete"):
    shapes_world.build(data_dir, "9x32x32", num_examples={"train": 4}, seed=5)
  with pytest.raises(ValueError, match="seed 5 .asked for 1."):
    shapes_world.build(data_dir, "9x32x32", num_examples=COUNTS, seed=1)


def test_any_shape_and_one_frame_images(tmp_path):
  path = shapes_world.build(tmp_path, (1, 24, 40), num_examples={"train": 2, "test": 0,
                                                                  "held_out": 0})
  sources = common.load(path)
  assert list(sources) == ["train"]
  image = sources["train"][1]["video"]
  assert image.shape == (1, 24, 40, 3)
  np.testing.assert_array_equal(
      image, world.generate(1, seed=0, frames=1, height=24, width=40)["video"])


def test_unknown_split_is_an_error(tmp_path):
  with pytest.raises(ValueError, match="validation"):
    shapes_world.ShapesWorld(data_dir=str(tmp_path), config="9x32x32",
                             num_examples={"validation": 3})
