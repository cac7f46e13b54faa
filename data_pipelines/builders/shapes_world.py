r"""TFDS builder `shapes_world`: the procedural world of bouncing shapes, written as ArrayRecord.

Configs are named frames x height x width: "9x32x32", "17x32x32", "17x64x64", "17x48x80" (wide)
and "1x64x64" (one-frame images); any other shape works through `ShapesWorldConfig`. Splits
"train", "test" and "held_out" (see `data_pipelines.shapes.world`). Example i of a split is
`world.generate(i, seed=seed, split=split, ...)`, stored in index order:

    {"video": uint8 [T, H, W, 3], "caption": str, "description": str, "background": str,
     "objects": JSON str of the per-object ground truth (tracks, boxes, bounces), "fps": int32,
     "index": int64}

Build and read back:

    path = shapes_world.build("/tmp/tfds", "9x32x32", num_examples={"train": 1000})
    train = common.load(path)["train"]        # or tfds.data_source("shapes_world/9x32x32", ...)

or from the shell:

    python -m data_pipelines.builders.shapes_world --out=/tmp/tfds --shape=9x32x32 --train=1000
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Iterator, Mapping

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from data_pipelines.builders import common
from data_pipelines.shapes import world

# Tiny by default, so that tests and a first run build in seconds; pass more for real training.
DEFAULT_NUM_EXAMPLES: dict[str, int] = {"train": 64, "test": 16, "held_out": 16}


@dataclasses.dataclass(eq=False)
class ShapesWorldConfig(tfds.core.BuilderConfig):
  """One clip shape of the world; `name` is "FRAMESxHEIGHTxWIDTH"."""
  frames: int = 9
  height: int = 32
  width: int = 32


def config_for(shape: str | common.Shape) -> ShapesWorldConfig:
  """The builder config of a clip shape, e.g. "33x64x96" or (33, 64, 96)."""
  frames, height, width = common.parse_shape(shape)
  return ShapesWorldConfig(
      name=common.shape_name((frames, height, width)), frames=frames, height=height, width=width,
      description=f"{frames} frames of {height}x{width} pixels")


class ShapesWorld(tfds.core.GeneratorBasedBuilder,
                  skip_registration=__name__ == "__main__"):  # `python -m` imports it twice
  """Clips of the procedural world with captions and ground truth."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First version."}
  BUILDER_CONFIGS = [config_for(s) for s in ("9x32x32", "17x32x32", "17x64x64", "17x48x80",
                                             "1x64x64")]

  def __init__(self, *, num_examples: Mapping[str, int] | None = None, seed: int = 0,
               world_config: world.WorldConfig = world.WorldConfig(), **kwargs: Any):
    """Creates the builder.

    Args:
      num_examples: examples per split; splits left out get `DEFAULT_NUM_EXAMPLES`, a split
        given 0 is not written.
      seed: the world's seed (the same index and seed give the same clip).
      world_config: what scenes the world samples.
      **kwargs: for `tfds.core.GeneratorBasedBuilder` (data_dir, config, ...).
    """
    unknown = sorted(set(num_examples or {}) - set(world.SPLITS))
    if unknown:
      raise ValueError(f"num_examples has unknown split(s) {unknown}; the world's splits are "
                       f"{world.SPLITS}")
    self._num_examples = {**DEFAULT_NUM_EXAMPLES, **(num_examples or {})}
    self._seed = seed
    self._world_config = world_config
    super().__init__(**kwargs)

  @property
  def num_examples(self) -> dict[str, int]:
    """Examples per split that this builder writes (splits with 0 left out)."""
    return {split: count for split, count in self._num_examples.items() if count > 0}

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description=("Procedural clips of 1-3 coloured shapes bouncing off the frame's edges, "
                     "with brief and descriptive captions and per-frame ground truth."),
        features=tfds.features.FeaturesDict({
            "video": common.video_feature((config.frames, config.height, config.width)),
            "caption": tfds.features.Text(),
            "description": tfds.features.Text(),
            "background": tfds.features.Text(),
            "objects": tfds.features.Text(),  # JSON: see world.render
            "fps": tfds.features.Scalar(dtype=np.int32),
            "index": tfds.features.Scalar(dtype=np.int64),
        }),
        # Example i of a split is world index i: readers shuffle themselves (Grain).
        disable_shuffling=True,
        metadata=tfds.core.MetadataDict(
            seed=self._seed, world_config=dataclasses.asdict(self._world_config)),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # nothing to download: the world is generated
    return {split: self._generate_examples(split, count)
            for split, count in self.num_examples.items()}

  def _generate_examples(self, split: str, count: int) -> Iterator[tuple[int, dict]]:
    config = self.builder_config
    for index in range(count):
      sample = world.generate(index, seed=self._seed, frames=config.frames, height=config.height,
                              width=config.width, split=split, config=self._world_config)
      yield index, example_from_sample(sample, index)


