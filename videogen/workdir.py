"""A run's directory: where everything lives, and reading back what a trained run left there.

    WORKDIR/
      checkpoints/<stage>/<step>/   one Orbax checkpoint per saved step (`train.checkpointing`)
      tokenizer.model               the sentencepiece model the dit stage trains (or
                                    config.tokenizer.model_path when set)
      tokenizer.words.json          the words of the captions it was trained on (the prompt
                                    words the model can know)
      latent_cache/                 latents of the frozen autoencoder (config.dit_stage.cache_dir)
      distill_cache/                the teacher's trajectories the distill stage's student learns
                                    (config.distill_stage.cache_dir)
      metrics.jsonl, tensorboard/, curves/, samples/, gallery/

Every module that needs one of these paths, the newest step of a stage, the experiment a
checkpoint was trained with, the run's tokenizer, or a trained model's (EMA) weights on a mesh
asks this module.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import unicodedata
import uuid
from typing import Any, Iterable

import jax
import ml_collections
from absl import logging
from flax import nnx

from data_pipelines import loader as loader_lib
from data_pipelines import tokenizer as tokenizer_lib
from videogen import config as config_lib
from videogen import experiment as experiment_lib
from videogen.models import autoencoder as autoencoder_lib
from videogen.parallel import mesh as mesh_lib
from videogen.parallel import sharding as sharding_lib
from videogen.train import checkpointing
from videogen.train import layer_layout

CHECKPOINTS_DIR = "checkpoints"
TOKENIZER_FILE = "tokenizer.model"
# Beside the tokenizer: {"words": [...]}, every word of its training captions.
TOKENIZER_WORDS_SUFFIX = ".words.json"
LATENT_CACHE_DIR = "latent_cache"
DISTILL_CACHE_DIR = "distill_cache"
# The stages whose checkpoints other parts of the code read: the autoencoder (frozen under the
# diffusion stage, encoding its latent cache) and the diffusion stage (the sampling model).
AUTOENCODER_STAGE = "autoencoder"
DIT_STAGE = "dit"
# The few-step student distilled from the dit stage's transformer (videogen.train.distill_stage).
DISTILL_STAGE = "distill"
# The text encoder pre-trained on caption-clip pairs, which the dit stage may start from.
TEXT_STAGE = "text"


def train_command(workdir: str) -> str:
  """The command that trains a workdir, for error messages."""
  return (f"python -m videogen.main train --config=experiments/<file>.py:<variant> "
          f"--workdir={workdir}")


def checkpoint_dir(workdir: str, stage: str) -> str:
  """Where the trainer keeps a stage's checkpoints: WORKDIR/checkpoints/<stage>."""
  return os.path.join(os.path.abspath(workdir), CHECKPOINTS_DIR, stage)


def tokenizer_path(workdir: str, experiment: experiment_lib.Experiment | None = None) -> str:
  """The tokenizer a run uses: config.tokenizer.model_path if set, else WORKDIR/tokenizer.model."""
  if experiment is not None and experiment.tokenizer.model_path:
    return experiment.tokenizer.model_path
  return os.path.join(workdir, TOKENIZER_FILE)


def load_tokenizer(workdir: str,
                   experiment: experiment_lib.Experiment) -> tokenizer_lib.Tokenizer:
  """The tokenizer the run's dit stage trained (or config.tokenizer.model_path).

  Raises:
    FileNotFoundError: there is none yet, naming the path and the command that writes it.
  """
  path = tokenizer_path(workdir, experiment)
  if not os.path.exists(path):
    raise FileNotFoundError(f"tokenizer {path} is missing: the dit stage writes it when it "
                            f"trains (`{train_command(workdir)}`)")
  return tokenizer_lib.Tokenizer.load(path, experiment.tokenizer.max_length)


