r"""The learning curve: every saved checkpoint of a run's diffusion stage on the generation suite.

    python -m videogen.main evaluate --workdir=runs/long --what=learning_curve
    python -m videogen.main evaluate --workdir=runs/long --what=learning_curve \
        --checkpoint_steps=1500,3000 --every=6000
    python -m videogen.main evaluate --workdir=runs/long --what=learning_curve \
        --compare=runs/tiny,runs/min_snr

Each selected checkpoint of WORKDIR/checkpoints/dit/ (all of them by default; `--checkpoint_steps`
names some, `--every=N` adds those whose step is a multiple of N) is loaded with its EMA weights
(`videogen.generate.pipeline.load(..., step=...)`) and generates the text-to-video prompts of the
generation suite (`videogen.evaluate.suite`, scored by `videogen.evaluate.generation`): the same
prompts and seeds for every checkpoint, `--scenes_per_group` scenes per group (default 12: 48
prompts; the conditioned modes are left out, no video is saved). A run keeps only
`config.train.dit.keep_checkpoints` checkpoints: train with `--config.train.dit.keep_checkpoints=0`
(keep all) and a `checkpoint_every` that gives the curve its points.

Each checkpoint gives one row of OUT/learning_curve.json (OUT: --out, default the workdir):
  step, loss                  the training loss logged at that step (metrics.jsonl: the mean over
                              the `log_every` steps up to it).
  train_minutes               wall-clock minutes of the dit stage's training steps up to it, on the
                              machine that trained it (summed from the logged steps_per_second;
                              compilation left out, checkpoint saves and in-training evaluations
                              in). On a busy machine they grow with the load.
  train_cpu_minutes           the training process's CPU minutes up to it, summed over cores (from
                              the logged cpu_seconds_per_step): the load of other processes does
                              not inflate them; None if the run logged no CPU time.
  train_flops                 the model FLOPs of training to it (`train_flops_per_step` of each
                              interval between saved checkpoints, under the config saved with the
                              later one, so a config changed on resume counts), forward and
                              backward (3 x forward, 2 FLOPs per multiply-accumulate) of the
                              text encoder and the transformer, per sample at each data bucket's
                              latent shape, weighted by the bucket's batch and share of steps. The
                              frozen autoencoder, the optimizer update and elementwise work are
                              not counted (MACs from `videogen.evaluate.summary`); a frozen text
                              encoder counts its forward only, and the text stage that may have
                              pre-trained it is not counted. Steps of masked training count the
                              transformer at the tokens they keep.
  colour ... count stability  the suite's accuracies (`CURVE`): colour, shape, size and direction
                              over the prompted objects, count (videos whose most common number of
                              objects is the prompted one) and count stability (frames that show
                              it); also direction split into objects prompted to move and to
                              stay still, bounces, background, the same by caption kind and
                              group, and the confusion tables.
  text_token_rank             on the procedural world, how many directions the checkpoint's text
                              encoder spreads caption tokens over (`caption_use.text_token_rank`,
                              the dit stage's eval/text_token_rank at the suite's shape): below
                              `caption_use.COLLAPSED_RANK` it has collapsed, and the command warns.
                              None on other data.
The file also records the suite (its size and a digest of its prompts: a file is only added to
with the same suite), the FLOPs per step of each interval between checkpoints (`flops_schedule`)
and the autoencoder stage's wall-clock minutes. Rows are written as each checkpoint finishes, and
a checkpoint already in the file is not evaluated again: re-running after more training evaluates
only the new checkpoints. The curves are drawn into OUT/curves/learning_curve.png: accuracy per
attribute against steps, train minutes and FLOPs, and the loss with the text token rank.

`--compare=W2,W3,...` then reads the learning_curve.json of each of those runs too (evaluate them
first) and writes OUT/curves/learning_curve_compare.png (each attribute against train minutes and
against FLOPs, one line per run) and OUT/learning_curve_compare.md, a table of every row of every
run (run, experiment, step, train minutes, FLOPs, loss, each attribute with direction's two parts,
the text token rank) for docs/learning_curve.md.
Only runs measured on the same suite are compared. With `--compare_mean` the runs are draws of
one recipe (seeds of the transformer, say): the table adds a "mean ± sd of N runs" row at each
step they all measured (the sample standard deviation), e.g. for five seeds evaluated at 192
prompts into each run's eval192/:

    python -m videogen.main evaluate --workdir=runs/s0 --out=runs/s0/eval192 \
        --what=learning_curve --scenes_per_group=48 --checkpoint_steps=3000 \
        --compare=runs/s1/eval192,runs/s2/eval192,runs/s3/eval192,runs/s4/eval192 --compare_mean
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import time
from typing import Any, Optional, Sequence

import matplotlib
import numpy as np
import tqdm
from absl import logging
from matplotlib import figure
from matplotlib import ticker

from videogen import exit_codes
from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from videogen.diffusion import flow
from videogen.evaluate import caption_use
from videogen.evaluate import generation
from videogen.evaluate import suite as suite_lib
from videogen.evaluate import summary
from videogen.generate import pipeline
from videogen.parallel import mesh as mesh_lib
from videogen.train import metrics as metrics_lib

LEARNING_CURVE_FILE = "learning_curve.json"
# Under OUT/curves/, beside the loss curves of `videogen.train.curves`.
CURVES_DIR = "curves"
PLOT_FILE = "learning_curve.png"
COMPARE_PLOT_FILE = "learning_curve_compare.png"
COMPARE_TABLE_FILE = "learning_curve_compare.md"
# 4 prompts per scene and group pair (brief and descriptive, seen and held-out): 48 prompts.
DEFAULT_SCENES_PER_GROUP = 12
# The curves: generation metric -> its name in tables and plots.
CURVE: dict[str, str] = {
    "color_accuracy": "colour", "shape_accuracy": "shape", "size_accuracy": "size",
    "direction_accuracy": "direction", "count_accuracy": "count",
    "count_stability": "count stability"}
# The columns of the markdown table: the curves, with direction's two parts beside it (objects
# prompted to move that move the prompted way; objects prompted to stay still that do).
TABLE_METRICS: dict[str, str] = {
    **{key: CURVE[key] for key in ("color_accuracy", "shape_accuracy", "size_accuracy",
                                   "direction_accuracy")},
    "motion_accuracy": "motion", "still_accuracy": "still",
    **{key: CURVE[key] for key in ("count_accuracy", "count_stability")}}
# Also kept in each row, besides the curves.
_DETAIL_METRICS = ("motion_accuracy", "still_accuracy", "bounce_accuracy", "background_accuracy",
                   "by_caption", "by_group", "confusion", "seconds_per_video")
FLOPS_COUNTED = ("forward + backward (3 x forward) model FLOPs of the text encoder and the "
                 "transformer, 2 per multiply-accumulate, at each data bucket's latent shape, "
                 "weighted by its batch and share of steps; autoencoder, optimizer and "
                 "elementwise work not counted")
# The config sections a step's FLOPs depend on.
_FLOPS_SECTIONS = ("data", "autoencoder", "text_encoder", "dit", "diffusion")
_PLOT_STYLE = {"font.size": 9}
_COLOURS = ("#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf",
            "#7f7f7f")


class LearningCurveError(ValueError):
  """A request the workdir cannot answer (a step it has no checkpoint of, another suite)."""


# ---------------------------------------------------------------------------------------------
# Which checkpoints, and what they cost to train.


def select_steps(saved: Sequence[int], *, steps: Sequence[int] = (), every: Optional[int] = None,
                 where: str = "the workdir") -> list[int]:
  """The checkpoint steps to evaluate: `steps` and the multiples of `every`, or all of `saved`.

  Raises:
    LearningCurveError: a step of `steps` has no checkpoint, `every` is not positive, or no saved
      step is a multiple of it.
  """
  saved = sorted(saved)
  listing = ", ".join(map(str, saved))
  unknown = [step for step in steps if step not in saved]
  if unknown:
    raise LearningCurveError(
        f"no checkpoint of stage {workdir_lib.DIT_STAGE!r} at step "
        f"{', '.join(map(str, unknown))} in {where}; saved steps: {listing}")
  if every is not None and every < 1:
    raise LearningCurveError(f"--every={every}: give a positive number of steps")
  if not steps and every is None:
    return saved
  chosen = set(steps)
  if every is not None:
    multiples = {step for step in saved if step % every == 0}
    if not multiples:
      raise LearningCurveError(f"--every={every}: no saved step of {where} is a multiple of "
                               f"{every}; saved steps: {listing}")
    chosen |= multiples
  return sorted(chosen)


def training_timeline(rows: Sequence[dict[str, Any]], measure: str = "wall"
                      ) -> list[tuple[int, float, float]]:
  """(step, seconds of training up to it, loss) per logged training row, by step.

  measure "wall": each row's interval since the previous logged step took interval / its
  steps_per_second. "cpu": interval x its cpu_seconds_per_step (the process's CPU seconds, all
  cores; logged by the trainer since the CPU-time field was added). A row without the field (the
  first after a compilation, or one written before the field existed) takes the median of the rest.
  """
  logged = sorted((row for row in rows if isinstance(row.get("loss"), (int, float))),
                  key=lambda row: row["step"])

  def per_step(row: dict[str, Any]) -> Optional[float]:
    value = row.get("steps_per_second" if measure == "wall" else "cpu_seconds_per_step")
    if not isinstance(value, (int, float)) or value <= 0:
      return None
    return 1.0 / value if measure == "wall" else float(value)

  known = [seconds for seconds in map(per_step, logged) if seconds is not None]
  median = float(np.median(known)) if known else math.nan
  timeline, seconds, previous = [], 0.0, 0
  for row in logged:
    step_seconds = per_step(row)
    seconds += (row["step"] - previous) * (median if step_seconds is None else step_seconds)
    previous = row["step"]
    timeline.append((int(row["step"]), seconds, float(row["loss"])))
  return timeline


def at_step(timeline: Sequence[tuple[int, float, float]], step: int
            ) -> tuple[Optional[float], Optional[float]]:
  """(train minutes, loss) at `step`: the last logged row at or before it; (None, None) if none.

  Minutes past that row are extrapolated at the rate of the rows before it.
  """
  before = [entry for entry in timeline if entry[0] <= step]
  if not before:
    return None, None
  logged_step, seconds, loss = before[-1]
  if logged_step < step and logged_step > 0:
    seconds += (step - logged_step) * seconds / logged_step
  minutes = seconds / 60.0
  return (None if math.isnan(minutes) else round(minutes, 4)), loss


def train_flops_per_step(experiment: experiment_lib.Experiment, *, masked: bool = False) -> float:
  """Model FLOPs of one dit-stage training step (see `FLOPS_COUNTED`), from abstract shapes.

  masked: a step of masked training (`config.diffusion.mask_ratio`): the transformer at the
  tokens it keeps of each frame.
  """
  text_config = experiment.text_encoder if experiment.has("text_encoder") else None
  autoencoder = experiment.autoencoder
  patch = experiment.dit.patch_size
  buckets = experiment.data.parsed_buckets()
  total_weight = sum(bucket.weight for bucket in buckets)
  macs = 0.0
  for bucket in buckets:
    latent = (1 + (bucket.frames - 1) // autoencoder.temporal_factor,
              bucket.height // autoencoder.spatial_factor,
              bucket.width // autoencoder.spatial_factor)
    if masked:
      # k kept tokens of each frame cost what a frame one patch high and k patches wide does.
      kept = flow.kept_count((latent[1] // patch[1]) * (latent[2] // patch[2]),
                             experiment.diffusion.mask_ratio)
      latent = (latent[0], patch[1], kept * patch[2])
    dit_config = dataclasses.replace(experiment.dit, input_size=latent)
    # Forward and backward are 3 forwards, except a frozen text encoder's: forward only.
    per_sample = sum((1.0 if cost.name == "text_encoder" and text_config.frozen else 3.0)
                     * cost.macs for cost in summary.measure(dit_config, text_config,
                                                             with_flops=False))
    macs += bucket.weight / total_weight * bucket.global_batch * per_sample
  return 2.0 * macs


def flops_budget(experiment: experiment_lib.Experiment) -> dict[str, Any]:
  """What one step of a run under `experiment` costs: its FLOPs per step, and with masked
  training those of a masked step (None without)."""
  masked = experiment.has("diffusion") and experiment.diffusion.mask_ratio > 0
  return {"train_flops_per_step": train_flops_per_step(experiment),
          "train_flops_per_masked_step": (train_flops_per_step(experiment, masked=True)
                                          if masked else None)}


def flops_schedule(workdir: str, steps: Sequence[int]) -> list[dict[str, Any]]:
  """The cost of a step through a run whose config may have changed on resume.

  A run resumes only from a checkpoint, and each checkpoint saves the config it was trained
  under, so the steps after checkpoint a, up to and including the next one b, ran under b's
  config (an images-first curriculum, a given-frame phase: `--allow_config_change`).

  Args:
    workdir: the run.
    steps: its saved dit checkpoints, ascending. Where a deleted checkpoint's config changed,
      its steps are counted under the next saved one's.

  Returns:
    A `flops_budget` per saved checkpoint, with "until_step": its step.
  """
  budgets: dict[str, dict[str, Any]] = {}  # tracing is seconds: once per distinct model and data
  schedule = []
  for step in steps:
    saved = workdir_lib.saved_config(workdir, workdir_lib.DIT_STAGE, step)
    costly = json.dumps({key: saved.get(key) for key in _FLOPS_SECTIONS}, sort_keys=True)
    if costly not in budgets:
      budgets[costly] = flops_budget(workdir_lib.experiment_from_json(saved))
    schedule.append({"until_step": step, **budgets[costly]})
  return schedule


def train_flops(schedule: Sequence[dict[str, Any]], step: int) -> float:
  """Model FLOPs of training to `step` under a `flops_schedule`: each of its intervals at its
  own cost (every step masked when that interval trained masked); steps past its end at the
  last interval's."""
  total, start = 0.0, 0
  for budget in schedule:
    end = min(step, budget["until_step"])
    if end > start:
      total += (end - start) * _step_flops(budget)
    start = max(start, budget["until_step"])
  if step > start and schedule:
    total += (step - start) * _step_flops(schedule[-1])
  return total


