r"""How well generated videos follow their prompts, measured on the procedural world.

    python -m videogen.main evaluate --workdir=runs/tiny --what=generation

The suite is a fixed, deterministic list of prompts taken from the world: `scenes_per_group`
scenes of training combinations (split "test", keeping only scenes whose every object is a
combination the train split shows) and as many of held-out combinations (split "held_out"), each
prompted twice, with its brief caption ("a red circle and a blue square") and its descriptive one
("a small red circle moving up-left that bounces off the left edge; ..."). Every scene also gives
one extension case (the world's own clip, continued by the model) and one image-to-video case (its
first frame, animated by the model).

Each generated video is read back by the analyzer (`videogen.evaluate.analyzer`) and scored against
what its prompt states, and only that: a brief caption names colours and shapes (and sizes for half
of the scenes), a descriptive one also sizes, directions, bounces and the background.

  per-attribute accuracy  colour, shape, size, direction (and background): the fraction of the
                          objects a prompt states whose attribute the video shows. Prompted objects
                          are paired with the objects found by colour first; an object left over
                          is paired with a left-over found object by its other attributes, so a
                          video with a wrong colour loses colour accuracy but keeps its shapes. An
                          object with no partner counts as wrong in every attribute.
  confusion               per attribute, prompted value -> what the analyzer read instead: a
                          shape accuracy of a third is chance, but it may mean "every shape drawn
                          as one round blob" or "shapes drawn at random", and these need different
                          fixes.
  count stability         the fraction of frames that show as many objects as the prompt names;
                          count accuracy: the fraction of videos whose most common count is right.
  bounce accuracy         over the objects a descriptive prompt says bounce (each bounce at least
                          two frames from the clip's ends, where the analyzer can see it): the
                          fraction whose video shows exactly the stated edges, in order.
  extension seam          the mean absolute frame difference at the seam (last given frame -> first
                          new frame) divided by the mean difference between the other consecutive
                          frames of the extended clip: ~1 is seamless, >> 1 a jump.
  image-to-video          PSNR (dB) between the given image and the video's first frame (capped at
                          100 dB, which a pipeline that keeps the given frame verbatim scores), and
                          the seam ratio from that frame into the generated ones.
  speed                   seconds per text-to-video clip (the median, so the first call's
                          compilation is left out; `first_video_seconds` shows it) and the real-time
                          factor, video seconds per compute second.

The suite's size and shape are a `GenerationEvalConfig`: the experiment's `eval_generation`
section when it has one, else the defaults (2 scenes per group at the training clip's shape: 8
text-to-video prompts, 4 extensions and 4 image-to-video clips).

Scoring is separate from generation: `evaluate_generation(generate_fn, suite)` takes any function
`generate_fn(prompt, *, frames, height, width, seed, mode="t2v", image=None, video=None)` that
returns uint8 [T, H, W, 3] (see `GenerateFn`), so the tests check the scoring itself with fake
generators that render the world's ground truth.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import math
import os
import sys
import time
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np
import tqdm
from absl import logging

from data_pipelines.shapes import world
from videogen import workdir as workdir_lib
from videogen.evaluate import analyzer
from videogen.evaluate import suite as suite_lib

# The attributes scored per object, in table order.
ATTRIBUTES: tuple[str, ...] = ("color", "shape", "size", "direction")
# PSNR of identical frames (infinite) is reported as this, so that the JSON stays finite.
MAX_PSNR = 100.0
# Added to both sides of a seam ratio (in 0-255 pixel levels, below one quantisation step), so that
# a still clip continued still scores 1 rather than 0 / 0.
_SEAM_EPSILON = 0.5
# Results files written into the workdir.
RESULTS_FILE = "eval_generation.json"
VIDEOS_FILE = "eval_generation_videos.json"


# ---------------------------------------------------------------------------------------------
# Scoring one video.


@dataclasses.dataclass
class VideoScore:
  """How one video follows its prompt.

  Attributes:
    hits: attribute -> how many of the prompted objects show it (for "bounces": among the objects
      stated to bounce).
    totals: attribute -> how many prompted objects state it.
    count_stability: fraction of frames with the prompted number of objects.
    count_correct: whether the most common per-frame count is the prompted one.
    background_correct: None when the prompt states no background.
    found: objects the analyzer found.
    readings: one per prompted object, in the prompt's order: attribute -> [the prompted value,
      the value the analyzer read from the object paired with it, or None when none was]; only
      the attributes the prompt states. They say what a wrong answer was (`confusion`).
  """
  hits: dict[str, int]
  totals: dict[str, int]
  count_stability: float
  count_correct: bool
  background_correct: Optional[bool]
  found: int
  readings: list[dict[str, list[Optional[str]]]] = dataclasses.field(default_factory=list)


def pair_objects(analysis: analyzer.VideoAnalysis, expected: Sequence[dict[str, Any]]
                 ) -> list[tuple[dict[str, Any], Optional[analyzer.ObjectAnalysis]]]:
  """Pairs prompted objects with found ones: by colour, then left-overs by their other attributes.

  Returns:
    One (prompted object, found object or None) per prompted object, in the prompt's order; each
    found object is used at most once.
  """
  pairs = [list(pair) for pair in analyzer.match_objects(analysis, expected)]
  used = {id(found) for _, found in pairs if found is not None}
  for pair in pairs:
    if pair[1] is not None:
      continue
    free = [o for o in analysis.objects if id(o) not in used]
    if not free:
      break
    stated = [a for a in ATTRIBUTES[1:] if a in pair[0]]
    # The best agreement wins; ties go to the first found (max keeps the first maximum).
    best = max(free, key=lambda o: sum(getattr(o, a) == pair[0][a] for a in stated))
    pair[1] = best
    used.add(id(best))
  return [tuple(pair) for pair in pairs]


def score_video(video: np.ndarray, expected: Sequence[dict[str, Any]],
                background: Optional[str] = None) -> VideoScore:
  """Scores a uint8 video [T, H, W, 3] against the prompted objects (see `Prompt.expected`)."""
  analysis = analyzer.analyze(video)
  hits: dict[str, int] = collections.Counter()
  totals: dict[str, int] = collections.Counter()
  readings = []
  for stated, found in pair_objects(analysis, expected):
    reading = {}
    for attribute in ATTRIBUTES:
      if attribute in stated:
        read = None if found is None else getattr(found, attribute)
        reading[attribute] = [stated[attribute], read]
        totals[attribute] += 1
        hits[attribute] += int(read == stated[attribute])
    readings.append(reading)
    if stated.get("score_bounces"):
      totals["bounces"] += 1
      hits["bounces"] += int(found is not None
                             and tuple(found.bounce_edges) == tuple(stated["bounces"]))
  counts = np.asarray(analysis.counts)
  values, occurrences = np.unique(counts, return_counts=True)
  return VideoScore(
      hits=dict(hits), totals=dict(totals),
      count_stability=float(np.mean(counts == len(expected))),
      count_correct=bool(values[np.argmax(occurrences)] == len(expected)),
      background_correct=None if background is None else analysis.background == background,
      found=len(analysis.objects), readings=readings)


def frame_differences(video: np.ndarray) -> np.ndarray:
  """float [T - 1]: mean absolute difference (0-255 levels) between consecutive frames."""
  video = np.asarray(video, np.float32)
  return np.abs(video[1:] - video[:-1]).mean(axis=(1, 2, 3))


def seam_ratio(video: np.ndarray, seam: int) -> tuple[float, float, float]:
  """How much the video jumps where new frames start.

  Args:
    video: uint8 [T, H, W, 3].
    seam: index of the first new frame (1 <= seam < T); the seam is the pair (seam - 1, seam).

  Returns:
    (ratio, difference at the seam, mean difference of the other consecutive pairs); the ratio
    is ~1 for a seamless continuation and >> 1 for a jump.
  """
  differences = frame_differences(video)
  if not 1 <= seam <= len(differences):
    raise ValueError(f"seam = {seam} must index a frame after the first of a {len(video)}-frame "
                     f"video")
  at_seam = float(differences[seam - 1])
  inside = np.delete(differences, seam - 1)
  inside_mean = float(inside.mean()) if len(inside) else at_seam
  return (at_seam + _SEAM_EPSILON) / (inside_mean + _SEAM_EPSILON), at_seam, inside_mean


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
  """PSNR in dB of two uint8 images [H, W, 3], capped at `MAX_PSNR` (identical images)."""
  error = np.mean(np.square(np.asarray(image, np.float64) - np.asarray(reference, np.float64)))
  if error == 0.0:
    return MAX_PSNR
  return float(min(MAX_PSNR, 10.0 * math.log10(255.0 ** 2 / error)))


# ---------------------------------------------------------------------------------------------
# Running the suite.


class GenerateFn(Protocol):
  """What the evaluation calls to make a video.

  mode "t2v": returns uint8 [frames, H, W, 3].
  mode "i2v": `image` uint8 [H, W, 3] is the first frame; returns the clip of `frames` frames
    that starts with it (as the model shows it).
  mode "extend": `video` uint8 [Tg, H, W, 3] is continued by `frames` new frames; returns the
    whole clip [Tg + frames, H, W, 3], the given frames first.
  A generator that must round `frames` (to what its autoencoder accepts) may return a different
  count; the scores use whatever it returns.
  """

  def __call__(self, prompt: str, *, frames: int, height: int, width: int, seed: int,
               mode: str = "t2v", image: np.ndarray | None = None,
               video: np.ndarray | None = None) -> np.ndarray: ...


@dataclasses.dataclass
class GenerationReport:
  """The evaluation's outcome: `metrics` (the JSON summary) and one row per generated video."""
  metrics: dict[str, Any]
  rows: list[dict[str, Any]]


