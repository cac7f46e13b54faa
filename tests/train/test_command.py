"""videogen/train/command.py: the mistakes a user fixes before training are one line and exit
code 2; a bug keeps its traceback."""

import pathlib
import shutil

import pytest

from videogen import experiment as experiment_lib
from videogen.train import command
from videogen.train import trainer


def _one_line(capsys):
  err = capsys.readouterr().err
  assert len(err.splitlines()) == 1 and err.startswith("error: "), err
  return err


def test_a_batch_that_does_not_split_over_the_devices_says_where_to_change_it(
    devices, tiny_workdir_config, tmp_path, capsys):
  tiny_workdir_config.autoencoder_loss.buckets = ("5x32x32:4",)
  experiment = experiment_lib.validate(tiny_workdir_config)
  assert command.command(experiment, str(tmp_path)) == 2
  error = _one_line(capsys)
  assert "bucket 5x32x32:4:1: global batch 4 does not split over 8 devices" in error
  assert "use a multiple of 8" in error and "config.autoencoder_loss.buckets" in error


def test_a_mesh_that_does_not_fit_the_devices(devices, tiny_workdir_config, tmp_path, capsys):
  tiny_workdir_config.mesh.data = 3
  assert command.command(experiment_lib.validate(tiny_workdir_config), str(tmp_path)) == 2
  error = _one_line(capsys)
  assert "multiply to 3 but there are 8" in error and "change config.mesh" in error


def test_a_learning_rate_scale_for_a_part_the_stage_does_not_train(devices, tiny_workdir_config,
                                                                    tmp_path, capsys):
  tiny_workdir_config.train.autoencoder.learning_rate_scales = ("text_encoder=0.5",)
  assert command.command(experiment_lib.validate(tiny_workdir_config), str(tmp_path)) == 2
  error = _one_line(capsys)
  assert ("config.train.autoencoder.learning_rate_scales names 'text_encoder', which the "
          "autoencoder stage does not train: name one of [" in error)


def test_the_dit_stage_alone_needs_the_autoencoder_first(devices, tiny_workdir_config, tmp_path,
                                                         capsys):
  tiny_workdir_config.stages = ("dit",)
  assert command.command(experiment_lib.validate(tiny_workdir_config), str(tmp_path)) == 2
  error = _one_line(capsys)
  assert "no checkpoint of stage 'autoencoder'" in error
  assert "--config.stages=autoencoder" in error


def test_a_latent_cache_of_another_run_names_what_differs(tiny_workdir, tiny_workdir_config,
                                                          tmp_path, capsys):
  """Resumed under another data seed (--allow_config_change), the dit stage refuses the cache
  built for the old one in one line: the leaves that differ and the command that rebuilds it."""
  workdir = tmp_path / "run"
  shutil.copytree(tiny_workdir, workdir)  # the shared workdir is read-only
  tiny_workdir_config.data.seed = 5
  tiny_workdir_config.train.dit.num_steps = 3
  experiment = experiment_lib.validate(tiny_workdir_config)
  assert command.command(experiment, str(workdir), allow_config_change=True) == 2
  error = _one_line(capsys)
  assert ("was built for another run (data.seed: None -> 5; data_seed: 0 -> 5; num_steps: 2 -> 3)"
          in error)
  assert "python -m videogen.main cache_latents" in error


def test_a_transformer_of_other_settings_is_refused_and_its_checkpoint_kept(
    tiny_workdir, tiny_workdir_config, tmp_path, capsys):
  """Resumed under another width (--allow_config_change), the dit stage names the checkpoint
  and the first array that does not fit, and renames nothing: other settings are not damage."""
  workdir = tmp_path / "run"
  shutil.copytree(tiny_workdir, workdir)  # the shared workdir is read-only
  steps = sorted(path.name for path in (workdir / "checkpoints" / "dit").iterdir())
  tiny_workdir_config.dit.width = 2 * tiny_workdir_config.dit.width
  tiny_workdir_config.train.dit.num_steps = 3
  tiny_workdir_config.dit_stage.latents = "encode"  # the cache holds the 2 steps it was built for
  tiny_workdir_config.stages = ("dit",)
  experiment = experiment_lib.validate(tiny_workdir_config)
  assert command.command(experiment, str(workdir), allow_config_change=True) == 2
  error = _one_line(capsys)
  assert f"the checkpoint {workdir}/checkpoints/dit/2 does not fit this config's model (" in error
  assert "is saved with shape" in error and "nothing was renamed" in error
  assert sorted(path.name for path in (workdir / "checkpoints" / "dit").iterdir()) == steps


@pytest.mark.parametrize("override, says", [
    (("autoencoder", "base_channels", 16),
     ["was trained with another architecture than config.autoencoder (base_channels: 8 -> 16)",
      "train the autoencoder again"]),
    (("text_encoder", "vocab_size", 100),
     ["ids but config.text_encoder.vocab_size is 100: set --config.text_encoder.vocab_size="]),
])
def test_a_trained_autoencoder_or_tokenizer_that_does_not_fit_the_config(
    tiny_workdir, tiny_workdir_config, tmp_path, capsys, override, says):
  """The dit stage alone, on another run's autoencoder and tokenizer (the recipe of
  docs/learning_curve.md), under a config they do not fit."""
  workdir = tmp_path / "run"
  (workdir / "checkpoints").mkdir(parents=True)
  shutil.copytree(pathlib.Path(tiny_workdir) / "checkpoints" / "autoencoder",
                  workdir / "checkpoints" / "autoencoder")
  for name in ("tokenizer.model", "tokenizer.words.json"):
    shutil.copy(pathlib.Path(tiny_workdir) / name, workdir / name)
  section, field, value = override
  tiny_workdir_config[section][field] = value
  tiny_workdir_config.stages = ("dit",)
  assert command.command(experiment_lib.validate(tiny_workdir_config), str(workdir)) == 2
  error = _one_line(capsys)
  for part in says:
    assert part in error


def test_no_workdir(tiny_workdir_config, capsys):
  assert command.command(experiment_lib.validate(tiny_workdir_config), None) == 2
  assert "train needs --workdir=DIR" in _one_line(capsys)


def test_a_non_finite_loss_exits_1_and_a_bug_keeps_its_traceback(tiny_workdir_config, tmp_path,
                                                                 monkeypatch, capsys):
  experiment = experiment_lib.validate(tiny_workdir_config)

  def diverges(*args, **kwargs):
    raise trainer.NonFiniteError("stage dit: loss nan at step 3")

  monkeypatch.setattr(trainer, "train", diverges)
  assert command.command(experiment, str(tmp_path)) == 1
  assert "loss nan at step 3" in _one_line(capsys)

  def has_a_bug(*args, **kwargs):
    raise ValueError("a bug")

  monkeypatch.setattr(trainer, "train", has_a_bug)
  with pytest.raises(ValueError, match="a bug"):
    command.command(experiment, str(tmp_path))