def _step_flops(budget: dict[str, Any]) -> float:
  masked = budget.get("train_flops_per_masked_step")
  return budget["train_flops_per_step"] if masked is None else masked


# ---------------------------------------------------------------------------------------------
# The suite, and one checkpoint on it.


def suite_config(experiment: experiment_lib.Experiment,
                 scenes_per_group: int = DEFAULT_SCENES_PER_GROUP
                 ) -> suite_lib.GenerationEvalConfig:
  """The experiment's suite, resized, text-to-video only, saving no videos."""
  return dataclasses.replace(experiment.eval_generation, scenes_per_group=scenes_per_group,
                             modes=(), save_videos=False)


def describe_suite(suite: suite_lib.Suite, scenes_per_group: int) -> dict[str, Any]:
  """What identifies a suite in the file: its size, shape, seed and a digest of its prompts."""
  digest = hashlib.sha256("\n".join(p.text for p in suite.prompts).encode()).hexdigest()[:16]
  return {"scenes_per_group": scenes_per_group, "prompts": len(suite.prompts),
          "frames": suite.frames, "height": suite.height, "width": suite.width,
          "seed": suite.seed, "prompts_digest": digest}


def evaluate_checkpoint(workdir: str, experiment: experiment_lib.Experiment, step: int,
                        suite: suite_lib.Suite, *, mesh: Any = None) -> dict[str, Any]:
  """The suite's metrics of checkpoint `step` (EMA weights): the curves first, then the details,
  text_token_rank (None off the procedural world) and eval_seconds (loading and generating)."""
  start = time.perf_counter()
  generator = pipeline.load(workdir, experiment, mesh=mesh, step=step, progress=False)
  report = generation.evaluate_generation(generation.generator_fn(generator), suite,
                                          progress=False)
  row = {key: report.metrics[key] for key in (*CURVE, *_DETAIL_METRICS)}
  row["text_token_rank"] = None
  if experiment.data.source == "shapes":
    row["text_token_rank"] = caption_use.text_token_rank(
        generator.text_encoder, generator.tokenizer,
        shape=(suite.frames, suite.height, suite.width), world_config=experiment.data.world)
  row["eval_seconds"] = round(time.perf_counter() - start, 2)
  return row