def _check_video(video: Any, what: str, height: int, width: int) -> np.ndarray:
  video = np.asarray(video)
  if video.dtype != np.uint8 or video.ndim != 4 or video.shape[1:] != (height, width, 3):
    raise ValueError(f"{what}: the generator returned {video.dtype} {video.shape}; expected uint8 "
                     f"[T, {height}, {width}, 3]")
  return video


def _ratio(hits: int, total: int) -> Optional[float]:
  return None if total == 0 else round(hits / total, 4)


def _mean(values: Sequence[float]) -> Optional[float]:
  return None if not values else round(float(np.mean(values)), 4)


def accuracies(rows: Sequence[dict[str, Any]]) -> dict[str, Optional[float]]:
  """Per-attribute accuracy (pooled over the objects of `rows`), counts and background."""
  hits, totals = collections.Counter(), collections.Counter()
  for row in rows:
    hits.update(row["hits"])
    totals.update(row["totals"])
  result = {f"{a}_accuracy": _ratio(hits[a], totals[a]) for a in ATTRIBUTES}
  result["bounce_accuracy"] = _ratio(hits["bounces"], totals["bounces"])
  result["count_stability"] = _mean([r["count_stability"] for r in rows])
  result["count_accuracy"] = _mean([float(r["count_correct"]) for r in rows])
  backgrounds = [float(r["background_correct"]) for r in rows
                 if r["background_correct"] is not None]
  result["background_accuracy"] = _mean(backgrounds)
  return result


