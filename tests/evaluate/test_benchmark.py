"""Tests of the benchmark's pieces that run fast: the matmul, the train step's cost, the JSON, and
each --what on tiny settings."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from videogen import experiment as experiment_lib
from videogen.evaluate import benchmark
from videogen.parallel import mesh as mesh_lib
from videogen.parallel import sharding as sharding_lib
from videogen.provenance import watermark_benchmark

from tests.standin import experiment as standin_experiment
from tests.standin import stage as standin_stage

# The watermark parts' key: the command draws a fresh one, and the detector's false positives (1 in
# 10,000 unmarked videos, watermark.P_THRESHOLD) would fail a test now and then.
WATERMARK_KEY = bytes(range(32))


@pytest.fixture(scope="module")
def experiment():
  return experiment_lib.validate(standin_experiment.get_config("tiny"))


@pytest.fixture(scope="module")
def result(experiment, tmp_path_factory):
  """The whole benchmark of the stand-in experiment (no loader, no sampler) on 8 devices."""
  return benchmark.run_benchmark(experiment, matmul_size=128, train_steps=3, min_seconds=0.05,
                                 workdir=str(tmp_path_factory.mktemp("benchmark")))


def test_matmul_flops_per_second_is_a_plausible_positive_figure():
  flops = benchmark.matmul_flops_per_second(64, min_runs=2, min_seconds=0.01)
  # Between a kFLOP/s and 10 PFLOP/s: a wrong FLOP count or unit would fall outside.
  assert 1e3 < flops < 1e16


def test_a_backend_without_lowered_cost_analysis_is_counted_by_the_cpu_client(monkeypatch):
  # On a PJRT plugin (the GPU) `Lowered.cost_analysis` returns None; the same global HLO is
  # then analysed by the CPU client, which must give the count the backend would have.
  a = jax.numpy.ones((32, 48))
  lowered = jax.jit(lambda x: x @ x.T + 1.0).lower(a)
  expected = benchmark._cost_flops(lowered)
  assert expected >= 2 * 32 * 32 * 48
  monkeypatch.setattr(jax.stages.Lowered, "cost_analysis", lambda self: None)
  assert benchmark._cost_flops(lowered) == expected


def test_timed_runs_meets_both_the_count_and_the_time():
  calls = []
  times = benchmark._timed_runs(lambda: calls.append(1) or np.zeros(1), min_runs=3,
                                min_seconds=0.0)
  assert len(times) == len(calls) == 3 and all(t >= 0 for t in times)


def test_train_step_flops_count_the_whole_mesh(experiment, result, tmp_path):
  """Compiled cost is per device: times the devices it covers the mesh; model FLOPs count once."""
  one_device = mesh_lib.create_mesh(mesh_lib.MeshConfig(), jax.devices()[:1])
  single, _ = benchmark.train_step_figures(experiment, "standin", workdir=str(tmp_path),
                                           mesh=one_device, steps=2, warmup=1, min_seconds=0.0)
  eight = result["train_step"]
  assert eight["devices"] == 8 and single["devices"] == 1
  # The step's work does not depend on how it is partitioned ...
  assert eight["model_flops_per_step"] == single["model_flops_per_step"]
  # ... and on one device the compiled program does that work (XLA may simplify a little).
  assert single["flops_per_step"] == pytest.approx(single["model_flops_per_step"], rel=0.1)
  # Over 8 devices each runs its share plus the replicated optimizer update: more, never less.
  assert eight["flops_per_step"] >= 0.95 * single["flops_per_step"]
  assert eight["flops_per_second"] == pytest.approx(
      eight["flops_per_step"] / eight["seconds_per_step"])


def test_the_step_is_traced_with_the_trainers_activation_sharding(experiment, tmp_path,
                                                                   monkeypatch):
  """The trainer's step traces its loss inside `activation_sharding`; the benchmark must time
  that program, not one without the models' activation constraints."""
  seen = []
  loss = standin_stage.StandinStage.loss

  def recording(self, *args):
    seen.append(sharding_lib.current())
    return loss(self, *args)

  monkeypatch.setattr(standin_stage.StandinStage, "loss", recording)
  mesh = mesh_lib.create_mesh(mesh_lib.MeshConfig(data=2, fsdp=2), jax.devices()[:4])
  benchmark.train_step_figures(experiment, "standin", workdir=str(tmp_path), mesh=mesh, steps=1,
                               warmup=0, min_seconds=0.0)
  assert seen, "the step was never traced"
  context = seen[0]
  assert context is not None, "traced outside activation_sharding"
  assert context.mesh is mesh and context.rules == experiment.mesh.rules
  assert context.sequence_parallel == experiment.mesh.sequence_parallel