# ---------------------------------------------------------------------------------------------
# The file.


def read_curve(path: str) -> dict[str, Any]:
  """A learning_curve.json, given as the file or as the folder holding it.

  Raises:
    FileNotFoundError: there is none, saying which command writes it.
  """
  file = path if path.endswith(".json") else os.path.join(path, LEARNING_CURVE_FILE)
  if not os.path.exists(file):
    raise FileNotFoundError(
        f"{file} is missing: measure that run first with `python -m videogen.main evaluate "
        f"--workdir={path} --what=learning_curve`")
  with open(file) as f:
    return json.load(f)


def _write_json(path: str, report: dict[str, Any]) -> None:
  """Writes through a temporary file, so that an interrupted run never leaves half a file."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  temporary = f"{path}.tmp"
  with open(temporary, "w") as f:
    json.dump(report, f, indent=1)
  os.replace(temporary, path)


def measure(workdir: str, experiment: experiment_lib.Experiment | None = None, *,
            steps: Sequence[int] = (), every: Optional[int] = None,
            scenes_per_group: int = DEFAULT_SCENES_PER_GROUP, out: str | None = None,
            progress: bool = True) -> dict[str, Any]:
  """Evaluates the selected checkpoints not yet in OUT/learning_curve.json, adds their rows, and
  draws OUT/curves/learning_curve.png.

  Args:
    workdir: a run with dit checkpoints.
    experiment: the validated experiment; None reads the one saved with the newest checkpoint
      (the suite and the sampler settings come from it, the same for every checkpoint).
    steps, every: which checkpoints (`select_steps`); neither: all.
    scenes_per_group: the suite's size (4 prompts each).
    out: the folder of the file and the plot; None: the workdir.
    progress: a progress bar over the checkpoints.

  Returns:
    The file's contents.

  Raises:
    FileNotFoundError: the workdir has no dit checkpoint (or no tokenizer).
    LearningCurveError: an unknown step, or a file measured on another suite.
  """
  out = workdir if out is None else out
  saved = workdir_lib.checkpoint_steps(workdir, workdir_lib.DIT_STAGE)
  if not saved:
    workdir_lib.require_step(workdir, workdir_lib.DIT_STAGE)  # raises, saying what to do
  chosen = select_steps(saved, steps=steps, every=every,
                        where=workdir_lib.checkpoint_dir(workdir, workdir_lib.DIT_STAGE))
  if experiment is None:
    experiment = workdir_lib.saved_experiment(workdir, workdir_lib.DIT_STAGE, saved[-1])
  frames_shape = tuple(pipeline.experiment_defaults(experiment).get("default_shape", (9, 32, 32)))
  suite = suite_lib.build_suite(suite_config(experiment, scenes_per_group),
                                world_config=experiment.data.world, default_shape=frames_shape)
  described = describe_suite(suite, scenes_per_group)
  path = os.path.join(out, LEARNING_CURVE_FILE)
  report: dict[str, Any] = {"rows": []}
  if os.path.exists(path):
    report = read_curve(path)
    if report.get("suite") != described:
      raise LearningCurveError(
          f"{path} was measured on another suite ({report.get('suite')}) than this one "
          f"({described}): pass --scenes_per_group="
          f"{(report.get('suite') or {}).get('scenes_per_group')} as before, or move the file "
          f"away to start a new curve")
  dit_rows = metrics_lib.read_metrics(workdir, workdir_lib.DIT_STAGE)
  timeline, cpu_timeline = training_timeline(dit_rows), training_timeline(dit_rows, "cpu")
  autoencoder = training_timeline(metrics_lib.read_metrics(workdir,
                                                           workdir_lib.AUTOENCODER_STAGE))
  done = {row["step"] for row in report["rows"]}
  pending = [step for step in chosen if step not in done]
  # Tracing the model for its cost takes seconds: only when there is something to add.
  schedule = report.get("flops_schedule")
  if pending or schedule is None:
    schedule = flops_schedule(workdir, saved)
  report = dict(
      workdir=os.path.abspath(workdir), experiment=experiment.name, stage=workdir_lib.DIT_STAGE,
      suite=described, flops_schedule=schedule, flops_counted=FLOPS_COUNTED,
      autoencoder_minutes=round(autoencoder[-1][1] / 60.0, 4) if autoencoder else None,
      rows=report["rows"])
  logging.info("learning curve of %s: %d checkpoint(s) chosen, %d already measured, %d prompts "
               "each", workdir, len(chosen), len(chosen) - len(pending), len(suite.prompts))
  mesh = mesh_lib.create_mesh(experiment.mesh) if pending else None
  bar = tqdm.tqdm(pending, desc="learning curve", unit="checkpoint", disable=not progress)
  for step in bar:
    bar.set_postfix(step=step, refresh=True)
    minutes, loss = at_step(timeline, step)
    row = {"step": step, "loss": loss, "train_minutes": minutes,
           "train_cpu_minutes": at_step(cpu_timeline, step)[0],
           "train_flops": train_flops(schedule, step),
           **evaluate_checkpoint(workdir, experiment, step, suite, mesh=mesh)}
    logging.info("learning curve: step %d: %s, text token rank %s", step, ", ".join(
        f"{name} {generation.format_value(row[key])}" for key, name in CURVE.items()),
        generation.format_value(row["text_token_rank"]))
    warning = (None if row["text_token_rank"] is None
               else caption_use.collapse_warning(row["text_token_rank"]))
    if warning:
      logging.warning("learning curve, step %d: %s", step, warning)
    report["rows"] = sorted([*report["rows"], row], key=lambda r: r["step"])
    _write_json(path, report)  # after every checkpoint: an interrupted run keeps what it measured
  write_plot(report, os.path.join(out, CURVES_DIR, PLOT_FILE))
  return report


# ---------------------------------------------------------------------------------------------
# Plots and tables.


def _points(rows: Sequence[dict[str, Any]], x: str, y: str) -> tuple[list[float], list[float]]:
  pairs = [(row[x], row[y]) for row in rows if row.get(x) is not None and row.get(y) is not None]
  return [p[0] for p in pairs], [p[1] for p in pairs]


_AXES = {"step": "dit step", "train_minutes": "train minutes (wall)",
         "train_cpu_minutes": "train CPU minutes", "train_flops":
         "train FLOPs"}


def _log_x(axes: Any) -> None:
  """A logarithmic x axis labelled at its decades only (minor labels of a short range overlap)."""
  axes.set_xscale("log")
  axes.xaxis.set_minor_formatter(ticker.NullFormatter())


def write_plot(report: dict[str, Any], path: str) -> str:
  """OUT/curves/learning_curve.png: each attribute's accuracy against steps, train CPU minutes
  (wall minutes for a run that logged no CPU time) and FLOPs, and the loss against steps with
  the text token rank on a second axis (a dashed line at the rank below which the encoder has
  collapsed). Drawn by matplotlib's object API (no pyplot state)."""
  rows = report["rows"]
  with matplotlib.rc_context(_PLOT_STYLE):
    fig = figure.Figure(figsize=(11, 7), layout="constrained")
    grid = fig.subplots(2, 2)
    # CPU minutes where the run logged them (the fair measure on a shared machine), else wall.
    minutes = ("train_cpu_minutes" if any(row.get("train_cpu_minutes") is not None for row in rows)
               else "train_minutes")
    for axes, x in zip(grid.flat, ("step", minutes, "train_flops")):
      for (key, name), colour in zip(CURVE.items(), _COLOURS):
        xs, ys = _points(rows, x, key)
        axes.plot(xs, ys, color=colour, marker=".", linewidth=1.5, label=name)
      axes.set_xlabel(_AXES[x])
      axes.set_ylabel("accuracy")
      axes.set_ylim(-0.02, 1.02)
      if x == "train_flops":
        _log_x(axes)
      axes.grid(True, which="major", color="#eee")
    grid.flat[0].legend(loc="lower right", frameon=False)
    loss_axes = grid.flat[3]
    xs, ys = _points(rows, "step", "loss")
    loss_axes.plot(xs, ys, color="#08519c", marker=".", linewidth=2)
    loss_axes.set_xlabel("dit step")
    loss_axes.set_ylabel("train loss")
    loss_axes.grid(True, which="major", color="#eee")
    xs, ys = _points(rows, "step", "text_token_rank")
    if xs:
      rank_axes = loss_axes.twinx()
      rank_axes.plot(xs, ys, color="#ff7f0e", marker=".", linewidth=1.5, label="text token rank")
      rank_axes.axhline(caption_use.COLLAPSED_RANK, color="#ff7f0e", linestyle="--", linewidth=1,
                        label="collapsed below")
      rank_axes.set_ylabel("text token rank")
      rank_axes.set_ylim(bottom=0)
      rank_axes.legend(loc="upper right", frameon=False)
    fig.suptitle(f"learning curve: {report.get('workdir')} ({report['suite']['prompts']} prompts "
                 f"per checkpoint)", x=0.01, horizontalalignment="left")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
  return path


