"""Stage name -> Stage class: the names `config.stages` may hold.

    stage = make_stage("standin", experiment)

Classes are imported lazily, so that a run of one stage does not import the others' models. Each
class is constructed from the validated `videogen.experiment.Experiment`: `cls(experiment)`.
"""

from __future__ import annotations

from videogen import config as config_lib
from videogen import experiment as experiment_lib
from videogen.train import stage as stage_lib

STAGES: dict[str, str] = {
    "standin": "videogen.train.standin_stage:StandinStage",
    "autoencoder": "videogen.train.autoencoder_stage:AutoencoderStage",
    "dit": "videogen.train.dit_stage:DiTStage",
}


def make_stage(name: str, experiment: experiment_lib.Experiment) -> stage_lib.Stage:
  """Builds the stage called `name` for `experiment`.

  Raises:
    ValueError: `name` is not a known stage.
  """
  if name not in STAGES:
    raise ValueError(f"unknown stage {name!r} in config.stages; the stages are: "
                     f"{', '.join(STAGES)}")
  stage = config_lib.load_class(STAGES[name])(experiment)
  if stage.name != name:
    raise ValueError(f"{STAGES[name]} has name {stage.name!r}, expected {name!r}")
  return stage