def load_or_train_tokenizer(experiment: experiment_lib.Experiment,
                            workdir: str) -> tokenizer_lib.Tokenizer:
  """The run's tokenizer: the saved asset, or one trained now on the data's captions and saved.

  Training it also writes the captions' words beside it (`tokenizer_words_path`), so that
  `generate` can name the words of a prompt that no training caption holds.
  """
  config = experiment.tokenizer
  data = experiment.data
  path = tokenizer_path(workdir, experiment)
  trained_on: list[str] = []

  def captions() -> list[str]:
    trained_on.extend(loader_lib.captions(data, seed=experiment.seed,
                                          num=config.num_train_captions))
    return trained_on

  tokenizer = tokenizer_lib.load_or_train(config, path, captions)
  if trained_on:  # trained now, not loaded
    write_tokenizer_words(path, trained_on)
  return tokenizer


# The config sections that decide the shapes of the weights a checkpoint holds.
MODEL_SECTIONS = ("autoencoder", "text_encoder", "dit")


class WorkdirMismatchError(ValueError):
  """What a workdir holds (a checkpoint, the tokenizer) does not fit the config; the message
  says which setting to change."""


def check_tokenizer(tokenizer: tokenizer_lib.Tokenizer, experiment: experiment_lib.Experiment,
                    workdir: str) -> None:
  """Raises WorkdirMismatchError unless the text encoder takes every id and token the run's
  tokenizer emits; a vocabulary larger than the tokenizer's is only a warning (unused rows)."""
  text = experiment.text_encoder
  path = tokenizer_path(workdir, experiment)
  if tokenizer.vocab_size > text.vocab_size:
    raise WorkdirMismatchError(
        f"the tokenizer {path} has {tokenizer.vocab_size} ids but config.text_encoder.vocab_size "
        f"is {text.vocab_size}: set --config.text_encoder.vocab_size={tokenizer.vocab_size}")
  if tokenizer.max_length > text.max_length:
    raise WorkdirMismatchError(
        f"the tokenizer {path} emits {tokenizer.max_length} tokens per caption but "
        f"config.text_encoder.max_length is {text.max_length}: set "
        f"--config.text_encoder.max_length={tokenizer.max_length}")
  if tokenizer.vocab_size < text.vocab_size:
    logging.warning("the tokenizer has %d ids, config.text_encoder.vocab_size %d: the "
                    "embedding's last %d rows are never used; set "
                    "config.text_encoder.vocab_size=%d to drop them", tokenizer.vocab_size,
                    text.vocab_size, text.vocab_size - tokenizer.vocab_size, tokenizer.vocab_size)


def words(text: str) -> list[str]:
  """The words of a caption or prompt as the tokenizer sees them (NFKC, case-folded), in order.

  Punctuation and hyphens separate words: "moving up-left;" -> ["moving", "up", "left"].
  """
  return re.findall(r"[^\W_]+", unicodedata.normalize("NFKC", text).casefold())


def tokenizer_words_path(model_path: str) -> str:
  """Where the training captions' words of the tokenizer `model_path` are kept: beside it,
  WORKDIR/tokenizer.words.json for WORKDIR/tokenizer.model."""
  return os.path.splitext(model_path)[0] + TOKENIZER_WORDS_SUFFIX


def write_tokenizer_words(model_path: str, captions: Iterable[str]) -> str:
  """Writes the sorted set of words of `captions` beside the tokenizer `model_path`; its path."""
  vocabulary = sorted({word for caption in captions for word in words(caption)})
  path = tokenizer_words_path(model_path)
  # Every host of a multi-host run writes the same file: each renames its own temporary copy.
  temporary = f"{path}.tmp-{uuid.uuid4().hex}"
  with open(temporary, "w", encoding="utf-8") as file:
    json.dump({"words": vocabulary}, file, indent=0)
  os.replace(temporary, path)
  return path


def read_tokenizer_words(workdir: str, experiment: experiment_lib.Experiment | None = None
                         ) -> frozenset[str] | None:
  """The words of the captions the run's tokenizer was trained on, or None where not recorded
  (a workdir trained before they were, or a user-supplied tokenizer)."""
  path = tokenizer_words_path(tokenizer_path(workdir, experiment))
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as file:
      return frozenset(json.load(file)["words"])
  except (OSError, ValueError, KeyError, TypeError) as error:
    logging.warning("cannot read the tokenizer's caption words %s (%s): prompt words are not "
                    "checked", path, error)
    return None


