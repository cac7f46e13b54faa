"""videogen/config.py: typed parsing of config sections."""

from __future__ import annotations

import dataclasses
from typing import Literal, Optional

import ml_collections
import pytest

from videogen import config as config_lib
from videogen import experiment as experiment_lib


@dataclasses.dataclass(frozen=True)
class Inner:
  size: int = 1
  kind: Literal["a", "b"] = "a"


@dataclasses.dataclass(frozen=True)
class Outer:
  inner: Inner = Inner()
  rate: float = 0.1
  tags: tuple[str, ...] = ("x",)
  path: Optional[str] = None


def test_round_trip_keeps_values_and_types():
  section = config_lib.to_config_dict(Outer())
  section.rate = 2  # an int where a float is declared is accepted and converted.
  section.inner.kind = "b"
  section.path = "somewhere"
  parsed = config_lib.parse(Outer, section, "config.outer")
  assert parsed == Outer(inner=Inner(size=1, kind="b"), rate=2.0, tags=("x",), path="somewhere")
  assert isinstance(parsed.rate, float)


@pytest.mark.parametrize("key, value, message", [
    ("inner.kind", "c", "config.outer.inner.kind = 'c'; choose one of: 'a', 'b'"),
    ("inner.size", 1.5, "config.outer.inner.size = 1.5 (float) must be a int"),
    ("inner.size", True, "must be a int"),
    ("tags", "x", "must be a tuple"),
])
def test_wrong_value_names_the_key(key, value, message):
  section = config_lib.to_config_dict(Outer()).to_dict()
  target = section
  *parents, leaf = key.split(".")
  for parent in parents:
    target = target[parent]
  target[leaf] = value
  with pytest.raises(config_lib.ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                     .replace(".", r"\.")):
    config_lib.parse(Outer, section, "config.outer")


def test_unknown_key_lists_the_allowed_ones():
  section = config_lib.to_config_dict(Outer()).to_dict()
  section["rat"] = 0.3
  with pytest.raises(config_lib.ConfigError, match=r"unknown key\(s\) config.outer.rat; "
                     r"config.outer accepts: inner, path, rate, tags"):
    config_lib.parse(Outer, section, "config.outer")


def test_none_default_becomes_a_settable_placeholder():
  section = config_lib.to_config_dict(Outer())
  section.lock()
  section.path = "set/from/the/command/line"
  assert config_lib.parse(Outer, section, "c").path == "set/from/the/command/line"
  with pytest.raises(TypeError):
    section.path = 3


def test_experiment_rejects_unknown_top_level_keys():
  with pytest.raises(config_lib.ConfigError, match="unknown top-level key.*config.modle"):
    experiment_lib.validate(ml_collections.ConfigDict(
        {"name": "x", "seed": 0, "stages": ("a",), "modle": {}}))


def test_experiment_requires_a_train_config_per_stage():
  config = ml_collections.ConfigDict({"name": "x", "seed": 0, "stages": ("standin",)})
  with pytest.raises(config_lib.ConfigError, match="config.train.standin is missing"):
    experiment_lib.validate(config)


def test_differences_name_each_differing_leaf_by_its_path():
  old = {"dit": {"width": 96, "depth": 4}, "seed": 0, "gone": 1}
  new = {"dit": {"width": 64, "depth": 4}, "seed": 0, "added": {"x": 2}}
  assert config_lib.differences(old, new) == [
      "config.added.x: '<absent>' -> 2", "config.dit.width: 96 -> 64",
      "config.gone: 1 -> '<absent>'"]
  assert config_lib.differences(old, new, prefix="", shared_only=True) == ["dit.width: 96 -> 64"]
  assert config_lib.flatten({"a": {"b": [1, 2]}}, prefix="") == {"a.b": [1, 2]}


def test_listed_differences_end_with_an_ellipsis_only_when_some_are_left_out():
  assert config_lib.listed(["a: 1 -> 2", "b: 3 -> 4"], 2) == "a: 1 -> 2; b: 3 -> 4"
  three = ["a: 1 -> 2", "b: 3 -> 4", "c: 5 -> 6"]
  assert config_lib.listed(three, 2) == "a: 1 -> 2; b: 3 -> 4; ..."
