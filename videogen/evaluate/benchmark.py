r"""Speed figures of an experiment: the train step, sampling, loading, the autoencoder.

    python -m videogen.main benchmark --config=experiments/shapes.py:tiny
    python -m videogen.main benchmark --config=experiments/shapes.py:small --what=generation
    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m videogen.main benchmark \
        --config=experiments/shapes.py:tiny --what=train_step --layouts=1:1x1x1,8:8x1x1,8:1x8x1

`--what` picks the part (`WHAT`); "all" (the default) runs every part on the experiment's own mesh.
Each part that cannot run for this experiment (no diffusion stage, no data or autoencoder section,
a module not built yet) is reported as null with the reason under "unavailable", never as a
made-up number. Prints a table and, as its last line, one JSON object with these headline figures
(null for a part not run):

  matmul_flops_per_second  (train_step)
      A large square matmul (4096 x 4096 by default, in the model's compute dtype) on one device,
      timed after a warm-up: what this hardware reaches on the friendliest possible work.
  train_step_flops_per_second  (train_step)
      The compiled train step's FLOPs (XLA's `compile().cost_analysis()` of the exact program:
      forward, backward, optimizer, rematerialised recomputation included) over the whole mesh,
      divided by its measured step time. XLA counts a scanned layer stack's body once, so a
      transformer with `scan_layers` is counted from the same step with its layers unrolled.
      The part also reports the compile time and the bytes of parameters + optimizer state (and
      of the EMA copy) one device holds; `--layouts` repeats it on other meshes (on fake CPU
      devices the devices share the host's cores: the step time shows the sharding overhead).
  train_step_model_flops_per_second  (train_step)
      The same with the step's work counted once (the cost of the global program before
      partitioning), which work replicated over a mesh's devices does not inflate; on one device
      the two agree.
  train_to_matmul_ratio  (train_step)
      train_step_flops_per_second over the matmul's: an MFU-like figure against a measured (not a
      datasheet) peak. On CPU every device is a share of one processor, which the matmul used
      whole, so the whole mesh is compared with it; on accelerators, per device. On a GPU the
      model FLOPs count (XLA's count of the compiled program leaves out cuDNN's calls).
  sampler_real_time_factor  (generation)
      Seconds of video per second of compute for one text-to-video clip of the training shape
      (randomly initialised weights: the cost does not depend on them), after a warm-up clip that
      compiles.
  loader_samples_per_second  (loader)
      The experiment's data pipeline (`config.data`: its buckets, workers, ...), through
      `data_pipelines.benchmark.measure`.
  autoencoder_encode_frames_per_second, autoencoder_decode_frames_per_second  (autoencoder)
      The experiment's autoencoder on random videos of its first data bucket, one device's share
      of the batch, through `videogen.evaluate.autoencoder_throughput`.

The train step benchmarked is `--stage`'s, by default the experiment's "dit" stage when it has
one, else its last.

`--what=watermark` (not part of "all") measures the invisible watermark instead
(`videogen.provenance.watermark_benchmark`): `--watermark_videos` procedural world clips at each
of 32x32, 64x64 and 128x128 and, when `--workdir` holds a trained model, as many of its generated
videos at its native size, prompted with the generation suite's captions (made unmarked, then
marked by the benchmark). Each is marked with a fresh random key (never the workdir's), saved as
mp4 and put through re-encoding, rescaling, cropping, brightness changes, halving and GIF
conversion; the originals and 4 times as many more unmarked videos per set (world clips, or
generated videos with the watermark off) measure the false positives. The generated set is also
scored by the analyzer against its prompts (`scoring.accuracies`), unmarked and watermarked.
Prints `watermark_benchmark.format_table`, then the results as one JSON line; with --workdir,
also WORKDIR/benchmark_watermark.json. The issue's full sample sizes (200 videos per set, 1000
null videos) are `--watermark_videos=200` (an hour or more on a CPU; docs/provenance.md).

`--what=sequence_parallel` (not part of "all") prints the per-device memory of attention with its
tokens split over the mesh's "sequence" axis, for Ulysses and the ring at sequence sizes 1, 2, 4
and 8 (`videogen.evaluate.sequence_benchmark`: compiled memory analyses of 8192 tokens with the
experiment's transformer heads), then the figures as one JSON line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import tempfile
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.extend
import jax.numpy as jnp
# jax has no public cost analysis of a lowered program on a PJRT plugin's backend (_lowered_cost).
from jax._src.lib import _jax as xla_extension
import numpy as np
from absl import logging
from flax import nnx

from data_pipelines import benchmark as loader_benchmark
from data_pipelines import loader
from data_pipelines import tokenizer as tokenizer_lib
from data_pipelines.shapes import world
from videogen import exit_codes
from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from videogen.evaluate import autoencoder_throughput
from videogen.evaluate import scoring
from videogen.evaluate import sequence_benchmark
from videogen.evaluate import suite as suite_lib
from videogen.generate import modes
from videogen.generate import pipeline
from videogen.parallel import memory as memory_lib
from videogen.parallel import mesh as mesh_lib
from videogen.parallel import sharding as sharding_lib
from videogen.provenance import watermark_benchmark
from videogen.train import stages as stages_lib
from videogen.train import trainer as trainer_lib
from videogen.train import train_state as train_state_lib

# The stage whose train step and sampler are measured when the experiment has it.
DIFFUSION_STAGE = "dit"
# The parts `--what` names, in the order "all" runs them.
PARTS: tuple[str, ...] = ("train_step", "generation", "loader", "autoencoder")
# Measures the watermark, not speed: asked for by name only, never part of "all".
WATERMARK = "watermark"
# Measures the per-device memory of sequence-parallel attention: asked for by name only.
SEQUENCE_PARALLEL = "sequence_parallel"
WHAT: tuple[str, ...] = ("all",) + PARTS + (WATERMARK, SEQUENCE_PARALLEL)
WATERMARK_SIZES: tuple[int, ...] = (32, 64, 128)
WATERMARK_FRAMES = 17
WATERMARK_VIDEOS = 8  # per set: a few minutes on a CPU
# Null (unwatermarked) videos per watermarked one: --watermark_videos=200 gives the 1000.
WATERMARK_NULLS_PER_VIDEO = 5


def _timed_runs(run: Callable[[], Any], *, min_runs: int, min_seconds: float) -> list[float]:
  """Seconds of each call of `run` (each waited for), at least `min_runs` and `min_seconds`."""
  times: list[float] = []
  while len(times) < min_runs or sum(times) < min_seconds:
    start = time.perf_counter()
    jax.block_until_ready(run())
    times.append(time.perf_counter() - start)
  return times


def matmul_flops_per_second(size: int = 4096, dtype: Any = jnp.float32, *,
                            device: jax.Device | None = None, min_runs: int = 3,
                            min_seconds: float = 1.0) -> float:
  """FLOP/s of a [size, size] x [size, size] matmul on one device (2 size^3 FLOPs per call).

  Compiled and run once before timing; the median of the timed calls counts.
  """
  device = device or jax.devices()[0]
  keys = jax.random.split(jax.random.key(0))
  a, b = (jax.device_put(jax.random.normal(k, (size, size), dtype), device) for k in keys)
  matmul = jax.jit(jnp.matmul).lower(a, b).compile()
  jax.block_until_ready(matmul(a, b))
  times = _timed_runs(lambda: matmul(a, b), min_runs=min_runs, min_seconds=min_seconds)
  return 2.0 * size ** 3 / float(np.median(times))


def _lowered_cost(lowered: Any) -> Any:
  """XLA's cost analysis of a lowered (global, unoptimised) program, on any backend.

  A backend reached through a PJRT plugin (the GPU) has no cost analysis of lowered programs
  (jax raises NotImplementedError, and `Lowered.cost_analysis` returns None); the same HLO
  module is then analysed by the CPU client, which counts an unoptimised program's operations
  the same way. A custom call (cuDNN attention) counts no FLOPs on either.
  """
  cost = lowered.cost_analysis()
  if cost is not None:
    return cost
  module = lowered.compiler_ir("hlo").as_hlo_module()
  return xla_extension.hlo_module_cost_analysis(jax.extend.backend.get_backend("cpu"), module)


def _cost_flops(program: Any) -> float:
  """FLOPs of one call of a lowered (global) or compiled (per-device) program."""
  cost = _lowered_cost(program) if isinstance(program, jax.stages.Lowered) else (
      program.cost_analysis())
  if isinstance(cost, (list, tuple)):  # older jax: one dict per program
    cost = cost[0] if cost else {}
  flops = (cost or {}).get("flops")
  if flops is None or flops <= 0:
    raise ValueError(f"XLA's cost analysis of the train step has no FLOP count on this backend "
                     f"({jax.default_backend()}): got {cost!r}")
  return float(flops)


def _with_unrolled_layers(experiment: experiment_lib.Experiment
                          ) -> experiment_lib.Experiment | None:
  """The experiment with its transformer's layer stack unrolled; None when nothing is scanned."""
  if not experiment.has("dit") or not experiment.dit.scan_layers:
    return None
  return dataclasses.replace(experiment, dit=dataclasses.replace(experiment.dit, scan_layers=False))


