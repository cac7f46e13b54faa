"""videogen/train/autoencoder_from.py: a new workdir takes another run's trained autoencoder, its
tokenizer and (where it fits) its latent cache; the train command with `--autoencoder_from`
trains only the transformer on them."""

from __future__ import annotations

import filecmp
import os
import shutil

import pytest

from videogen import exit_codes
from videogen import main_job
from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from videogen.train import autoencoder_from
from videogen.train import command as train_command
from videogen.train import latent_cache
from videogen.train import metrics as metrics_lib

AUTOENCODER = workdir_lib.AUTOENCODER_STAGE


def experiment_of(config, **changes) -> experiment_lib.Experiment:
  for path, value in changes.items():
    section, _, name = path.rpartition(".")
    target = config
    for part in section.split(".") if section else ():
      target = target[part]
    target[name] = value
  return experiment_lib.validate(config)


def same_tree(first: str, second: str) -> bool:
  comparison = filecmp.dircmp(first, second)
  if comparison.left_only or comparison.right_only or comparison.funny_files:
    return False
  _, mismatch, errors = filecmp.cmpfiles(first, second, comparison.common_files, shallow=False)
  return not mismatch and not errors and all(
      same_tree(os.path.join(first, name), os.path.join(second, name))
      for name in comparison.common_dirs)


def listing(root) -> list[str]:
  """Every folder and file under `root`, relative to it."""
  return sorted(os.path.relpath(os.path.join(folder, name), root)
                for folder, folders, files in os.walk(root) for name in folders + files)


def autoencoder_step_dir(workdir: str) -> str:
  step = workdir_lib.latest_step(workdir, AUTOENCODER)
  return os.path.join(workdir_lib.checkpoint_dir(workdir, AUTOENCODER), str(step))


def test_a_new_workdir_gets_the_autoencoder_the_tokenizer_and_the_latent_cache(
    tmp_path, tiny_workdir, tiny_workdir_config):
  experiment = experiment_of(tiny_workdir_config)
  workdir = str(tmp_path / "run")
  assert latent_cache.has_cache(experiment, tiny_workdir)

  copied = autoencoder_from.take(experiment, workdir, tiny_workdir)

  assert sorted(os.path.relpath(path, workdir) for path in copied) == [
      "checkpoints/autoencoder/2", "latent_cache", "tokenizer.model"]
  assert same_tree(autoencoder_step_dir(tiny_workdir), autoencoder_step_dir(workdir))
  assert same_tree(os.path.join(tiny_workdir, "latent_cache"),
                   os.path.join(workdir, "latent_cache"))
  for name in ("tokenizer.model", "tokenizer.words.json"):
    assert filecmp.cmp(os.path.join(tiny_workdir, name), os.path.join(workdir, name),
                       shallow=False)
  # The copied cache is this run's: the dit stage opens it without building another.
  tokenizer = workdir_lib.load_tokenizer(workdir, experiment)
  latent_cache.open_cache(experiment, workdir, tokenizer=tokenizer, seed=experiment.seed)
  assert not [name for name in os.listdir(workdir) if ".tmp-" in name]
  # Run again (a resumed run keeps the flag): everything is in place, nothing is copied.
  assert autoencoder_from.take(experiment, workdir, tiny_workdir) == []