def copy_tokenizer(source: str, workdir: str, experiment: experiment_lib.Experiment, *,
                   option: str) -> bool:
  """Makes the run's tokenizer `source`'s, where the run has none: a text encoder's ids and a
  latent cache's tokens must mean the same pieces in both runs.

  Copied with its caption words; one set by config.tokenizer.model_path is both runs'. Every
  host of a multi-host run may copy: each renames its own temporary file.

  Args:
    option: what named `source`, for the messages (e.g. "config.dit_stage.init_from=runs/a").

  Returns:
    Whether it copied (not when the run already has it, or both runs read one file).

  Raises:
    FileNotFoundError: `source` has no tokenizer.
    WorkdirMismatchError: the run already has a different one.
  """
  theirs = tokenizer_path(source, experiment)
  ours = tokenizer_path(workdir, experiment)
  if os.path.abspath(theirs) == os.path.abspath(ours):
    return False
  if not os.path.exists(theirs):
    raise FileNotFoundError(f"{option} has no tokenizer {theirs}: its text encoder's ids cannot "
                            f"be read without it")
  with open(theirs, "rb") as file:
    wanted = file.read()
  if os.path.exists(ours):
    with open(ours, "rb") as file:
      if file.read() != wanted:
        raise WorkdirMismatchError(
            f"this run's tokenizer {ours} is not that of {option}: start in a fresh workdir (or "
            f"delete it and its latent cache) so that run's is copied in")
    return False
  for source_file, target in ((theirs, ours),
                              (tokenizer_words_path(theirs), tokenizer_words_path(ours))):
    if os.path.exists(source_file):
      os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
      temporary = f"{target}.tmp-{uuid.uuid4().hex}"
      shutil.copyfile(source_file, temporary)
      os.replace(temporary, target)
  logging.info("tokenizer %s copied from %s (%s)", ours, theirs, option)
  return True


def remove_cut_short(parent: str, staging_prefix: str, what: str) -> None:
  """Removes the staging directories named `staging_prefix`... that `what` (e.g. "a latent
  cache build"), cut short by a preempted or killed run, left in `parent`: nothing else would,
  and each can be as large as a cache."""
  for name in sorted(os.listdir(parent)):
    path = os.path.join(parent, name)
    if name.startswith(staging_prefix) and os.path.isdir(path):
      logging.warning("removing %s (%.1f MiB), left by %s that was cut short", path,
                      disk_bytes(path) / 2**20, what)
      shutil.rmtree(path)


def disk_bytes(directory: str) -> int:
  """Bytes of the files in `directory` and its subdirectories."""
  return sum(os.path.getsize(os.path.join(folder, name))
             for folder, _, names in os.walk(directory) for name in names)


def latent_cache_dir(workdir: str, experiment: experiment_lib.Experiment) -> str:
  """The latent cache: config.dit_stage.cache_dir if set, else WORKDIR/latent_cache."""
  return experiment.dit_stage.cache_dir or os.path.join(workdir, LATENT_CACHE_DIR)


def distill_cache_dir(workdir: str, experiment: experiment_lib.Experiment) -> str:
  """The distill stage's trajectories: config.distill_stage.cache_dir, else
  WORKDIR/distill_cache."""
  return experiment.distill_stage.cache_dir or os.path.join(workdir, DISTILL_CACHE_DIR)


def latest_step(workdir: str, stage: str) -> int | None:
  """The newest checkpointed step of `stage`, or None when it has none."""
  directory = checkpoint_dir(workdir, stage)
  if not os.path.isdir(directory):
    return None
  checkpointer = checkpointing.Checkpointer(directory, read_only=True)
  try:
    return checkpointer.latest_step()
  finally:
    checkpointer.close()


def checkpoint_steps(workdir: str, stage: str) -> list[int]:
  """Every checkpointed step of `stage`, oldest first; empty when it has none."""
  directory = checkpoint_dir(workdir, stage)
  if not os.path.isdir(directory):
    return []
  checkpointer = checkpointing.Checkpointer(directory, read_only=True)
  try:
    return checkpointer.all_steps()
  finally:
    checkpointer.close()