# What `confusion` counts when no object was paired with a prompted one.
MISSING = "missing"


def confusion(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, dict[str, int]]]:
  """attribute -> prompted value -> what the analyzer read -> objects, pooled over `rows`.

  The accuracies say how often an attribute was right; this says what was drawn instead. A
  shape accuracy of a third is chance either way, but {"square": {"circle": 8}} says the model
  draws one blob for every shape, and {"square": {"circle": 3, "triangle": 3, ...}} that it
  draws shapes without reading the word. Objects the analyzer did not find count as `MISSING`.
  """
  counts: dict[str, dict[str, collections.Counter]] = {}
  for row in rows:
    for reading in row["readings"]:
      for attribute, (stated, read) in reading.items():
        table = counts.setdefault(attribute, {})
        table.setdefault(stated, collections.Counter())[MISSING if read is None else read] += 1
  return {attribute: {stated: dict(sorted(counts[attribute][stated].items()))
                      for stated in sorted(counts[attribute])}
          for attribute in ATTRIBUTES if attribute in counts}


def evaluate_generation(generate_fn: GenerateFn, suite: suite_lib.Suite, *, progress: bool = True,
                        on_video: Callable[[dict[str, Any], np.ndarray], None] | None = None
                        ) -> GenerationReport:
  """Generates every video of the suite, scores it, and summarises.

  Args:
    generate_fn: makes the videos (see `GenerateFn`).
    suite: from `build_suite`.
    progress: show a progress bar.
    on_video: called with (row, video) after each video, e.g. to save it.

  Returns:
    The report; its `metrics` hold accuracies in [0, 1] (None where the suite states nothing to
    score), the seam ratios, PSNR in dB, seconds per video and the real-time factor.
  """
  shape = dict(height=suite.height, width=suite.width)
  rows: list[dict[str, Any]] = []
  requests = len(suite.prompts) + len(suite.cases)
  bar = tqdm.tqdm(total=requests, desc="evaluating generation", unit="video", disable=not progress,
                  leave=False)
  seed = suite.seed
  for prompt in suite.prompts:
    start = time.perf_counter()
    video = generate_fn(prompt.text, frames=suite.frames, seed=seed, mode="t2v", **shape)
    seconds = time.perf_counter() - start
    video = _check_video(video, f"t2v {prompt.text!r}", **shape)
    score = score_video(video, prompt.expected, prompt.background)
    row = dict(mode="t2v", group=prompt.group, kind=prompt.kind, prompt=prompt.text, seed=seed,
               frames=len(video), seconds=round(seconds, 4), objects=len(prompt.expected),
               found=score.found, hits=score.hits, totals=score.totals,
               count_stability=round(score.count_stability, 4), count_correct=score.count_correct,
               background_correct=score.background_correct, readings=score.readings)
    rows.append(row)
    if on_video is not None:
      on_video(row, video)
    seed += 1
    bar.update(1)

  for case in suite.cases:
    given = case.given(suite.height, suite.width)
    start = time.perf_counter()
    if case.mode == "extend":
      video = generate_fn(case.prompt, frames=case.new_frames, seed=seed, mode="extend",
                          video=given, **shape)
    else:
      video = generate_fn(case.prompt, frames=case.new_frames, seed=seed, mode="i2v",
                          image=given[0], **shape)
    seconds = time.perf_counter() - start
    video = _check_video(video, f"{case.mode} {case.prompt!r}", **shape)
    seam = len(given) if case.mode == "extend" else 1
    if len(video) <= seam:
      raise ValueError(f"{case.mode} {case.prompt!r}: the generator returned {len(video)} frames, "
                       f"no new frame after the {seam} given ones")
    ratio, at_seam, inside = seam_ratio(video, seam)
    row = dict(mode=case.mode, group=case.group, prompt=case.prompt, seed=seed,
               frames=len(video), seconds=round(seconds, 4), seam_ratio=round(ratio, 4),
               seam_difference=round(at_seam, 4), inside_difference=round(inside, 4))
    if case.mode == "i2v":
      row["first_frame_psnr"] = round(psnr(video[0], given[0]), 4)
    rows.append(row)
    if on_video is not None:
      on_video(row, video)
    seed += 1
    bar.update(1)
  bar.close()
  return GenerationReport(metrics=summarize(rows, suite), rows=rows)


