"""videogen/evaluate/learning_curve.py: which checkpoints, what they cost, and the command end to
end on the tiny trained workdir (two checkpoints, a rerun that skips them, the errors)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import subprocess
import sys

import pytest

from data_pipelines import loader as loader_lib
from experiments import shapes
from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from videogen.evaluate import caption_use
from videogen.evaluate import command
from videogen.evaluate import learning_curve
from videogen.evaluate import summary
from videogen.generate import pipeline
from videogen.train import config_changes
from videogen.train import metrics as metrics_lib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------
# Choosing checkpoints.


def test_select_steps_takes_all_named_or_multiples_and_refuses_unknown_steps():
  saved = [3000, 500, 1000, 1500]
  assert learning_curve.select_steps(saved) == [500, 1000, 1500, 3000]
  assert learning_curve.select_steps(saved, steps=[1500, 500]) == [500, 1500]
  assert learning_curve.select_steps(saved, every=1000) == [1000, 3000]
  assert learning_curve.select_steps(saved, steps=[500], every=1500) == [500, 1500, 3000]
  with pytest.raises(learning_curve.LearningCurveError,
                     match=r"at step 1234 in runs/x; saved steps: 500, 1000, 1500, 3000"):
    learning_curve.select_steps(saved, steps=[1000, 1234], where="runs/x")
  with pytest.raises(learning_curve.LearningCurveError, match="no saved step .* multiple of 700"):
    learning_curve.select_steps(saved, every=700)
  with pytest.raises(learning_curve.LearningCurveError, match="positive"):
    learning_curve.select_steps(saved, every=0)


# ---------------------------------------------------------------------------------------------
# What training cost up to a step.


def test_train_minutes_sum_the_logged_intervals_at_their_own_rates():
  rows = [
      {"stage": "dit", "step": 100, "loss": 2.0, "steps_per_second": 10.0},   # 10 s
      {"stage": "dit", "step": 200, "loss": 1.5, "steps_per_second": 5.0},    # 20 s
      {"stage": "dit", "step": 200, "eval/sample_seconds": 3.0},               # not a train row
      {"stage": "dit", "step": 300, "loss": 1.0},                             # median rate: 20 s
      {"stage": "dit", "step": 400, "loss": 0.8, "steps_per_second": 2.0},    # 50 s
  ]
  timeline = learning_curve.training_timeline(list(reversed(rows)))
  assert [step for step, _, _ in timeline] == [100, 200, 300, 400]
  assert [seconds for _, seconds, _ in timeline] == pytest.approx([10, 30, 50, 100])
  assert learning_curve.at_step(timeline, 200) == (pytest.approx(0.5, abs=1e-4), 1.5)
  assert learning_curve.at_step(timeline, 400) == (pytest.approx(100 / 60, abs=1e-4), 0.8)
  # Between logged rows: the last row's loss, minutes extrapolated at the mean rate so far.
  minutes, loss = learning_curve.at_step(timeline, 250)
  assert loss == 1.5 and minutes == pytest.approx((30 + 50 * 30 / 200) / 60, abs=1e-4)
  assert learning_curve.at_step(timeline, 50) == (None, None)


def test_train_cpu_minutes_sum_the_logged_cpu_seconds_per_step():
  rows = [
      {"stage": "dit", "step": 100, "loss": 2.0, "steps_per_second": 10.0},    # no CPU field
      {"stage": "dit", "step": 200, "loss": 1.5, "cpu_seconds_per_step": 0.2},
      {"stage": "dit", "step": 400, "loss": 0.8, "cpu_seconds_per_step": 0.4},
  ]
  # The load of other processes slows the wall clock, not the CPU seconds: 100 x median 0.3 first.
  cpu = learning_curve.training_timeline(rows, "cpu")
  assert [seconds for _, seconds, _ in cpu] == pytest.approx([30, 50, 130])
  assert learning_curve.at_step(cpu, 400)[0] == pytest.approx(130 / 60, abs=1e-4)
  no_cpu = learning_curve.training_timeline(rows[:1], "cpu")
  assert learning_curve.at_step(no_cpu, 100) == (None, 2.0)


def _config():
  """The tiny experiment with the tiny workdir's smaller transformer and text encoder."""
  config = shapes.get_config("tiny")
  config.dit.update(width=32, depth=1, num_heads=2, frequency_dim=32, context_dim=32,
                    pooled_dim=32)
  config.text_encoder.update(width=32, depth=1, num_heads=2)
  return config


