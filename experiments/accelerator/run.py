r"""The prepared one-call run on one accelerator: train, evaluate and measure within a time budget.

    python -m experiments.accelerator.run --out=OUT [--cpu] [--set=PATH=VALUE ...]

`experiments/accelerator/run.sh` installs the carried wheels and calls this (see README.md beside
it). On the experiment `experiments/shapes.py:gpu` it:

  1. logs the devices and measures a bfloat16 matmul's FLOP/s (the hardware's friendly peak);
  2. measures the loader (the procedural world rendered by `config.data.num_workers` processes);
  3. trains the autoencoder within `--autoencoder_seconds` of wall clock;
  4. builds the latent cache (rendered and encoded once, timed) and trains the transformer on it
     within `--dit_seconds`;
  5. times each stage's compiled train step (`benchmark.train_step_figures`: XLA's count of the
     global program's FLOPs over the step's measured time, against the matmul), next to the
     steps/s the training itself reached; a timing that fails is recorded and the run goes on;
  6. runs the generation suite and writes a few of its videos as a gallery;
  7. with `--motion_seconds` > 0 (the rehearsal's default; off on the accelerator, where it does
     not fit the call), continues the transformer in the given-frame phase (`MOTION_PHASE`;
     docs/learning_curve.md: it is what makes the caption steer motion) and runs the suite
     again, sampled image first.

A stage that reaches its wall-clock budget is stopped the way a preemption stops it (SIGTERM: the
trainer saves a checkpoint at the end of the step and returns), so a slower device trains fewer
steps instead of overrunning the call; `figures.json` says how many steps each stage reached.

Writes into OUT: figures.json (every measurement, the phases' seconds, the distributions the run
imported), eval_generation.json (the suite's metrics), eval_generation_videos.json (one row per
video), gallery/ (GIFs and mp4s when an ffmpeg is found, and a PNG contact sheet always), and the
same three after the phase (eval_generation_motion.json, eval_generation_motion_videos.json,
gallery_motion/). The workdir (checkpoints, latent cache) stays outside OUT: `--workdir`, default
a temporary folder.

`--cpu` is the rehearsal: the same steps on the CPU with tiny step counts and batches (`CPU`),
float32; a few minutes, nearly all of them compilation.
"""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import json
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from data_pipelines import buckets as buckets_lib
from data_pipelines import video_io
from experiments import shapes
from videogen import cli
from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from videogen.evaluate import benchmark
from videogen.evaluate import generation
from videogen.evaluate import suite as suite_lib
from videogen.generate import pipeline
from videogen.models import attention as attention_lib
from videogen.parallel import mesh as mesh_lib
from videogen.provenance import writer
from videogen.train import latent_cache
from videogen.train import metrics as metrics_lib
from videogen.train import stages as stages_lib
from videogen.train import trainer

VARIANT = "gpu"
FIGURES_FILE = "figures.json"
GALLERY_DIR = "gallery"
# The rehearsal: the gpu preset's code paths (the latent cache, workers, the suite) at a size a
# 2-core CPU runs in a few minutes; float32, which XLA's CPU backend compiles and runs far faster.
CPU: dict[str, Any] = {
    "autoencoder.dtype": "float32", "text_encoder.dtype": "float32", "dit.dtype": "float32",
    "data.buckets": ("9x32x32:4", "1x32x32:8:0.25"),
    "data.num_workers": 2,
    "autoencoder_loss.buckets": ("5x32x32:2",),
    "dit.width": 96, "dit.depth": 2, "dit.num_heads": 2,
    "train.autoencoder.num_steps": 6, "train.autoencoder.log_every": 2,
    "train.autoencoder.warmup_steps": 2,
    "train.dit.num_steps": 6, "train.dit.log_every": 2, "train.dit.warmup_steps": 2,
    "train.dit.checkpoint_every": 6,
    "dit_stage.cache_steps": 4, "dit_stage.eval_caption_clips": 0,
    "sample.num_steps": 2,
    "eval_generation.scenes_per_group": 1, "eval_generation.modes": (),
}
# The accelerator call's own settings. Measured on one H200 (docs/accelerator.md): building the
# cache renders and encodes 790-940 samples/s, so the preset's 500 steps took 163 s of the call;
# 150 steps still outlast the ~800 steps the transformer reaches in its budget.
GPU: dict[str, Any] = {"dit_stage.cache_steps": 150}
# Stage budgets on the accelerator: with install, compilation (about 30 s per program), the cache,
# the step timings and the suite, one call stays under 8 minutes. "motion" is the given-frame
# phase after the dit stage, off by default: on the H200 it spends about 100 s building and
# compiling before its first step, more than the call has left (--motion_seconds=N turns it on).
GPU_SECONDS = {"autoencoder": 60.0, "dit": 120.0, "motion": 0.0}
CPU_SECONDS = {"autoencoder": 120.0, "dit": 120.0, "motion": 120.0}
MOTION = "motion"
# The given-frame phase (docs/learning_curve.md): every clip has its first latent frame given, at
# the highest noise, where only the caption says where objects go; at a constant half of the
# stage's peak learning rate, with an EMA short enough for a phase of a few hundred steps; its
# suite samples a clip's first frame as an image, then the rest.
MOTION_PHASE: dict[str, Any] = {
    "diffusion.condition_probability": 1.0,
    "diffusion.condition_weights": (1.0, 0.0, 0.0, 0.0, 0.0),
    "diffusion.condition_logit_mean": 4.0,
    "diffusion.condition_logit_std": 0.3,
    "train.dit.schedule": "constant",
    "train.dit.warmup_steps": 0,
    "train.dit.ema_decay": 0.99,
    "sample.frame_schedule": "image_first",
}