@pytest.mark.slow  # ~30-60 s: three tiny transformer steps compiled
def test_a_scanned_transformer_is_counted_once_per_layer(tiny_workdir_config, tmp_path,
                                                          monkeypatch):
  """XLA's cost analysis counts a scanned loop's body once: the benchmark must not."""
  # The trainer's mesh axes: the transformer's activations name the "sequence" axis.
  one_device = mesh_lib.create_mesh(mesh_lib.MeshConfig(), jax.devices()[:1])
  tiny_workdir_config.dit.depth = 3

  def figures(scan, name):
    tiny_workdir_config.dit.scan_layers = scan
    result, _ = benchmark.train_step_figures(
        experiment_lib.validate(tiny_workdir_config), "dit", workdir=str(tmp_path / name),
        mesh=one_device, steps=1, warmup=0, min_seconds=0.0)
    return result

  scanned, unrolled = figures(True, "scanned"), figures(False, "unrolled")
  assert scanned["model_flops_per_step"] == pytest.approx(unrolled["model_flops_per_step"],
                                                          rel=1e-3)
  assert scanned["flops_per_step"] == pytest.approx(unrolled["flops_per_step"], rel=0.1)
  # Without the unrolled count, XLA's figure for the scanned step is lower: what this guards.
  monkeypatch.setattr(benchmark, "_with_unrolled_layers", lambda experiment: None)
  naive = figures(True, "naive")
  assert naive["model_flops_per_step"] < 0.9 * unrolled["model_flops_per_step"]


def test_result_json_has_every_field_and_names_what_is_unavailable(result):
  parsed = json.loads(json.dumps(result))
  for key in ("matmul_flops_per_second", "train_step_flops_per_second", "train_to_matmul_ratio"):
    assert parsed[key] > 0, key
  # On CPU the mesh's devices share the processor the matmul used whole.
  assert parsed["train_to_matmul_ratio"] == pytest.approx(
      parsed["train_step_flops_per_second"] / parsed["matmul_flops_per_second"])
  # The stand-in experiment has no sampler and no video loader: null, with the reason.
  assert parsed["sampler_real_time_factor"] is None and parsed["loader_samples_per_second"] is None
  assert "no 'dit' stage" in parsed["unavailable"]["sampler"]
  assert "config.data" in parsed["unavailable"]["loader"]
  assert parsed["autoencoder_encode_frames_per_second"] is None
  assert "config.autoencoder" in parsed["unavailable"]["autoencoder"]
  assert parsed["what"] == "all"
  assert parsed["train_step"]["params_and_optimizer_bytes_per_device"] > 0
  table = benchmark.format_table(result)
  assert "train / matmul" in table and "sampler: unavailable" in table


def test_accelerators_compare_per_device():
  part = {"matmul": {"flops_per_second": 100.0},
          "train_step": {"flops_per_second": 400.0, "model_flops_per_second": 300.0,
                         "devices": 8}}
  # On a GPU the model FLOPs count: the compiled program's count misses cuDNN's calls.
  assert benchmark.headline_figures({**part, "platform": "gpu"})["train_to_matmul_ratio"] == 0.375
  assert benchmark.headline_figures({**part, "platform": "tpu"})["train_to_matmul_ratio"] == 0.5
  assert benchmark.headline_figures({**part, "platform": "cpu"})["train_to_matmul_ratio"] == 4.0