def test_the_staging_of_a_copy_cut_short_is_removed_by_the_next(
    tmp_path, tiny_workdir, tiny_workdir_config, caplog):
  """A run killed while copying leaves a staging directory as large as the cache; taking the
  autoencoder again removes it, and leaves other directories alone."""
  experiment = experiment_of(tiny_workdir_config)
  workdir = tmp_path / "run"
  left = [workdir / "latent_cache.tmp-0123abcd", workdir / "checkpoints/autoencoder/2.tmp-0123abcd"]
  for path in left:
    path.mkdir(parents=True)
    (path / "bucket0_latents.npy").write_bytes(bytes(4096))
  (workdir / "samples.tmp-0123abcd").mkdir()  # not a copy's
  with caplog.at_level("WARNING"):
    copied = autoencoder_from.take(experiment, str(workdir), tiny_workdir)
  assert sorted(os.path.relpath(path, workdir) for path in copied) == [
      "checkpoints/autoencoder/2", "latent_cache", "tokenizer.model"]
  assert not any(path.exists() for path in left)
  assert (workdir / "samples.tmp-0123abcd").is_dir()
  assert sorted(os.listdir(workdir / "checkpoints" / "autoencoder")) == ["2"]
  assert same_tree(os.path.join(tiny_workdir, "latent_cache"), str(workdir / "latent_cache"))
  assert sum(f"removing {path} (0.0 MiB), left by an --autoencoder_from copy" in record.getMessage()
             for path in left for record in caplog.records) == 2


@pytest.mark.parametrize("change, why", [
    ({"seed": 1}, "built for other data"),
    ({"train.autoencoder.num_steps": 4}, "the autoencoder trains on to step 4 first"),
])
def test_a_latent_cache_that_does_not_fit_the_run_is_left_behind(
    tmp_path, tiny_workdir, tiny_workdir_config, caplog, change, why):
  """Another data seed draws other clips; an autoencoder that trains on (a longer schedule:
  --allow_config_change) changes the latents: either way the dit stage encodes its own cache,
  as in a new run."""
  experiment = experiment_of(tiny_workdir_config, **change)
  workdir = str(tmp_path / "run")
  with caplog.at_level("INFO"):
    copied = autoencoder_from.take(experiment, workdir, tiny_workdir, allow_config_change=True)
  assert sorted(os.path.relpath(path, workdir) for path in copied) == [
      "checkpoints/autoencoder/2", "tokenizer.model"]
  assert not os.path.exists(os.path.join(workdir, "latent_cache"))
  assert any("the latent cache is not copied" in record.getMessage() and why in record.getMessage()
             for record in caplog.records)


def _another_autoencoder(source: str, workdir: str) -> None:
  """The source's checkpoint saved again under step 3: the workdir's own, trained further."""
  shutil.copytree(autoencoder_step_dir(source),
                  os.path.join(workdir_lib.checkpoint_dir(workdir, AUTOENCODER), "3"))


def _another_tokenizer(source: str, workdir: str) -> None:
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "tokenizer.model"), "wb") as file:
    file.write(b"another tokenizer")


@pytest.mark.parametrize("source, prepare, error, says", [
    ("{tmp}/empty", None, autoencoder_from.AutoencoderFromError,
     "--autoencoder_from={tmp}/empty: no checkpoint of stage 'autoencoder' in "
     "{tmp}/empty/checkpoints/autoencoder: name a workdir whose autoencoder stage has trained"),
    ("{source}", _another_autoencoder, autoencoder_from.AutoencoderFromError,
     "already holds an autoencoder of its own (step 3), not the newest of {source} (step 2): "
     "use a new --workdir"),
    ("{source}", _another_tokenizer, workdir_lib.WorkdirMismatchError,
     "tokenizer {tmp}/run/tokenizer.model is not that of --autoencoder_from={source}"),
    ("{tmp}/run", None, autoencoder_from.AutoencoderFromError,
     "--autoencoder_from={tmp}/run is this run's own --workdir"),
], ids=["no autoencoder", "another autoencoder", "another tokenizer", "itself"])
def test_a_source_the_workdir_cannot_take_is_refused_before_anything_is_copied(
    tmp_path, tiny_workdir, tiny_workdir_config, source, prepare, error, says):
  experiment = experiment_of(tiny_workdir_config)
  workdir = str(tmp_path / "run")
  source = source.replace("{tmp}", str(tmp_path)).replace("{source}", tiny_workdir)
  os.makedirs(tmp_path / "empty")
  if prepare is not None:
    prepare(tiny_workdir, workdir)
  before = listing(tmp_path)

  with pytest.raises(error) as raised:
    autoencoder_from.take(experiment, workdir, source)

  assert says.replace("{tmp}", str(tmp_path)).replace("{source}", tiny_workdir) in str(
      raised.value)
  assert listing(tmp_path) == before


