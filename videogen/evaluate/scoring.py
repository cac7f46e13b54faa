"""Scores of generated videos against what their prompts state: pure functions of the videos.

`score_video` reads a video back with the analyzer (`videogen.evaluate.analyzer`) and compares it
with the prompted objects; `accuracies` and `confusion` pool such scores over many videos
(`score_videos` scores and pools in one call);
`seam_ratio` and `psnr` measure the seams of conditioned clips. See `videogen.evaluate.generation`
for the suite that uses them and what each figure means.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from typing import Any, Optional, Sequence

import numpy as np

from data_pipelines.shapes import vocabulary
from videogen.evaluate import analyzer

# The attributes scored per object, in table order.
ATTRIBUTES: tuple[str, ...] = ("color", "shape", "size", "direction")
# Direction split by what was prompted: "staying still" is a ninth direction, so a model that keeps
# still objects still raises direction without moving anything the way its caption says.
DIRECTION_PARTS: tuple[str, ...] = ("motion", "still")
# PSNR of identical frames (infinite) is reported as this, so that the JSON stays finite.
MAX_PSNR = 100.0
# Added to both sides of a seam ratio (in 0-255 pixel levels, below one quantisation step), so that
# a still clip continued still scores 1 rather than 0 / 0.
SEAM_EPSILON = 0.5


# ---------------------------------------------------------------------------------------------
# Scoring one video.


@dataclasses.dataclass
class VideoScore:
  """How one video follows its prompt.

  Attributes:
    hits: attribute -> how many of the prompted objects show it (for "bounces": among the objects
      stated to bounce; "motion" and "still": direction among the objects prompted to move, and
      to stay still).
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

  def accuracy_row(self) -> dict[str, Any]:
    """The fields `accuracies` pools over videos."""
    return dict(hits=self.hits, totals=self.totals, count_stability=self.count_stability,
                count_correct=self.count_correct, background_correct=self.background_correct)


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
    if "direction" in stated:
      part = "still" if stated["direction"] == vocabulary.STATIC else "motion"
      totals[part] += 1
      hits[part] += int(reading["direction"][1] == stated["direction"])
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
  return (at_seam + SEAM_EPSILON) / (inside_mean + SEAM_EPSILON), at_seam, inside_mean


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
  """PSNR in dB of two uint8 images [H, W, 3], capped at `MAX_PSNR` (identical images)."""
  error = np.mean(np.square(np.asarray(image, np.float64) - np.asarray(reference, np.float64)))
  if error == 0.0:
    return MAX_PSNR
  return float(min(MAX_PSNR, 10.0 * math.log10(255.0 ** 2 / error)))


# ---------------------------------------------------------------------------------------------
# Pooling the scores of many videos.


def _ratio(hits: int, total: int) -> Optional[float]:
  return None if total == 0 else round(hits / total, 4)


def rounded_mean(values: Sequence[float]) -> Optional[float]:
  """The mean rounded to 4 decimals; None for no values."""
  return None if not values else round(float(np.mean(values)), 4)


def accuracies(rows: Sequence[dict[str, Any]]) -> dict[str, Optional[float]]:
  """Per-attribute accuracy (pooled over the objects of `rows`: `VideoScore.accuracy_row`s or
  the generation suite's rows, which hold the same fields), counts and background."""
  hits, totals = collections.Counter(), collections.Counter()
  for row in rows:
    hits.update(row["hits"])
    totals.update(row["totals"])
  result = {f"{a}_accuracy": _ratio(hits[a], totals[a]) for a in ATTRIBUTES}
  result["bounce_accuracy"] = _ratio(hits["bounces"], totals["bounces"])
  # Direction's two parts: moved as prompted (chance 1/8 when objects move at random), kept still.
  result.update({f"{part}_accuracy": _ratio(hits[part], totals[part])
                 for part in DIRECTION_PARTS})
  result["count_stability"] = rounded_mean([r["count_stability"] for r in rows])
  result["count_accuracy"] = rounded_mean([float(r["count_correct"]) for r in rows])
  backgrounds = [float(r["background_correct"]) for r in rows
                 if r["background_correct"] is not None]
  result["background_accuracy"] = rounded_mean(backgrounds)
  return result


def score_videos(videos: Sequence[np.ndarray], prompts: Sequence[Any]
                 ) -> dict[str, Optional[float]]:
  """`accuracies` of videos, each scored against its prompt (with `expected` and `background`,
  as `videogen.evaluate.suite.Prompt` has)."""
  return accuracies([score_video(video, prompt.expected, prompt.background).accuracy_row()
                     for video, prompt in zip(videos, prompts, strict=True)])


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