def say(message: str, *args: Any) -> None:
  """One progress line on stdout (run.sh copies it to OUT/log.txt), with the UTC time."""
  print(time.strftime("%H:%M:%S ", time.gmtime()) + (message % args if args else message),
        flush=True)


def apply_overrides(config: ml_collections.ConfigDict, overrides: dict[str, Any]) -> None:
  """Sets `config.<path> = value` for each item; a string value is read as a Python literal."""
  for path, value in overrides.items():
    if isinstance(value, str):
      try:
        value = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        pass  # a plain string, e.g. "cache"
    *parents, key = path.split(".")
    section = config
    for name in parents:
      section = section[name]
    if key not in section:
      raise KeyError(f"--set {path}: {key!r} is not a field of {'.'.join(parents) or 'config'}; "
                     f"its fields are {', '.join(sorted(section.keys()))}")
    section[key] = value


def attention_check(experiment: experiment_lib.Experiment) -> str | None:
  """Runs the transformer's attention shapes (forward and backward) on the cuDNN backend.

  Returns None when they run (or the device has no cuDNN), else the error, after which the run
  falls back to the XLA backend instead of failing at the first compile.
  """
  if "cudnn" not in attention_lib.available_backends():
    return None
  dit, text = experiment.dit, experiment.text_encoder
  dtype = jnp.dtype(dit.dtype)
  tokens, heads, head_dim = dit.num_tokens, dit.num_heads, dit.head_dim
  q = jnp.ones((2, tokens, heads, head_dim), dtype)
  context = jnp.ones((2, text.max_length, heads, head_dim), dtype)
  context_mask = jnp.arange(text.max_length)[None, None, None, :] < jnp.array([3, 9])[
      :, None, None, None]

  def loss(q, k, v, mask):
    out = attention_lib.dot_product_attention(q, k, v, mask=mask, backend="cudnn")
    return jnp.sum(out.astype(jnp.float32))

  try:
    for k, mask in ((q, None), (context, context_mask)):
      jax.block_until_ready(jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, k, mask))
  except Exception as error:  # pylint: disable=broad-except  (any failure means: use XLA)
    return f"{type(error).__name__}: {error}"
  return None