# The figures of a table row after its run, experiment and step, in the header's order.
_TABLE_VALUES = ("train_minutes", "train_cpu_minutes", "train_flops", "loss", *TABLE_METRICS,
                 "text_token_rank")
_TABLE_HEADER = ("run", "experiment", "step", "train minutes", "train CPU minutes", "train FLOPs",
                 "loss", *TABLE_METRICS.values(), "text token rank")


def _format_cell(key: str, value: Any) -> str:
  if key == "train_flops" and value is not None:
    return f"{value:.3g}"
  return generation.format_value(value)


def _mean_and_sd(values: Sequence[Any]) -> str:
  """ "mean ± sd" of the values given (None left out): the sample standard deviation (n - 1),
  the spread of one more run drawn the same way; the mean alone for one value."""
  present = [float(value) for value in values if value is not None]
  if not present:
    return "n/a"
  mean = float(np.mean(present))
  if len(present) == 1:
    return f"{mean:.3g}"
  return f"{mean:.3g} ± {float(np.std(present, ddof=1)):.2g}"


def _mean_cell(key: str, values: Sequence[Any]) -> str:
  """A mean row's cell: FLOPs as their mean (the same recipe costs the same), else mean ± sd."""
  if key == "train_flops":
    present = [value for value in values if value is not None]
    return _format_cell(key, float(np.mean(present)) if present else None)
  return _mean_and_sd(values)