def test_a_stage_that_needs_missing_files_is_reported_unavailable_not_faked(experiment,
                                                                            monkeypatch, tmp_path):
  def needs_files(*args, **kwargs):
    raise FileNotFoundError("no checkpoint of stage 'autoencoder' in /nowhere")

  monkeypatch.setattr(benchmark, "train_step_figures", needs_files)
  parsed = benchmark.run_benchmark(experiment, what="train_step", matmul_size=64,
                                   min_seconds=0.01, workdir=str(tmp_path))
  assert parsed["train_step"] is None and parsed["train_step_flops_per_second"] is None
  assert parsed["train_to_matmul_ratio"] is None
  assert parsed["unavailable"]["train_step"] == (
      "stage 'standin' needs files this run lacks (no checkpoint of stage 'autoencoder' in "
      "/nowhere)")
  assert parsed["matmul_flops_per_second"] > 0


def test_layouts_time_the_step_on_each_mesh_and_fsdp_holds_a_share_per_device(experiment,
                                                                                 tmp_path):
  result = benchmark.run_benchmark(experiment, what="train_step", layouts=("1:1x1x1", "8:1x8x1"),
                                   matmul_size=64, train_steps=1, min_seconds=0.0,
                                   workdir=str(tmp_path))
  one, fsdp = result["layouts"]
  assert (one["layout"], one["devices"], fsdp["devices"]) == ("1:1x1x1", 1, 8)
  assert "fsdp=8" in fsdp["mesh"] and fsdp["seconds_per_step"] > 0
  # FSDP shards the parameters and their optimizer state: each device holds well under the whole.
  assert (fsdp["params_and_optimizer_bytes_per_device"]
          < 0.5 * one["params_and_optimizer_bytes_per_device"])
  # Only the train step was asked for: no other part ran, none is reported unavailable.
  assert result["unavailable"] == {} and "loader" not in result and "sampler" not in result
  table = benchmark.format_table(result)
  assert "params+opt MiB/dev" in table and "fsdp=8" in table


def test_bad_options_are_usage_errors_before_anything_runs(experiment, capsys):
  assert benchmark.command(experiment, None, what="speling") == 2
  assert "choose one of: all, train_step" in capsys.readouterr().err
  assert benchmark.command(experiment, None, what="train_step", layouts=["8:1x8"]) == 2
  assert "DEVICES:DATAxFSDPxTENSOR" in capsys.readouterr().err
  assert benchmark.command(experiment, None, what="train_step", layouts=["64:64x1x1"]) == 2
  assert "xla_force_host_platform_device_count=64" in capsys.readouterr().err
  assert benchmark.command(experiment, None, stage="dit") == 2
  assert "not a stage of" in capsys.readouterr().err


def test_the_autoencoder_part_prints_its_figures_and_the_json_last(tiny_workdir_config, capsys):
  experiment = experiment_lib.validate(tiny_workdir_config)
  assert benchmark.command(experiment, None, what="autoencoder") == 0
  out = capsys.readouterr().out.strip().splitlines()
  parsed = json.loads(out[-1])
  assert parsed["what"] == "autoencoder" and parsed["unavailable"] == {}
  # One device's share of the first bucket, 9x32x32:8 over the 8 test devices.
  assert parsed["autoencoder"]["shape"] == [1, 9, 32, 32]
  assert parsed["autoencoder_encode_frames_per_second"] > 0
  assert parsed["autoencoder_decode_frames_per_second"] > 0
  assert parsed["train_step_flops_per_second"] is None and parsed["matmul_flops_per_second"] is None
  assert any(line.startswith("  autoencoder 1x9x32x32") for line in out)


