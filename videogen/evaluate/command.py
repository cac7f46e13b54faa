r"""The `evaluate` command: measures a trained workdir and writes the reports into it.

    python -m videogen.main evaluate --workdir=runs/tiny --what=generation
    python -m videogen.main evaluate --workdir=runs/tiny --what=autoencoder
    python -m videogen.main evaluate --workdir=runs/tiny --what=noise_levels
    python -m videogen.main evaluate --workdir=runs/tiny --what=caption_use

Each `--what` (a key of `EVALUATIONS`) loads what it needs from the workdir (the generator through
`videogen.generate.pipeline.load`, a stage's model through `videogen.train.trainer.load_model`),
runs its measurement (`videogen.evaluate.generation`, `noise_levels`, `caption_use`, or the stage's
own `evaluate`), prints a table, then the report as JSON on the last line, and writes the report to
WORKDIR/eval_<what>.json. Without --config, the experiment saved with the workdir's checkpoint is
used. Exit codes: 0 done, 1 a checkpoint is missing, 2 a usage error (no --workdir, unknown --what).
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from typing import Any, Callable, Optional, Sequence

import numpy as np
from absl import logging

from data_pipelines import video_io
from data_pipelines.shapes import world
from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from videogen.evaluate import caption_use
from videogen.evaluate import generation
from videogen.evaluate import noise_levels
from videogen.evaluate import suite as suite_lib
from videogen.generate import gallery
from videogen.generate import pipeline
from videogen.train import stages as stages_lib
from videogen.train import trainer

# Reports written into the workdir.
GENERATION_FILE = "eval_generation.json"
GENERATION_VIDEOS_FILE = "eval_generation_videos.json"
NOISE_LEVELS_FILE = "eval_noise_levels.json"
CAPTION_USE_FILE = "eval_caption_use.json"
# The folder of the generation suite's videos (with `GenerationEvalConfig.save_videos`).
GENERATION_VIDEOS_DIR = "eval_generation"


# ---------------------------------------------------------------------------------------------
# Reading the workdir, writing reports.


def world_generator(experiment: experiment_lib.Experiment | None, workdir: str
                    ) -> tuple[pipeline.Generator, world.WorldConfig]:
  """The workdir's `pipeline.Generator` (progress bars off) and the world its data came from.

  Args:
    experiment: the validated experiment; None reads the one saved with the dit checkpoint.

  Raises:
    FileNotFoundError: a checkpoint is missing.
  """
  if experiment is None:
    experiment = workdir_lib.saved_experiment(workdir, pipeline.DIT_STAGE)
  return pipeline.load(workdir, experiment, progress=False), experiment.data.world


def write_report(workdir: str, filename: str, report: Any) -> None:
  """Writes an evaluation's report as indented JSON to WORKDIR/filename."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, filename), "w") as f:
    json.dump(report, f, indent=2)


def _save_videos_callback(directory: str, fps: float, entries: list[gallery.GalleryEntry]
                          ) -> Callable[[dict[str, Any], np.ndarray], None]:
  """An `on_video` callback writing each video as NNN_<mode>.mp4 into `directory`."""
  os.makedirs(directory, exist_ok=True)

  def save(row: dict[str, Any], video: np.ndarray) -> None:
    name = f"{len(entries):03d}_{row['mode']}.mp4"
    video_io.write_video(os.path.join(directory, name), video, fps)
    note = f"{row['mode']}, {row['group']}" + (f", {row['kind']}" if "kind" in row else "")
    entries.append(gallery.GalleryEntry(prompt=row["prompt"], video=name, note=note))

  return save


# ---------------------------------------------------------------------------------------------
# One evaluation of a workdir each.


