"""videogen/experiment.py: the typed experiment, its defaults and its registered sections."""

import dataclasses

import ml_collections
import pytest

from videogen import config as config_lib
from videogen import experiment as experiment_lib
from videogen.parallel import mesh as mesh_lib


def _minimal(**sections):
  return ml_collections.ConfigDict({"name": "x", "seed": 3, "stages": ("dit",),
                                    "train": {"dit": {"num_steps": 7}}, **sections})


def test_a_left_out_section_holds_its_defaults_and_is_not_recorded():
  experiment = experiment_lib.validate(_minimal())
  assert experiment.mesh == mesh_lib.MeshConfig()
  assert not experiment.has("mesh")
  assert experiment.train["dit"].num_steps == 7
  assert set(experiment.sections()) == {"train"}


def test_a_given_section_is_parsed_into_its_dataclass():
  experiment = experiment_lib.validate(_minimal(mesh={"fsdp": 2}))
  assert experiment.has("mesh")
  assert experiment.mesh == dataclasses.replace(mesh_lib.MeshConfig(), fsdp=2)
  assert experiment.sections()["mesh"] is experiment.mesh


def test_a_wrong_key_inside_a_section_names_the_keys_that_exist():
  with pytest.raises(config_lib.ConfigError, match=r"config.mesh.fdsp.*accepts: .*fsdp"):
    experiment_lib.validate(_minimal(mesh={"fdsp": 2}))


@dataclasses.dataclass(frozen=True)
class _PluginConfig:
  width: int = 4


def test_a_registered_section_validates_and_defaults():
  experiment_lib.register_section("plugin_for_tests", _PluginConfig)
  experiment_lib.register_section("plugin_for_tests", _PluginConfig)  # idempotent
  given = experiment_lib.validate(_minimal(plugin_for_tests={"width": 9}))
  assert given.section("plugin_for_tests") == _PluginConfig(width=9)
  assert experiment_lib.validate(_minimal()).section("plugin_for_tests") == _PluginConfig()
  with pytest.raises(config_lib.ConfigError, match="config.plugin_for_tests.width"):
    experiment_lib.validate(_minimal(plugin_for_tests={"width": "wide"}))


def test_register_section_refuses_built_in_names_and_a_second_class():
  with pytest.raises(ValueError, match="built in"):
    experiment_lib.register_section("mesh", _PluginConfig)
  experiment_lib.register_section("plugin_taken", _PluginConfig)
  with pytest.raises(ValueError, match="already registered"):
    experiment_lib.register_section("plugin_taken", mesh_lib.MeshConfig)


def test_an_unregistered_section_read_says_how_to_register_it():
  with pytest.raises(KeyError, match="register_section"):
    experiment_lib.validate(_minimal()).section("never_registered")