def require_step(workdir: str, stage: str, remedy: str | None = None) -> int:
  """The newest checkpointed step of `stage`.

  Raises:
    FileNotFoundError: the stage has no checkpoint; says `remedy` (default: the train command).
  """
  step = latest_step(workdir, stage)
  if step is None:
    raise FileNotFoundError(
        f"no checkpoint of stage {stage!r} in {checkpoint_dir(workdir, stage)}: "
        f"{remedy or f'train it first with `{train_command(workdir)}`'}")
  return step


def experiment_from_json(saved: dict[str, Any]) -> experiment_lib.Experiment:
  """Re-validates the typed experiment a checkpoint saved (`config_changes.experiment_json`).

  Settings the saved config predates get the value it was trained with, not today's default
  (`autoencoder_lib.upgrade_saved_config`).
  """
  if isinstance(saved.get("autoencoder"), dict):
    saved = {**saved, "autoencoder": autoencoder_lib.upgrade_saved_config(saved["autoencoder"])}
  if isinstance(saved.get("mesh"), dict) and isinstance(saved["mesh"].get("rules"), dict):
    # A table saved before a logical axis name existed keeps its rules and gains the new name's.
    saved = {**saved, "mesh": {**saved["mesh"],
                               "rules": {**mesh_lib.DEFAULT_RULES, **saved["mesh"]["rules"]}}}
  return experiment_lib.validate(ml_collections.ConfigDict(saved))


def saved_config(workdir: str, stage: str, step: int | None = None) -> dict[str, Any]:
  """The config (JSON) saved with checkpoint `step` (default: the newest) of `stage`."""
  step = require_step(workdir, stage) if step is None else step
  checkpointer = checkpointing.Checkpointer(checkpoint_dir(workdir, stage), read_only=True)
  try:
    return checkpointer.read_config(step)
  finally:
    checkpointer.close()


def saved_experiment(workdir: str, stage: str,
                     step: int | None = None) -> experiment_lib.Experiment:
  """The experiment checkpoint `step` (default: the newest) of `stage` was trained with.

  Raises:
    FileNotFoundError: the stage has no checkpoint in `workdir`.
  """
  return experiment_from_json(saved_config(workdir, stage, step))


def restore_model(workdir: str, stage: str, graphdef: nnx.GraphDef, params: nnx.State,
                  frozen: nnx.State, *, experiment: experiment_lib.Experiment,
                  mesh: jax.sharding.Mesh | None = None, use_ema: bool = True,
                  step: int | None = None) -> tuple[nnx.Module, int]:
  """A trained stage's model, its weights read from WORKDIR/checkpoints/<stage>/ onto `mesh`.

  The one restore path of generation, evaluation, export and the stages that build on another
  stage's weights. Only the (EMA) parameters and the frozen variables are read; the optimizer
  state stays on disk.

  Args:
    workdir: the run's directory.
    stage: which stage's checkpoint.
    graphdef, params, frozen: the stage's model split into its trainable and frozen variables,
      abstract (`train_state.abstract_model`): the shapes to restore into.
    experiment: the validated experiment; its `mesh.rules` shard the weights.
    mesh: where the weights go (default: the mesh of `config.mesh` over all devices).
    use_ema: the EMA parameters (default) or the raw ones.
    step: which checkpoint (default: the newest).

  Returns:
    (model, the step of the checkpoint it came from).

  Raises:
    FileNotFoundError: the stage has no checkpoint in `workdir`.
  """
  trainable = "ema_params" if use_ema else "params"
  restored, step = _restore_subtrees(workdir, stage, {trainable: params, "frozen": frozen},
                                     experiment=experiment, mesh=mesh, step=step)
  return nnx.merge(graphdef, restored[trainable], restored["frozen"]), step


