"""`python -m videogen.main train`: join a multi-process run if asked, then train every stage.

    python -m videogen.main train --config=experiments/shapes.py:tiny --workdir=runs/tiny

Trains each stage of `config.stages` in order, resuming from the workdir's newest checkpoints; a
stage already trained to its `num_steps` is skipped. `--autoencoder_from=DIR` first copies in
another run's trained autoencoder, so that a new transformer recipe trains on it
(`videogen.train.autoencoder_from`). Exit codes (`videogen.exit_codes`): 0 trained; 143 preempted
(SIGTERM) after saving a checkpoint: rerun to resume; 2 a mistake to fix before training: no
--workdir, an --autoencoder_from without a trained autoencoder or with another than the workdir's, a
config that differs from the checkpoints' (--allow_config_change resumes anyway), unreadable
checkpoints, a missing input (the autoencoder's checkpoint for `--config.stages=dit`, a data set), a
latent cache built for another run, an autoencoder checkpoint or tokenizer that does not fit the
config, a learning-rate scale for a part the stage does not train, a mesh or batch sizes that do not
fit the devices, incomplete multi-process flags; 1 a non-finite loss, or another process's failure
in a step the processes do together.
Each is one line on stderr.
"""

from __future__ import annotations

from absl import logging

from data_pipelines import loader
from videogen import exit_codes
from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from videogen.parallel import mesh as mesh_lib
from videogen.parallel import multihost
from videogen.train import autoencoder_from as autoencoder_from_lib
from videogen.train import checkpointing
from videogen.train import latent_cache
from videogen.train import train_state as train_state_lib
from videogen.train import trainer

# What `trainer.train` raises for a mistake the user fixes (each message says how): reported in
# one line by `report`. Anything else is a bug and keeps its traceback.
USER_ERRORS = (trainer.NonFiniteError, trainer.ConfigChangedError,
               checkpointing.CheckpointRestoreError, loader.BatchSplitError,
               mesh_lib.MeshShapeError, latent_cache.LatentCacheError,
               workdir_lib.WorkdirMismatchError, multihost.PeerFailedError,
               train_state_lib.LearningRateScaleError, FileNotFoundError)


def report(error: BaseException) -> int:
  """Prints one of `USER_ERRORS` on one line of stderr; returns its exit code: `FAILED` for a
  non-finite loss or another process's failure (the run failed), else `REFUSED`."""
  hint = ""
  if isinstance(error, loader.BatchSplitError):
    hint = (" in the bucket's GLOBAL_BATCH (FRAMESxHEIGHTxWIDTH:GLOBAL_BATCH) of "
            "config.data.buckets (the autoencoder stage's own: config.autoencoder_loss.buckets), "
            "or use fewer devices")
  if isinstance(error, (trainer.NonFiniteError, multihost.PeerFailedError)):
    return exit_codes.fail(f"{error}{hint}")
  return exit_codes.refuse(f"{error}{hint}")


def command(experiment: experiment_lib.Experiment, workdir: str | None, *,
            allow_config_change: bool = False, autoencoder_from: str | None = None,
            coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None) -> int:
  """Trains `experiment` in `workdir`, after copying in `autoencoder_from`'s autoencoder
  (`videogen.train.autoencoder_from`); returns the exit code (see the module docstring)."""
  if not workdir:
    return exit_codes.refuse("train needs --workdir=DIR (checkpoints and metrics go there)")
  failed = multihost.join_processes(coordinator_address, num_processes, process_id)
  if failed is not None:
    return failed
  refused = autoencoder_from_lib.take_for_command(
      experiment, workdir, autoencoder_from, allow_config_change=allow_config_change)
  if refused is not None:
    return refused
  try:
    results = trainer.train(experiment, workdir, allow_config_change=allow_config_change)
  except USER_ERRORS as error:
    return report(error)
  for result in results:
    logging.info("stage %s: %s at step %d", result.name, result.status, result.step)
  return report_preemption(results) or exit_codes.DONE


def report_preemption(results: list[trainer.StageResult]) -> int | None:
  """`exit_codes.PREEMPTED`, with its line on stderr, where a stage was preempted; else None."""
  for result in results:
    if result.status == "preempted":
      return exit_codes.preempted(
          f"stage {result.name} saved its checkpoint at step {result.step} on SIGTERM and "
          f"stopped; run the same command to resume")
  return None