def summarize(rows: Sequence[dict[str, Any]], suite: suite_lib.Suite) -> dict[str, Any]:
  """The JSON summary of the rows `evaluate_generation` made."""
  t2v = [r for r in rows if r["mode"] == "t2v"]
  metrics: dict[str, Any] = {"videos": len(rows), "prompts": len(t2v)}
  metrics.update(accuracies(t2v))
  metrics["by_group"] = {g: accuracies([r for r in t2v if r["group"] == g])
                         for g in suite_lib.GROUPS}
  metrics["by_caption"] = {k: accuracies([r for r in t2v if r["kind"] == k])
                           for k in suite_lib.CAPTION_KINDS}
  metrics["confusion"] = confusion(t2v)
  extend = [r for r in rows if r["mode"] == "extend"]
  metrics["extension_seam_ratio"] = _mean([r["seam_ratio"] for r in extend])
  metrics["extension_seam_difference"] = _mean([r["seam_difference"] for r in extend])
  metrics["extension_inside_difference"] = _mean([r["inside_difference"] for r in extend])
  i2v = [r for r in rows if r["mode"] == "i2v"]
  metrics["i2v_first_frame_psnr"] = _mean([r["first_frame_psnr"] for r in i2v])
  metrics["i2v_seam_ratio"] = _mean([r["seam_ratio"] for r in i2v])
  seconds = [r["seconds"] for r in t2v]
  median = float(np.median(seconds)) if seconds else None
  metrics["seconds_per_video"] = None if median is None else round(median, 4)
  metrics["first_video_seconds"] = seconds[0] if seconds else None
  # Video seconds of the clips as generated (a generator may round the frame count).
  clip_frames = float(np.median([r["frames"] for r in t2v])) if t2v else 0.0
  metrics["real_time_factor"] = (None if not median else
                                 round(clip_frames / suite.fps / median, 4))
  metrics["frames"], metrics["height"], metrics["width"] = suite.frames, suite.height, suite.width
  metrics["fps"] = suite.fps
  return metrics