def mean_rows(reports: Sequence[tuple[str, dict[str, Any]]]) -> list[list[str]]:
  """The table's cells of a "mean ± sd" row at each step that every report measured: the runs
  taken as draws of one recipe (seeds, machines). A column averages the runs that have it."""
  common = set.intersection(*({row["step"] for row in report["rows"]} for _, report in reports))
  experiments = ", ".join(sorted({str(report.get("experiment")) for _, report in reports}))
  rows = []
  for step in sorted(common):
    at_step = [next(row for row in report["rows"] if row["step"] == step)
               for _, report in reports]
    rows.append([f"mean ± sd of {len(reports)} runs", experiments, str(step),
                 *(_mean_cell(key, [row.get(key) for row in at_step]) for key in _TABLE_VALUES)])
  return rows


def format_table(reports: Sequence[tuple[str, dict[str, Any]]], *, mean: bool = False) -> str:
  """A markdown table of every row of every (run name, report): for docs/learning_curve.md.

  With `mean`, the reports are draws of one recipe: a "mean ± sd" row follows at each step
  they all measured (`mean_rows`)."""
  lines = ["| " + " | ".join(_TABLE_HEADER) + " |", "|" + "---|" * len(_TABLE_HEADER)]
  rows = [[name, str(report.get("experiment")), str(row["step"]),
           *(_format_cell(key, row.get(key)) for key in _TABLE_VALUES)]
          for name, report in reports for row in report["rows"]]
  if mean:
    rows.extend(mean_rows(reports))
  lines.extend("| " + " | ".join(cells) + " |" for cells in rows)
  return "\n".join(lines)


