r"""The `evaluate` command: measures a trained workdir and writes the reports into it (or --out).

    python -m videogen.main evaluate --workdir=runs/tiny --what=generation
    python -m videogen.main evaluate --workdir=runs/tiny --what=generation --scenes_per_group=1 \
        --out=runs/tiny/quick_eval
    python -m videogen.main evaluate --workdir=runs/tiny --what=autoencoder
    python -m videogen.main evaluate --workdir=runs/tiny --what=noise_levels
    python -m videogen.main evaluate --workdir=runs/tiny --what=caption_use
    python -m videogen.main evaluate --workdir=runs/long --what=learning_curve --every=3000
    python -m videogen.main evaluate --workdir=runs/tiny --what=long_video --frames=480

Each `--what` (a key of `EVALUATIONS`) loads what it needs from the workdir (the generator through
`videogen.generate.pipeline.load`, a stage's model through `videogen.train.trainer.load_model`),
runs its measurement (`videogen.evaluate.generation`, `noise_levels`, `caption_use`, or the stage's
own `evaluate`), prints a table, then the report as JSON on the last line, and writes the report to
OUT/eval_<what>.json, OUT being --out (default: the workdir); the generation suite's videos go to
OUT/eval_generation/. `--scenes_per_group=N` sizes the generation suite (N scenes of training
combinations and N of held-out ones, each prompted with its brief and its descriptive caption: 4N
text-to-video prompts), replacing the experiment's `config.eval_generation.scenes_per_group`.
`--steps=N` samples with N steps instead of `config.sample.num_steps`: the workdir's distilled
student when it has one and N is at most its steps, else the teacher's sampler; the report
records `steps` and `student`.
The suite's videos are scored, then watermarked and signed as they are saved
(`videogen.provenance.writer`; `--watermark=false`, `--key=FILE`, `--manifest_prompt=false` as for
`generate`): the metrics are those of the generator's own frames. Without --config, the experiment
saved with the workdir's checkpoint is used. Exit codes (`videogen.exit_codes`): 0 done; 2 one
line on stderr says what to change: no --workdir, an unknown --what or an option it does not
take, a missing checkpoint or watermark key, a config the checkpoint was not trained with.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any, Callable, Sequence

import numpy as np
from absl import logging

from data_pipelines import video_io
from data_pipelines.shapes import world
from videogen import exit_codes
from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from videogen.evaluate import caption_use
from videogen.evaluate import generation
from videogen.evaluate import learning_curve
from videogen.evaluate import long_video
from videogen.evaluate import noise_levels
from videogen.evaluate import suite as suite_lib
from videogen.generate import gallery
from videogen.generate import pipeline
from videogen.provenance import keys
from videogen.provenance import writer
from videogen.train import stages as stages_lib
from videogen.train import trainer

# Reports written into the output folder (default: the workdir).
GENERATION_FILE = "eval_generation.json"
GENERATION_VIDEOS_FILE = "eval_generation_videos.json"
NOISE_LEVELS_FILE = "eval_noise_levels.json"
CAPTION_USE_FILE = "eval_caption_use.json"
LONG_VIDEO_FILE = "eval_long_video.json"
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
    experiment = workdir_lib.saved_experiment(workdir, workdir_lib.DIT_STAGE)
  return pipeline.load(workdir, experiment, progress=False), experiment.data.world


def write_report(directory: str, filename: str, report: Any) -> None:
  """Writes an evaluation's report as indented JSON to DIRECTORY/filename."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, filename), "w") as f:
    json.dump(report, f, indent=2)


