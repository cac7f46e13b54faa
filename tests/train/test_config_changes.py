"""videogen/train/config_changes.py: which config changes a run may be resumed under."""

from __future__ import annotations

import json

from experiments import shapes
from videogen import experiment as experiment_lib
from videogen.train import config_changes

from tests.standin import experiment as standin_experiment


def _snapshot(mesh_shape=(1, 1, 1), **train):
  """The JSON a checkpoint of the tiny stand-in saves, with `train` overrides."""
  config = standin_experiment.get_config("tiny")
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh_shape
  config.train.standin.update({"num_steps": 5, **train})
  return json.loads(json.dumps(config_changes.experiment_json(experiment_lib.validate(config))))


def test_the_snapshot_holds_every_section_with_its_defaults():
  snapshot = _snapshot()
  assert snapshot["stages"] == ["standin"] and snapshot["train"]["standin"]["num_steps"] == 5
  assert snapshot["standin"]["depth"] == 2  # the tiny variant's
  assert snapshot["train"]["standin"]["optimizer"] == "adamw"  # a default the file leaves out


def test_num_steps_may_grow_only_when_the_schedule_ignores_it():
  cosine = _snapshot()
  assert config_changes.config_differences(cosine, _snapshot(num_steps=9)) == [
      "config.train.standin.num_steps: 5 -> 9"]
  explicit = _snapshot(decay_steps=100)
  assert config_changes.config_differences(explicit, _snapshot(decay_steps=100, num_steps=9)) == []
  assert config_changes.config_differences(_snapshot(schedule="constant"),
                                           _snapshot(schedule="constant", num_steps=9)) == []
  assert config_changes.config_differences(
      cosine, _snapshot(mesh_shape=(2, 2, 2), log_every=7)) == []
  # A phase at the end moves with num_steps, whatever the schedule before it.
  phased = {"schedule": "constant", "phase_steps": 2, "phase_learning_rate": 0.1}
  assert config_changes.config_differences(_snapshot(**phased),
                                           _snapshot(**phased, num_steps=9)) == [
      "config.train.standin.num_steps: 5 -> 9"]


def test_what_is_computed_may_not_change_but_the_profile_window_may():
  cosine = _snapshot()
  assert config_changes.config_differences(cosine, _snapshot(learning_rate=0.5)) == [
      "config.train.standin.learning_rate: 0.003 -> 0.5"]
  assert config_changes.config_differences(cosine, _snapshot(profile_steps=(2, 3))) == []
  # A checkpoint saved before the field existed resumes under today's config.
  del cosine["train"]["standin"]["profile_steps"]
  assert config_changes.config_differences(cosine, _snapshot()) == []


def _shapes_snapshot(distill: bool, **distill_stage):
  """The JSON of experiments/shapes.py:tiny; without `distill`, as a file written before the
  distill stage existed saved it (no config.train.distill, no config.distill_stage)."""
  config = shapes.get_config("tiny")
  if distill:
    config.distill_stage.update(distill_stage)
  else:
    del config.train["distill"]
    del config["distill_stage"]
  return json.loads(json.dumps(config_changes.experiment_json(experiment_lib.validate(config))))


def test_settings_of_a_stage_added_since_do_not_block_the_stages_trained_before():
  before = _shapes_snapshot(distill=False)
  assert config_changes.config_differences(before, _shapes_snapshot(distill=True)) == []
  # The distill stage's own checkpoints (stages hold "distill") still see their changes.
  distilled = _shapes_snapshot(distill=True)
  distilled["stages"] = ["distill"]
  assert config_changes.config_differences(
      distilled, {**_shapes_snapshot(distill=True, trajectories=64), "stages": ["distill"]}) == [
          "config.distill_stage.trajectories: 384 -> 64"]
  # A stage the saved run trained keeps every one of its settings.
  assert config_changes.config_differences(
      before, {**_shapes_snapshot(distill=True), "dit_stage": {}}) != []


def test_a_later_stages_settings_do_not_block_the_stages_before_it():
  """experiments/shapes.py:long is tiny with another dit stage: it takes tiny's autoencoder."""
  def snapshot(variant):
    return json.loads(json.dumps(config_changes.experiment_json(
        experiment_lib.validate(shapes.get_config(variant)))))

  tiny, long = snapshot("tiny"), snapshot("long")
  # The transformer's own section is the dit stage's: it blocks that stage, not the autoencoder's.
  long["dit"]["width"] = 128
  assert config_changes.config_differences(tiny, long, stage="autoencoder") == []
  dit = config_changes.config_differences(tiny, long, stage="dit")
  assert "config.train.dit.optimizer: 'adamw' -> 'muon'" in dit
  assert "config.dit.width: 96 -> 128" in dit
  # Without the stage named, or for the stage itself, every difference counts.
  assert config_changes.config_differences(tiny, long) == dit
  # A change to an earlier stage's settings blocks the later one.
  long["train"]["autoencoder"]["learning_rate"] = 1.0
  assert config_changes.config_differences(tiny, long, stage="dit") == sorted([
      "config.train.autoencoder.learning_rate: 0.003 -> 1.0", *dit])


def test_a_field_added_since_at_its_default_is_no_difference():
  """A checkpoint saved before DiTConfig.step_size_embedding existed computed what False does."""
  before = _shapes_snapshot(distill=False)
  del before["dit"]["step_size_embedding"]
  assert config_changes.config_differences(before, _shapes_snapshot(distill=True)) == []
  student = _shapes_snapshot(distill=True)
  student["dit"]["step_size_embedding"] = True
  assert config_changes.config_differences(before, student) == [
      "config.dit.step_size_embedding: False -> True"]


def test_the_layout_of_the_transformers_blocks_may_change_but_not_their_number():
  """A checkpoint of stacked blocks restores into unrolled ones and back (`layer_layout`)."""
  def snapshot(**dit):
    config = shapes.get_config("tiny")
    config.dit.update(dit)
    return json.loads(json.dumps(config_changes.experiment_json(experiment_lib.validate(config))))

  stacked = snapshot(scan_layers=True)
  assert config_changes.config_differences(stacked, snapshot(scan_layers=False)) == []
  assert config_changes.config_differences(stacked, snapshot(scan_layers=True, scan_unroll=2)) == []
  assert config_changes.config_differences(stacked, snapshot(scan_layers=True, depth=2)) == [
      "config.dit.depth: 4 -> 2"]
