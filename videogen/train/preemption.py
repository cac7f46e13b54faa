"""SIGTERM as a request to save a checkpoint and stop at the next step boundary.

    with PreemptionWatch() as preemption:
      while ...:
        ...one step...
        if preemption.should_stop(step):
          save, then stop

With several processes, JAX's preemption service (started by `jax.distributed.initialize`)
catches the signal and `reached_preemption_sync_point` makes all processes stop at the same step;
a single process uses its own SIGTERM handler.
"""

from __future__ import annotations

import signal
import threading

import jax
from absl import logging
from jax.experimental import multihost_utils


class PreemptionWatch:
  """Turns SIGTERM into a request to save and stop at the next step boundary."""

  def __init__(self):
    self.requested = False
    self._previous = None
    self._installed = False
    self._service_missing = False

  def __enter__(self) -> PreemptionWatch:
    if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
      self._installed = True
    return self

  def _handle(self, signum, frame) -> None:
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint at the end of this step, then stopping")
    self.requested = True

  def should_stop(self, step: int) -> bool:
    """Whether to save and stop after `step` (the same answer on every process)."""
    if jax.process_count() > 1 and not self._service_missing:
      try:
        return multihost_utils.reached_preemption_sync_point(step)
      except RuntimeError as error:  # jax_enable_preemption_service was turned off
        logging.warning("no preemption sync across processes (%s): SIGTERM will not save", error)
        self._service_missing = True
    return self.requested

  def __exit__(self, *exc_info) -> None:
    if self._installed:
      signal.signal(signal.SIGTERM, self._previous)