def _save_videos_callback(directory: str, fps: float, entries: list[gallery.GalleryEntry],
                          stamp: writer.Stamp) -> Callable[[dict[str, Any], np.ndarray], None]:
  """An `on_video` callback writing each video as NNN_<mode>.mp4 into `directory`, through
  `stamp` (the row's "watermark": the payload's hex, None when off)."""
  os.makedirs(directory, exist_ok=True)

  def save(row: dict[str, Any], video: np.ndarray) -> None:
    name = f"{len(entries):03d}_{row['mode']}.mp4"
    written = stamp.write([os.path.join(directory, name)], video, fps,
                          claim={"mode": row["mode"], "seed": row["seed"],
                                 "prompt": row["prompt"]})
    row["watermark"] = None if written.payload is None else written.payload.hex()
    note = f"{row['mode']}, {row['group']}" + (f", {row['kind']}" if "kind" in row else "")
    entries.append(gallery.GalleryEntry(prompt=row["prompt"], video=name, note=note))

  return save


# ---------------------------------------------------------------------------------------------
# One evaluation of a workdir each.


def run_generation(experiment: experiment_lib.Experiment | None, workdir: str, *,
                   config: suite_lib.GenerationEvalConfig | None = None,
                   progress: bool = True, out: str | None = None, watermark: bool = True,
                   key_file: str | None = None, include_prompt: bool = True,
                   steps: int | None = None) -> generation.GenerationReport:
  """Loads the workdir's generator, runs the suite, writes OUT/eval_generation.json (the
  metrics) and OUT/eval_generation_videos.json (one row per video).

  Args:
    experiment: the validated experiment; None reads the one saved with the checkpoint.
    workdir: a trained run's directory.
    config: the suite; None uses the experiment's `eval_generation` section if it has one, else
      the defaults.
    progress: show progress bars.
    out: the folder of the reports and videos; None: the workdir.
    watermark, key_file, include_prompt: how the saved videos are stamped
      (`writer.Stamp.for_workdir`; with `config.save_videos`).
    steps: sampler steps (None: the experiment's `config.sample.num_steps`).
  """
  out = workdir if out is None else out
  if experiment is None:
    experiment = workdir_lib.saved_experiment(workdir, workdir_lib.DIT_STAGE)
  if config is None:
    config = experiment.eval_generation
  if steps is not None:
    experiment = dataclasses.replace(
        experiment, sample=dataclasses.replace(experiment.sample, num_steps=steps))
  generator = pipeline.load(workdir, experiment, progress=False)
  suite = suite_lib.build_suite(config, world_config=experiment.data.world,
                                default_shape=tuple(generator.default_shape))
  logging.info("generation suite: %d prompts and %d conditioned cases at %dx%dx%d",
               len(suite.prompts), len(suite.cases), suite.frames, suite.height, suite.width)
  entries: list[gallery.GalleryEntry] = []
  videos_dir = os.path.join(out, GENERATION_VIDEOS_DIR)
  on_video = None
  if config.save_videos:
    stamp = writer.Stamp.for_workdir(workdir, watermark=watermark, key_file=key_file,
                                     include_prompt=include_prompt)
    on_video = _save_videos_callback(videos_dir, generator.fps, entries, stamp)
  report = generation.evaluate_generation(generation.generator_fn(generator), suite,
                                          progress=progress, on_video=on_video)
  if entries:
    gallery.write_index(videos_dir, entries, title=f"videogen generation suite: {workdir}")
  report.metrics["steps"] = generator.sample_config.num_steps
  report.metrics["student"] = generator.uses_student(generator.sample_config.num_steps)
  write_report(out, GENERATION_FILE, report.metrics)
  write_report(out, GENERATION_VIDEOS_FILE, report.rows)
  return report


def run_noise_levels(experiment: experiment_lib.Experiment | None, workdir: str, *,
                     levels: Sequence[float] = noise_levels.LEVELS, clips: int = 32,
                     progress: bool = True, out: str | None = None) -> dict[str, Any]:
  """Loads the workdir's generator, scores the autoencoder's reconstructions and every level,
  writes OUT/eval_noise_levels.json.

  Args:
    experiment: the validated experiment; None reads the one saved with the checkpoint.
    out: the folder of the report; None: the workdir.
  """
  generator, world_config = world_generator(experiment, workdir)
  frames, height, width = generator.default_shape
  report = noise_levels.score_levels(
      noise_levels.generator_edit_fn(generator), levels=levels, clips=clips, frames=frames,
      height=height, width=width, world_config=world_config,
      reconstruct_fn=noise_levels.generator_reconstruct_fn(generator), progress=progress)
  write_report(workdir if out is None else out, NOISE_LEVELS_FILE, report)
  return report