def write_compare_plot(reports: Sequence[tuple[str, dict[str, Any]]], path: str) -> str:
  """Each attribute against train CPU minutes (top) and FLOPs (bottom), one line per run."""
  with matplotlib.rc_context(_PLOT_STYLE):
    fig = figure.Figure(figsize=(3 * len(CURVE), 6), layout="constrained")
    grid = fig.subplots(2, len(CURVE), squeeze=False)
    for row_index, x in enumerate(("train_cpu_minutes", "train_flops")):
      for column, (key, name) in enumerate(CURVE.items()):
        axes = grid[row_index][column]
        for (run, report), colour in zip(reports, _COLOURS * len(reports)):
          xs, ys = _points(report["rows"], x, key)
          axes.plot(xs, ys, color=colour, marker=".", linewidth=1.5, label=run)
        axes.set_title(name, loc="left")
        axes.set_xlabel(_AXES[x])
        axes.set_ylim(-0.02, 1.02)
        if x == "train_flops":
          _log_x(axes)
        axes.grid(True, which="major", color="#eee")
    grid[0][0].set_ylabel("accuracy")
    grid[1][0].set_ylabel("accuracy")
    grid[0][0].legend(loc="lower right", frameon=False)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fig.savefig(path, format="png", dpi=100, metadata={"Software": None})
  return path