def test_train_flops_count_forward_and_backward_of_every_bucket_by_its_share():
  experiment = experiment_lib.validate(_config())
  video = dataclasses.replace(experiment, data=loader_lib.DataConfig(buckets=("9x32x32:8",)))
  double = dataclasses.replace(experiment, data=loader_lib.DataConfig(buckets=("9x32x32:16",)))
  mixed = dataclasses.replace(experiment, data=loader_lib.DataConfig(
      buckets=("9x32x32:8", "1x32x32:16:0.25")))
  per_sample = sum(c.macs for c in summary.measure(experiment.dit, experiment.text_encoder,
                                                   with_flops=False))
  assert experiment.dit.input_size == (5, 8, 8)  # the 9x32x32 bucket's latent
  # Forward + backward: 3 forwards of 2 FLOPs per multiply-accumulate, per sample.
  assert learning_curve.train_flops_per_step(video) == pytest.approx(6 * 8 * per_sample)
  assert learning_curve.train_flops_per_step(double) == pytest.approx(
      2 * learning_curve.train_flops_per_step(video))
  image = dataclasses.replace(experiment.dit, input_size=(1, 8, 8))
  image_sample = sum(c.macs for c in summary.measure(image, experiment.text_encoder,
                                                     with_flops=False))
  assert image_sample < per_sample
  assert learning_curve.train_flops_per_step(mixed) == pytest.approx(
      6 * (0.8 * 8 * per_sample + 0.2 * 16 * image_sample))


def test_a_frozen_text_encoder_counts_its_forward_only():
  experiment = experiment_lib.validate(_config())
  experiment = dataclasses.replace(experiment,
                                   data=loader_lib.DataConfig(buckets=("9x32x32:8",)))
  frozen = dataclasses.replace(experiment, text_encoder=dataclasses.replace(
      experiment.text_encoder, frozen=True))
  [text, dit] = summary.measure(experiment.dit, experiment.text_encoder, with_flops=False)
  assert text.name == "text_encoder" and text.macs > 0
  assert learning_curve.train_flops_per_step(experiment) == pytest.approx(
      6 * 8 * (text.macs + dit.macs))
  assert learning_curve.train_flops_per_step(frozen) == pytest.approx(
      2 * 8 * (text.macs + 3 * dit.macs))


def test_masked_steps_count_the_transformer_at_the_tokens_they_keep():
  experiment = experiment_lib.validate(_config())
  experiment = dataclasses.replace(
      experiment, data=loader_lib.DataConfig(buckets=("9x32x32:8",)),
      diffusion=dataclasses.replace(experiment.diffusion, mask_ratio=0.5))
  kept = dataclasses.replace(experiment.dit, input_size=(5, 2, 16))  # 5 frames of 8 tokens
  kept_sample = sum(c.macs for c in summary.measure(kept, experiment.text_encoder,
                                                    with_flops=False))
  masked = learning_curve.train_flops_per_step(experiment, masked=True)
  full = learning_curve.train_flops_per_step(experiment)
  assert masked == pytest.approx(6 * 8 * kept_sample) and masked < 0.75 * full
  budget = {"until_step": 12, **learning_curve.flops_budget(experiment)}
  assert learning_curve.train_flops([budget], 12) == pytest.approx(12 * masked)
  unmasked = learning_curve.flops_budget(dataclasses.replace(
      experiment, diffusion=dataclasses.replace(experiment.diffusion, mask_ratio=0.0)))
  assert unmasked["train_flops_per_masked_step"] is None
  assert learning_curve.train_flops([{"until_step": 12, **unmasked}], 12) == \
      pytest.approx(12 * full)