def run_generation(experiment: experiment_lib.Experiment | None, workdir: str, *,
                   config: suite_lib.GenerationEvalConfig | None = None,
                   progress: bool = True) -> generation.GenerationReport:
  """Loads the workdir's generator, runs the suite, writes WORKDIR/eval_generation.json (the
  metrics) and WORKDIR/eval_generation_videos.json (one row per video).

  Args:
    experiment: the validated experiment; None reads the one saved with the checkpoint.
    workdir: a trained run's directory.
    config: the suite; None uses the experiment's `eval_generation` section if it has one, else
      the defaults.
    progress: show progress bars.
  """
  if experiment is None:
    experiment = workdir_lib.saved_experiment(workdir, pipeline.DIT_STAGE)
  if config is None:
    config = experiment.eval_generation
  generator = pipeline.load(workdir, experiment, progress=False)
  suite = suite_lib.build_suite(config, world_config=experiment.data.world,
                                default_shape=tuple(generator.default_shape))
  logging.info("generation suite: %d prompts and %d conditioned cases at %dx%dx%d",
               len(suite.prompts), len(suite.cases), suite.frames, suite.height, suite.width)
  entries: list[gallery.GalleryEntry] = []
  videos_dir = os.path.join(workdir, GENERATION_VIDEOS_DIR)
  on_video = (_save_videos_callback(videos_dir, generator.fps, entries)
              if config.save_videos else None)
  report = generation.evaluate_generation(generation.generator_fn(generator), suite,
                                          progress=progress, on_video=on_video)
  if entries:
    gallery.write_index(videos_dir, entries, title=f"videogen generation suite: {workdir}")
  write_report(workdir, GENERATION_FILE, report.metrics)
  write_report(workdir, GENERATION_VIDEOS_FILE, report.rows)
  return report


def run_noise_levels(experiment: experiment_lib.Experiment | None, workdir: str, *,
                     levels: Sequence[float] = noise_levels.LEVELS, clips: int = 32,
                     progress: bool = True) -> dict[str, Any]:
  """Loads the workdir's generator, scores the autoencoder's reconstructions and every level,
  writes WORKDIR/eval_noise_levels.json.

  Args:
    experiment: the validated experiment; None reads the one saved with the checkpoint.
  """
  generator, world_config = world_generator(experiment, workdir)
  frames, height, width = generator.default_shape
  report = noise_levels.score_levels(
      noise_levels.generator_edit_fn(generator), levels=levels, clips=clips, frames=frames,
      height=height, width=width, world_config=world_config,
      reconstruct_fn=noise_levels.generator_reconstruct_fn(generator), progress=progress)
  write_report(workdir, NOISE_LEVELS_FILE, report)
  return report


def run_caption_use(experiment: experiment_lib.Experiment | None, workdir: str, *,
                    levels: Sequence[float] = caption_use.LEVELS, clips: int = 64,
                    progress: bool = True) -> dict[str, Any]:
  """Loads the workdir's models, measures every gap, writes WORKDIR/eval_caption_use.json.

  Args:
    experiment: the validated experiment; None reads the one saved with the checkpoint.
  """
  generator, world_config = world_generator(experiment, workdir)
  frames, height, width = generator.default_shape
  report = caption_use.measure_gaps(caption_use.generator_loss_fn(generator), levels=levels,
                                    clips=clips, frames=frames, height=height, width=width,
                                    world_config=world_config, progress=progress)
  write_report(workdir, CAPTION_USE_FILE, report)
  return report


# ---------------------------------------------------------------------------------------------
# The commands of `--what`.


def report_command(what: str, workdir: str | None, run: Callable[[str], Any],
                   table: Callable[[Any], str], metrics: Callable[[Any], Any]) -> int:
  """An `evaluate --what=<what>` command: runs `run(workdir)`, prints `table(report)`, then
  `metrics(report)` as JSON on the last line. Exit code 2 without a workdir, 1 when a checkpoint
  is missing."""
  if not workdir:
    print(f"evaluate needs --workdir=DIR, a trained run (python -m videogen.main evaluate "
          f"--workdir=runs/tiny --what={what})", file=sys.stderr)
    return 2
  try:
    report = run(workdir)
  except FileNotFoundError as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  print(table(report))
  print(json.dumps(metrics(report), sort_keys=False))
  return 0


def generation_command(experiment: experiment_lib.Experiment | None, workdir: str | None) -> int:
  """`evaluate --what=generation`: prints the table, then the metrics JSON as the last line."""
  return report_command("generation", workdir, lambda w: run_generation(experiment, w),
                        generation.format_table, lambda report: report.metrics)