def example_from_sample(sample: Mapping[str, Any], index: int) -> dict[str, Any]:
  """A `world.generate` sample as the builder stores it."""
  return {
      "video": sample["video"],
      "caption": sample["caption"],
      "description": sample["description"],
      "background": sample["background"],
      "objects": common.to_json(sample["objects"]),
      "fps": np.int32(sample["fps"]),
      "index": np.int64(index),
  }


def build(data_dir: str | pathlib.Path, shape: str | common.Shape = "9x32x32", *,
          num_examples: Mapping[str, int] | None = None, seed: int = 0,
          world_config: world.WorldConfig = world.WorldConfig()) -> pathlib.Path:
  """Builds `shapes_world/<shape>` under `data_dir` (or reuses it); returns its directory.

  Raises:
    ValueError: a data set already there was built with other counts, seed or world config
      (delete it or pick another `data_dir`).
  """
  config = config_for(shape)
  if config.name in {c.name for c in ShapesWorld.BUILDER_CONFIGS}:
    config = config.name  # TFDS refuses a config object named like a listed one
  builder = ShapesWorld(data_dir=str(data_dir), config=config,
                        num_examples=num_examples, seed=seed, world_config=world_config)
  path = common.prepare(builder)
  built = common.load(path)
  wanted = builder.num_examples
  found = {s: len(source) for s, source in built.items()}
  metadata = json.loads((path / "metadata.json").read_text())
  differences = []
  if found != wanted:
    differences.append(f"examples {found} (asked for {wanted})")
  if metadata.get("seed") != seed:
    differences.append(f"seed {metadata.get('seed')} (asked for {seed})")
  if metadata.get("world_config") != json.loads(common.to_json(dataclasses.asdict(world_config))):
    differences.append(f"world config {metadata.get('world_config')} (asked for {world_config})")
  if differences:
    raise ValueError(f"{path} already holds shapes_world built with other settings: "
                     f"{'; '.join(differences)}. Delete {path} or choose another data_dir")
  logging.info("shapes_world/%s at %s: %s", common.shape_name(common.parse_shape(shape)), path,
               found)
  return path


def main(argv: list[str]) -> None:
  del argv
  path = build(_OUT.value, _SHAPE.value, seed=_SEED.value,
               num_examples={"train": _TRAIN.value, "test": _TEST.value,
                             "held_out": _HELD_OUT.value})
  print(path)


if __name__ == "__main__":
  from absl import app
  from absl import flags
  _OUT = flags.DEFINE_string("out", None, "TFDS data_dir to write into.", required=True)
  _SHAPE = flags.DEFINE_string("shape", "9x32x32", "Clip shape FRAMESxHEIGHTxWIDTH.")
  _SEED = flags.DEFINE_integer("seed", 0, "The world's seed.")
  _TRAIN = flags.DEFINE_integer("train", DEFAULT_NUM_EXAMPLES["train"], "Train examples.")
  _TEST = flags.DEFINE_integer("test", DEFAULT_NUM_EXAMPLES["test"], "Test examples.")
  _HELD_OUT = flags.DEFINE_integer("held_out", DEFAULT_NUM_EXAMPLES["held_out"],
                                   "Held-out examples.")
  app.run(main)