def test_steps_after_a_config_change_cost_what_the_next_checkpoint_was_trained_under(
    monkeypatch):
  # An images-first curriculum: images to step 2,000, then the mix of clips and images, resumed
  # with --allow_config_change; the checkpoint at 3,000 was deleted.
  images = experiment_lib.validate(_config())
  images = dataclasses.replace(images, data=loader_lib.DataConfig(buckets=("1x32x32:16",)))
  mix = experiment_lib.validate(_config())
  saved = {1000: images, 2000: images, 4000: mix, 5000: mix}
  monkeypatch.setattr(workdir_lib, "saved_config", lambda workdir, stage, step:
                      config_changes.experiment_json(saved[step]))
  traced = []
  real_budget = learning_curve.flops_budget
  monkeypatch.setattr(learning_curve, "flops_budget",
                      lambda experiment: traced.append(experiment) or real_budget(experiment))
  schedule = learning_curve.flops_schedule("runs/x", sorted(saved))
  assert len(traced) == 2  # once per distinct config
  image_step = learning_curve.train_flops_per_step(images)
  mix_step = learning_curve.train_flops_per_step(mix)
  assert image_step < mix_step
  assert [budget["until_step"] for budget in schedule] == [1000, 2000, 4000, 5000]
  assert [budget["train_flops_per_step"] for budget in schedule] == pytest.approx(
      [image_step, image_step, mix_step, mix_step])
  assert learning_curve.train_flops(schedule, 1500) == pytest.approx(1500 * image_step)
  assert learning_curve.train_flops(schedule, 3000) == pytest.approx(
      2000 * image_step + 1000 * mix_step)
  assert learning_curve.train_flops(schedule, 6000) == pytest.approx(  # past the last: its cost
      2000 * image_step + 4000 * mix_step)


# ---------------------------------------------------------------------------------------------
# The command on a trained workdir.


def _two_checkpoints(tiny_workdir, tmp_path):
  """A copy of the tiny workdir whose dit stage has checkpoints 1 and 2 (1: a copy of 2)."""
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_workdir, workdir)  # the shared workdir is read-only
  dit = workdir_lib.checkpoint_dir(workdir, workdir_lib.DIT_STAGE)
  shutil.copytree(os.path.join(dit, "2"), os.path.join(dit, "1"))
  return workdir


# ---------------------------------------------------------------------------------------------
# The compare table.


def _report(experiment: str, rows: list[dict]) -> dict:
  return {"experiment": experiment, "rows": rows}


def test_compare_mean_adds_mean_and_sample_sd_at_the_steps_every_run_measured():
  def row(step, shape, motion=None, minutes=10.0):
    return {"step": step, "loss": 1.0, "train_minutes": minutes, "train_cpu_minutes": None,
            "train_flops": 3.84e9 * step, "color_accuracy": 0.9, "shape_accuracy": shape,
            "size_accuracy": 0.6, "direction_accuracy": 0.1, "motion_accuracy": motion,
            "still_accuracy": 0.5, "count_accuracy": 0.6, "count_stability": 0.5,
            "text_token_rank": None}

  reports = [("runs/s0", _report("tiny", [row(1500, 0.2), row(3000, 0.3, motion=0.2)])),
             ("runs/s1", _report("tiny", [row(3000, 0.5, minutes=12.0), row(4500, 0.6)]))]
  table = learning_curve.format_table(reports, mean=True).splitlines()
  header = [cell.strip() for cell in table[0].strip("|").split("|")]
  assert header[7:] == ["colour", "shape", "size", "direction", "motion", "still", "count",
                        "count stability", "text token rank"]
  assert len(table) == 2 + 4 + 1  # every run's rows, then the one step both measured
  mean = dict(zip(header, (cell.strip() for cell in table[-1].strip("|").split("|"))))
  assert mean["run"] == "mean ± sd of 2 runs" and mean["experiment"] == "tiny"
  assert mean["step"] == "3000"
  assert mean["shape"] == "0.4 ± 0.14"  # 0.3 and 0.5: the sample sd, sqrt(0.02)
  assert mean["train minutes"] == "11 ± 1.4"
  assert mean["colour"] == "0.9 ± 0"
  assert mean["motion"] == "0.2"  # one run measured it: its value, no spread
  assert mean["train CPU minutes"] == mean["text token rank"] == "n/a"
  assert mean["train FLOPs"] == "1.15e+13"
  # Without `mean`, no such row; runs that share no step add none.
  assert len(learning_curve.format_table(reports).splitlines()) == 2 + 4
  apart = [reports[0], ("runs/s2", _report("tiny", [row(6000, 0.5)]))]
  assert not any("mean" in line for line in
                 learning_curve.format_table(apart, mean=True).splitlines())


