"""A run's directory: where everything lives, and reading back what a trained run left there.

    WORKDIR/
      checkpoints/<stage>/<step>/   one Orbax checkpoint per saved step (`train.checkpointing`)
      tokenizer.model               the sentencepiece model the dit stage trains (or
                                    config.tokenizer.model_path when set)
      latent_cache/                 latents of the frozen autoencoder (config.dit_stage.cache_dir)
      metrics.jsonl, tensorboard/, curves/, samples/, gallery/

Every module that needs one of these paths, the newest step of a stage, the experiment a
checkpoint was trained with, or a trained model's (EMA) weights on a mesh asks this module.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
from absl import logging
from flax import nnx

from videogen import experiment as experiment_lib
from videogen.models import autoencoder as autoencoder_lib
from videogen.parallel import mesh as mesh_lib
from videogen.parallel import sharding as sharding_lib
from videogen.train import checkpointing

CHECKPOINTS_DIR = "checkpoints"
TOKENIZER_FILE = "tokenizer.model"
LATENT_CACHE_DIR = "latent_cache"


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


def latent_cache_dir(workdir: str, experiment: experiment_lib.Experiment) -> str:
  """The latent cache: config.dit_stage.cache_dir if set, else WORKDIR/latent_cache."""
  return experiment.dit_stage.cache_dir or os.path.join(workdir, LATENT_CACHE_DIR)


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
  step = require_step(workdir, stage) if step is None else step
  mesh = mesh_lib.create_mesh(experiment.mesh) if mesh is None else mesh
  trainable = "ema_params" if use_ema else "params"
  targets = {name: sharding_lib.with_shardings(
                 tree, sharding_lib.tree_shardings(tree, mesh, experiment.mesh.rules))
             for name, tree in ((trainable, params), ("frozen", frozen))}
  checkpointer = checkpointing.Checkpointer(checkpoint_dir(workdir, stage), read_only=True)
  try:
    restored = checkpointer.restore_subtrees(step, targets)
  finally:
    checkpointer.close()
  logging.info("restored %s step %d onto mesh %s", checkpoint_dir(workdir, stage), step,
               mesh_lib.describe(mesh))
  return nnx.merge(graphdef, restored[trainable], restored["frozen"]), step
