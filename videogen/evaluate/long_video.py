r"""Consistency of long videos: identity drift per window, seams at every boundary, memory, speed.

    python -m videogen.main evaluate --workdir=runs/tiny --what=long_video --frames=480

(`videogen.evaluate.command` loads the workdir and writes OUT/eval_long_video.json). A video
longer than the model's window is made window by window, each window given the end of what
exists (`videogen.generate.pipeline`). For a few prompts of the world (the generation suite's
brief captions of training combinations, fewest objects first) and each generator variant of
`VARIANTS`, one long text-to-video clip is made and read back window by window:

  identity drift   per window, its frames (the context it was given and the frames it made) read by
                   the analyzer: the colours, the shapes and the object count (the most common
                   per-frame count) against the first window's; `vanished_frames` counts frames
                   showing fewer objects than the first window. Also the count against the
                   prompt's.
  seams            at every window boundary (the first frame a window made), the frame change
                   across the boundary divided by the mean change between the other consecutive
                   frames within `SEAM_REACH` frames on either side (other seams left out): ~1 is
                   seamless, >> 1 a jump. A loop's closing bridge (in, and the wrap-around from
                   its end to the clip's start) and a connection of two clips (in and out) get the
                   same figure.
  memory           the peak resident memory (RSS) of the process during the clip, above its
                   resident memory before it, and the same at a quarter of the length: memory
                   that grows with length shows as a larger figure for the longer clip.
  speed            seconds per clip and the real-time factor (video seconds per compute second).

Reading is separate from generation: `window_rows(video, spans, expected)` and
`seam_ratios(video, boundaries)` are pure functions of the frames, tested on the world's own
videos.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import resource
import time
from typing import Any, Optional, Sequence

import numpy as np
import tqdm

from data_pipelines.shapes import world
from videogen.evaluate import analyzer
from videogen.evaluate import scoring
from videogen.evaluate import suite as suite_lib
from videogen.generate import modes
from videogen.generate import pipeline
from videogen.generate import windows as windows_lib

# Generator settings compared by the evaluation: name -> `Generator.with_windows` arguments.
# "clean_context" is how the generator made long videos before context noise (see
# docs/long_video.md for the study).
VARIANTS: dict[str, dict[str, Any]] = {
    "clean_context": dict(context_noise=0.0, context_clean_below=0.0),
    "renoise": dict(context_noise=1.0, context_clean_below=0.0),
    "renoise_early": dict(context_noise=1.0, context_clean_below=0.5),
}
# Frames on either side of a seam whose changes are its reference.
SEAM_REACH = 8


@dataclasses.dataclass(frozen=True)
class LongVideoConfig:
  """Settings of the long-video evaluation.

  Attributes:
    frames: the length of each long clip (rounded to 1 + F k).
    prompts: how many prompts (brief captions of the suite's training-combination scenes).
    seed: sampling seed of prompt 0; prompt k uses seed + k.
    loops_and_connections: also measure a loop's and a connection's seams per prompt.
    memory_check: also make a clip of a quarter of the length (prompt 0) to compare memory.
  """
  frames: int = 480
  prompts: int = 2
  seed: int = 0
  loops_and_connections: bool = True
  memory_check: bool = True

  def __post_init__(self):
    if self.frames < 2 or self.prompts < 1:
      raise ValueError(f"frames = {self.frames} and prompts = {self.prompts}: need at least 2 "
                       f"frames and 1 prompt (e.g. frames=480, prompts=2)")


# ---------------------------------------------------------------------------------------------
# Reading a video: pure functions of the frames.


@dataclasses.dataclass(frozen=True)
class Span:
  """Where one window sits in the output video, in pixel frames: it made [start, end) and was
  given [given_start, start)."""
  given_start: int
  start: int
  end: int


def window_spans(windows: Sequence[windows_lib.Window], temporal_factor: int,
                 given_frames: int = 0) -> list[Span]:
  """The spans of planned windows in the output (the new frames after `given_frames` given ones).

  A window given c latent frames was given the 1 + F (c - 1) pixel frames before its first.
  """
  spans, start = [], given_frames
  for window in windows:
    made = window.new_pixel_frames(temporal_factor)
    given = 0 if not window.context else 1 + temporal_factor * (window.context - 1)
    spans.append(Span(max(0, start - given), start, start + made))
    start += made
  return spans


def identity(analysis: analyzer.VideoAnalysis) -> dict[str, Any]:
  """What identifies a clip's objects: their colours, the shape of each, and how many there are.

  The analyzer may cut one object's track in two (a brief occlusion, a misread frame), so objects
  are grouped by colour: a colour counts when its tracks together are seen in at least half the
  frames, and its shape is that of its longest-seen track.

  Returns:
    {"colors": sorted colours, "shapes": colour -> shape, "count": the most common per-frame
    count}.
  """
  counts = np.asarray(analysis.counts)
  by_color: dict[str, list[analyzer.ObjectAnalysis]] = collections.defaultdict(list)
  for obj in analysis.objects:
    by_color[obj.color].append(obj)
  shapes = {}
  for color, tracks in by_color.items():
    if np.mean(np.any([t.present for t in tracks], axis=0)) >= 0.5:
      shapes[color] = max(tracks, key=lambda t: int(np.sum(t.present))).shape
  values, occurrences = np.unique(counts, return_counts=True)
  return {"colors": sorted(shapes), "shapes": dict(sorted(shapes.items())),
          "count": int(values[np.argmax(occurrences)])}


def window_rows(video: np.ndarray, spans: Sequence[Span],
                expected: Optional[Sequence[dict[str, Any]]] = None) -> list[dict[str, Any]]:
  """One row per window: its identity against the first window's (and the prompt's count).

  Args:
    video: uint8 [T, H, W, 3].
    spans: the windows (`window_spans`); each is read over [given_start, end).
    expected: the prompted objects (`suite.Prompt.expected`), or None.

  Returns:
    Rows with frames [given_start, end), colors, shapes, count (`identity`), same_colors,
    same_shapes (every colour of window 0 with its shape), same_count (against window 0),
    vanished_frames (frames showing fewer objects than window 0's
    count) and, with `expected`, prompt_count (whether the count is the prompt's).
  """
  rows, first = [], None
  for index, span in enumerate(spans):
    analysis = analyzer.analyze(video[span.given_start:span.end])
    found = identity(analysis)
    first = first or found
    row = {"window": index, "frames": [span.given_start, span.end], **found,
           "same_colors": found["colors"] == first["colors"],
           "same_shapes": all(found["shapes"].get(c) == shape
                              for c, shape in first["shapes"].items()),
           "same_count": found["count"] == first["count"],
           "vanished_frames": int(np.sum(np.asarray(analysis.counts) < first["count"]))}
    if expected is not None:
      row["prompt_count"] = found["count"] == len(expected)
    rows.append(row)
  return rows


def seam_ratios(video: np.ndarray, boundaries: Sequence[int], *, cyclic: bool = False,
                reach: int = SEAM_REACH) -> list[float]:
  """The seam ratio at each boundary (the index of the first frame after it).

  The change (mean absolute difference, 0-255 levels) from frame b - 1 to b, over the mean change
  between the other consecutive frames within `reach` frames of b (the pairs across other
  boundaries left out); `scoring.seam_ratio`'s ratio, made local so that a long video's slow
  changes do not mask a jump.

  Args:
    video: uint8 [T, H, W, 3].
    boundaries: frame indices in [1, T - 1], or [1, T] with `cyclic` (T: the wrap-around from the
      last frame to the first).
    cyclic: the video plays on repeat (a loop).
  """
  video = np.asarray(video)
  if cyclic:
    video = np.concatenate([video, video[:reach]])
  differences = scoring.frame_differences(video)  # pair i: frame i -> i + 1
  seams = {b - 1 for b in boundaries}
  ratios = []
  for boundary in boundaries:
    if not 1 <= boundary <= len(differences):
      raise ValueError(f"boundary {boundary} must index a frame after the first of a "
                       f"{len(video)}-frame video")
    pairs = [i for i in range(max(0, boundary - 1 - reach), min(len(differences),
                                                                 boundary + reach))
             if i not in seams]
    local = differences[np.asarray(pairs, int)]
    at_seam = float(differences[boundary - 1])
    inside = float(local.mean()) if len(local) else at_seam
    ratios.append((at_seam + scoring.SEAM_EPSILON) / (inside + scoring.SEAM_EPSILON))
  return ratios


def summarize_windows(rows: Sequence[dict[str, Any]], seams: Sequence[float]) -> dict[str, Any]:
  """Fractions of windows keeping window 0's identity, and the seams' mean and max."""
  share = lambda key: round(float(np.mean([r[key] for r in rows])), 4)
  summary = {"windows": len(rows), "same_colors": share("same_colors"),
             "same_shapes": share("same_shapes"), "same_count": share("same_count"),
             "vanished_frames": int(sum(r["vanished_frames"] for r in rows))}
  if rows and "prompt_count" in rows[0]:
    summary["prompt_count"] = share("prompt_count")
  summary["seam_mean"] = round(float(np.mean(seams)), 4) if len(seams) else None
  summary["seam_max"] = round(float(np.max(seams)), 4) if len(seams) else None
  return summary


# ---------------------------------------------------------------------------------------------
# Memory.


def _resident_bytes() -> tuple[int, int]:
  """(current, peak) resident memory of this process in bytes; the peak can be reset."""
  fields = {}
  try:
    with open("/proc/self/status") as f:
      for line in f:
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
          fields[name] = int(value.split()[0]) * 1024
  except OSError:
    pass
  if len(fields) == 2:
    return fields["VmRSS"], fields["VmHWM"]
  peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
  return peak, peak


def _reset_peak() -> None:
  """Resets the kernel's peak-RSS counter (Linux); elsewhere the peak stays the process's."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
  except OSError:
    pass


def _peak_note() -> str:
  return ("resident peak per clip (/proc/self/clear_refs), above the resident before it"
          if os.path.exists("/proc/self/clear_refs") else
          "resident peak since the process started (no resettable counter)")


def measured(make) -> tuple[Any, float, int]:
  """Runs `make()`: (its result, seconds, peak resident bytes above the resident before)."""
  _reset_peak()
  before, _ = _resident_bytes()
  start = time.perf_counter()
  result = make()
  seconds = time.perf_counter() - start
  _, peak = _resident_bytes()
  return result, seconds, max(0, peak - before)


# ---------------------------------------------------------------------------------------------
# Running a generator.


def _prompts(config: LongVideoConfig, generator: pipeline.Generator,
             world_config: world.WorldConfig) -> list[suite_lib.Prompt]:
  """The brief captions of twice as many training-combination scenes as asked, fewest objects
  first (a long clip of one object is the plainest test of identity)."""
  suite = suite_lib.build_suite(
      suite_lib.GenerationEvalConfig(scenes_per_group=2 * config.prompts, modes=()),
      world_config=world_config, default_shape=tuple(generator.default_shape))
  brief = [p for p in suite.prompts if p.kind == "brief" and p.group == "seen"]
  return sorted(brief, key=lambda p: len(p.expected))[:config.prompts]


def long_clip(generator: pipeline.Generator, prompt: str, frames: int, seed: int
              ) -> tuple[np.ndarray, list[Span], float, int]:
  """A long text-to-video clip: (video, window spans, seconds, peak resident bytes)."""
  frames = windows_lib.round_frames(frames, generator.temporal_factor, continuing=False)
  plan = generator.plan_windows(generator.latent_frames(frames))
  result, seconds, peak = measured(
      lambda: modes.text_to_video(generator, prompt, frames=frames, seed=seed))
  return result.video, window_spans(plan, generator.temporal_factor), seconds, peak


def _loop_and_connection(generator: pipeline.Generator, prompt: str, seed: int
                         ) -> dict[str, float]:
  loop = modes.loop(generator, prompt, seed=seed)
  clip_frames = generator.default_shape[0]
  loop_in, loop_wrap = seam_ratios(loop.video, [clip_frames, len(loop.video)], cyclic=True)
  first = generator.generate(prompt, seed=seed + 1000)
  second = generator.generate(prompt, seed=seed + 2000)
  connection = modes.connect(generator, prompt, first, second, seed=seed)
  connect_in, connect_out = seam_ratios(
      connection.video, [len(first), len(connection.video) - len(second)])
  return {"loop_in": round(loop_in, 4), "loop_wrap": round(loop_wrap, 4),
          "connect_in": round(connect_in, 4), "connect_out": round(connect_out, 4)}


def evaluate_variant(generator: pipeline.Generator, config: LongVideoConfig,
                     prompts: Sequence[suite_lib.Prompt], *, progress: bool = True
                     ) -> dict[str, Any]:
  """Every measure of one generator over the prompts: a summary and per-prompt details."""
  # Compiles every window shape first, so that no clip's time or memory includes compilation.
  long_clip(generator, prompts[0].text, generator.default_shape[0] + 2 * generator.temporal_factor,
            config.seed)
  details, memory = [], {}
  if config.memory_check:
    video, _, _, peak = long_clip(generator, prompts[0].text, max(2, config.frames // 4),
                                  config.seed)
    memory["short_frames"], memory["short_peak_bytes"] = len(video), peak
  for index, prompt in enumerate(tqdm.tqdm(prompts, desc="long videos", unit="prompt",
                                           disable=not progress)):
    seed = config.seed + index
    video, spans, seconds, peak = long_clip(generator, prompt.text, config.frames, seed)
    rows = window_rows(video, spans, prompt.expected)
    seams = seam_ratios(video, [s.start for s in spans[1:]])
    for row, seam in zip(rows[1:], seams):
      row["seam_ratio"] = round(seam, 4)
    detail = {"prompt": prompt.text, "seed": seed, "frames": len(video),
              "seconds": round(seconds, 3),
              "real_time_factor": round(len(video) / generator.fps / max(seconds, 1e-9), 4),
              "peak_bytes": peak, **summarize_windows(rows, seams), "per_window": rows}
    if config.loops_and_connections:
      detail.update(_loop_and_connection(generator, prompt.text, seed))
    details.append(detail)
  pooled_rows = [r for d in details for r in d["per_window"]]
  pooled_seams = [r["seam_ratio"] for r in pooled_rows if "seam_ratio" in r]
  summary = summarize_windows(pooled_rows, pooled_seams)
  summary.update(
      frames=details[0]["frames"], seconds=round(float(np.mean([d["seconds"] for d in details])),
                                                 3),
      real_time_factor=round(float(np.mean([d["real_time_factor"] for d in details])), 4),
      peak_bytes=int(max(d["peak_bytes"] for d in details)), **memory,
      window_latents=generator.window_latents, overlap=generator.overlap,
      context_noise=generator.context_noise, context_clean_below=generator.context_clean_below)
  for key in ("loop_in", "loop_wrap", "connect_in", "connect_out"):
    if key in details[0]:
      summary[key] = round(float(np.mean([d[key] for d in details])), 4)
  return {"summary": summary, "prompts": details}


def evaluate_long_videos(generator: pipeline.Generator, world_config: world.WorldConfig,
                         config: LongVideoConfig = LongVideoConfig(), *,
                         variants: Optional[dict[str, dict[str, Any]]] = None,
                         progress: bool = True) -> dict[str, Any]:
  """The report: the config and, per variant of `variants` (default `VARIANTS`), its measures."""
  variants = VARIANTS if variants is None else variants
  prompts = _prompts(config, generator, world_config)
  report: dict[str, Any] = {"config": dataclasses.asdict(config), "variants": {},
                            "peak_bytes_measured": _peak_note()}
  for name, settings in variants.items():
    report["variants"][name] = evaluate_variant(generator.with_windows(**settings), config,
                                                prompts, progress=progress)
  return report


# ---------------------------------------------------------------------------------------------
# Printing.

_COLUMNS = (("windows", "{:d}"), ("same_colors", "{:.3f}"), ("same_shapes", "{:.3f}"),
            ("same_count", "{:.3f}"), ("prompt_count", "{:.3f}"), ("vanished_frames", "{:d}"),
            ("seam_mean", "{:.2f}"), ("seam_max", "{:.2f}"), ("loop_wrap", "{:.2f}"),
            ("connect_in", "{:.2f}"), ("seconds", "{:.1f}"), ("real_time_factor", "{:.2f}"),
            ("peak_bytes", "{:d}"), ("short_peak_bytes", "{:d}"))


def metrics(report: dict[str, Any]) -> dict[str, Any]:
  """The summaries alone, per variant (the command's last line)."""
  return {name: variant["summary"] for name, variant in report["variants"].items()}


def format_table(report: dict[str, Any]) -> str:
  """One line per variant, then per prompt and variant the windows that lost window 0's
  identity."""
  names = [c for c, _ in _COLUMNS]
  lines = [f"{'variant':16} " + " ".join(f"{n[:12]:>12}" for n in names)]
  for name, variant in report["variants"].items():
    summary = variant["summary"]
    cells = [("-" if summary.get(c) is None else form.format(summary[c])) for c, form in _COLUMNS]
    lines.append(f"{name:16} " + " ".join(f"{cell:>12}" for cell in cells))
  for name, variant in report["variants"].items():
    for detail in variant["prompts"]:
      lost = collections.Counter()
      for row in detail["per_window"]:
        lost.update(k for k in ("same_colors", "same_shapes", "same_count") if not row[k])
      lines.append(f"{name}: {detail['prompt']!r} seed {detail['seed']}: {detail['windows']} "
                   f"windows; differing from window 0 in colours {lost['same_colors']}, shapes "
                   f"{lost['same_shapes']}, count {lost['same_count']}; seams mean "
                   f"{detail['seam_mean']} max {detail['seam_max']}")
  return "\n".join(lines)
