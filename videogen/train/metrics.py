"""Metric outputs of a run, written from process 0 only.

  WORKDIR/metrics.jsonl           one JSON object per logged step: {"stage", "step", "loss", ...},
                                  floats at full precision (repr round-trips them exactly). The
                                  trainer's rows hold means over the steps since the previous row.
  WORKDIR/tensorboard/<stage>/    TensorBoard event files, written by tensorboardX (no TensorFlow),
                                  and the trainer's profiler traces (`profile_steps`).

    writer = MetricWriter(workdir)
    writer.write("autoencoder", 10, {"loss": 0.5})
    rows = read_metrics(workdir)             # [{"stage": "autoencoder", "step": 10, "loss": 0.5}]
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

from absl import logging

from videogen.parallel import multihost

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def tensorboard_dir(workdir: str, stage: str) -> str:
  """A stage's TensorBoard run: WORKDIR/tensorboard/<stage> (`tensorboard --logdir` its parent)."""
  return os.path.join(workdir, TENSORBOARD_DIR, stage)


def _scalar(value: Any) -> Any:
  """A JSON-able Python number; NaN and infinities become the strings "nan", "inf", "-inf"."""
  number = float(value)
  if math.isfinite(number):
    return int(number) if isinstance(value, int) else number
  return str(number)


class MetricWriter:
  """Appends metric rows to metrics.jsonl and TensorBoard (no-op on processes other than 0)."""

  def __init__(self, workdir: str, *, enabled: bool | None = None):
    self.workdir = workdir
    self.enabled = multihost.is_primary() if enabled is None else enabled
    self.path = os.path.join(workdir, METRICS_FILE)
    self._tensorboard: dict[str, Any] = {}
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)

  def _summary_writer(self, stage: str, purge_step: int | None = None):
    if stage not in self._tensorboard:
      # Imported here: tensorboardX pulls in protobuf, which only the writing process needs.
      import tensorboardX  # pylint: disable=g-import-not-at-top
      self._tensorboard[stage] = tensorboardX.SummaryWriter(
          tensorboard_dir(self.workdir, stage), purge_step=purge_step, flush_secs=30)
    return self._tensorboard[stage]

  def resume(self, stage: str, step: int) -> None:
    """Forgets rows of `stage` after `step`: they came from a run that stopped before saving them.

    The resumed run writes those steps again, so the file holds one row per (stage, step).
    """
    if not self.enabled:
      return
    self._summary_writer(stage, purge_step=step + 1)
    if not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = f.readlines()
    kept = []
    for line in lines:
      try:
        row = json.loads(line)
      except json.JSONDecodeError:
        continue  # a line cut short by a kill mid-write
      if row.get("stage") == stage and row.get("step", 0) > step:
        continue
      kept.append(json.dumps(row) + "\n")
    if len(kept) != len(lines):
      logging.info("metrics.jsonl: dropped %d rows of stage %s after step %d (not checkpointed)",
                   len(lines) - len(kept), stage, step)
      temporary = self.path + ".tmp"
      with open(temporary, "w") as f:
        f.writelines(kept)
      os.replace(temporary, self.path)

  def write(self, stage: str, step: int, scalars: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    row = {"stage": stage, "step": int(step)}
    row.update({name: _scalar(value) for name, value in scalars.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")
    summary = self._summary_writer(stage)
    for name, value in scalars.items():
      summary.add_scalar(name, float(value), global_step=int(step))

  def flush(self) -> None:
    for summary in self._tensorboard.values():
      summary.flush()

  def close(self) -> None:
    for summary in self._tensorboard.values():
      summary.close()
    self._tensorboard.clear()


def read_metrics(workdir: str, stage: str | None = None) -> list[dict[str, Any]]:
  """The rows of WORKDIR/metrics.jsonl (optionally of one stage), in file order."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [row for row in rows if stage is None or row.get("stage") == stage]