def test_an_autoencoder_of_another_architecture_is_refused_before_anything_is_copied(
    tmp_path, tiny_workdir, tiny_workdir_config):
  experiment = experiment_of(tiny_workdir_config, **{"autoencoder.base_channels": 16})
  with pytest.raises(workdir_lib.AutoencoderMismatchError, match="another architecture"):
    autoencoder_from.take(experiment, str(tmp_path / "run"), tiny_workdir)
  assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("stages, allow_config_change, refused", [
    (("autoencoder", "dit"), False, True),
    (("autoencoder", "dit"), True, False),
    (("dit",), False, False),
], ids=["refused", "allowed", "autoencoder stage not run"])
def test_an_autoencoder_trained_under_another_config_is_refused_where_its_stage_would_refuse_it(
    tmp_path, tiny_workdir, tiny_workdir_config, stages, allow_config_change, refused):
  """Another learning rate for the autoencoder stage: the stage would not resume the copy, so it
  is not made, unless the run allows the change or leaves that stage out (the dit stage only
  needs the architecture)."""
  experiment = experiment_of(tiny_workdir_config, **{"train.autoencoder.learning_rate": 0.5,
                                                     "stages": stages})
  workdir = str(tmp_path / "run")
  if refused:
    with pytest.raises(autoencoder_from.AutoencoderFromError,
                       match=r"trained under another config than this run's autoencoder stage "
                             r"\(config.train.autoencoder.learning_rate: .* -> 0.5\): leave "
                             r"'autoencoder' out of config.stages"):
      autoencoder_from.take(experiment, workdir, tiny_workdir)
    assert os.listdir(tmp_path) == []
  else:
    copied = autoencoder_from.take(experiment, workdir, tiny_workdir,
                                   allow_config_change=allow_config_change)
    assert os.path.join(workdir, "checkpoints", "autoencoder", "2") in copied


def test_the_train_command_trains_only_the_transformer_on_the_copied_autoencoder(
    tmp_path, capsys, tiny_workdir, tiny_workdir_config):
  """`train --autoencoder_from=DIR` with both stages in config.stages: the autoencoder stage
  finds itself trained, the dit stage trains on the copied latent cache without encoding one."""
  experiment = experiment_of(tiny_workdir_config)
  workdir = str(tmp_path / "run")

  code = train_command.command(experiment, workdir, autoencoder_from=tiny_workdir)

  assert code == exit_codes.DONE, capsys.readouterr().err
  assert workdir_lib.latest_step(workdir, AUTOENCODER) == 2
  assert workdir_lib.latest_step(workdir, workdir_lib.DIT_STAGE) == 2
  assert not [row for row in metrics_lib.read_metrics(workdir, AUTOENCODER) if "loss" in row]
  assert [row["step"] for row in metrics_lib.read_metrics(workdir, workdir_lib.DIT_STAGE)
          if "loss" in row] == [1, 2]
  assert same_tree(os.path.join(tiny_workdir, "latent_cache"),
                   os.path.join(workdir, "latent_cache"))


@pytest.mark.parametrize("command", [train_command.command, main_job.run],
                         ids=["train", "run"])
def test_a_source_without_an_autoencoder_is_refused_in_one_line(
    tmp_path, capsys, tiny_workdir_config, command):
  experiment = experiment_of(tiny_workdir_config)
  for source, says in ((str(tmp_path / "nowhere"), "no checkpoint of stage 'autoencoder' in"),
                       (" ", "--autoencoder_from is empty")):
    code = command(experiment, str(tmp_path / "run"), autoencoder_from=source)
    assert code == exit_codes.REFUSED
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and error.startswith("error: ") and says in error, error
  assert os.listdir(tmp_path) == []