def _traced_step_flops(experiment: experiment_lib.Experiment, stage_name: str,
                       mesh: jax.sharding.Mesh, rules: Any, batch: dict[str, jax.Array]) -> float:
  """FLOPs of the stage's global train step, traced on abstract parameters (nothing is
  allocated, compiled or run)."""
  stage = stages_lib.make_stage(stage_name, experiment)
  config = experiment.train[stage_name]
  tx = train_state_lib.make_optimizer(config)
  state = jax.eval_shape(lambda: train_state_lib.init_train_state(stage, tx, experiment.seed))
  graphdef, _, _ = train_state_lib.abstract_model(stage)
  step_fn = train_state_lib.make_train_step(
      stage, graphdef, tx, config, mesh=mesh, rules=rules,
      sequence_parallel=experiment.mesh.sequence_parallel)
  return _cost_flops(jax.jit(step_fn).lower(state, batch))


def traced_step_flops(experiment: experiment_lib.Experiment, stage_name: str,
                      batch: dict[str, Any], *, mesh: jax.sharding.Mesh | None = None) -> float:
  """Model FLOPs of the stage's global train step on `batch` (arrays or `jax.ShapeDtypeStruct`s),
  a scanned layer stack counted once per layer; nothing is allocated, compiled or run."""
  mesh = mesh_lib.create_mesh(experiment.mesh) if mesh is None else mesh
  counted = _with_unrolled_layers(experiment) or experiment
  return _traced_step_flops(counted, stage_name, mesh, experiment.mesh.rules, batch)


