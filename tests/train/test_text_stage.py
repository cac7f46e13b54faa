"""videogen/train/text_stage.py: caption-clip pre-training, and the dit stage starting from it.

The dit stage test's tiny sizes (a random autoencoder checkpoint, a width-16 text encoder), with a
width-24 one-block clip encoder; the text stage reads the dit stage's latent cache.
"""

from __future__ import annotations

import os
import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from videogen.config import to_config_dict
from videogen.models.caption_clip import CaptionClipConfig
from videogen.parallel import mesh as mesh_lib
from videogen.train import metrics as metrics_lib
from videogen.train import stages as stages_lib
from videogen.train import text_stage
from videogen.train import trainer
from videogen.train.config import TrainConfig

from tests.train import test_dit_stage

# The dit stage's EMA barely moves in two steps, so it still shows where the weights started.
_SLOW_EMA = 0.999999


def make_experiment(*, text_frozen: bool = False,
                    pretrained: bool = True) -> experiment_lib.Experiment:
  config = test_dit_stage.make_experiment(
      text_frozen=text_frozen).config.copy_and_resolve_references()
  config.stages = ("autoencoder", "text", "dit")
  config.text_stage = to_config_dict(CaptionClipConfig(width=24, depth=1, num_heads=2,
                                                       mlp_ratio=2.0, embed_dim=8))
  config.train.text = to_config_dict(TrainConfig(
      num_steps=2, warmup_steps=1, log_every=1, checkpoint_every=2, async_checkpoints=False,
      progress_bar=False))
  config.train.dit.update(eval_every=0, ema_decay=_SLOW_EMA, warmup_steps=1, learning_rate=1e-3)
  config.dit_stage.update(latents="cache", pretrained_text_encoder=pretrained)
  return experiment_lib.validate(config)


def leaves(tree) -> list[np.ndarray]:
  return [np.asarray(leaf) for leaf in jax.tree.leaves(tree)]


@pytest.fixture(scope="module")
def text_workdir(tmp_path_factory, devices, write_autoencoder_checkpoint):
  """A workdir whose text stage trained 2 steps on 8 devices: (workdir, its StageResult)."""
  experiment = make_experiment()
  workdir = str(tmp_path_factory.mktemp("text_stage"))
  write_autoencoder_checkpoint(experiment, workdir)
  mesh = mesh_lib.create_mesh(experiment.mesh, devices)
  result = trainer.train_stage(stages_lib.make_stage("text", experiment), experiment, workdir,
                               mesh=mesh)
  return workdir, result


def test_the_text_stage_trains_on_the_latent_cache(text_workdir):
  workdir, result = text_workdir
  assert result.status == "done" and result.step == 2
  assert workdir_lib.latest_step(workdir, workdir_lib.TEXT_STAGE) == 2
  # Built here, for the dit stage to read too.
  assert os.path.isdir(workdir_lib.latent_cache_dir(workdir, make_experiment()))
  rows = [row for row in metrics_lib.read_metrics(workdir, "text") if "loss" in row]
  assert [row["step"] for row in rows] == [1, 2]
  for row in rows:
    assert np.isfinite(row["loss"]) and 0.0 <= row["contrastive_accuracy"] <= 1.0, row
    assert 0.0 < row["temperature"] < 1.0, row


@pytest.mark.parametrize("text_frozen", [False, True])
def test_the_dit_stage_starts_its_text_encoder_from_the_text_stage(tmp_path, devices, text_workdir,
                                                                   text_frozen):
  """Fine-tuned, the text encoder starts as the text stage's EMA weights (the dit stage's EMA,
  almost still, shows it after two steps); frozen, it stays exactly those weights."""
  source, _ = text_workdir
  workdir = str(tmp_path / "run")
  shutil.copytree(source, workdir)  # the fixture's workdir stays as it is for the others
  experiment = make_experiment(text_frozen=text_frozen)
  mesh = mesh_lib.create_mesh(experiment.mesh, devices)
  pretrained, step = text_stage.restore_text_encoder(experiment, workdir, mesh)
  assert step == 2
  result = trainer.train_stage(stages_lib.make_stage("dit", experiment), experiment, workdir,
                               mesh=mesh)
  assert result.status == "done" and result.step == 2
  expected = leaves(pretrained)
  if text_frozen:
    for got, want in zip(leaves(result.state.frozen["text_encoder"]), expected, strict=True):
      np.testing.assert_array_equal(got, want)
  else:
    ema = leaves(result.state.ema_params["text_encoder"])
    trained = leaves(result.state.params["text_encoder"])
    for got, want in zip(ema, expected, strict=True):
      np.testing.assert_allclose(got, want, atol=1e-5)
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(trained, expected)) > 1e-7


def test_without_the_option_the_text_encoder_starts_at_random(tmp_path, devices, text_workdir):
  source, _ = text_workdir
  experiment = make_experiment(pretrained=False)
  stage = stages_lib.make_stage("dit", experiment)
  mesh = mesh_lib.create_mesh(experiment.mesh, devices)
  pretrained, _ = text_stage.restore_text_encoder(experiment, source, mesh)
  with nnx.use_eager_sharding(False):
    fresh = nnx.state(stage.create_model(nnx.Rngs(0)).text_encoder, nnx.Param)
  before = leaves(fresh)
  started = stage.initial_params(nnx.State({"text_encoder": fresh}), source)
  for got, want in zip(leaves(started["text_encoder"]), before, strict=True):
    np.testing.assert_array_equal(got, want)
  assert any(not np.array_equal(a, b) for a, b in zip(before, leaves(pretrained)))


def test_a_missing_text_stage_is_named_with_the_command_that_trains_it(
    tmp_path, devices, write_autoencoder_checkpoint):
  experiment = make_experiment()
  write_autoencoder_checkpoint(experiment, str(tmp_path))
  mesh = mesh_lib.create_mesh(experiment.mesh, devices)
  with pytest.raises(FileNotFoundError, match=r"--config.stages=text"):
    trainer.train_stage(stages_lib.make_stage("dit", experiment), experiment, str(tmp_path),
                        mesh=mesh)


def test_the_text_stage_needs_a_trained_autoencoder(tmp_path, devices):
  experiment = make_experiment()
  mesh = mesh_lib.create_mesh(experiment.mesh, devices)
  with pytest.raises(FileNotFoundError, match="--config.stages=autoencoder"):
    trainer.train_stage(stages_lib.make_stage("text", experiment), experiment, str(tmp_path),
                        mesh=mesh)
