"""videogen/train/dit_stage.py: a run that starts from another run's trained transformer
(`config.dit_stage.init_from`), on the dit stage test's tiny sizes and 8 devices."""

from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import pytest

from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from videogen.parallel import mesh as mesh_lib
from videogen.train import metrics as metrics_lib
from videogen.train import stages as stages_lib
from videogen.train import trainer

from tests.train import test_dit_stage

# The EMA barely moves in two steps, so it still shows where the weights started.
_SLOW_EMA = 0.999999


def make_experiment(init_from: str | None = None, **train) -> experiment_lib.Experiment:
  config = test_dit_stage.make_experiment(**{"eval_every": 0, "learning_rate": 1e-3,
                                             "warmup_steps": 1, **train})
  config = config.config.copy_and_resolve_references()
  config.dit_stage.init_from = init_from
  return experiment_lib.validate(config)


def train(experiment, workdir, devices):
  mesh = mesh_lib.create_mesh(experiment.mesh, devices)
  return trainer.train_stage(stages_lib.make_stage("dit", experiment), experiment, workdir,
                             mesh=mesh)


def leaves(tree) -> list[np.ndarray]:
  return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def source(tmp_path_factory, devices, write_autoencoder_checkpoint):
  """A run whose dit stage trained 2 AdamW steps: (workdir, its StageResult)."""
  workdir = str(tmp_path_factory.mktemp("source"))
  experiment = make_experiment()
  write_autoencoder_checkpoint(experiment, workdir)
  return workdir, train(experiment, workdir, devices)


def fresh_workdir(tmp_path, source_dir: str) -> str:
  """A workdir holding only the source's autoencoder checkpoint."""
  workdir = str(tmp_path / "run")
  shutil.copytree(os.path.join(source_dir, "checkpoints", "autoencoder"),
                  os.path.join(workdir, "checkpoints", "autoencoder"))
  return workdir


def test_a_run_starts_from_the_source_weights_with_a_new_optimizer(tmp_path, devices, source):
  """Muon on AdamW-trained weights: the EMA (almost still) shows the source's EMA weights, the
  steps count from 0 and the tokenizer is the source's."""
  source_dir, trained = source
  workdir = fresh_workdir(tmp_path, source_dir)
  experiment = make_experiment(source_dir, optimizer="muon", ema_decay=_SLOW_EMA)
  result = train(experiment, workdir, devices)

  assert result.status == "done" and result.step == 2
  for got, want in zip(leaves(result.state.ema_params), leaves(trained.state.ema_params),
                       strict=True):
    np.testing.assert_allclose(got, want, atol=1e-5)
  moved = [float(np.max(np.abs(a - b)))
           for a, b in zip(leaves(result.state.params), leaves(trained.state.ema_params))]
  assert max(moved) > 1e-6  # and the raw weights trained on from there
  rows = [row for row in metrics_lib.read_metrics(workdir, "dit") if "loss" in row]
  assert [row["step"] for row in rows] == [1, 2]
  for name in ("tokenizer.model", "tokenizer.words.json"):
    with open(os.path.join(source_dir, name), "rb") as theirs, \
         open(os.path.join(workdir, name), "rb") as ours:
      assert ours.read() == theirs.read(), name


def test_a_resumed_run_no_longer_reads_its_source(tmp_path, devices, source):
  """Preempted after step 1, the run resumes from its own checkpoint after its source is gone."""
  source_dir = str(tmp_path / "source")
  shutil.copytree(source[0], source_dir)
  workdir = fresh_workdir(tmp_path, source_dir)
  experiment = make_experiment(source_dir, checkpoint_every=1)
  train(experiment, workdir, devices)
  shutil.rmtree(os.path.join(workdir, "checkpoints", "dit", "2"))
  shutil.rmtree(source_dir)
  result = train(experiment, workdir, devices)
  assert result.status == "done" and result.step == 2


def test_a_different_tokenizer_is_refused(tmp_path, devices, source):
  source_dir, _ = source
  workdir = fresh_workdir(tmp_path, source_dir)
  with open(os.path.join(workdir, "tokenizer.model"), "wb") as file:
    file.write(b"another tokenizer")
  with pytest.raises(ValueError, match="is not that of config.dit_stage.init_from"):
    train(make_experiment(source_dir), workdir, devices)


def test_another_autoencoder_is_refused(tmp_path, devices, source, write_autoencoder_checkpoint):
  source_dir, _ = source
  experiment = make_experiment(source_dir)
  workdir = str(tmp_path / "run")
  write_autoencoder_checkpoint(experiment, workdir, seed=8)
  with pytest.raises(ValueError, match="trained on another autoencoder"):
    train(experiment, workdir, devices)


def test_a_source_without_a_trained_transformer_is_named(tmp_path, devices, source):
  source_dir, _ = source
  workdir = fresh_workdir(tmp_path, source_dir)
  empty = str(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match=r"init_from must name a workdir whose dit stage"):
    train(make_experiment(empty), workdir, devices)
  assert workdir_lib.latest_step(workdir, "dit") is None


def test_another_transformer_shape_is_refused(tmp_path, devices, source):
  source_dir, _ = source
  workdir = fresh_workdir(tmp_path, source_dir)
  config = make_experiment(source_dir).config.copy_and_resolve_references()
  config.dit.depth = 2
  with pytest.raises(ValueError, match="does not fit this run's model"):
    train(experiment_lib.validate(config), workdir, devices)


@pytest.mark.parametrize("change, match", [
    ({"init_from": "  "}, "init_from is empty"),
    ({"init_from": "runs/a", "pretrained_text_encoder": True}, "drop pretrained_text_encoder"),
])
def test_bad_settings_are_refused(change, match):
  config = make_experiment().config.copy_and_resolve_references()
  config.dit_stage.update(change)
  with pytest.raises(ValueError, match=match):
    experiment_lib.validate(config)


def test_a_frozen_text_encoder_is_refused():
  config = make_experiment("runs/a").config.copy_and_resolve_references()
  config.text_encoder.frozen = True
  with pytest.raises(ValueError, match="init_from needs config.text_encoder.frozen=False"):
    stages_lib.make_stage("dit", experiment_lib.validate(config))