def train_step_figures(experiment: experiment_lib.Experiment, stage_name: str, *, workdir: str,
                       mesh: jax.sharding.Mesh | None = None, steps: int = 5,
                       warmup: int = 2, min_seconds: float = 1.0
                       ) -> tuple[dict[str, Any], nnx.Module]:
  """Compiles the stage's train step as the trainer does and times it on one fixed batch.

  The program is the trainer's (`trainer.StepCompiler`): where the stage has trained in this
  process or into the compilation cache, compiling it is a cache hit. The batch is the stage's
  first (its bucket is the one the loader draws for step 0); the parameters are the stage's
  initial ones (the frozen ones too: their values do not change the cost).

  Args:
    experiment: the validated experiment.
    stage_name: which stage (must have a `config.train.<stage>` section).
    workdir: scratch directory for whatever the stage's data pipeline writes (a tokenizer).
    mesh: default: the experiment's mesh over all devices.
    steps: steps dispatched back to back in each timed run (at least 3 runs; the median run,
      over `steps`, is the step's time).
    warmup: untimed steps after compilation.
    min_seconds: keep timing steps until they took this long in all.

  Returns:
    ({"stage", "devices", "mesh", "flops_per_step", "seconds_per_step", "flops_per_second",
      "model_flops_per_step", "model_flops_per_second", "compile_seconds",
      "params_and_optimizer_bytes_per_device", "ema_bytes_per_device", "batch"}, the model with
     the final parameters). "flops" are what the whole mesh executes (the compiled
    per-device cost times the devices: work replicated over devices, such as the optimizer update
    of replicated parameters, counts on each); "model_flops" count the step's work once (the
    cost of the global program before partitioning), so they do not grow with the mesh. On a
    GPU the compiled count leaves out the library calls XLA emits (cuDNN convolutions and
    attention: one H200 counted 0.57 GFLOP of the autoencoder step's 46), so compare
    "model_flops" there.
  """

  mesh_config = experiment.mesh
  mesh = mesh_lib.create_mesh(mesh_config) if mesh is None else mesh
  stage = stages_lib.make_stage(stage_name, experiment)
  config = experiment.train[stage_name]
  tx = train_state_lib.make_optimizer(config)
  state, state_shardings = train_state_lib.init_sharded_train_state(
      stage, tx, experiment.seed, mesh, mesh_config.rules, salt=trainer_lib.stage_salt(stage_name))
  graphdef, _, _ = train_state_lib.abstract_model(stage)
  # Read before the first step: the compiled step donates the state.
  resident_bytes = (sharding_lib.bytes_per_device(state.params)
                    + sharding_lib.bytes_per_device(state.opt_state))
  ema_bytes = sharding_lib.bytes_per_device(state.ema_params)

  iterator = stage.make_iterator(mesh=mesh, seed=experiment.seed, workdir=workdir)
  try:
    batch = next(iterator)
  finally:
    close = getattr(iterator, "close", None)
    if close is not None:
      close()
  step_fn = train_state_lib.make_train_step(stage, graphdef, tx, config, mesh=mesh,
                                            rules=mesh_config.rules,
                                            sequence_parallel=mesh_config.sequence_parallel)
  # The trainer's own program: after the stage trained, its compilation is a cache hit.
  compiler = trainer_lib.StepCompiler(step_fn, state, state_shardings, mesh, stage_name)
  leaves = compiler.flatten(state)
  start = time.perf_counter()
  lowered = compiler.lower(leaves, batch)
  compiled = lowered.compile()
  compile_seconds = time.perf_counter() - start
  memory_lib.check_fits(
      compiled, devices=memory_lib.local_devices(mesh),
      what=f"the {stage_name} train step for {trainer_lib.describe_batch(batch)}",
      remedy=trainer_lib.MEMORY_REMEDY + " The benchmark times the batch of loader step 0; "
      "to time one clip: --config.data.buckets='(\"17x128x128:1\",)'.")
  # What the devices execute: each device's partitioned program, replicated work included.
  flops = _cost_flops(compiled) * mesh.size
  # The global program before partitioning and optimisation: the step's work counted once.
  model_flops = _cost_flops(lowered)
  if _with_unrolled_layers(experiment) is not None:
    # XLA's cost analysis counts the body of a scanned layer stack once, not once per layer
    # (a depth-4 tiny transformer's forward and backward: 0.70 GFLOP scanned, 2.71 unrolled).
    # Count the same step with the layers unrolled, and scale the per-device count alike.
    unrolled_flops = traced_step_flops(experiment, stage_name, batch, mesh=mesh)
    flops *= unrolled_flops / model_flops
    model_flops = unrolled_flops

  for _ in range(warmup):
    leaves, _ = compiled(leaves, batch)
  jax.block_until_ready(leaves)

  # Steps dispatched back to back, as the trainer runs them, and waited for once per run: waiting
  # for each step would add the host's dispatch of the whole state to every step's time.
  def steps_in_a_row():
    nonlocal leaves
    for _ in range(steps):
      leaves, step_metrics = compiled(leaves, batch)
    return step_metrics

  runs = _timed_runs(steps_in_a_row, min_runs=3, min_seconds=min_seconds)
  seconds = float(np.median(runs)) / steps
  figures = {
      "stage": stage_name, "devices": int(mesh.size), "mesh": mesh_lib.describe(mesh),
      "flops_per_step": flops,
      "seconds_per_step": seconds, "flops_per_second": flops / seconds,
      "model_flops_per_step": model_flops, "model_flops_per_second": model_flops / seconds,
      "compile_seconds": compile_seconds,
      "params_and_optimizer_bytes_per_device": resident_bytes,
      "ema_bytes_per_device": ema_bytes,
      "batch": {k: list(v.shape) for k, v in sorted(batch.items())},
  }
  state = compiler.unflatten(leaves)
  model = nnx.merge(graphdef, state.params, state.frozen)
  return figures, model


