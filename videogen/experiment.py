"""The experiment: every section a config may hold, typed and defaulted, checked once at start-up.

An experiment file (`experiments/*.py`) returns a ConfigDict whose top level holds a few scalars
(`name`, `seed`, `stages`) and named sections. `validate` parses each section into the dataclass
that the component using it declares (see `videogen.config`) and returns an `Experiment`, whose
fields are those dataclasses: a section the file leaves out holds its defaults, so callers read
`experiment.mesh.rules` and never re-supply a default. `train` maps each stage name to its own
`TrainConfig`. `videogen.main` calls `validate` once, before anything is built.

A stage defined outside the package (a research plug-in, the test suite's stand-in model) declares
its own section with `register_section`; it is then read with `experiment.section(name)`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from data_pipelines import loader as loader_lib
from data_pipelines import tokenizer as tokenizer_lib
from videogen import config as config_lib
from videogen.diffusion import flow as flow_lib
from videogen.diffusion import samplers as samplers_lib
from videogen.evaluate import suite as suite_lib
from videogen.models import autoencoder as autoencoder_lib
from videogen.models import caption_clip as caption_clip_lib
from videogen.models import dit as dit_lib
from videogen.models import text_encoder as text_encoder_lib
from videogen.parallel import mesh as mesh_lib
from videogen.train import config as train_config_lib

SCALARS: dict[str, type] = {"name": str, "seed": int, "stages": tuple}
# Sections declared outside the package: name -> dataclass (`register_section`).
_REGISTERED: dict[str, type] = {}


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A validated experiment: its scalars and each section as its typed dataclass.

  Attributes:
    name, seed, stages: the experiment's scalars; `stages` are trained in order.
    config: the raw ConfigDict, as written into checkpoints.
    data ... eval_generation: the sections, each its defaults where the file leaves it out.
    train: stage name -> how that stage trains.
    registered: sections declared with `register_section` that the file holds.
  """
  name: str
  seed: int
  stages: tuple[str, ...]
  config: ml_collections.ConfigDict
  data: loader_lib.DataConfig = loader_lib.DataConfig()
  tokenizer: tokenizer_lib.TokenizerConfig = tokenizer_lib.TokenizerConfig()
  mesh: mesh_lib.MeshConfig = mesh_lib.MeshConfig()
  autoencoder: autoencoder_lib.AutoencoderConfig = autoencoder_lib.AutoencoderConfig()
  autoencoder_loss: train_config_lib.AutoencoderLossConfig = (
      train_config_lib.AutoencoderLossConfig())
  text_encoder: text_encoder_lib.TextEncoderConfig = text_encoder_lib.TextEncoderConfig()
  text_stage: caption_clip_lib.CaptionClipConfig = caption_clip_lib.CaptionClipConfig()
  dit: dit_lib.DiTConfig = dit_lib.DiTConfig()
  dit_stage: train_config_lib.DiTStageConfig = train_config_lib.DiTStageConfig()
  distill_stage: train_config_lib.DistillStageConfig = train_config_lib.DistillStageConfig()
  diffusion: flow_lib.FlowConfig = flow_lib.FlowConfig()
  sample: samplers_lib.SamplerConfig = samplers_lib.SamplerConfig()
  eval_generation: suite_lib.GenerationEvalConfig = suite_lib.GenerationEvalConfig()
  train: dict[str, train_config_lib.TrainConfig] = dataclasses.field(default_factory=dict)
  registered: dict[str, Any] = dataclasses.field(default_factory=dict)

  def has(self, section: str) -> bool:
    """Whether the experiment file sets `section` (rather than leaving it to its defaults)."""
    return section in self.config

  def section(self, name: str) -> Any:
    """A section declared with `register_section`: the file's values, else the defaults."""
    if name not in _REGISTERED:
      raise KeyError(f"no section {name!r} is registered; register its dataclass with "
                     f"videogen.experiment.register_section({name!r}, MyConfig)")
    return self.registered.get(name, _REGISTERED[name]())

  def sections(self) -> dict[str, Any]:
    """The sections the experiment file sets, by name (what a checkpoint records)."""
    return {name: (self.registered[name] if name in self.registered else getattr(self, name))
            for name in section_names() if self.has(name)}


def section_names() -> tuple[str, ...]:
  """Every section an experiment may hold: the built-in ones, `train`, the registered ones."""
  builtin = tuple(f.name for f in dataclasses.fields(Experiment)
                  if f.name not in SCALARS and f.name not in ("config", "registered"))
  return builtin + tuple(_REGISTERED)


def register_section(name: str, cls: type) -> None:
  """Declares a section for a stage defined outside the package (idempotent per class).

  Raises:
    ValueError: `name` is a built-in section or a scalar, or is registered to another class.
  """
  if name in SCALARS or name in {f.name for f in dataclasses.fields(Experiment)}:
    raise ValueError(f"section {name!r} is built in; pick another name for {cls.__name__}")
  if _REGISTERED.get(name, cls) is not cls:
    raise ValueError(f"section {name!r} is already registered to {_REGISTERED[name].__name__}")
  _REGISTERED[name] = cls


def validate(config: ml_collections.ConfigDict) -> Experiment:
  """Checks every key and type of `config`; returns the typed experiment.

  Raises:
    videogen.config.ConfigError: what is wrong and what to do about it.
  """
  known = set(section_names()) | set(SCALARS)
  unknown = sorted(set(config.keys()) - known)
  if unknown:
    raise config_lib.ConfigError(
        f"unknown top-level key(s) {', '.join('config.' + k for k in unknown)}; "
        f"an experiment may hold: {', '.join(sorted(known))}")
  for key in SCALARS:
    if key not in config:
      raise config_lib.ConfigError(f"config.{key} is required: set it in the experiment file")
  name = config_lib.check_value(str, config.name, "config.name")
  seed = config_lib.check_value(int, config.seed, "config.seed")
  stages = config_lib.check_value(tuple[str, ...], config.stages, "config.stages")
  if not stages:
    raise config_lib.ConfigError("config.stages is empty: name at least one stage to train")
  defaults = {f.name: f.default for f in dataclasses.fields(Experiment)}
  sections: dict[str, Any] = {}
  registered: dict[str, Any] = {}
  for key in config.keys():
    if key in SCALARS:
      continue
    if key == "train":
      per_stage = config_lib.as_mapping(config.train, "config.train")
      sections["train"] = {
          stage: config_lib.parse(train_config_lib.TrainConfig, value, f"config.train.{stage}")
          for stage, value in per_stage.items()}
    elif key in _REGISTERED:
      registered[key] = config_lib.parse(_REGISTERED[key], config[key], f"config.{key}")
    else:
      # A built-in section's class is that of its default.
      sections[key] = config_lib.parse(type(defaults[key]), config[key], f"config.{key}")
  for stage in stages:
    if stage not in sections.get("train", {}):
      raise config_lib.ConfigError(
          f"stage {stage!r} is in config.stages but config.train.{stage} is missing: "
          f"add its TrainConfig to the experiment file")
  return Experiment(name=name, seed=seed, stages=stages, config=config, registered=registered,
                    **sections)
