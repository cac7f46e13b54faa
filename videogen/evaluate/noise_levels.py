r"""Where in the noise schedule a model loses each attribute.

    python -m videogen.main evaluate --workdir=runs/tiny --what=noise_levels

Clips of the procedural world's test split are noised to a level t and sampled back with their
own descriptive captions (SDEdit: the `edit` mode at strength t); the analyzer then scores colour,
shape, size, direction and object count against each clip's ground truth. At a low t the model
only refines what the clip already shows, so the scores approach the autoencoder's own: the
"reconstruction" row, the same clips encoded and decoded with no noise, is the ceiling of every
level (an attribute the autoencoder loses cannot be won back by the transformer); t = 1 ignores
the clip (text-to-video). The level at which an attribute's accuracy falls is where the model has
not learned to decide it: which part of the noise schedule to train harder, not just "train
longer". The command (`videogen.evaluate.command`) prints a table, then one JSON object as the
last line, and writes it to WORKDIR/eval_noise_levels.json.
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

import numpy as np
import tqdm

from data_pipelines.shapes import world
from videogen.evaluate import scoring
from videogen.evaluate import suite as suite_lib
from videogen.generate import modes
from videogen.generate import pipeline

LEVELS: tuple[float, ...] = (0.3, 0.5, 0.7, 0.8, 0.9, 1.0)
# The figures reported per level (keys of `scoring.accuracies`).
FIGURES: tuple[str, ...] = ("color_accuracy", "shape_accuracy", "size_accuracy",
                            "direction_accuracy", "count_accuracy")

# (caption, source video uint8 [T, H, W, 3], noise level in (0, 1], seed) -> video of that shape.
EditFn = Callable[[str, np.ndarray, float, int], np.ndarray]
# source video uint8 [T, H, W, 3] -> its reconstruction by the autoencoder, same shape.
ReconstructFn = Callable[[np.ndarray], np.ndarray]
# The report's name for the row of reconstructed clips.
RECONSTRUCTION = "reconstruction"


def check_levels(levels: Sequence[float]) -> tuple[float, ...]:
  """The levels as floats; each must be in (0, 1] and appear once."""
  levels = tuple(float(level) for level in levels)
  if not levels or any(not 0.0 < level <= 1.0 for level in levels):
    raise ValueError(f"noise levels must be in (0, 1], e.g. {LEVELS}; got {levels}")
  if len(set(levels)) != len(levels):
    raise ValueError(f"noise levels repeat: {levels}")
  return levels


def score_levels(edit_fn: EditFn, *, levels: Sequence[float] = LEVELS, clips: int = 32,
                 frames: int = 9, height: int = 32, width: int = 32,
                 world_config: world.WorldConfig = world.WorldConfig(), seed: int = 0,
                 reconstruct_fn: Optional[ReconstructFn] = None,
                 progress: bool = True) -> dict[str, Any]:
  """Regenerates `clips` test-split clips from each noise level and scores them.

  With `reconstruct_fn`, the clips' reconstructions are scored too: the ceiling of every level.

  Returns:
    {"clips", "frames", "height", "width", "levels": {"0.3": {figure: value or None}, ...}},
    plus "reconstruction": {figure: value or None} with `reconstruct_fn`.
  """
  levels = check_levels(levels)
  if clips < 1:
    raise ValueError(f"clips must be >= 1, got {clips}")
  samples = []
  for index in range(clips):
    scene = world.sample_scene(index, seed=seed, split="test", config=world_config)
    rendered = world.render(scene, frames=frames, height=height, width=width,
                            fps=world_config.fps)
    trajectories = [world.simulate(o, frames=frames, height=height, width=width, fps=scene.fps)
                    for o in scene.objects]
    samples.append((rendered["description"], rendered["video"],
                    suite_lib.expected_objects(scene, "descriptive", trajectories, frames)))
  bar = tqdm.tqdm(total=(len(levels) + (reconstruct_fn is not None)) * clips,
                  desc="noise levels", unit="video", disable=not progress)

  def score(what: str, make: Callable[[int, str, np.ndarray], np.ndarray]) -> dict[str, Any]:
    rows = []
    for index, (caption, video, expected) in enumerate(samples):
      made = np.asarray(make(index, caption, video))
      if made.shape != video.shape or made.dtype != np.uint8:
        raise ValueError(f"{what} returned {made.dtype} {made.shape} for a uint8 {video.shape} "
                         f"clip: it must keep the clip's shape")
      result = scoring.score_video(made, expected)
      rows.append({"hits": result.hits, "totals": result.totals,
                   "count_stability": result.count_stability,
                   "count_correct": result.count_correct, "background_correct": None})
      bar.update(1)
    scores = scoring.accuracies(rows)
    return {figure: scores[figure] for figure in FIGURES}

  report: dict[str, Any] = {"clips": clips, "frames": frames, "height": height, "width": width}
  if reconstruct_fn is not None:
    report[RECONSTRUCTION] = score("the reconstruction function",
                                   lambda index, caption, video: reconstruct_fn(video))
  report["levels"] = {
      f"{level:g}": score(f"the edit function at {level:g}",
                          lambda index, caption, video: edit_fn(caption, video, level,
                                                                seed + index))
      for level in levels}
  bar.close()
  return report


def format_table(report: dict[str, Any]) -> str:
  """One row per level (after the reconstruction row, "recon", when there is one), one column
  per figure."""
  names = [figure.replace("_accuracy", "") for figure in FIGURES]
  lines = ["level  " + "  ".join(f"{name:>9}" for name in names)]
  rows = list(report["levels"].items())
  if RECONSTRUCTION in report:
    rows.insert(0, ("recon", report[RECONSTRUCTION]))
  for level, figures in rows:
    cells = ["      n/a" if figures[f] is None else f"{figures[f]:9.3f}" for f in FIGURES]
    lines.append(f"{level:>5}  " + "  ".join(cells))
  return "\n".join(lines)


def generator_edit_fn(generator: pipeline.Generator) -> EditFn:
  """A `pipeline.Generator`'s edit mode (SDEdit from the noise level) as an `EditFn`."""

  def edit(caption: str, video: np.ndarray, level: float, seed: int) -> np.ndarray:
    return modes.edit(generator, caption, video, strength=level, seed=seed).video

  return edit


def generator_reconstruct_fn(generator: pipeline.Generator) -> ReconstructFn:
  """A `pipeline.Generator`'s autoencoder round trip as a `ReconstructFn`."""

  def reconstruct(video: np.ndarray) -> np.ndarray:
    return generator.decode(generator.encode(video), desc="reconstructing")

  return reconstruct
