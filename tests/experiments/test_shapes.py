"""experiments/shapes.py: the main experiment's variants validate and their parts fit together."""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import sys

import numpy as np
import pytest
from absl import flags
from ml_collections import config_flags

from videogen import config as config_lib
from videogen import experiment as experiment_lib
from videogen.train import stages as stages_lib
from videogen.train import train_state

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXPERIMENT_FILE = ROOT / "experiments" / "shapes.py"


@pytest.fixture(scope="module")
def shapes():
  spec = importlib.util.spec_from_file_location("shapes_experiment", EXPERIMENT_FILE)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("variant", ["tiny", "long", "small", "gpu"])
def test_variant_validates_and_its_parts_fit(shapes, variant):
  experiment = experiment_lib.validate(shapes.get_config(variant))
  assert experiment.stages == ("autoencoder", "dit")
  # The text and distill stages are configured but run only when asked (--config.stages=...).
  assert set(experiment.train) == {"autoencoder", "text", "dit", "distill"}
  assert experiment.has("dit_stage") and experiment.has("distill_stage")
  # Every stage accepts the config (each checks its own agreement with the others).
  for name in experiment.train:
    stages_lib.make_stage(name, experiment)
  autoencoder = experiment.autoencoder
  dit = experiment.dit
  patch = dit.patch_size
  buckets = experiment.data.parsed_buckets()
  assert any(bucket.frames == 1 for bucket in buckets), "joint image and video training"
  for bucket in buckets:
    assert (bucket.frames - 1) % autoencoder.temporal_factor == 0, bucket
    for size in (bucket.height, bucket.width):
      assert size % (autoencoder.spatial_factor * patch[1]) == 0, bucket
  main = buckets[0]  # the main video bucket, which the transformer is sized for
  assert dit.input_size == (1 + (main.frames - 1) // autoencoder.temporal_factor,
                            main.height // autoencoder.spatial_factor,
                            main.width // autoencoder.spatial_factor)
  assert experiment.text_encoder.vocab_size == experiment.tokenizer.vocab_size
  assert experiment.text_encoder.max_length == experiment.tokenizer.max_length


def test_the_default_variant_is_tiny(shapes):
  assert shapes.get_config().to_dict() == shapes.get_config("tiny").to_dict()


def test_the_long_variant_is_tiny_with_a_longer_transformer_run(shapes):
  """Only the transformer's training and the sampler's frame schedule differ: the long run's
  autoencoder, tokenizer and latent cache are the tiny run's."""
  tiny, long = shapes.get_config("tiny").to_dict(), shapes.get_config("long").to_dict()
  assert {key for key in tiny if tiny[key] != long[key]} == {"name", "train", "sample"}
  assert {key for key in tiny["train"] if tiny["train"][key] != long["train"][key]} == {"dit"}
  assert {key for key in tiny["sample"] if tiny["sample"][key] != long["sample"][key]} == {
      "frame_schedule"}
  dit = experiment_lib.validate(shapes.get_config("long")).train["dit"]
  assert (dit.optimizer, dit.num_steps, dit.phase_steps) == ("muon", 33_000, 9000)


def test_the_long_variant_begins_its_phase_within_the_decay_of_30000_steps(shapes):
  """Its steps before the phase are those of the 30,000-step decay that a 3,000-step phase
  followed (docs/learning_curve.md, "A longer given-frame phase"); then the phase's rate."""
  dit = experiment_lib.validate(shapes.get_config("long")).train["dit"]
  schedule = train_state.make_schedule(dit)
  whole_decay = train_state.make_schedule(
      dataclasses.replace(dit, num_steps=30_000, decay_steps=None, phase_steps=0))
  before = [0, 25, 50, 1000, 12_000, 20_000, 23_999]
  np.testing.assert_allclose([schedule(step) for step in before],
                             [whole_decay(step) for step in before], rtol=1e-6)
  assert float(whole_decay(23_999)) > 0.09 * dit.learning_rate  # cut mid-decay, not at its end
  np.testing.assert_allclose([schedule(step) for step in (24_000, 30_000, 32_999)],
                             dit.phase_learning_rate, rtol=1e-6)


def test_an_unknown_variant_is_refused(shapes):
  with pytest.raises(ValueError, match="choose one of tiny, long, small"):
    shapes.get_config("huge")


def test_a_mistyped_override_stops_at_start_up(shapes):
  config = shapes.get_config("tiny")
  config.dit.widht = 64
  with pytest.raises(config_lib.ConfigError, match=r"unknown key\(s\) config.dit.widht; "
                                                   r"config.dit accepts: .*width"):
    experiment_lib.validate(config)


def _parse_command_line(monkeypatch, *overrides: str):
  """The experiment that `--config=experiments/shapes.py:tiny` plus `overrides` give."""
  argv = ["videogen", f"--config={EXPERIMENT_FILE}:tiny", *overrides]
  monkeypatch.setattr(sys, "argv", argv)  # config_flags reads the overrides from sys.argv
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "experiment", flag_values=flag_values,
                                  lock_config=True)
  flag_values(argv)
  return experiment_lib.validate(flag_values.config)


def test_command_line_overrides(monkeypatch):
  """What `--config.dit.widht=64` does on the command line (the config is locked there)."""
  with pytest.raises(AttributeError, match='Did you mean "width" instead of "widht"'):
    _parse_command_line(monkeypatch, "--config.dit.widht=64")
  experiment = _parse_command_line(monkeypatch, "--config.dit.width=64",
                                   "--config.dit_stage.latents=cache",
                                   "--config.eval_generation.scenes_per_group=8")
  assert experiment.dit.width == 64
  assert experiment.dit_stage.latents == "cache"
  assert experiment.eval_generation.scenes_per_group == 8