def test_the_loader_part_measures_the_experiments_data(tiny_workdir_config, tmp_path):
  experiment = experiment_lib.validate(tiny_workdir_config)
  result = benchmark.run_benchmark(experiment, what="loader", loader_batches=2,
                                   workdir=str(tmp_path))
  assert result["loader"]["buckets"] == ["9x32x32:8"] and result["unavailable"] == {}
  assert result["loader_samples_per_second"] == pytest.approx(
      8 * result["loader"]["batches_per_s"])
  assert "loader 9x32x32:8" in benchmark.format_table(result)


@pytest.mark.slow  # ~20-40 s: a fresh tiny transformer compiled for one clip's sampling
def test_the_generation_part_times_a_freshly_initialised_sampler(tiny_workdir_config, tmp_path):
  tiny_workdir_config.sample.num_steps = 2
  experiment = experiment_lib.validate(tiny_workdir_config)
  result = benchmark.run_benchmark(experiment, what="generation", workdir=str(tmp_path))
  assert result["unavailable"] == {} and "train_step" not in result
  assert result["sampler"]["shape"] == [9, 32, 32] and result["sampler"]["steps"] == 2
  assert result["sampler_real_time_factor"] == result["sampler"]["real_time_factor"] > 0


def test_main_wires_the_benchmark_command_and_its_flags():
  result = subprocess.run([sys.executable, "-m", "videogen.main", "benchmark"],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode != 0
  assert "benchmark needs --config" in result.stderr
  result = subprocess.run([sys.executable, "-m", "videogen.main", "benchmark",
                           "--config=experiments/shapes.py:tiny", "--what=speling"],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr
  assert "unknown --what='speling'; choose one of: all, train_step" in result.stderr


def test_the_watermark_part_measures_world_clips_at_each_size(experiment, capsys):
  conditions = {name: watermark_benchmark.CONDITIONS[name] for name in ("mp4", "crop_10%")}
  results = benchmark.watermark_figures(experiment, None, videos=1, key=WATERMARK_KEY,
                                        conditions=conditions)
  assert list(results) == ["32x32", "64x64", "128x128"]
  for measured in results.values():
    assert measured["videos"] == 1
    assert measured["null_videos"] == benchmark.WATERMARK_NULLS_PER_VIDEO  # its original + more
    assert measured["accuracies"] is None  # world clips have no prompts to score against
    assert measured["psnr_min"] >= 40.0 and measured["false_positive_rate"] == 0.0
    assert measured["conditions"]["mp4"]["payload_rate"] == 1.0
  assert benchmark.command(experiment, None, what="watermark", watermark_videos=0) == 2
  assert "at least 1 video" in capsys.readouterr().err
  assert benchmark.command(experiment, None, what="train_step", watermark_videos=4) == 2
  assert "--watermark_videos applies to --what=watermark" in capsys.readouterr().err
  with pytest.raises(ValueError, match="watermark_figures"):
    benchmark.run_benchmark(experiment, what="watermark")


@pytest.mark.slow  # ~20-40 s: the tiny workdir's sampler compiled for one clip
def test_the_watermark_part_adds_the_workdirs_generated_videos(experiment, tiny_workdir):
  conditions = {"mp4": watermark_benchmark.CONDITIONS["mp4"]}
  results = benchmark.watermark_figures(experiment, tiny_workdir, videos=1, key=WATERMARK_KEY,
                                        conditions=conditions)
  generated = results["generated 9x32x32"]
  assert generated["videos"] == 1 and generated["psnr_min"] >= 40.0
  assert generated["false_positive_rate"] == 0.0
  assert generated["null_videos"] == benchmark.WATERMARK_NULLS_PER_VIDEO  # generated, unmarked
  accuracies = generated["accuracies"]  # the analyzer's, unmarked and watermarked, per attribute
  assert {"color_accuracy", "shape_accuracy"} <= set(accuracies)
  assert all(0.0 <= v["unmarked"] <= 1.0 and 0.0 <= v["marked"] <= 1.0
             for v in accuracies.values())
  for written in ("benchmark_watermark.json", "provenance"):  # read, never written to
    assert not os.path.exists(os.path.join(tiny_workdir, written))