def run_caption_use(experiment: experiment_lib.Experiment | None, workdir: str, *,
                    levels: Sequence[float] = caption_use.LEVELS, clips: int = 64,
                    progress: bool = True, out: str | None = None) -> dict[str, Any]:
  """Loads the workdir's models, measures every gap, writes OUT/eval_caption_use.json.

  Args:
    experiment: the validated experiment; None reads the one saved with the checkpoint.
    out: the folder of the report; None: the workdir.
  """
  generator, world_config = world_generator(experiment, workdir)
  frames, height, width = generator.default_shape
  report = caption_use.measure_gaps(caption_use.generator_loss_fn(generator), levels=levels,
                                    clips=clips, frames=frames, height=height, width=width,
                                    world_config=world_config, progress=progress)
  write_report(workdir if out is None else out, CAPTION_USE_FILE, report)
  return report


def run_long_video(experiment: experiment_lib.Experiment | None, workdir: str, *,
                   frames: int | None = None, progress: bool = True,
                   out: str | None = None) -> dict[str, Any]:
  """Loads the workdir's generator, measures long videos (`long_video.VARIANTS`), writes
  OUT/eval_long_video.json.

  Args:
    frames: each long clip's length; None: `LongVideoConfig`'s (480).
    out: the folder of the report; None: the workdir.
  """
  generator, world_config = world_generator(experiment, workdir)
  config = long_video.LongVideoConfig(
      **({} if frames is None else {"frames": frames}))
  report = long_video.evaluate_long_videos(generator, world_config, config, progress=progress)
  write_report(workdir if out is None else out, LONG_VIDEO_FILE, report)
  return report


# ---------------------------------------------------------------------------------------------
# The commands of `--what`.


def report_command(what: str, workdir: str | None, run: Callable[[str], Any],
                   table: Callable[[Any], str], metrics: Callable[[Any], Any]) -> int:
  """An `evaluate --what=<what>` command: runs `run(workdir)`, prints `table(report)`, then
  `metrics(report)` as JSON on the last line. Exit code 2 without a workdir, when a checkpoint
  or the key is missing, or when the config does not fit the checkpoint."""
  if not workdir:
    return exit_codes.refuse(f"evaluate needs --workdir=DIR, a trained run (python -m "
                             f"videogen.main evaluate --workdir=runs/tiny --what={what})")
  try:
    report = run(workdir)
  except (FileNotFoundError, keys.KeyFileError, workdir_lib.WorkdirMismatchError) as error:
    return exit_codes.refuse(error)
  print(table(report))
  print(json.dumps(metrics(report), sort_keys=False))
  return exit_codes.DONE


def generation_command(experiment: experiment_lib.Experiment | None, workdir: str | None, *,
                       out: str | None = None, scenes_per_group: int | None = None,
                       watermark: bool = True, manifest_prompt: bool = True,
                       key: str | None = None, steps: int | None = None) -> int:
  """`evaluate --what=generation`: prints the table, then the metrics JSON as the last line.

  Args:
    scenes_per_group: the suite's size; None: the experiment's `eval_generation`.
    steps: sampler steps; None: the experiment's `config.sample.num_steps`.
    watermark, manifest_prompt, key: how the saved videos are stamped (`run_generation`).
  """

  def run(workdir: str) -> generation.GenerationReport:
    known = experiment
    config = None
    if scenes_per_group is not None:
      known = known or workdir_lib.saved_experiment(workdir, workdir_lib.DIT_STAGE)
      config = dataclasses.replace(known.eval_generation, scenes_per_group=scenes_per_group)
    return run_generation(known, workdir, config=config, out=out, watermark=watermark,
                          key_file=key, include_prompt=manifest_prompt, steps=steps)

  return report_command("generation", workdir, run, generation.format_table,
                        lambda report: report.metrics)