def noise_levels_command(experiment: experiment_lib.Experiment | None,
                         workdir: str | None) -> int:
  """`evaluate --what=noise_levels`: prints the table, then the JSON as the last line."""
  return report_command("noise_levels", workdir, lambda w: run_noise_levels(experiment, w),
                        noise_levels.format_table, lambda report: report)


def caption_use_command(experiment: experiment_lib.Experiment | None,
                        workdir: str | None) -> int:
  """`evaluate --what=caption_use`: prints the table, then the JSON as the last line."""
  return report_command("caption_use", workdir, lambda w: run_caption_use(experiment, w),
                        caption_use.format_table, lambda report: report)


def stage_command(stage_name: str, experiment: experiment_lib.Experiment | None,
                  workdir: str | None) -> int:
  """`evaluate --what=<stage>`: the stage's own `evaluate` on its newest checkpoint (EMA weights).

  Prints one line per metric (and per fact of `stage.evaluation_context()`, e.g. the
  autoencoder's compression), then all of them as JSON on the last line, and writes them to
  WORKDIR/eval_<stage>.json.
  """
  if not workdir:
    print(f"evaluate needs --workdir=DIR, a run that trained stage {stage_name!r}",
          file=sys.stderr)
    return 2
  try:
    if experiment is None:
      experiment = workdir_lib.saved_experiment(workdir, stage_name)
    stage = stages_lib.make_stage(stage_name, experiment)
    model, step = trainer.load_model(experiment, workdir, stage_name)
  except FileNotFoundError as error:
    print(f"error: {error}", file=sys.stderr)
    return 1
  except ModuleNotFoundError as error:
    print(f"--what={stage_name} is not available in this version of videogen: its stage does not "
          f"import ({error})", file=sys.stderr)
    return 2
  scores = {name: float(value) for name, value in stage.evaluate(model, step, workdir).items()}
  if not scores:
    print(f"stage {stage_name!r} measures nothing in its evaluate(); nothing to report",
          file=sys.stderr)
    return 1
  result = {"stage": stage_name, "step": int(step), **scores, **stage.evaluation_context()}
  write_report(workdir, f"eval_{stage_name}.json", result)
  for name, value in result.items():
    print(f"{name:28} {generation.format_value(value)}")
  print(json.dumps(result))
  return 0


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """One `--what`: `command(experiment, workdir)` returns an exit code; `about` says what it
  measures."""
  command: Callable[[Optional[experiment_lib.Experiment], Optional[str]], int]
  about: str


EVALUATIONS: dict[str, Evaluation] = {
    "generation": Evaluation(
        generation_command, "prompt following, physics, seams and speed of generated videos"),
    "autoencoder": Evaluation(
        lambda experiment, workdir: stage_command("autoencoder", experiment, workdir),
        "the autoencoder stage's own evaluation (reconstruction PSNR / SSIM)"),
    "noise_levels": Evaluation(
        noise_levels_command, "attribute accuracy of test clips regenerated from each noise "
        "level: where in the schedule the model fails"),
    "caption_use": Evaluation(
        caption_use_command, "how much loss the model saves by reading each attribute of the "
        "caption: which words it has learned"),
}
# What `evaluate` measures without --what.
DEFAULT_EVALUATION = "generation"


def evaluate(experiment: experiment_lib.Experiment | None, workdir: str | None, *,
             what: str | None = None) -> int:
  """`python -m videogen.main evaluate --workdir=DIR --what=...`: runs one evaluation.

  Args:
    experiment: the validated experiment (from --config), or None to read the workdir's own.
    workdir: the trained run.
    what: a key of `EVALUATIONS`; None: `DEFAULT_EVALUATION`.
  """
  what = DEFAULT_EVALUATION if what is None else what
  if what not in EVALUATIONS:
    print(f"unknown --what={what!r}; choose one of: "
          + "; ".join(f"{k} ({v.about})" for k, v in EVALUATIONS.items()), file=sys.stderr)
    return 2
  return EVALUATIONS[what].command(experiment, workdir)