def compare_runs(runs: Sequence[str], out: str, *, labels: Sequence[str] | None = None,
                 mean: bool = False) -> tuple[str, str, str]:
  """Reads each run's learning_curve.json; writes OUT/curves/learning_curve_compare.png and
  OUT/learning_curve_compare.md.

  Args:
    runs: the runs' folders (or their learning_curve.json files).
    out: where the plot and the table go.
    labels: the runs' names in the plot and table; default: `runs` as given.
    mean: the runs are draws of one recipe: the table adds their mean ± sd at each step they all
      measured (`format_table`).

  Returns:
    (the plot's path, the table's path, the table).

  Raises:
    FileNotFoundError: a run has no learning_curve.json.
    LearningCurveError: the runs were measured on different suites.
  """
  labels = [run.rstrip("/") for run in runs] if labels is None else labels
  reports = [(label, read_curve(run)) for label, run in zip(labels, runs)]
  suites = {json.dumps(report.get("suite"), sort_keys=True) for _, report in reports}
  if len(suites) > 1:
    raise LearningCurveError(
        "the runs were measured on different suites (" + "; ".join(
            f"{name}: {report.get('suite')}" for name, report in reports)
        + "): measure them with the same --scenes_per_group")
  table = format_table(reports, mean=mean)
  table_path = os.path.join(out, COMPARE_TABLE_FILE)
  os.makedirs(out, exist_ok=True)
  with open(table_path, "w") as f:
    f.write(table + "\n")
  plot_path = write_compare_plot(reports, os.path.join(out, CURVES_DIR, COMPARE_PLOT_FILE))
  return plot_path, table_path, table