def noise_levels_command(experiment: experiment_lib.Experiment | None, workdir: str | None, *,
                         out: str | None = None) -> int:
  """`evaluate --what=noise_levels`: prints the table, then the JSON as the last line."""
  return report_command("noise_levels", workdir,
                        lambda w: run_noise_levels(experiment, w, out=out),
                        noise_levels.format_table, lambda report: report)


def caption_use_command(experiment: experiment_lib.Experiment | None, workdir: str | None, *,
                        out: str | None = None) -> int:
  """`evaluate --what=caption_use`: prints the table, then the JSON as the last line."""
  return report_command("caption_use", workdir, lambda w: run_caption_use(experiment, w, out=out),
                        caption_use.format_table, lambda report: report)


def long_video_command(experiment: experiment_lib.Experiment | None, workdir: str | None, *,
                       out: str | None = None, frames: int | None = None) -> int:
  """`evaluate --what=long_video`: prints the table, then the summaries as JSON on the last
  line."""
  if frames is not None and frames < 2:
    return exit_codes.refuse(f"--frames={frames}: a long video needs at least 2 frames (e.g. "
                             f"480)")
  return report_command("long_video", workdir,
                        lambda w: run_long_video(experiment, w, frames=frames, out=out),
                        long_video.format_table, long_video.metrics)


def stage_command(stage_name: str, experiment: experiment_lib.Experiment | None,
                  workdir: str | None, *, out: str | None = None) -> int:
  """`evaluate --what=<stage>`: the stage's own `evaluate` on its newest checkpoint (EMA weights).

  Prints one line per metric (and per fact of `stage.evaluation_context()`, e.g. the
  autoencoder's compression), then all of them as JSON on the last line, and writes them to
  OUT/eval_<stage>.json; the stage writes its own files (e.g. sample videos) under OUT too.
  OUT is `out`, by default the workdir.
  """
  if not workdir:
    return exit_codes.refuse(f"evaluate needs --workdir=DIR, a run that trained stage "
                             f"{stage_name!r}")
  try:
    if experiment is None:
      experiment = workdir_lib.saved_experiment(workdir, stage_name)
    stage = stages_lib.make_stage(stage_name, experiment)
    model, step = trainer.load_model(experiment, workdir, stage_name)
  except (FileNotFoundError, workdir_lib.WorkdirMismatchError) as error:
    return exit_codes.refuse(error)
  except ModuleNotFoundError as error:
    return exit_codes.refuse(f"--what={stage_name} is not available in this version of "
                             f"videogen: its stage does not import ({error})")
  out = workdir if out is None else out
  scores = {name: float(value) for name, value in stage.evaluate(model, step, out).items()}
  if not scores:  # a stage's bug, not the command line's
    return exit_codes.fail(f"stage {stage_name!r} measures nothing in its evaluate(); nothing "
                           f"to report")
  result = {"stage": stage_name, "step": int(step), **scores, **stage.evaluation_context()}
  write_report(out, f"eval_{stage_name}.json", result)
  for name, value in result.items():
    print(f"{name:28} {generation.format_value(value)}")
  print(json.dumps(result))
  return exit_codes.DONE


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """One `--what`: `command(experiment, workdir, out=..., **options)` returns an exit code;
  `about` says what it measures; `options` names the keyword options it takes besides `out`."""
  command: Callable[..., int]
  about: str
  options: tuple[str, ...] = ()


