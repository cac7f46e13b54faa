"""What the TFDS builders share: shape names, the video feature, building and reading back.

Both builders write ArrayRecord files with `tensorflow-datasets` and need no TensorFlow: frames are
stored as a `tfds.features.Tensor` of uint8 (zlib-compressed), not as the `Video` feature (which
needs TensorFlow to encode). Read them back with

    sources = tfds.data_source("shapes_world/9x32x32", data_dir=DIR)      # a registered config
    sources = common.load(common.dataset_dir(DIR, "video_folder"))       # any data set on disk
    example = sources["train"][0]   # {"video": uint8 [T, H, W, 3], "caption": bytes, ...}

Text features come back as UTF-8 bytes (`example["caption"].decode()`).

Shapes are named frames x height x width everywhere ("17x48x80": 17 frames of 48 rows and 80
columns), the order of the array axes [T, H, W, 3].
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Any, Iterable, Mapping

import numpy as np
import tensorflow_datasets as tfds

Shape = tuple[int, int, int]  # (frames, height, width)
FILE_FORMAT = "array_record"


def parse_shape(spec: str | Iterable[int]) -> Shape:
  """"17x32x48" or (17, 32, 48) -> (frames, height, width), each >= 1.

  Raises:
    ValueError: the spec is not three positive integers.
  """
  if isinstance(spec, str):
    match = re.fullmatch(r"\s*(\d+)x(\d+)x(\d+)\s*", spec)
    if match is None:
      raise ValueError(f"shape {spec!r} must be FRAMESxHEIGHTxWIDTH, e.g. '17x32x48'")
    values = tuple(int(v) for v in match.groups())
  else:
    values = tuple(spec)
    if len(values) != 3 or not all(isinstance(v, (int, np.integer)) for v in values):
      raise ValueError(f"shape {spec!r} must be three integers (frames, height, width)")
    values = tuple(int(v) for v in values)
  if min(values) < 1:
    raise ValueError(f"shape {spec!r}: frames, height and width must all be >= 1")
  return values  # type: ignore[return-value]


def shape_name(shape: Shape) -> str:
  """(17, 32, 48) -> "17x32x48"."""
  return "x".join(str(v) for v in parse_shape(shape))


def video_feature(shape: Shape | None = None) -> tfds.features.Tensor:
  """uint8 frames [T, H, W, 3], zlib-compressed; dimensions unknown when `shape` is None."""
  dims = (None, None, None, 3) if shape is None else (*parse_shape(shape), 3)
  return tfds.features.Tensor(shape=dims, dtype=np.uint8, encoding=tfds.features.Encoding.ZLIB)


def to_json(value: Any) -> str:
  """JSON text of nested dicts/lists of numbers and strings (NumPy values converted)."""
  def convert(item):
    if isinstance(item, np.ndarray):
      return item.tolist()
    if isinstance(item, np.generic):
      return item.item()
    raise TypeError(f"cannot store {type(item).__name__} as JSON")
  return json.dumps(value, default=convert, sort_keys=True)


def prepare(builder: tfds.core.DatasetBuilder) -> pathlib.Path:
  """Builds (or reuses) the data set as ArrayRecord files; returns its directory."""
  builder.download_and_prepare(
      file_format=FILE_FORMAT,
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return pathlib.Path(builder.data_dir)


def dataset_dir(data_dir: str | pathlib.Path, name: str, config: str | None = None,
                version: str = "1.0.0") -> pathlib.Path:
  """Where TFDS puts a data set: DATA_DIR/NAME[/CONFIG]/VERSION."""
  path = pathlib.Path(data_dir) / name
  if config:
    path = path / config
  return path / version


def load(path: str | pathlib.Path) -> Mapping[str, Any]:
  """Random-access sources {split: source} of a built data set directory (no builder class
  needed): `source[i]` is example i, `len(source)` the number of examples.

  Raises:
    FileNotFoundError: no data set at `path`.
  """
  path = pathlib.Path(path)
  if not (path / "dataset_info.json").exists():
    raise FileNotFoundError(
        f"no TFDS data set at {path} (no dataset_info.json): build it first, or pass the "
        f"DATA_DIR/NAME[/CONFIG]/VERSION folder")
  return tfds.builder_from_directory(str(path)).as_data_source()