def _config(overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """The gpu variant of experiments/shapes.py with `overrides`, not yet validated."""
  config = shapes.get_config(VARIANT)
  apply_overrides(config, overrides)
  return config


def build_experiment(overrides: dict[str, Any]) -> experiment_lib.Experiment:
  """The gpu variant of experiments/shapes.py with `overrides`, validated."""
  return experiment_lib.validate(_config(overrides))


def motion_experiment(overrides: dict[str, Any], reached: int) -> experiment_lib.Experiment:
  """The experiment of the given-frame phase: `MOTION_PHASE` on top of `overrides`, for as many
  steps after `reached` as the dit stage plans, at half its peak learning rate."""
  config = _config(overrides)
  planned = config.train[workdir_lib.DIT_STAGE]
  apply_overrides(config, {**MOTION_PHASE, "train.dit.num_steps": reached + planned.num_steps,
                           "train.dit.learning_rate": planned.learning_rate / 2})
  return experiment_lib.validate(config)


class StageDeadline:
  """Sends this process SIGTERM after `seconds`, which the trainer turns into save-and-stop.

  The signal is repeated every second until the stage ends: one that lands before the trainer's
  handler is installed (while the stage builds its state) is ignored, as is one that lands just
  after the stage ended, instead of killing the run.
  """

  def __init__(self, seconds: float):
    self.seconds = seconds
    self.fired = False
    self._done = threading.Event()
    self._thread: threading.Thread | None = None
    self._previous = None

  def _watch(self) -> None:
    if self._done.wait(self.seconds):
      return
    self.fired = True
    logging.warning("wall-clock budget of %.0f s reached: stopping the stage", self.seconds)
    while not self._done.is_set():
      os.kill(os.getpid(), signal.SIGTERM)
      self._done.wait(1.0)

  def __enter__(self) -> StageDeadline:
    self._previous = signal.signal(signal.SIGTERM, lambda signum, frame: None)
    self._thread = threading.Thread(target=self._watch, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc_info) -> None:
    self._done.set()
    self._thread.join()
    signal.signal(signal.SIGTERM, self._previous)


def training_rate(workdir: str, stage: str) -> float | None:
  """The median steps/s of the stage's logged intervals (compilation left out by the trainer)."""
  rates = [row["steps_per_second"] for row in metrics_lib.read_metrics(workdir, stage)
           if "steps_per_second" in row]
  return float(statistics.median(rates)) if rates else None


def mean_batch(buckets: Sequence[Any]) -> float:
  """Samples per step of a bucket mixture, each bucket drawn by its weight."""
  total = sum(bucket.weight for bucket in buckets)
  return sum(bucket.global_batch * bucket.weight for bucket in buckets) / total


def imported_distributions() -> list[str]:
  """The installed distributions whose top-level modules this process has imported."""
  by_module = importlib.metadata.packages_distributions()
  names = {name.partition(".")[0] for name in list(sys.modules)}
  found = set()
  for name in names - set(sys.stdlib_module_names):
    for distribution in by_module.get(name, ()):
      found.add(distribution.lower().replace("_", "-"))
  return sorted(found - {"videogen"})


def find_ffmpeg() -> str | None:
  """The ffmpeg that video_io encodes with, or None (the carried imageio-ffmpeg has none)."""
  try:
    return video_io.ffmpeg_exe()
  except video_io.FfmpegNotFoundError:
    return None


class _Phases:
  """Wall-clock seconds of each phase of the run, logged as each ends; after each, the figures
  so far are written to OUT/figures.json, so that a run stopped by the hard limit keeps them."""

  def __init__(self, figures: dict[str, Any], path: str):
    self.seconds: dict[str, float] = {}
    self.start = time.perf_counter()
    self.figures, self.path = figures, path

  def run(self, name: str, function, *args, **kwargs):
    say("== %s", name)
    start = time.perf_counter()
    result = function(*args, **kwargs)
    self.seconds[name] = round(time.perf_counter() - start, 2)
    say("== %s: %.1f s (%.1f s since the start)", name, self.seconds[name],
        time.perf_counter() - self.start)
    self.figures["seconds"] = self.seconds
    _write_json(self.path, self.figures)
    return result


def _write_json(path: str, value: Any) -> None:
  with open(path, "w", encoding="utf-8") as f:
    json.dump(value, f, indent=1, default=float)
    f.write("\n")


def _train(experiment, workdir, name, mesh, writer_, budget,
           allow_config_change: bool = False) -> dict[str, Any]:
  stage = stages_lib.make_stage(name, experiment)
  with StageDeadline(budget) as deadline:
    result = trainer.train_stage(stage, experiment, workdir, mesh=mesh, writer=writer_,
                                 allow_config_change=allow_config_change)
  return {"status": result.status, "steps": result.step,
          "planned_steps": experiment.train[name].num_steps, "budget_seconds": budget,
          "stopped_by_budget": deadline.fired}


def _cache(experiment, workdir, mesh) -> dict[str, Any]:
  tokenizer = workdir_lib.load_or_train_tokenizer(experiment, workdir)
  start = time.perf_counter()
  latent_cache.open_or_build(experiment, workdir, tokenizer=tokenizer, mesh=mesh,
                             seed=experiment.seed)
  seconds = time.perf_counter() - start
  steps = latent_cache.cache_steps(experiment)
  samples = steps * mean_batch(experiment.data.parsed_buckets())
  return {"steps": steps, "seconds": seconds, "samples_per_s": samples / seconds,
          "disk_bytes": workdir_lib.disk_bytes(workdir_lib.latent_cache_dir(workdir, experiment))}


def time_step(phases: _Phases, experiment: experiment_lib.Experiment, name: str, *,
              workdir: str, mesh: jax.sharding.Mesh, steps: int) -> None:
  """Times the stage's compiled train step (`benchmark.train_step_figures`) into
  `figures["stages"][name]`, next to the rate its training reached and what that consumed.

  A failure is recorded (the stage's "step_error", the run's "failures") instead of raised: one
  measurement must not cost the call its evaluation, and `main` still exits non-zero.
  """
  figures = phases.figures
  stage = figures["stages"][name]
  try:
    step, _ = phases.run(f"time the {name} step", benchmark.train_step_figures, experiment, name,
                         workdir=workdir, mesh=mesh, steps=steps)
  except Exception as error:  # pylint: disable=broad-except  (recorded, and the exit code says so)
    stage["step_error"] = f"{type(error).__name__}: {error}"
    figures.setdefault("failures", []).append(f"time the {name} step: {stage['step_error']}")
    _write_json(phases.path, figures)
    logging.error("timing the %s step failed, going on: %s", name, stage["step_error"])
    return
  rate = training_rate(workdir, name)
  specs = experiment.autoencoder_loss.buckets if name == "autoencoder" else ()
  batch = mean_batch([buckets_lib.parse_bucket(spec) for spec in specs]
                     or experiment.data.parsed_buckets())
  stage.update({
      "step": step,
      "training_steps_per_second": rate,
      # What the training consumed from its input (the loader, or the latent cache).
      "training_samples_per_second": None if rate is None else rate * batch,
      "benchmark_steps_per_second": 1.0 / step["seconds_per_step"],
      # Model FLOPs (the global program's count) per device over one device's matmul: on the
      # GPU, XLA's count of the compiled program leaves out custom calls (cuDNN convolutions and
      # attention: 0.57 GFLOP of the autoencoder step's 46), so it is kept but not compared.
      "step_to_matmul_ratio": step["model_flops_per_second"] / step["devices"]
                              / figures["matmul_bf16"]["flops_per_second"],
  })
  say("%s step: %.3g model FLOP/s (%.3f of the matmul); training reached %s steps/s, the step "
      "alone %.2f", name, step["model_flops_per_second"], stage["step_to_matmul_ratio"], rate,
      1.0 / step["seconds_per_step"])


def _evaluate(experiment, workdir, out, gallery_videos: int, suffix: str = "") -> dict[str, Any]:
  """The generation suite: OUT/eval_generation<suffix>.json, its videos' rows and a gallery
  (OUT/gallery<suffix>/)."""
  generator = pipeline.load(workdir, experiment, progress=False)
  suite = suite_lib.build_suite(experiment.eval_generation, world_config=experiment.data.world,
                                default_shape=tuple(generator.default_shape))
  # No C2PA manifest: c2pa-python does not travel (wheels.txt); the watermark does.
  stamp = writer.Stamp.for_workdir(workdir, manifest=False)
  ffmpeg = find_ffmpeg()
  suffixes = (".mp4", ".gif") if ffmpeg else ()
  if not ffmpeg:
    logging.warning("no ffmpeg on this machine: the gallery is a contact sheet, without videos")
  gallery_dir = os.path.join(out, GALLERY_DIR + suffix)
  os.makedirs(gallery_dir, exist_ok=True)
  shown: list[tuple[str, np.ndarray]] = []

  def on_video(row: dict[str, Any], video: np.ndarray) -> None:
    if row["mode"] != "t2v" or len(shown) >= gallery_videos:
      return
    marked, _ = stamp.mark(video)
    stem = os.path.join(gallery_dir, f"{len(shown):02d}")
    for suffix in suffixes:
      video_io.write_video(stem + suffix, marked, generator.fps)
    shown.append((row["prompt"], marked))

  report = generation.evaluate_generation(generation.generator_fn(generator), suite,
                                          progress=True, on_video=on_video)
  _write_json(os.path.join(out, f"eval_generation{suffix}.json"), report.metrics)
  _write_json(os.path.join(out, f"eval_generation{suffix}_videos.json"), report.rows)
  if shown:
    video_io.write_contact_sheet(os.path.join(gallery_dir, "contact_sheet.png"),
                                 [video for _, video in shown],
                                 labels=[prompt for prompt, _ in shown])
    with open(os.path.join(gallery_dir, "prompts.txt"), "w", encoding="utf-8") as f:
      f.writelines(f"{number:02d} {prompt}\n" for number, (prompt, _) in enumerate(shown))
  say("generation suite:\n%s", generation.format_table(report))
  return {"prompts": len(suite.prompts), "cases": len(suite.cases), "ffmpeg": ffmpeg,
          "gallery_videos": len(shown), "metrics": report.metrics}


def run(out: str, *, cpu: bool = False, overrides: dict[str, Any] | None = None,
        workdir: str | None = None, seconds: dict[str, float] | None = None,
        gallery_videos: int = 8) -> dict[str, Any]:
  """The whole run (see the module docstring); returns what it writes to OUT/figures.json."""
  os.makedirs(out, exist_ok=True)
  workdir = workdir or tempfile.mkdtemp(prefix="videogen_accelerator_")
  seconds = {**(CPU_SECONDS if cpu else GPU_SECONDS), **(seconds or {})}
  figures: dict[str, Any] = {"mode": "cpu" if cpu else "accelerator", "workdir": workdir}
  phases = _Phases(figures, os.path.join(out, FIGURES_FILE))

  # == Devices and the matmul peak ==============================================================
  devices = jax.devices()
  figures["devices"] = [str(device) for device in devices]
  figures["backend"] = jax.default_backend()
  figures["versions"] = {name: importlib.metadata.version(name) for name in ("jax", "jaxlib",
                                                                             "flax", "optax")}
  say("devices: %s; %s", figures["devices"], figures["versions"])
  size = 1024 if cpu else 8192
  figures["matmul_bf16"] = {"size": size, "flops_per_second": phases.run(
      "matmul", benchmark.matmul_flops_per_second, size, jnp.bfloat16)}
  say("bfloat16 matmul %dx%d: %.3g FLOP/s", size, size,
      figures["matmul_bf16"]["flops_per_second"])

  # == Experiment and loader ====================================================================
  experiment = build_experiment({**(CPU if cpu else GPU), **(overrides or {})})
  failure = attention_check(experiment)
  if failure is not None:
    logging.warning("cuDNN attention fails on these shapes (%s): using the XLA backend", failure)
    overrides = {**(overrides or {}), "dit.attention_backend": "xla",
                 "text_encoder.attention_backend": "xla", "autoencoder.attention_backend": "xla"}
    experiment = build_experiment({**(CPU if cpu else GPU), **overrides})
  check_budgets(experiment, seconds)
  figures["attention"] = {"backends": list(attention_lib.available_backends()),
                          "cudnn_failure": failure}
  figures["experiment"] = {"config": f"experiments/shapes.py:{VARIANT}", "cpu": cpu,
                           "overrides": {k: repr(v) for k, v in (overrides or {}).items()}}
  tokenizer = phases.run("tokenizer", workdir_lib.load_or_train_tokenizer, experiment, workdir)
  figures["loader"] = phases.run("loader", benchmark.loader_figures, experiment, tokenizer,
                                 batches=3 if cpu else 8)
  say("loader: %.1f samples/s with %d workers", figures["loader"]["samples_per_s"],
      experiment.data.num_workers)

  # == Training =================================================================================
  mesh = mesh_lib.create_mesh(experiment.mesh)
  stages: dict[str, Any] = {}
  figures["stages"] = stages
  # One writer for the stages and the given-frame phase, which continues the dit stage's rows.
  metric_writer = metrics_lib.MetricWriter(workdir)
  try:
    for name in experiment.stages:
      if name == workdir_lib.DIT_STAGE and experiment.dit_stage.latents == "cache":
        figures["latent_cache"] = phases.run("latent cache", _cache, experiment, workdir, mesh)
      stages[name] = phases.run(f"train {name}", _train, experiment, workdir, name, mesh,
                                metric_writer, seconds[name])

    # == Step figures: XLA's FLOPs per step over the step's time ================================
    for name in experiment.stages:
      time_step(phases, experiment, name, workdir=workdir, mesh=mesh, steps=3 if cpu else 10)

    # == Evaluation and gallery =================================================================
    figures["generation"] = phases.run("generation suite", _evaluate, experiment, workdir, out,
                                       gallery_videos)

    # == The given-frame phase, and the suite sampled image first ===============================
    if seconds.get(MOTION, 0) > 0 and workdir_lib.DIT_STAGE in stages:
      phase = motion_experiment({**(CPU if cpu else GPU), **(overrides or {})},
                                stages[workdir_lib.DIT_STAGE]["steps"])
      figures[MOTION] = phases.run("train the given-frame phase", _train, phase, workdir,
                                   workdir_lib.DIT_STAGE, mesh, metric_writer, seconds[MOTION],
                                   allow_config_change=True)
      figures[MOTION]["overrides"] = {k: repr(v) for k, v in MOTION_PHASE.items()}
      figures["generation_motion"] = phases.run("generation suite, image first", _evaluate, phase,
                                                workdir, out, gallery_videos, suffix="_motion")
  finally:
    metric_writer.close()
  figures["seconds"] = phases.seconds
  figures["total_seconds"] = round(time.perf_counter() - phases.start, 2)
  figures["imported_distributions"] = imported_distributions()
  _write_json(os.path.join(out, FIGURES_FILE), figures)
  say("figures: %s", os.path.join(out, FIGURES_FILE))
  return figures


def check_budgets(experiment: experiment_lib.Experiment, seconds: dict[str, float]) -> None:
  """Raises ValueError, in one line, if a stage of the experiment has no wall-clock budget."""
  unbudgeted = [name for name in experiment.stages if name not in seconds]
  if unbudgeted:
    raise ValueError(f"stages {unbudgeted} have no time budget in this run: run only "
                     f"{sorted(seconds)} here (--set=stages=...), or train them with "
                     f"`python -m videogen.main train`")


def set_up_process(*, cpu: bool) -> None:
  """The process-wide settings of a run: logging, the compilation cache, the platform."""
  logging.set_verbosity(logging.INFO)
  logging.use_absl_handler()
  cli.set_up_logging()  # videogen's own lines (and these), other libraries' warnings
  cli.enable_compilation_cache()
  if cpu:
    jax.config.update("jax_platforms", "cpu")


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", required=True, help="folder the results are written to")
  parser.add_argument("--cpu", action="store_true", help="the rehearsal: tiny steps on the CPU")
  parser.add_argument("--workdir", default=None, help="checkpoints and latent cache (default: a "
                      "temporary folder)")
  parser.add_argument("--set", action="append", default=[], metavar="PATH=VALUE",
                      help="a config override, e.g. --set=train.dit.num_steps=100")
  parser.add_argument("--autoencoder_seconds", type=float, default=None)
  parser.add_argument("--dit_seconds", type=float, default=None)
  parser.add_argument("--motion_seconds", type=float, default=None,
                      help="the given-frame phase after the dit stage; 0 skips it")
  parser.add_argument("--gallery_videos", type=int, default=8)
  args = parser.parse_args(argv)
  overrides = {}
  for item in args.set:
    path, sep, value = item.partition("=")
    if not sep:
      parser.error(f"--set {item!r}: write PATH=VALUE, e.g. --set=train.dit.num_steps=100")
    overrides[path] = value
  budgets = {name: value for name, value in (("autoencoder", args.autoencoder_seconds),
                                             ("dit", args.dit_seconds),
                                             (MOTION, args.motion_seconds)) if value is not None}
  set_up_process(cpu=args.cpu)
  try:  # a wrong override or stage list is one line before anything starts
    check_budgets(build_experiment({**(CPU if args.cpu else GPU), **overrides}),
                  {**(CPU_SECONDS if args.cpu else GPU_SECONDS), **budgets})
  except (KeyError, ValueError) as error:
    print(f"error: {error}", file=sys.stderr)
    return 2
  figures = run(args.out, cpu=args.cpu, overrides=overrides, workdir=args.workdir,
                seconds=budgets, gallery_videos=args.gallery_videos)
  if figures.get("failures"):
    print(f"error: {len(figures['failures'])} measurement(s) failed (figures.json, 'failures'): "
          + "; ".join(figures["failures"]), file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
