"""`python -m videogen.main train`: join a multi-process run if asked, then train every stage.

    python -m videogen.main train --config=experiments/shapes.py:tiny --workdir=runs/tiny

Exit codes: 0 trained (or preempted after a save: rerun to resume), 1 non-finite loss,
2 config changed, checkpoints unreadable or no --workdir.
"""

from __future__ import annotations

import sys

from absl import logging

from videogen import experiment as experiment_lib
from videogen.parallel import multihost
from videogen.train import checkpointing
from videogen.train import trainer


def command(experiment: experiment_lib.Experiment, workdir: str | None, *,
            allow_config_change: bool = False, coordinator_address: str | None = None,
            num_processes: int | None = None, process_id: int | None = None) -> int:
  """Trains `experiment` in `workdir`; returns the exit code (see the module docstring)."""
  if not workdir:
    print("train needs --workdir=DIR (checkpoints and metrics go there)", file=sys.stderr)
    return 2
  multihost.initialize(coordinator_address, num_processes, process_id)
  multihost.quiet_secondary_logging()
  try:
    results = trainer.train(experiment, workdir, allow_config_change=allow_config_change)
  except (trainer.NonFiniteError, trainer.ConfigChangedError,
          checkpointing.CheckpointRestoreError) as error:
    logging.error("%s", error)
    print(f"error: {error}", file=sys.stderr)
    return 1 if isinstance(error, trainer.NonFiniteError) else 2
  for result in results:
    logging.info("stage %s: %s at step %d", result.name, result.status, result.step)
  return 0