def restore_part(workdir: str, stage: str, part: str, tree: nnx.State, *,
                 experiment: experiment_lib.Experiment, mesh: jax.sharding.Mesh | None = None,
                 step: int | None = None) -> tuple[nnx.State, int]:
  """One part of a stage's checkpoint alone, read from WORKDIR/checkpoints/<stage>/ onto `mesh`:
  e.g. the EMA parameters another run starts from; the rest stays on disk.

  Args:
    workdir, stage, experiment, mesh, step: as `restore_model`'s.
    part: "ema_params", "params" or "frozen".
    tree: the part's abstract state to restore into: the shapes and logical axes.

  Returns:
    (the part, the step of the checkpoint it came from).

  Raises:
    FileNotFoundError: the stage has no checkpoint in `workdir`.
  """
  restored, step = _restore_subtrees(workdir, stage, {part: tree}, experiment=experiment,
                                     mesh=mesh, step=step)
  return restored[part], step


def _restore_subtrees(workdir: str, stage: str, trees: dict[str, nnx.State], *,
                      experiment: experiment_lib.Experiment, mesh: jax.sharding.Mesh | None,
                      step: int | None) -> tuple[dict[str, nnx.State], int]:
  """The named parts of a checkpoint's state (e.g. "ema_params"), each restored into the abstract
  tree given for it, sharded over `mesh` by the experiment's rules; and the checkpoint's step."""
  step = require_step(workdir, stage) if step is None else step
  mesh = mesh_lib.create_mesh(experiment.mesh) if mesh is None else mesh
  targets = {name: sharding_lib.with_shardings(
                 tree, sharding_lib.tree_shardings(tree, mesh, experiment.mesh.rules))
             for name, tree in trees.items()}
  checkpointer = checkpointing.Checkpointer(checkpoint_dir(workdir, stage), read_only=True)
  try:
    restored = checkpointer.restore_subtrees(step, targets)
  except checkpointing.RESTORE_ERRORS as error:
    raise _unfit_checkpoint(workdir, stage, step, experiment, error) from error
  finally:
    checkpointer.close()
  logging.info("restored %s step %d onto mesh %s", checkpoint_dir(workdir, stage), step,
               mesh_lib.describe(mesh))
  return restored, step


def _unfit_checkpoint(workdir: str, stage: str, step: int, experiment: experiment_lib.Experiment,
                      error: Exception) -> WorkdirMismatchError:
  """The error for a checkpoint whose weights do not restore into `experiment`'s models: the
  model settings that differ from the config saved with it, where it has one."""
  where = f"{checkpoint_dir(workdir, stage)}/{step}"
  try:
    saved = saved_config(workdir, stage, step)
  except checkpointing.RESTORE_ERRORS:
    saved = {}
  # Only the settings both configs hold: a config saved by an older version lacks newer fields.
  names = [name for name in MODEL_SECTIONS
           if isinstance(saved, dict) and name in saved and experiment.has(name)]

  def settings(section: Any) -> Any:
    # How the transformer's blocks are laid out does not stop a restore (`layer_layout`).
    return ({key: value for key, value in section.items()
             if key not in layer_layout.LAYOUT_SETTINGS} if isinstance(section, dict) else section)

  differences = config_lib.differences(
      {name: settings(saved[name]) for name in names},
      {name: settings(config_lib.jsonable(getattr(experiment, name))) for name in names},
      shared_only=True)
  if differences:
    return WorkdirMismatchError(
        f"the checkpoint {where} was trained with other model settings than the config given "
        f"({config_lib.listed(differences, 6)}): set them back, or leave out --config where the "
        f"command reads the config saved with the checkpoint")
  brief = " ".join(str(error).split())[:300]
  return WorkdirMismatchError(
      f"cannot read the checkpoint {where} into this config's models ({type(error).__name__}: "
      f"{brief}): it was written by another config or version of the code, or is damaged")


# ------------------------------------------------------------------------------------------------
# The autoencoder stage's weights, for the stages that build on them.
# ------------------------------------------------------------------------------------------------


def autoencoder_checkpoint_step(workdir: str) -> int:
  """The newest step of WORKDIR/checkpoints/autoencoder.

  Raises:
    FileNotFoundError: the autoencoder stage has not been trained in `workdir`.
  """
  return require_step(
      workdir, AUTOENCODER_STAGE,
      f"the diffusion stage trains on the frozen autoencoder's latents, so train the autoencoder "
      f"first: python -m videogen.main train --config=<the experiment, e.g. "
      f"experiments/shapes.py:tiny> --workdir={workdir} --config.stages=autoencoder (or keep "
      f"'autoencoder' before 'dit' in config.stages)")