EVALUATIONS: dict[str, Evaluation] = {
    "generation": Evaluation(
        generation_command, "prompt following, physics, seams and speed of generated videos",
        options=("scenes_per_group", "watermark", "manifest_prompt", "key", "steps")),
    "autoencoder": Evaluation(
        functools.partial(stage_command, "autoencoder"),
        "the autoencoder stage's own evaluation (reconstruction PSNR / SSIM)"),
    "noise_levels": Evaluation(
        noise_levels_command, "attribute accuracy of test clips regenerated from each noise "
        "level: where in the schedule the model fails"),
    "caption_use": Evaluation(
        caption_use_command, "how much loss the model saves by reading each attribute of the "
        "caption: which words it has learned"),
    "learning_curve": Evaluation(
        learning_curve.command,
        "every saved dit checkpoint on the generation suite: per-attribute accuracy against "
        "steps, train minutes and FLOPs (videogen.evaluate.learning_curve)",
        options=("scenes_per_group", "checkpoint_steps", "every", "compare", "compare_mean")),
    "long_video": Evaluation(
        long_video_command, "identity drift per window, seams at every window boundary, peak "
        "memory and speed of long videos (--frames, default 480)", options=("frames",)),
}
# What `evaluate` measures without --what.
DEFAULT_EVALUATION = "generation"


def evaluate(experiment: experiment_lib.Experiment | None, workdir: str | None, *,
             what: str | None = None, out: str | None = None,
             scenes_per_group: int | None = None, watermark: bool = True,
             manifest_prompt: bool = True, key: str | None = None,
             checkpoint_steps: Sequence[str] | None = None, every: int | None = None,
             compare: Sequence[str] | None = None, compare_mean: bool = False,
             frames: int | None = None, steps: int | None = None) -> int:
  """`python -m videogen.main evaluate --workdir=DIR --what=...`: runs one evaluation.

  Args:
    experiment: the validated experiment (from --config), or None to read the workdir's own.
    workdir: the trained run.
    what: a key of `EVALUATIONS`; None: `DEFAULT_EVALUATION`.
    out: the folder of the reports and videos; None: the workdir.
    scenes_per_group: the generation suite's size (--what=generation only); None: the
      experiment's.
    watermark, manifest_prompt, key: how the generation suite's videos are stamped
      (--what=generation only; `run_generation`).
    checkpoint_steps, every, compare, compare_mean: which checkpoints, which other runs to
      compare with, and whether to average them as draws of one recipe (--what=learning_curve
      only; `videogen.evaluate.learning_curve.command`).
    frames: the long clips' length (--what=long_video only); None: 480.
    steps: sampler steps (--what=generation only); None: the experiment's.
  """
  what = DEFAULT_EVALUATION if what is None else what
  if what not in EVALUATIONS:
    return exit_codes.refuse(f"unknown --what={what!r}; choose one of: "
                             + "; ".join(f"{k} ({v.about})" for k, v in EVALUATIONS.items()))
  evaluation = EVALUATIONS[what]
  # Only options set away from their defaults are passed (and checked against `what`).
  given = {"scenes_per_group": scenes_per_group, "watermark": None if watermark else False,
           "manifest_prompt": None if manifest_prompt else False, "key": key,
           "checkpoint_steps": checkpoint_steps or None, "every": every,
           "compare": compare or None, "compare_mean": True if compare_mean else None,
           "frames": frames, "steps": steps}
  options = {name: value for name, value in given.items() if value is not None}
  for name in options:
    if name not in evaluation.options:
      takers = [k for k, v in EVALUATIONS.items() if name in v.options]
      return exit_codes.refuse(f"--{name} applies to --what={' or --what='.join(takers)}, not "
                               f"--what={what}")
  if scenes_per_group is not None and scenes_per_group < 1:
    return exit_codes.refuse(f"--scenes_per_group={scenes_per_group}: give at least 1 (N scenes "
                             f"of each group give 4N prompts)")
  if steps is not None and steps < 1:
    return exit_codes.refuse(f"--steps={steps}: give at least 1 sampler step")
  if out is not None:  # before minutes of measuring; created when there is something to write
    try:
      video_io.check_writable(os.path.join(out, f"eval_{what}.json"), create_folder=False)
    except video_io.VideoWriteError as error:
      return exit_codes.refuse(f"--out={out}: {error.message}")
  return evaluation.command(experiment, workdir, out=out, **options)