def _tokenizer(experiment: experiment_lib.Experiment, workdir: str) -> tokenizer_lib.Tokenizer:
  """The tokenizer the experiment's stage wrote into `workdir`, else one trained for it there."""
  config = experiment.tokenizer
  path = workdir_lib.tokenizer_path(workdir, experiment)
  return tokenizer_lib.load_or_train(
      config, path, lambda: loader.captions(experiment.data, seed=experiment.seed,
                                            num=config.num_train_captions))


def sampler_figures(experiment: experiment_lib.Experiment, model: nnx.Module,
                    tokenizer: tokenizer_lib.Tokenizer) -> dict[str, Any]:
  """Times one text-to-video clip of the training shape with the diffusion stage's model.

  Args:
    experiment: the validated experiment (its `sample`, `diffusion` and `data` sections).
    model: the diffusion stage's module, holding `autoencoder`, `text_encoder` and `dit`.
    tokenizer: encodes the prompt.
  """
  generator = pipeline.Generator(
      autoencoder=model.autoencoder, text_encoder=model.text_encoder, dit=model.dit,
      tokenizer=tokenizer, flow_config=experiment.diffusion,
      sample_config=experiment.sample, progress=False,
      **pipeline.experiment_defaults(experiment))
  prompt = "a small red circle moving right; on a black background"
  start = time.perf_counter()
  modes.text_to_video(generator, prompt, seed=0)  # compiles every shape the clip needs
  first_seconds = time.perf_counter() - start
  result = modes.text_to_video(generator, prompt, seed=1)
  frames, height, width = result.video.shape[:3]
  return {
      "shape": [int(frames), int(height), int(width)],
      "steps": generator.sample_config.num_steps, "method": generator.sample_config.method,
      "seconds_per_video": result.seconds, "first_video_seconds": first_seconds,
      "real_time_factor": result.real_time_factor,
  }


def loader_figures(experiment: experiment_lib.Experiment, tokenizer: tokenizer_lib.Tokenizer, *,
                   warmup: int = 2, batches: int = 10) -> dict[str, Any]:
  """The experiment's data pipeline through `data_pipelines.benchmark.measure`."""
  figures = loader_benchmark.measure(experiment.data, tokenizer, warmup=warmup, batches=batches)
  figures["buckets"] = list(experiment.data.buckets)
  figures["workers"] = experiment.data.num_workers
  return figures


def _compute_dtype(experiment: experiment_lib.Experiment) -> jnp.dtype:
  """The diffusion transformer's compute dtype when the experiment names one, else float32."""
  dtype = getattr(experiment.dit, "dtype", None)
  return jnp.dtype(dtype) if dtype else jnp.dtype(jnp.float32)


def initial_model(experiment: experiment_lib.Experiment, stage_name: str) -> nnx.Module:
  """The stage's model with freshly initialised parameters, on the experiment's mesh."""
  mesh_config = experiment.mesh
  stage = stages_lib.make_stage(stage_name, experiment)
  tx = train_state_lib.make_optimizer(experiment.train[stage_name])
  state, _ = train_state_lib.init_sharded_train_state(
      stage, tx, experiment.seed, mesh_lib.create_mesh(mesh_config), mesh_config.rules)
  graphdef, _, _ = train_state_lib.abstract_model(stage)
  return nnx.merge(graphdef, state.params, state.frozen)


