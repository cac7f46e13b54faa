"""videogen/train/metrics.py: metrics.jsonl at full precision, TensorBoard, resume clean-up."""

from __future__ import annotations

import json
import os

import numpy as np

from videogen.train import metrics as metrics_lib


def test_rows_hold_stage_step_and_full_precision_floats(tmp_path):
  writer = metrics_lib.MetricWriter(str(tmp_path), enabled=True)
  loss = np.float32(0.123456789)
  writer.write("standin", 3, {"loss": loss, "grad_norm": 1.0 / 3.0, "bad": float("nan")})
  writer.close()
  (row,) = metrics_lib.read_metrics(str(tmp_path))
  assert row["stage"] == "standin" and row["step"] == 3
  assert np.float32(row["loss"]) == loss and row["loss"] == float(loss)
  assert row["grad_norm"] == 1.0 / 3.0
  assert row["bad"] == "nan"


def test_tensorboard_event_files_per_stage(tmp_path):
  writer = metrics_lib.MetricWriter(str(tmp_path), enabled=True)
  writer.write("autoencoder", 1, {"loss": 1.0})
  writer.write("dit", 1, {"loss": 2.0})
  writer.close()
  for stage in ("autoencoder", "dit"):
    files = os.listdir(tmp_path / "tensorboard" / stage)
    assert any(name.startswith("events.out.tfevents") for name in files)


def test_resume_drops_rows_after_the_checkpoint_of_that_stage_only(tmp_path):
  writer = metrics_lib.MetricWriter(str(tmp_path), enabled=True)
  for step in range(1, 6):
    writer.write("standin", step, {"loss": float(step)})
  writer.write("other", 9, {"loss": 9.0})
  writer.close()
  with open(tmp_path / metrics_lib.METRICS_FILE, "a") as f:
    f.write('{"stage": "standin", "st')  # a kill in the middle of a write
  writer = metrics_lib.MetricWriter(str(tmp_path), enabled=True)
  writer.resume("standin", 3)
  writer.write("standin", 4, {"loss": 40.0})
  writer.close()
  rows = [(row["stage"], row["step"], row["loss"]) for row in
          metrics_lib.read_metrics(str(tmp_path))]
  assert rows == [("standin", 1, 1.0), ("standin", 2, 2.0), ("standin", 3, 3.0),
                  ("other", 9, 9.0), ("standin", 4, 40.0)]
  assert metrics_lib.read_metrics(str(tmp_path), "other") == [
      {"stage": "other", "step": 9, "loss": 9.0}]


def test_a_disabled_writer_writes_nothing(tmp_path):
  writer = metrics_lib.MetricWriter(str(tmp_path / "run"), enabled=False)
  writer.write("standin", 1, {"loss": 1.0})
  writer.resume("standin", 0)
  writer.close()
  assert not os.path.exists(tmp_path / "run")


def test_rows_are_one_json_object_per_line(tmp_path):
  writer = metrics_lib.MetricWriter(str(tmp_path), enabled=True)
  writer.write("standin", 1, {"loss": 0.5})
  writer.write("standin", 2, {"loss": 0.25})
  writer.close()
  lines = (tmp_path / metrics_lib.METRICS_FILE).read_text().splitlines()
  assert [json.loads(line)["loss"] for line in lines] == [0.5, 0.25]
