"""Stage name -> Stage class: the names `config.stages` may hold.

    stage = make_stage("autoencoder", experiment)

The built-in stages are imported here by name, so that their dependencies show. A stage defined
outside the package (a research plug-in, the test suite's stand-in) is declared with
`register(name, cls)`, typically by its experiment file, beside `experiment.register_section`.
Each class is constructed from the validated `videogen.experiment.Experiment`: `cls(experiment)`.
"""

from __future__ import annotations

from videogen import experiment as experiment_lib
from videogen.train import autoencoder_stage
from videogen.train import distill_stage
from videogen.train import dit_stage
from videogen.train import stage as stage_lib
from videogen.train import text_stage

BUILTIN: dict[str, type[stage_lib.Stage]] = {
    "autoencoder": autoencoder_stage.AutoencoderStage,
    "dit": dit_stage.DiTStage,
    "distill": distill_stage.DistillStage,
    "text": text_stage.TextStage,
}
# Stages declared outside the package: name -> class (`register`).
_REGISTERED: dict[str, type[stage_lib.Stage]] = {}


def register(name: str, cls: type[stage_lib.Stage]) -> None:
  """Declares a stage defined outside the package (idempotent per class).

  Raises:
    ValueError: `name` is a built-in stage, is registered to another class, or is not `cls.name`.
  """
  if name in BUILTIN:
    raise ValueError(f"stage {name!r} is built in; pick another name for {cls.__name__}")
  if _REGISTERED.get(name, cls) is not cls:
    raise ValueError(f"stage {name!r} is already registered to {_REGISTERED[name].__name__}")
  if getattr(cls, "name", None) != name:
    raise ValueError(f"{cls.__name__}.name is {getattr(cls, 'name', None)!r}; register it under "
                     f"that name, or set its `name = {name!r}`")
  _REGISTERED[name] = cls


def names() -> tuple[str, ...]:
  """Every stage `config.stages` may name: the built-in ones, then the registered ones."""
  return tuple(BUILTIN) + tuple(_REGISTERED)


def make_stage(name: str, experiment: experiment_lib.Experiment) -> stage_lib.Stage:
  """Builds the stage called `name` for `experiment`.

  Raises:
    ValueError: `name` is not a known stage.
  """
  cls = BUILTIN.get(name) or _REGISTERED.get(name)
  if cls is None:
    raise ValueError(f"unknown stage {name!r} in config.stages; the stages are: "
                     f"{', '.join(names())} (a stage defined outside the package is declared "
                     f"with videogen.train.stages.register)")
  stage = cls(experiment)
  if stage.name != name:
    raise ValueError(f"{cls.__name__} has name {stage.name!r}, expected {name!r}")
  return stage