def test_compare_mean_needs_runs_to_average(tmp_path, capsys):
  assert command.evaluate(None, str(tmp_path), what="learning_curve", compare_mean=True) == 2
  error = capsys.readouterr().err
  assert error.count("\n") == 1 and "--compare=" in error
  assert command.evaluate(None, str(tmp_path), what="generation", compare_mean=True) == 2
  assert "--compare_mean applies to --what=learning_curve" in capsys.readouterr().err


def test_errors_say_what_is_missing(tmp_path, capsys):
  assert command.evaluate(None, None, what="learning_curve") == 2
  assert "--workdir" in capsys.readouterr().err
  assert command.evaluate(None, str(tmp_path), what="learning_curve") == 2
  error = capsys.readouterr().err
  assert error.count("\n") == 1 and "no checkpoint of stage 'dit'" in error
  assert "videogen.main train" in error
  assert command.evaluate(None, str(tmp_path), what="generation", every=100) == 2
  assert "--every applies to --what=learning_curve" in capsys.readouterr().err
  assert command.evaluate(None, str(tmp_path), what="learning_curve",
                          checkpoint_steps=["12a"]) == 2
  assert "give step numbers" in capsys.readouterr().err


def test_main_wires_the_learning_curve_and_its_flags(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "videogen.main", "evaluate", f"--workdir={tmp_path}",
       "--what=learning_curve", "--checkpoint_steps=1500,3000", "--every=1500",
       "--compare=runs/a,runs/b", "--compare_mean"], capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr
  assert "no checkpoint of stage 'dit'" in result.stderr


