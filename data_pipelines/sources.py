"""Example sources: example index -> {"video", "caption", "description"} at a bucket's shape.

    source = ShapesSource(world_lib.WorldConfig(), split="train", seed=0)   # infinite, on the fly
    source = TfdsSource("shapes_world", split="train")                      # a TFDS ArrayRecord set
    example = source.example(index, bucket, frame_draw)   # "video": uint8 [T, H, W, 3]
    brief, descriptive = source.captions(index, bucket)   # without decoding the video

`num_examples` is None for an infinite source. Both are picklable, so Grain worker processes
can build batches from them.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import numpy as np

from data_pipelines import buckets as buckets_lib
from data_pipelines import transforms
from data_pipelines.shapes import world as world_lib


def _text(value: Any) -> str:
  if isinstance(value, np.ndarray):
    value = value.item()
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class ShapesSource:
  """The procedural world, rendered at each bucket's shape on demand. Infinite: index = position."""

  def __init__(self, world: world_lib.WorldConfig, *, split: str, seed: int):
    self._world = world
    self._split = split
    self._seed = seed

  @property
  def num_examples(self) -> int | None:
    return None

  def captions(self, index: int, bucket: buckets_lib.Bucket) -> tuple[str, str]:
    """(brief, descriptive) without rendering the video."""
    scene = world_lib.sample_scene(index, seed=self._seed, split=self._split, config=self._world)
    return world_lib.caption(scene), world_lib.describe(
        scene, frames=bucket.frames, height=bucket.height, width=bucket.width)

  def example(self, index: int, bucket: buckets_lib.Bucket, frame_draw: float) -> dict[str, Any]:
    del frame_draw  # the world renders exactly the bucket's frames
    sample = world_lib.generate(index, seed=self._seed, frames=bucket.frames,
                                height=bucket.height, width=bucket.width, split=self._split,
                                config=self._world)
    return {"video": sample["video"], "caption": sample["caption"],
            "description": sample["description"]}


class TfdsSource:
  """A TFDS ArrayRecord data set, opened lazily (so that it travels to worker processes)."""

  def __init__(self, name: str, *, split: str, data_dir: Optional[str] = None):
    self._name = name
    self._data_dir = data_dir
    self._split = split
    self._records = None

  def __getstate__(self):
    return {**self.__dict__, "_records": None}

  @property
  def records(self):
    if self._records is None:
      self._records = open_tfds(self._name, self._split, self._data_dir)
    return self._records

  @property
  def num_examples(self) -> int:
    return len(self.records)

  def captions(self, index: int, bucket: buckets_lib.Bucket) -> tuple[str, str]:
    """(brief, descriptive): "caption", and "description" where the data set has one."""
    del bucket  # stored captions do not depend on the shape
    record = self.records[index]
    caption = _text(record["caption"])
    return caption, _text(record["description"]) if "description" in record else caption

  def example(self, index: int, bucket: buckets_lib.Bucket, frame_draw: float) -> dict[str, Any]:
    record = self.records[index]
    if "video" not in record or "caption" not in record:
      raise KeyError(f"{self._name} records need 'video' and 'caption' features; this one has "
                     f"{sorted(record)}")
    video = np.asarray(record["video"])
    # A random window of the clip (the whole clip when it is too short).
    start = int(frame_draw * max(1, video.shape[0] - bucket.frames + 1))
    caption = _text(record["caption"])
    description = _text(record["description"]) if "description" in record else caption
    return {"video": transforms.fit_video(video, bucket, start), "caption": caption,
            "description": description}


def open_tfds(name: str, split: str, data_dir: Optional[str] = None):
  """A random-access source of decoded records (no TensorFlow needed).

  Args:
    name: a registered TFDS name ("shapes_world", "shapes_world/tiny:1.0.0"), or a directory
      holding a prepared data set version (the folder with dataset_info.json).
    split: e.g. "train".
    data_dir: TFDS's data directory for a name; ignored for a directory.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (slow import)
  if os.path.isfile(os.path.join(name, "dataset_info.json")):
    return tfds.builder_from_directory(name).as_data_source(split=split)
  return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
