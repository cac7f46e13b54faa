r"""How well generated videos follow their prompts, measured on the procedural world.

    python -m videogen.main evaluate --workdir=runs/tiny --what=generation

(the command, which loads a workdir and writes its reports, is `videogen.evaluate.command`).

The suite is a fixed, deterministic list of prompts taken from the world: `scenes_per_group`
scenes of training combinations (split "test", keeping only scenes whose every object is a
combination the train split shows) and as many of held-out combinations (split "held_out"), each
prompted twice, with its brief caption ("a red circle and a blue square") and its descriptive one
("a small red circle moving up-left that bounces off the left edge; ..."). Every scene also gives
one extension case (the world's own clip, continued by the model) and one image-to-video case (its
first frame, animated by the model).

Each generated video is read back by the analyzer (`videogen.evaluate.analyzer`) and scored
(`videogen.evaluate.scoring`) against what its prompt states, and only that: a brief caption names
colours and shapes (and sizes for half of the scenes), a descriptive one also sizes, directions,
bounces and the background.

  per-attribute accuracy  colour, shape, size, direction (and background): the fraction of the
                          objects a prompt states whose attribute the video shows. Prompted objects
                          are paired with the objects found by colour first; an object left over
                          is paired with a left-over found object by its other attributes, so a
                          video with a wrong colour loses colour accuracy but keeps its shapes. An
                          object with no partner counts as wrong in every attribute.
  motion, still           direction in its two parts: over the objects prompted to move, the
                          fraction that move the prompted way (chance 1/8); over those prompted
                          to stay still, the fraction that do. Direction counts "staying still"
                          as a ninth direction, so still objects kept still raise it alone.
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

import dataclasses
import time
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import tqdm

from videogen.evaluate import scoring
from videogen.evaluate import suite as suite_lib
from videogen.generate import modes
from videogen.generate import pipeline

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
    score = scoring.score_video(video, prompt.expected, prompt.background)
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
    ratio, at_seam, inside = scoring.seam_ratio(video, seam)
    row = dict(mode=case.mode, group=case.group, prompt=case.prompt, seed=seed,
               frames=len(video), seconds=round(seconds, 4), seam_ratio=round(ratio, 4),
               seam_difference=round(at_seam, 4), inside_difference=round(inside, 4))
    if case.mode == "i2v":
      row["first_frame_psnr"] = round(scoring.psnr(video[0], given[0]), 4)
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
  metrics.update(scoring.accuracies(t2v))
  metrics["by_group"] = {g: scoring.accuracies([r for r in t2v if r["group"] == g])
                         for g in suite_lib.GROUPS}
  metrics["by_caption"] = {k: scoring.accuracies([r for r in t2v if r["kind"] == k])
                           for k in suite_lib.CAPTION_KINDS}
  metrics["confusion"] = scoring.confusion(t2v)
  mean = scoring.rounded_mean
  extend = [r for r in rows if r["mode"] == "extend"]
  metrics["extension_seam_ratio"] = mean([r["seam_ratio"] for r in extend])
  metrics["extension_seam_difference"] = mean([r["seam_difference"] for r in extend])
  metrics["extension_inside_difference"] = mean([r["inside_difference"] for r in extend])
  i2v = [r for r in rows if r["mode"] == "i2v"]
  metrics["i2v_first_frame_psnr"] = mean([r["first_frame_psnr"] for r in i2v])
  metrics["i2v_seam_ratio"] = mean([r["seam_ratio"] for r in i2v])
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
        inner = ", ".join(f"{k}={format_value(v)}" for k, v in figures.items())
        lines.append(f"  {name:12} {inner}")
    else:
      lines.append(f"{key:28} {format_value(value)}")
  return "\n".join(lines)


def format_value(value: Any) -> str:
  """A figure as the tables print it: "n/a" for None, 4 significant digits for a float."""
  if value is None:
    return "n/a"
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


# ---------------------------------------------------------------------------------------------
# A pipeline's generator.


def generator_fn(generator: pipeline.Generator) -> GenerateFn:
  """Adapts a `videogen.generate.pipeline.Generator` to `GenerateFn` through its modes.

  `videogen.generate.modes` keeps given frames verbatim, so image-to-video's first frame is the
  image itself (PSNR at the cap) and its seam ratio is the informative figure.
  """

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