def autoencoder_figures(experiment: experiment_lib.Experiment, *,
                        repeats: int = 3) -> dict[str, Any]:
  """Encoder and decoder throughput of the experiment's autoencoder on one device.

  The videos have the shape of the first data bucket, in one device's share of its batch.
  """
  bucket = experiment.data.parsed_buckets()[0]
  batch = max(1, bucket.global_batch // jax.device_count())
  figures = autoencoder_throughput.measure_throughput(
      experiment.autoencoder, batch=batch, frames=bucket.frames, height=bucket.height,
      width=bucket.width, repeats=repeats, seed=experiment.seed)
  return {"shape": [batch, bucket.frames, bucket.height, bucket.width],
          "dtype": str(experiment.autoencoder.dtype), **figures}


def parse_layout(layout: str) -> tuple[int, dict[str, int]]:
  """"8:1x8x1" -> (8 devices, {"data": 1, "fsdp": 8, "tensor": 1})."""
  count, _, sizes = layout.partition(":")
  try:
    data, fsdp, tensor = (int(size) for size in sizes.split("x"))
    devices = int(count)
  except ValueError:
    raise ValueError(f"layout {layout!r} is not DEVICES:DATAxFSDPxTENSOR, e.g. 8:1x8x1") from None
  if devices > jax.device_count():
    raise ValueError(f"layout {layout} needs {devices} devices, {jax.device_count()} exist: on CPU "
                     f"set XLA_FLAGS=--xla_force_host_platform_device_count={devices}")
  return devices, {"data": data, "fsdp": fsdp, "tensor": tensor}


def layout_figures(experiment: experiment_lib.Experiment, stage_name: str, layout: str, *,
                   workdir: str, steps: int = 5, min_seconds: float = 1.0) -> dict[str, Any]:
  """`train_step_figures` on the mesh a layout ("8:1x8x1", see `parse_layout`) describes."""
  devices, sizes = parse_layout(layout)
  experiment = dataclasses.replace(experiment, mesh=dataclasses.replace(experiment.mesh, **sizes))
  mesh = mesh_lib.create_mesh(experiment.mesh, jax.devices()[:devices])
  figures, _ = train_step_figures(experiment, stage_name, workdir=workdir, mesh=mesh, steps=steps,
                                  min_seconds=min_seconds)
  return {"layout": layout, **figures}


def _stage_to_time(experiment: experiment_lib.Experiment, stage: str | None) -> str:
  """`stage`, checked, or the diffusion stage when the experiment has one, else its last."""
  if stage is None:
    return DIFFUSION_STAGE if DIFFUSION_STAGE in experiment.stages else experiment.stages[-1]
  if stage not in experiment.stages:
    raise ValueError(f"--stage={stage!r} is not a stage of {experiment.name}; choose one of "
                     f"{', '.join(experiment.stages)}")
  return stage


def check_options(experiment: experiment_lib.Experiment, *, what: str, layouts: Sequence[str],
                  stage: str | None) -> None:
  """Raises ValueError, saying what to pass, for an unknown `what` or `stage` or a bad layout."""
  if what not in WHAT:
    raise ValueError(f"unknown --what={what!r}; choose one of: {', '.join(WHAT)}")
  _stage_to_time(experiment, stage)
  for layout in layouts:
    parse_layout(layout)


def run_benchmark(experiment: experiment_lib.Experiment, *, what: str = "all",
                  layouts: Sequence[str] = (), stage: str | None = None,
                  matmul_size: int = 4096, train_steps: int = 5, loader_batches: int = 10,
                  autoencoder_repeats: int = 3, min_seconds: float = 1.0,
                  workdir: str | None = None) -> dict[str, Any]:
  """The figures of the module docstring for one experiment; see there.

  Args:
    experiment: the validated experiment.
    what: a part of `PARTS`, or "all" of them (`watermark_figures` measures the watermark).
    layouts: with the train step, also time it on each of these meshes ("8:1x8x1": see
      `parse_layout`).
    stage: whose train step (default: "dit" when the experiment has it, else its last stage).
    matmul_size: side of the square matmul.
    train_steps: fewest timed train steps.
    loader_batches: timed loader batches.
    autoencoder_repeats: timed encoder and decoder calls (the best counts).
    min_seconds: the matmul and the train step are timed for at least this long each.
    workdir: scratch directory (default: a temporary one, removed afterwards).

  Returns:
    The figures as a JSON-able dict; parts that could not run are None, with the reason in
    result["unavailable"][part].

  Raises:
    ValueError: an unknown `what` or `stage`, or a malformed layout (before anything runs).
  """
  check_options(experiment, what=what, layouts=layouts, stage=stage)
  if what == WATERMARK:
    raise ValueError(f"what={WATERMARK!r} is measured by watermark_figures, not run_benchmark")
  if what == SEQUENCE_PARALLEL:
    raise ValueError(f"what={SEQUENCE_PARALLEL!r} is measured by sequence_benchmark.figures, not "
                     f"run_benchmark")
  stage_name = _stage_to_time(experiment, stage)
  if workdir is None:
    with tempfile.TemporaryDirectory(prefix="videogen_benchmark_") as scratch:
      return run_benchmark(experiment, what=what, layouts=layouts, stage=stage,
                           matmul_size=matmul_size, train_steps=train_steps,
                           loader_batches=loader_batches, autoencoder_repeats=autoencoder_repeats,
                           min_seconds=min_seconds, workdir=scratch)
  parts = PARTS if what == "all" else (what,)
  devices = jax.devices()
  result: dict[str, Any] = {
      "experiment": experiment.name, "what": what, "platform": devices[0].platform,
      "device_kind": devices[0].device_kind, "devices": len(devices),
  }
  unavailable: dict[str, str] = {}

  model = None  # the diffusion stage's, when its train step was timed
  if "train_step" in parts:
    dtype = _compute_dtype(experiment)
    logging.info("benchmark: %dx%d %s matmul", matmul_size, matmul_size, dtype.name)
    matmul = matmul_flops_per_second(matmul_size, dtype, min_seconds=min_seconds)
    result["matmul"] = {"size": matmul_size, "dtype": dtype.name, "flops_per_second": matmul}
    try:
      logging.info("benchmark: train step of stage %s", stage_name)
      result["train_step"], trained = train_step_figures(
          experiment, stage_name, workdir=workdir, steps=train_steps, min_seconds=min_seconds)
      model = trained if stage_name == DIFFUSION_STAGE else None
      if layouts:
        result["layouts"] = [
            layout_figures(experiment, stage_name, layout, workdir=workdir, steps=train_steps,
                           min_seconds=min_seconds) for layout in layouts]
    except FileNotFoundError as error:  # e.g. a latent cache that needs a trained autoencoder
      result["train_step"] = None
      unavailable["train_step"] = f"stage {stage_name!r} needs files this run lacks ({error})"

  tokenizer = None
  if "generation" in parts or "loader" in parts:
    if not experiment.has("data"):
      unavailable["loader"] = "the experiment has no config.data section (no video loader)"
    else:
      tokenizer = _tokenizer(experiment, workdir)

  if "generation" in parts:
    if DIFFUSION_STAGE not in experiment.stages:
      unavailable["sampler"] = (f"the experiment has no {DIFFUSION_STAGE!r} stage (stages: "
                                f"{', '.join(experiment.stages)}), so there is no sampler to time")
    elif model is None and "train_step" in unavailable and stage_name == DIFFUSION_STAGE:
      unavailable["sampler"] = ("needs the diffusion stage's model: "
                                + unavailable["train_step"])
    elif tokenizer is None:
      unavailable["sampler"] = "needs the tokenizer: " + unavailable["loader"]
    else:
      if model is None:
        model = initial_model(experiment, DIFFUSION_STAGE)
      logging.info("benchmark: sampler")
      result["sampler"] = sampler_figures(experiment, model, tokenizer)
    result.setdefault("sampler", None)
    if "loader" not in parts:
      unavailable.pop("loader", None)  # not asked for; the sampler's reason says it

  if "loader" in parts:
    if tokenizer is not None:
      logging.info("benchmark: loader")
      result["loader"] = loader_figures(experiment, tokenizer, batches=loader_batches)
    result.setdefault("loader", None)

  if "autoencoder" in parts:
    if not experiment.has("autoencoder"):
      unavailable["autoencoder"] = "the experiment has no config.autoencoder section"
      result["autoencoder"] = None
    else:
      logging.info("benchmark: autoencoder")
      result["autoencoder"] = autoencoder_figures(experiment, repeats=autoencoder_repeats)

  result.update(headline_figures(result))
  result["unavailable"] = unavailable
  return result


def _generated_videos(workdir: str, count: int, nulls: int) -> tuple[
    str, list[np.ndarray], list[np.ndarray], watermark_benchmark.Scorer]:
  """(set name, `count` unmarked text-to-video videos of the workdir's model at its native size,
  `nulls` more for the false positives, the analyzer's scorer of the first `count`).

  The prompts are the generation suite's (`suite.build_suite`, text-to-video only, brief and
  descriptive captions of seen and held-out scenes), so each video is scored against what its
  prompt states, as the evaluation scores it.
  """
  trained = workdir_lib.saved_experiment(workdir, DIFFUSION_STAGE)
  generator = pipeline.load(workdir, trained, progress=False)
  config = trained.data.world if trained.has("data") else world.WorldConfig()
  total = count + nulls
  prompts = suite_lib.build_suite(
      suite_lib.GenerationEvalConfig(scenes_per_group=-(-total // 4), modes=()),
      world_config=config, default_shape=generator.default_shape).prompts[:total]
  # The generator's own frames: the benchmark marks them with its own key.
  videos = [modes.text_to_video(generator, prompt.text, seed=index).video
            for index, prompt in enumerate(prompts)]

  def scorer(scored: Sequence[np.ndarray]) -> dict[str, Any]:
    return scoring.score_videos(scored, prompts[:len(scored)])

  frames, height, width = videos[0].shape[:3]
  return f"generated {frames}x{height}x{width}", videos[:count], videos[count:], scorer


def watermark_figures(experiment: experiment_lib.Experiment, workdir: str | None = None, *,
                      videos: int = WATERMARK_VIDEOS, key: bytes | None = None,
                      conditions: Optional[dict[str, watermark_benchmark.Condition]] = None,
                      sizes: Sequence[int] = WATERMARK_SIZES) -> dict[str, dict[str, Any]]:
  """`watermark_benchmark.run` on world clips at `sizes` and, when `workdir` holds a trained
  model, on its generated videos (see the module docstring).

  Args:
    experiment: its world config (config.data.world) renders the clips.
    workdir: a trained run whose generated videos are measured too; None or untrained: none.
    videos: videos per set (> 0); each set's null videos are its originals and
      WATERMARK_NULLS_PER_VIDEO - 1 times as many more (world clips, or generated videos).
    key: the watermark key; None: a fresh random one.
    conditions: `watermark_benchmark.CONDITIONS` when None.
    sizes: the world's frame sizes (square).

  Returns:
    set name ("32x32", ..., "generated 17x32x32") -> `watermark_benchmark.run`'s figures.
  """
  if videos < 1:
    raise ValueError(f"--watermark_videos={videos}: measure at least 1 video per set")
  config = experiment.data.world if experiment.has("data") else world.WorldConfig()
  more = (WATERMARK_NULLS_PER_VIDEO - 1) * videos

  def clips(start: int, count: int, size: int) -> list[np.ndarray]:
    return [world.generate(index, seed=experiment.seed, frames=WATERMARK_FRAMES, height=size,
                           width=size, split="test", config=config)["video"]
            for index in range(start, start + count)]

  sets = {f"{size}x{size}": clips(0, videos, size) for size in sizes}
  nulls = {f"{size}x{size}": clips(videos, more, size) for size in sizes}
  scorers = {}
  if workdir and workdir_lib.latest_step(workdir, DIFFUSION_STAGE) is not None:
    logging.info("benchmark: generating %d videos with %s", videos + more, workdir)
    name, generated, generated_nulls, scorer = _generated_videos(workdir, videos, more)
    sets[name], nulls[name], scorers[name] = generated, generated_nulls, scorer
  logging.info("benchmark: watermark on %s", ", ".join(sets))
  return watermark_benchmark.run(sets, secrets.token_bytes(32) if key is None else key,
                                 null_videos_by_size=nulls, conditions=conditions,
                                 scorers_by_size=scorers)


def headline_figures(result: dict[str, Any]) -> dict[str, Optional[float]]:
  """The headline figures of the module docstring, from the parts of `result` (None if absent)."""
  matmul = result["matmul"]["flops_per_second"] if result.get("matmul") else None
  train = result.get("train_step")
  sampler = result.get("sampler")
  loader_result = result.get("loader")
  autoencoder = result.get("autoencoder")
  train_flops = None if train is None else train["flops_per_second"]
  ratio = None
  if train_flops is not None and matmul is not None:
    # CPU devices share one processor, which the matmul already uses whole.
    shares_processor = result.get("platform") == "cpu"
    # A GPU's compiled count leaves out its library calls (cuDNN, train_step_figures): there the
    # global program's count is the step's work.
    counted = train["model_flops_per_second"] if result.get("platform") == "gpu" else train_flops
    ratio = counted / (matmul if shares_processor else matmul * train["devices"])
  return {
      "matmul_flops_per_second": matmul,
      "train_step_flops_per_second": train_flops,
      "train_step_model_flops_per_second": None if train is None else train[
          "model_flops_per_second"],
      "train_to_matmul_ratio": ratio,
      "sampler_real_time_factor": None if sampler is None else sampler["real_time_factor"],
      "loader_samples_per_second": None if loader_result is None else loader_result[
          "samples_per_s"],
      "autoencoder_encode_frames_per_second": None if autoencoder is None else autoencoder[
          "encode_frames_per_second"],
      "autoencoder_decode_frames_per_second": None if autoencoder is None else autoencoder[
          "decode_frames_per_second"],
  }


def _si(value: Optional[float], unit: str = "") -> str:
  if value is None:
    return "n/a"
  prefixes = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
  for scale, prefix in prefixes:
    if abs(value) >= scale:
      return f"{value / scale:.3g} {prefix}{unit}"
  return f"{value:.3g} {unit}".rstrip()


def format_table(result: dict[str, Any]) -> str:
  """A readable summary of `run_benchmark`'s result."""
  lines = [f"benchmark of {result['experiment']} on {result['devices']} x {result['device_kind']} "
           f"({result['platform']})"]
  matmul = result.get("matmul")
  if matmul is not None:
    lines.append(f"  {'matmul ' + str(matmul['size']) + '^2 ' + matmul['dtype']:34} "
                 f"{_si(matmul['flops_per_second'], 'FLOP/s')}")
  train = result.get("train_step")
  if train is not None:
    lines.append(f"  {'train step (' + train['stage'] + ')':34} "
                 f"{_si(train['flops_per_second'], 'FLOP/s')} = "
                 f"{_si(train['flops_per_step'], 'FLOP')} / {train['seconds_per_step']:.4g} s "
                 f"(model FLOPs: {_si(train['model_flops_per_second'], 'FLOP/s')}; compiled in "
                 f"{train['compile_seconds']:.1f} s)")
    lines.append(f"  {'train / matmul':34} {result['train_to_matmul_ratio']:.3f}")
  if result.get("layouts"):
    lines.append(f"  {'layout':10} {'mesh':48} {'compile s':>9} {'step ms':>9} "
                 f"{'params+opt MiB/dev':>19} {'EMA MiB/dev':>12}")
    for row in result["layouts"]:
      lines.append(f"  {row['layout']:10} {row['mesh']:48} {row['compile_seconds']:9.1f} "
                   f"{row['seconds_per_step'] * 1e3:9.1f} "
                   f"{row['params_and_optimizer_bytes_per_device'] / 2**20:19.2f} "
                   f"{row['ema_bytes_per_device'] / 2**20:12.2f}")
  sampler = result.get("sampler")
  if sampler is not None:
    frames, height, width = sampler["shape"]
    lines.append(f"  sampler {frames}x{height}x{width}, {sampler['steps']} {sampler['method']} "
                 f"steps: {sampler['seconds_per_video']:.3g} s per video, real-time factor "
                 f"{sampler['real_time_factor']:.3g}")
  loader_result = result.get("loader")
  if loader_result is not None:
    lines.append(f"  loader {','.join(loader_result['buckets'])}: "
                 f"{loader_result['samples_per_s']:.1f} samples/s "
                 f"({loader_result['batches_per_s']:.2f} batches/s, "
                 f"{loader_result['workers']} workers)")
  autoencoder = result.get("autoencoder")
  if autoencoder is not None:
    lines.append(f"  autoencoder {'x'.join(map(str, autoencoder['shape']))} "
                 f"{autoencoder['dtype']}: encode "
                 f"{autoencoder['encode_frames_per_second']:.1f} frames/s, decode "
                 f"{autoencoder['decode_frames_per_second']:.1f} frames/s")
  for part, reason in result["unavailable"].items():
    lines.append(f"  {part}: unavailable: {reason}")
  return "\n".join(lines)


def watermark_command(experiment: experiment_lib.Experiment, workdir: str | None, *,
                      videos: int | None = None) -> int:
  """`benchmark --what=watermark`: prints the table, then the results as one JSON line; with a
  workdir, also writes them to WORKDIR/benchmark_watermark.json. Exit code 2 for videos < 1."""
  videos = WATERMARK_VIDEOS if videos is None else videos
  if videos < 1:
    return exit_codes.refuse(f"--watermark_videos={videos}: measure at least 1 video per set")
  results = watermark_figures(experiment, workdir, videos=videos)
  print(watermark_benchmark.format_table(results))
  print(json.dumps({"what": WATERMARK, "sets": results}))
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "benchmark_watermark.json"), "w") as f:
      json.dump(results, f, indent=2)
  return exit_codes.DONE


def sequence_parallel_command(experiment: experiment_lib.Experiment) -> int:
  """`benchmark --what=sequence_parallel`: the attention memory table, then one JSON line."""
  dit = experiment.dit if experiment.has("dit") else None
  heads, head_dim = (8, 64) if dit is None else (dit.num_heads, dit.head_dim)
  result = sequence_benchmark.figures(heads, head_dim)
  print(sequence_benchmark.format_table(result))
  print(json.dumps({"what": SEQUENCE_PARALLEL, **result}))
  return exit_codes.DONE


def command(experiment: experiment_lib.Experiment, workdir: str | None, *,
            what: str | None = None, layouts: Sequence[str] = (),
            stage: str | None = None, watermark_videos: int | None = None) -> int:
  """`python -m videogen.main benchmark --config=... [--what=...]`: prints the table, then the
  JSON line.

  Args:
    experiment: the validated experiment.
    workdir: with it, the JSON is also written to WORKDIR/benchmark.json (the scratch files of
      the run go to a temporary directory either way).
    what: a part of `PARTS`, or "all" (also None).
    layouts: meshes to time the train step on as well (`parse_layout`).
    stage: whose train step (default: the diffusion stage, else the last).
    watermark_videos: videos per set of --what=watermark (default WATERMARK_VIDEOS).

  Returns:
    0, or 2 for a usage error (unknown --what or --stage, a malformed or too large layout,
    --watermark_videos without --what=watermark or below 1).
  """
  what, layouts = what or "all", tuple(layouts or ())
  try:
    check_options(experiment, what=what, layouts=layouts, stage=stage)
  except ValueError as error:
    return exit_codes.refuse(error)
  if what == WATERMARK:
    return watermark_command(experiment, workdir, videos=watermark_videos)
  if what == SEQUENCE_PARALLEL and watermark_videos is None:
    return sequence_parallel_command(experiment)
  if watermark_videos is not None:
    return exit_codes.refuse(f"--watermark_videos applies to --what={WATERMARK}, not "
                             f"--what={what}")
  result = run_benchmark(experiment, what=what, layouts=layouts, stage=stage)
  print(format_table(result))
  print(json.dumps(result))
  if workdir:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "benchmark.json"), "w") as f:
      json.dump(result, f, indent=2)
  return exit_codes.DONE