@pytest.mark.slow  # ~20-30 s: 4 prompts sampled in 2 steps at each of 2 checkpoints
def test_learning_curve_evaluates_each_checkpoint_once(tiny_workdir, tiny_workdir_config,
                                                       tmp_path, capsys, monkeypatch, caplog):
  workdir = _two_checkpoints(tiny_workdir, tmp_path)
  tiny_workdir_config.sample.num_steps = 2
  experiment = experiment_lib.validate(tiny_workdir_config)
  loaded = []
  real_load = pipeline.load

  def spy_load(*args, step=None, **kwargs):
    loaded.append(step)
    return real_load(*args, step=step, **kwargs)

  monkeypatch.setattr(pipeline, "load", spy_load)
  assert learning_curve.command(experiment, workdir, scenes_per_group=1, progress=False) == 0
  assert loaded == [1, 2]  # each checkpoint's own weights
  printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
  with open(os.path.join(workdir, learning_curve.LEARNING_CURVE_FILE)) as f:
    report = json.load(f)
  assert report["suite"]["prompts"] == 4 and report["suite"]["scenes_per_group"] == 1
  rows = report["rows"]
  assert [row["step"] for row in rows] == [1, 2] == [row["step"] for row in printed]
  # The tiny workdir logs every step.
  logged = {row["step"]: row["loss"] for row in metrics_lib.read_metrics(workdir, "dit")
            if "loss" in row}
  for row in rows:
    assert row["loss"] == logged[row["step"]]
    # Both checkpoints saved one config: every step at its cost.
    (per_step,) = {budget["train_flops_per_step"] for budget in report["flops_schedule"]}
    assert row["train_flops"] == pytest.approx(row["step"] * per_step)
    assert row["train_minutes"] > 0
    for key in learning_curve.CURVE:
      assert row[key] is None or 0.0 <= row[key] <= 1.0
  assert rows[1]["train_minutes"] > rows[0]["train_minutes"]
  assert rows[0]["color_accuracy"] == rows[1]["color_accuracy"]  # the same weights, prompts, seeds
  # The text encoder's rank is the dit stage's measurement of the checkpoint's encoder.
  generator = real_load(workdir, experiment, step=2, progress=False)
  assert rows[1]["text_token_rank"] == pytest.approx(caption_use.text_token_rank(
      generator.text_encoder, generator.tokenizer,
      shape=tuple(report["suite"][key] for key in ("frames", "height", "width")),
      world_config=experiment.data.world), rel=1e-5)
  assert rows[0]["text_token_rank"] == rows[1]["text_token_rank"] > caption_use.COLLAPSED_RANK
  plot = os.path.join(workdir, learning_curve.CURVES_DIR, learning_curve.PLOT_FILE)
  with open(plot, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE

  # A rerun evaluates nothing already in the file, and keeps its rows.
  loaded.clear()
  assert learning_curve.command(experiment, workdir, scenes_per_group=1, progress=False) == 0
  assert loaded == []
  with open(os.path.join(workdir, learning_curve.LEARNING_CURVE_FILE)) as f:
    assert json.load(f)["rows"] == rows
  # A new checkpoint is the only one evaluated; a collapsed text encoder is warned of, once.
  dit = workdir_lib.checkpoint_dir(workdir, workdir_lib.DIT_STAGE)
  shutil.copytree(os.path.join(dit, "2"), os.path.join(dit, "4"))
  monkeypatch.setattr(learning_curve.caption_use, "text_token_rank", lambda *a, **k: 1.2)
  with caplog.at_level(logging.WARNING):
    assert learning_curve.command(experiment, workdir, scenes_per_group=1, progress=False,
                                  every=4) == 0
  assert loaded == [4]
  assert [record.getMessage() for record in caplog.records if "caption tokens" in
          record.getMessage()] == [f"learning curve, step 4: {caption_use.collapse_warning(1.2)}"]
  capsys.readouterr()

  # Unknown steps and another suite are one line each; nothing is evaluated.
  assert learning_curve.command(experiment, workdir, checkpoint_steps=["3"],
                                progress=False) == 2
  error = capsys.readouterr().err
  assert error.count("\n") == 1 and "at step 3" in error and "saved steps: 1, 2, 4" in error
  assert learning_curve.command(experiment, workdir, scenes_per_group=2, progress=False) == 2
  assert "--scenes_per_group=1 as before" in capsys.readouterr().err
  assert loaded == [4]

  # Two runs side by side: a plot and a markdown table with every row of each, then (as draws
  # of one recipe) their mean at each step.
  other = str(tmp_path / "other")
  os.makedirs(other)
  shutil.copy(os.path.join(workdir, learning_curve.LEARNING_CURVE_FILE), other)
  assert learning_curve.command(experiment, workdir, scenes_per_group=1, progress=False,
                                compare=[other], compare_mean=True) == 0
  with open(os.path.join(workdir, learning_curve.COMPARE_TABLE_FILE)) as f:
    table = f.read().splitlines()
  assert table[0].startswith("| run | experiment | step | train minutes | train CPU minutes | "
                            "train FLOPs |")
  assert table[0].endswith(" | count stability | text token rank |")
  assert len(table) == 2 + 2 * 3 + 3
  assert table[-4].endswith(" | 1.2 |")  # step 4's rank
  assert sum(line.startswith(f"| {other} |") for line in table) == 3
  assert [line.split(" | ")[2] for line in table[-3:]] == ["1", "2", "4"]
  assert table[-1].startswith("| mean ± sd of 2 runs | ") and table[-1].endswith(" | 1.2 ± 0 |")
  compare_plot = os.path.join(workdir, learning_curve.CURVES_DIR,
                              learning_curve.COMPARE_PLOT_FILE)
  with open(compare_plot, "rb") as f:
    assert f.read(8) == PNG_SIGNATURE
