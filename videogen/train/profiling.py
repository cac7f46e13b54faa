"""The trainer's profiler window: a `jax.profiler` trace of a few steps, for TensorBoard.

    window = ProfileWindow(config.profile_steps, metrics.tensorboard_dir(workdir, stage))
    window.before_step(step + 1)        # starts the trace when the window opens
    ...run step + 1...
    window.after_step(step + 1, state)  # waits for the step and writes the trace after `last`
    window.close()                      # in a `finally`: never leaves a trace running

The trace lands in LOG_DIR/plugins/profile/<timestamp>/<host>.xplane.pb, which TensorBoard's
profile tab reads (`tensorboard --logdir WORKDIR/tensorboard`). Only process 0 traces: the
processes run the same program, and one trace is what a reader opens.
"""

from __future__ import annotations

import os
from typing import Any

import jax
from absl import logging

from videogen.parallel import multihost


class ProfileWindow:
  """Traces steps `first..last` (inclusive) of `steps = (first, last)`; `()` traces nothing."""

  def __init__(self, steps: tuple[int, ...], log_dir: str, *, enabled: bool | None = None):
    self.first, self.last = steps if steps else (0, -1)
    self.log_dir = log_dir
    self.enabled = bool(steps) and (multihost.is_primary() if enabled is None else enabled)
    self.active = False

  def before_step(self, step: int) -> None:
    """Starts the trace if `step` (about to run) lies in the window; a resumed run joins it."""
    if self.enabled and not self.active and self.first <= step <= self.last:
      logging.info("profiling steps %d-%d into %s", step, self.last, self.log_dir)
      jax.profiler.start_trace(self.log_dir)
      self.active = True

  def after_step(self, step: int, state: Any) -> None:
    """After the window's last step: waits for `state` (the device work) and writes the trace."""
    if self.active and step >= self.last:
      jax.block_until_ready(state)
      self.close()

  def close(self) -> None:
    """Stops and writes a running trace (a run that stops inside the window keeps its steps)."""
    if self.active:
      self.active = False
      jax.profiler.stop_trace()
      logging.info("profile written under %s (tensorboard --logdir %s, profile tab)",
                   self.log_dir, os.path.dirname(self.log_dir))