# ---------------------------------------------------------------------------------------------
# Printing.


def _cell(hits: dict[str, int], totals: dict[str, int], key: str) -> str:
  return f"{hits.get(key, 0)}/{totals[key]}" if totals.get(key) else "-"


def format_table(report: GenerationReport) -> str:
  """A readable table: one line per video, then the summary figures."""
  lines = [f"{'mode':6} {'group':8} {'caption':11} {'found':>5} {'colour':>6} {'shape':>5} "
           f"{'size':>5} {'dir':>5} {'bounce':>6} {'count':>5} {'seam':>6} {'psnr':>6} "
           f"{'sec':>7}  prompt"]
  for row in report.rows:
    if row["mode"] == "t2v":
      hits, totals = row["hits"], row["totals"]
      cells = [f"{row['found']}/{row['objects']}", _cell(hits, totals, "color"),
               _cell(hits, totals, "shape"), _cell(hits, totals, "size"),
               _cell(hits, totals, "direction"), _cell(hits, totals, "bounces"),
               f"{row['count_stability']:.2f}", "-", "-"]
    else:
      cells = ["-"] * 7 + [f"{row['seam_ratio']:.2f}",
                           f"{row['first_frame_psnr']:.1f}" if "first_frame_psnr" in row else "-"]
    prompt = row["prompt"] if len(row["prompt"]) <= 70 else row["prompt"][:67] + "..."
    lines.append(f"{row['mode']:6} {row['group']:8} {row.get('kind', '-'):11} {cells[0]:>5} "
                 f"{cells[1]:>6} {cells[2]:>5} {cells[3]:>5} {cells[4]:>5} {cells[5]:>6} "
                 f"{cells[6]:>5} {cells[7]:>6} {cells[8]:>6} {row['seconds']:7.2f}  {prompt}")
  metrics = report.metrics
  lines.append("")
  for key, value in metrics.items():
    if key == "confusion":
      lines.append("confusion (prompted -> read):")
      for attribute, table in value.items():
        for stated, found in table.items():
          read = ", ".join(f"{name} {count}" for name, count in
                           sorted(found.items(), key=lambda item: (-item[1], item[0])))
          lines.append(f"  {attribute:9} {stated:10} -> {read}")
    elif isinstance(value, dict):
      lines.append(f"{key}:")
      for name, figures in value.items():
        inner = ", ".join(f"{k}={_show(v)}" for k, v in figures.items())
        lines.append(f"  {name:12} {inner}")
    else:
      lines.append(f"{key:28} {_show(value)}")
  return "\n".join(lines)


def _show(value: Any) -> str:
  if value is None:
    return "n/a"
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


