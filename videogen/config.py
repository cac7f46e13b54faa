"""Typed experiment configs: the one place where a config is checked.

Every component declares its settings as a frozen dataclass beside the code that uses it (defaults
live there, not in the experiment files). An experiment file builds an `ml_collections.ConfigDict`
from those defaults with `to_config_dict` and overrides a few fields; at start-up `parse` turns each
section back into its dataclass, so a mistyped key or a value of the wrong type is a clear error
before any compilation, never a crash at step 900.

    @dataclasses.dataclass(frozen=True)
    class MeshConfig:
      data: int = -1
      fsdp: int = 1

    config.mesh = to_config_dict(MeshConfig())      # in experiments/foo.py
    mesh_config = parse(MeshConfig, config.mesh, "config.mesh")   # at start-up
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, Literal, TypeVar, Union

import ml_collections
from ml_collections import config_dict

T = TypeVar("T")


class ConfigError(ValueError):
  """A config has an unknown key, a missing key or a value of the wrong type."""


def to_config_dict(value: Any) -> Any:
  """Converts a (nested) config dataclass into an unlocked `ConfigDict`.

  Fields whose default is None become typed placeholders, so that they can still be set from the
  command line (`--config.data.tfds_name=my_videos`).
  """
  if not dataclasses.is_dataclass(value):
    return value
  hints = typing.get_type_hints(type(value))
  result = ml_collections.ConfigDict()
  for field in dataclasses.fields(value):
    item = getattr(value, field.name)
    if item is None:
      result[field.name] = config_dict.placeholder(_placeholder_type(hints[field.name]))
    else:
      result[field.name] = to_config_dict(item)
  return result


def jsonable(value: Any) -> Any:
  """A (nested) config dataclass, dict or tuple tree as plain JSON values, exactly as it reads
  back from a JSON file: tuples become lists, keys strings, dict keys sorted."""
  return json.loads(json.dumps(value, sort_keys=True, default=_dataclass_as_dict))


def flatten(tree: Any, prefix: str = "config") -> dict[str, Any]:
  """A JSON config's leaves by dotted path: {"dit": {"width": 96}} -> {"config.dit.width": 96}."""
  if isinstance(tree, dict):
    flat = {}
    for key, value in tree.items():
      flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat
  return {prefix: tree}


def differences(old: Any, new: Any, prefix: str = "config", *,
                shared_only: bool = False) -> list[str]:
  """"path: old -> new" for each leaf of two JSON configs that differs, sorted by path; a leaf
  one side lacks reads "<absent>" there, or is left out with `shared_only`."""
  old, new = flatten(old, prefix), flatten(new, prefix)
  paths = set(old) & set(new) if shared_only else set(old) | set(new)
  return [f"{path}: {old.get(path, '<absent>')!r} -> {new.get(path, '<absent>')!r}"
          for path in sorted(paths) if old.get(path, "<absent>") != new.get(path, "<absent>")]


def listed(differences: list[str], limit: int) -> str:
  """The first `limit` of `differences` joined by "; ", ending "; ..." when there are more."""
  return "; ".join(differences[:limit]) + ("; ..." if len(differences) > limit else "")


def _dataclass_as_dict(value: Any) -> dict[str, Any]:
  """`json.dumps`'s fallback: dataclasses anywhere in the tree (`experiment.train` is a dict of
  them) become dicts."""
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    return dataclasses.asdict(value)
  raise TypeError(f"{type(value).__name__} is not a config value (JSON or a config dataclass)")


def parse(cls: type[T], section: Any, path: str) -> T:
  """Checks a ConfigDict (or mapping) against the dataclass `cls` and builds an instance.

  Args:
    cls: a dataclass type whose fields are the allowed keys.
    section: the ConfigDict section, e.g. `config.mesh`.
    path: where the section lives, used in error messages (e.g. "config.mesh").

  Raises:
    ConfigError: naming the key, what was wrong and what is allowed.
  """
  if dataclasses.is_dataclass(section) and isinstance(section, cls):
    return section
  values = as_mapping(section, path)
  hints = typing.get_type_hints(cls)
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - set(fields))
  if unknown:
    raise ConfigError(
        f"unknown key(s) {', '.join(f'{path}.{k}' for k in unknown)}; "
        f"{path} accepts: {', '.join(sorted(fields))}")
  kwargs = {}
  for name, field in fields.items():
    if name not in values:
      has_default = (field.default is not dataclasses.MISSING
                     or field.default_factory is not dataclasses.MISSING)
      if not has_default:
        raise ConfigError(f"{path}.{name} is required: set it in the experiment file")
      continue
    kwargs[name] = check_value(hints[name], values[name], f"{path}.{name}")
  try:
    return cls(**kwargs)
  except (TypeError, ValueError) as error:
    raise ConfigError(f"{path}: {error}") from error


def as_mapping(section: Any, path: str) -> dict[str, Any]:
  if isinstance(section, ml_collections.ConfigDict):
    return {k: section[k] for k in section.keys()}
  if isinstance(section, dict):
    return dict(section)
  raise ConfigError(f"{path} must be a section (ConfigDict), got {type(section).__name__}")


def _placeholder_type(hint: Any) -> Any:
  args = [a for a in typing.get_args(hint) if a is not type(None)]
  inner = args[0] if len(args) == 1 else object
  origin = typing.get_origin(inner)
  if origin is Literal:
    return type(typing.get_args(inner)[0])
  return origin or inner


def _describe(hint: Any) -> str:
  return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def check_value(hint: Any, value: Any, path: str) -> Any:
  """Returns `value` converted to the type `hint`, or raises ConfigError naming `path`."""
  origin = typing.get_origin(hint)
  args = typing.get_args(hint)
  if isinstance(value, config_dict.FieldReference):
    value = value.get()
  if origin in (Union, types.UnionType):
    if value is None and type(None) in args:
      return None
    errors = []
    for option in args:
      if option is type(None):
        continue
      try:
        return check_value(option, value, path)
      except ConfigError as error:
        errors.append(str(error))
    raise ConfigError(f"{path} = {value!r} is not a {_describe(hint)}")
  if origin is Literal:
    if value in args:
      return value
    raise ConfigError(f"{path} = {value!r}; choose one of: {', '.join(map(repr, args))}")
  if dataclasses.is_dataclass(hint):
    return parse(hint, value, path)
  if origin in (tuple, list):
    if isinstance(value, str) or not isinstance(value, (tuple, list)):
      raise ConfigError(f"{path} = {value!r} must be a tuple, e.g. (1, 2)")
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(check_value(args[0], v, f"{path}[{i}]") for i, v in enumerate(value))
    if args and len(args) != len(value):
      raise ConfigError(f"{path} = {value!r} must have {len(args)} entries")
    if not args:
      return tuple(value)
    return tuple(check_value(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
  if origin is dict:
    values = as_mapping(value, path)
    return {k: check_value(args[1], v, f"{path}.{k}") for k, v in values.items()}
  if hint is Any:
    return value
  if hint is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return float(value)
  elif hint is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
  elif isinstance(hint, type) and isinstance(value, hint):
    return value
  raise ConfigError(f"{path} = {value!r} ({type(value).__name__}) must be a {_describe(hint)}")