# ---------------------------------------------------------------------------------------------
# The command.


def _steps(values: Sequence[Any]) -> list[int]:
  try:
    return [int(value) for value in values]
  except (TypeError, ValueError) as error:
    raise LearningCurveError(f"--checkpoint_steps={','.join(map(str, values))}: give step "
                             f"numbers, e.g. --checkpoint_steps=1500,3000") from error


def command(experiment: experiment_lib.Experiment | None, workdir: str | None, *,
            out: str | None = None, scenes_per_group: int | None = None,
            checkpoint_steps: Sequence[Any] = (), every: Optional[int] = None,
            compare: Sequence[str] = (), compare_mean: bool = False,
            progress: bool = True) -> int:
  """`evaluate --what=learning_curve`: measures, prints the markdown table, then the rows'
  curves as JSON on the last line. Exit codes (`videogen.exit_codes`): 0 done; 2 one line on
  stderr says what to change: no --workdir, a malformed flag, no dit checkpoint, an unknown
  step, another suite or a compared run not measured."""
  if not workdir:
    return exit_codes.refuse("evaluate needs --workdir=DIR, a trained run (python -m "
                             "videogen.main evaluate --workdir=runs/tiny --what=learning_curve)")
  if compare_mean and not compare:
    return exit_codes.refuse("--compare_mean averages the runs of --compare with this one: "
                             "name them, e.g. --compare=runs/seed1/eval192,runs/seed2/eval192")
  out = workdir if out is None else out
  try:
    steps = _steps(checkpoint_steps)
  except LearningCurveError as error:
    return exit_codes.refuse(error)
  try:
    report = measure(workdir, experiment, steps=steps, every=every, out=out, progress=progress,
                     scenes_per_group=scenes_per_group or DEFAULT_SCENES_PER_GROUP)
    reports = [(workdir.rstrip("/"), report)]
    if compare:
      plot_path, table_path, table = compare_runs(
          [out, *compare], out, labels=[workdir.rstrip("/"), *compare], mean=compare_mean)
      logging.info("learning curves compared in %s and %s", plot_path, table_path)
    else:
      table = format_table(reports)
  except (FileNotFoundError, LearningCurveError, workdir_lib.WorkdirMismatchError) as error:
    return exit_codes.refuse(error)
  print(table)
  print(json.dumps([{"step": row["step"], "loss": row["loss"],
                     "train_minutes": row["train_minutes"],
                     "train_cpu_minutes": row.get("train_cpu_minutes"),
                     "train_flops": row["train_flops"],
                     **{key: row[key] for key in CURVE}} for row in report["rows"]]))
  return exit_codes.DONE