# ---------------------------------------------------------------------------------------------
# A trained workdir.


def generator_fn(generator: Any) -> GenerateFn:
  """Adapts a `videogen.generate.pipeline.Generator` to `GenerateFn` through its modes.

  `videogen.generate.modes` keeps given frames verbatim, so image-to-video's first frame is the
  image itself (PSNR at the cap) and its seam ratio is the informative figure.
  """
  from videogen.generate import modes  # pylint: disable=g-import-not-at-top

  def generate(prompt: str, *, frames: int, height: int, width: int, seed: int,
               mode: str = "t2v", image: np.ndarray | None = None,
               video: np.ndarray | None = None) -> np.ndarray:
    size = dict(frames=frames, height=height, width=width, seed=seed)
    if mode == "t2v":
      return modes.text_to_video(generator, prompt, **size).video
    if mode == "i2v":
      if image is None:
        raise ValueError("mode 'i2v' needs image=uint8 [H, W, 3]")
      return modes.image_to_video(generator, prompt, image, **size).video
    if mode == "extend":
      if video is None:
        raise ValueError("mode 'extend' needs video=uint8 [T, H, W, 3]")
      return modes.extend(generator, prompt, video, **size).video
    raise ValueError(f"unknown mode {mode!r}; choose 't2v', 'i2v' or 'extend'")

  return generate


def _save_videos_callback(directory: str, fps: float, entries: list[Any]
                          ) -> Callable[[dict[str, Any], np.ndarray], None]:
  """An `on_video` callback writing each video as NNN_<mode>.mp4 into `directory`."""
  from data_pipelines import video_io  # pylint: disable=g-import-not-at-top
  from videogen.generate import gallery  # pylint: disable=g-import-not-at-top
  os.makedirs(directory, exist_ok=True)

  def save(row: dict[str, Any], video: np.ndarray) -> None:
    name = f"{len(entries):03d}_{row['mode']}.mp4"
    video_io.write_video(os.path.join(directory, name), video, fps)
    note = f"{row['mode']}, {row['group']}" + (f", {row['kind']}" if "kind" in row else "")
    entries.append(gallery.GalleryEntry(prompt=row["prompt"], video=name, note=note))

  return save


def evaluate_workdir(experiment: Any, workdir: str, *,
                     config: suite_lib.GenerationEvalConfig | None = None,
                     progress: bool = True) -> GenerationReport:
  """Loads the workdir's generator, runs the suite, writes WORKDIR/eval_generation.json.

  Args:
    experiment: the validated experiment; None reads the one saved with the checkpoint.
    workdir: a trained run's directory.
    config: the suite; None uses the experiment's `eval_generation` section if it has one, else
      the defaults.
    progress: show progress bars.
  """
  from videogen.generate import pipeline  # pylint: disable=g-import-not-at-top
  if experiment is None:
    experiment = workdir_lib.saved_experiment(workdir, pipeline.DIT_STAGE)
  if config is None:
    config = experiment.eval_generation
  world_config = experiment.data.world
  generator = pipeline.load(workdir, experiment, progress=False)
  suite = suite_lib.build_suite(config, world_config=world_config,
                      default_shape=tuple(generator.default_shape))
  logging.info("generation suite: %d prompts and %d conditioned cases at %dx%dx%d",
               len(suite.prompts), len(suite.cases), suite.frames, suite.height, suite.width)
  entries: list[Any] = []
  videos_dir = os.path.join(workdir, "eval_generation")
  on_video = (_save_videos_callback(videos_dir, generator.fps, entries)
              if config.save_videos else None)
  report = evaluate_generation(generator_fn(generator), suite, progress=progress,
                               on_video=on_video)
  if entries:
    from videogen.generate import gallery  # pylint: disable=g-import-not-at-top
    gallery.write_index(videos_dir, entries, title=f"videogen generation suite: {workdir}")
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, RESULTS_FILE), "w") as f:
    json.dump(report.metrics, f, indent=2)
  with open(os.path.join(workdir, VIDEOS_FILE), "w") as f:
    json.dump(report.rows, f, indent=2)
  return report


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


