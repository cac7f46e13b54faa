"""The experiment schema: which sections a config may hold, and the start-up check of all of them.

An experiment file (`experiments/*.py`) returns a ConfigDict whose top level holds a few scalars
(`name`, `seed`, `stages`) and named sections. Each section is parsed into the dataclass that the
component using it declares (see `videogen.config`); `train` maps each stage name to its own
`TrainConfig`. `validate` is called once by `videogen.main` before anything is built.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from videogen import config as config_lib

# section name -> "module:Class" of the dataclass that declares (and defaults) it.
SECTIONS: dict[str, str] = {
    "data": "data_pipelines.loader:DataConfig",
    "tokenizer": "data_pipelines.tokenizer:TokenizerConfig",
    "mesh": "videogen.parallel.mesh:MeshConfig",
    "standin": "videogen.models.standin:StandinConfig",
    "autoencoder": "videogen.models.autoencoder:AutoencoderConfig",
    "autoencoder_loss": "videogen.train.autoencoder_stage:AutoencoderLossConfig",
    "text_encoder": "videogen.models.text_encoder:TextEncoderConfig",
    "dit": "videogen.models.dit:DiTConfig",
    "dit_stage": "videogen.train.dit_stage:DiTStageConfig",
    "diffusion": "videogen.diffusion.flow:FlowConfig",
    "sample": "videogen.diffusion.samplers:SamplerConfig",
    "eval_generation": "videogen.evaluate.generation:GenerationEvalConfig",
}
# Sections that map a stage name to one config each: `config.train.autoencoder.num_steps`.
STAGE_SECTIONS: dict[str, str] = {
    "train": "videogen.train.trainer:TrainConfig",
}
SCALARS: dict[str, type] = {"name": str, "seed": int, "stages": tuple}


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A validated experiment: its scalars and each section as its typed dataclass."""
  name: str
  seed: int
  stages: tuple[str, ...]
  sections: dict[str, Any]
  config: ml_collections.ConfigDict  # the raw config, as written into checkpoints

  def __getattr__(self, name: str) -> Any:
    sections = self.__dict__.get("sections", {})
    if name in sections:
      return sections[name]
    raise AttributeError(
        f"experiment {self.__dict__.get('name')!r} has no section {name!r}; "
        f"it has: {', '.join(sorted(sections))}")


def validate(config: ml_collections.ConfigDict) -> Experiment:
  """Checks every key and type of `config`; returns the typed experiment.

  Raises:
    videogen.config.ConfigError: what is wrong and what to do about it.
  """
  known = set(SECTIONS) | set(STAGE_SECTIONS) | set(SCALARS)
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
  sections: dict[str, Any] = {}
  for key, spec in SECTIONS.items():
    if key in config:
      sections[key] = config_lib.parse(config_lib.load_class(spec), config[key], f"config.{key}")
  for key, spec in STAGE_SECTIONS.items():
    if key not in config:
      continue
    cls = config_lib.load_class(spec)
    per_stage = config_lib.as_mapping(config[key], f"config.{key}")
    sections[key] = {stage: config_lib.parse(cls, value, f"config.{key}.{stage}")
                     for stage, value in per_stage.items()}
  for stage in stages:
    if stage not in sections.get("train", {}):
      raise config_lib.ConfigError(
          f"stage {stage!r} is in config.stages but config.train.{stage} is missing: "
          f"add its TrainConfig to the experiment file")
  return Experiment(name=name, seed=seed, stages=stages, sections=sections, config=config)