class AutoencoderMismatchError(WorkdirMismatchError):
  """The autoencoder checkpoint was trained with another architecture than config.autoencoder."""


def check_autoencoder_architecture(saved: dict[str, Any], experiment: experiment_lib.Experiment,
                                   where: str) -> None:
  """Raises AutoencoderMismatchError if the config saved in `where` computes another function.

  Settings such as the parameter-free shortcuts change the function without changing the
  parameters, so a restore alone would not notice them.
  """
  section = saved.get("autoencoder") if isinstance(saved, dict) else None
  if not isinstance(section, dict):
    return  # a config without the section: the parameter restore is the only check
  trained = config_lib.parse(autoencoder_lib.AutoencoderConfig,
                             autoencoder_lib.upgrade_saved_config(section),
                             f"the config saved in {where}: autoencoder")
  differences = autoencoder_lib.architecture_differences(trained, experiment.autoencoder)
  if differences:
    raise AutoencoderMismatchError(
        f"the autoencoder checkpoint {where} was trained with another architecture than "
        f"config.autoencoder ({'; '.join(differences)}): set those fields back (e.g. "
        f"--config.autoencoder.{differences[0].split(':')[0]}=...), or train the autoencoder "
        f"again with this config")


def restore_autoencoder(workdir: str, experiment: experiment_lib.Experiment,
                        abstract_model: tuple[nnx.GraphDef, nnx.State, nnx.State], *,
                        mesh: jax.sharding.Mesh) -> tuple[autoencoder_lib.VideoAutoencoder, int]:
  """The autoencoder stage's EMA `VideoAutoencoder`, sharded over `mesh` by the experiment's rules.

  Nothing is initialised or compiled: `abstract_model`, the autoencoder stage's model split
  abstractly into (graphdef, trainable, frozen) (`train_state.abstract_model`), is the restore
  target of `restore_model`, and only its `VideoAutoencoder` part is returned.

  Returns:
    (the autoencoder, the step of its checkpoint).

  Raises:
    FileNotFoundError: the autoencoder stage has no checkpoint in `workdir`.
    AutoencoderMismatchError: the checkpoint does not fit `config.autoencoder` (it was trained
      with another): its parameters differ (or some are missing), or its saved config has another
      architecture.
  """
  step = autoencoder_checkpoint_step(workdir)
  where = f"{checkpoint_dir(workdir, AUTOENCODER_STAGE)}/{step}"
  graphdef, params, frozen = abstract_model
  try:
    check_autoencoder_architecture(saved_config(workdir, AUTOENCODER_STAGE, step), experiment,
                                   where)
    model, _ = restore_model(workdir, AUTOENCODER_STAGE, graphdef, params, frozen,
                             experiment=experiment, mesh=mesh, step=step)
  except WorkdirMismatchError:
    raise  # already says what differs and what to do
  except checkpointing.RESTORE_ERRORS as error:
    raise AutoencoderMismatchError(
        f"the autoencoder checkpoint {where} does not fit config.autoencoder ({error}); train the "
        f"autoencoder again with this config, or use the config it was trained with") from error
  # A partial restore leaves the target's abstract leaves where the checkpoint lacks a path.
  missing = [jax.tree_util.keystr(path)
             for path, leaf in jax.tree_util.tree_leaves_with_path(nnx.state(model))
             if not isinstance(leaf, jax.Array)]
  if missing:
    raise AutoencoderMismatchError(
        f"the autoencoder checkpoint {where} lacks {len(missing)} parameter(s) of the autoencoder "
        f"stage's model (e.g. {missing[0]}): it was written by another version or config of the "
        f"autoencoder stage; train the autoencoder again")
  autoencoder = model if isinstance(model, autoencoder_lib.VideoAutoencoder) else getattr(
      model, "autoencoder", None)
  if not isinstance(autoencoder, autoencoder_lib.VideoAutoencoder):
    raise TypeError(f"the autoencoder stage's model {type(model).__name__} is not a "
                    f"VideoAutoencoder and has no `autoencoder` attribute holding one")
  return autoencoder, step