def generation_command(experiment: Any, workdir: str | None) -> int:
  """`evaluate --what=generation`: prints the table, then the metrics JSON as the last line."""
  return report_command("generation", workdir, lambda w: evaluate_workdir(experiment, w),
                        format_table, lambda report: report.metrics)


# ---------------------------------------------------------------------------------------------
# The evaluate command.


def world_generator(experiment: Any, workdir: str) -> tuple[Any, world.WorldConfig]:
  """The workdir's `pipeline.Generator` (progress bars off) and the world its data came from.

  Args:
    experiment: the validated experiment; None reads the one saved with the dit checkpoint.

  Raises:
    FileNotFoundError: a checkpoint is missing.
  """
  from videogen.generate import pipeline  # pylint: disable=g-import-not-at-top
  if experiment is None:
    experiment = workdir_lib.saved_experiment(workdir, pipeline.DIT_STAGE)
  return pipeline.load(workdir, experiment, progress=False), experiment.data.world


def write_report(workdir: str, filename: str, report: dict[str, Any]) -> None:
  """Writes an evaluation's report as indented JSON to WORKDIR/filename."""
  with open(os.path.join(workdir, filename), "w") as f:
    json.dump(report, f, indent=2)


def stage_command(stage_name: str, experiment: Any, workdir: str | None) -> int:
  """`evaluate --what=<stage>`: the stage's own `evaluate` on its newest checkpoint (EMA weights).

  Prints one line per metric (and per fact of `stage.evaluation_context()`, e.g. the
  autoencoder's compression), then all of them as JSON on the last line, and writes them to
  WORKDIR/eval_<stage>.json.
  """
  if not workdir:
    print(f"evaluate needs --workdir=DIR, a run that trained stage {stage_name!r}",
          file=sys.stderr)
    return 2
  from videogen.train import stages as stages_lib  # pylint: disable=g-import-not-at-top
  from videogen.train import trainer  # pylint: disable=g-import-not-at-top
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
  with open(os.path.join(workdir, f"eval_{stage_name}.json"), "w") as f:
    json.dump(result, f, indent=2)
  for name, value in result.items():
    print(f"{name:28} {_show(value)}")
  print(json.dumps(result))
  return 0


# --what -> (command, what it measures). Each command takes (experiment, workdir) and returns an
# exit code, like the commands of videogen.main.
def _noise_levels_command(experiment: Any, workdir: Optional[str]) -> int:
  from videogen.evaluate import noise_levels  # pylint: disable=g-import-not-at-top
  return noise_levels.command(experiment, workdir)


def _caption_use_command(experiment: Any, workdir: Optional[str]) -> int:
  from videogen.evaluate import caption_use  # pylint: disable=g-import-not-at-top
  return caption_use.command(experiment, workdir)


EVALUATIONS: dict[str, tuple[Callable[[Any, Optional[str]], int], str]] = {
    "generation": (generation_command,
                   "prompt following, physics, seams and speed of generated videos"),
    "autoencoder": (functools.partial(stage_command, "autoencoder"),
                    "the autoencoder stage's own evaluation (reconstruction PSNR / SSIM)"),
    "noise_levels": (_noise_levels_command,
                     "attribute accuracy of test clips regenerated from each noise level: "
                     "where in the schedule the model fails"),
    "caption_use": (_caption_use_command,
                    "how much loss the model saves by reading each attribute of the caption: "
                    "which words it has learned"),
}


def evaluate(experiment: Any, workdir: str | None, *, what: str = "generation") -> int:
  """`python -m videogen.main evaluate --workdir=DIR --what=...`: runs one evaluation.

  Args:
    experiment: the validated experiment (from --config), or None to read the workdir's own.
    workdir: the trained run.
    what: a key of `EVALUATIONS`.
  """
  if what not in EVALUATIONS:
    print(f"unknown --what={what!r}; choose one of: "
          + "; ".join(f"{k} ({v[1]})" for k, v in EVALUATIONS.items()), file=sys.stderr)
    return 2
  return EVALUATIONS[what][0](experiment, workdir)
