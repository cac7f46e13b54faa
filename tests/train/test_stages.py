"""videogen/train/stages.py: the built-in stages by name, and stages declared from outside."""

from __future__ import annotations

import pytest

from videogen import experiment as experiment_lib
from videogen.train import autoencoder_stage
from videogen.train import distill_stage
from videogen.train import dit_stage
from videogen.train import stages as stages_lib
from videogen.train import text_stage

from tests.standin import experiment as standin_experiment
from tests.standin import stage as standin_stage


def test_the_built_in_stages_are_the_package_classes():
  assert stages_lib.BUILTIN == {"autoencoder": autoencoder_stage.AutoencoderStage,
                                "dit": dit_stage.DiTStage,
                                "distill": distill_stage.DistillStage,
                                "text": text_stage.TextStage}


def test_a_registered_stage_is_built_from_the_experiment():
  experiment = experiment_lib.validate(standin_experiment.get_config("tiny"))
  assert "standin" in stages_lib.names()
  stage = stages_lib.make_stage("standin", experiment)
  assert isinstance(stage, standin_stage.StandinStage)
  assert stage.config == experiment.section("standin")
  stages_lib.register("standin", standin_stage.StandinStage)  # idempotent per class


class OtherStage(standin_stage.StandinStage):
  name = "other"


def test_register_refuses_what_would_shadow_or_mislabel_a_stage():
  with pytest.raises(ValueError, match="'dit' is built in"):
    stages_lib.register("dit", standin_stage.StandinStage)
  with pytest.raises(ValueError, match="'standin' is already registered to StandinStage"):
    stages_lib.register("standin", type("StandinStage2", (standin_stage.StandinStage,), {}))
  with pytest.raises(ValueError, match=r"OtherStage.name is 'other'; register it under that"):
    stages_lib.register("renamed", OtherStage)
  assert "renamed" not in stages_lib.names()
