"""The generation suite: a fixed, deterministic list of prompts and conditioned cases.

The suite is `scenes_per_group` scenes of training combinations (split "test", keeping only scenes
whose every object is a combination the train split shows) and as many of held-out combinations
(split "held_out"), each prompted twice, with its brief caption and its descriptive one; every
scene also gives one extension case and one image-to-video case. Each prompt records what its
caption states (`Prompt.expected`), which is all that `videogen.evaluate.generation` scores.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Optional, Sequence

import numpy as np

from data_pipelines.shapes import world

# Groups of the suite: name -> the world split its scenes come from.
GROUPS: dict[str, str] = {"seen": "test", "held_out": "held_out"}
CAPTION_KINDS: tuple[str, ...] = ("brief", "descriptive")
CONDITIONED_MODES: tuple[str, ...] = ("extend", "i2v")
# How many scene indices of a split are searched for the suite's scenes.
_MAX_SCENE_SEARCH = 2000

@dataclasses.dataclass(frozen=True)
class GenerationEvalConfig:
  """Settings of the generation suite.

  Attributes:
    scenes_per_group: scenes of training combinations and as many of held-out ones; each gives a
      brief and a descriptive prompt and one case of each conditioned mode.
    frames, height, width: the clip shape; None takes the model's training clip shape.
    extend_frames: frames an extension adds; None: frames - 1 (a valid count for an autoencoder
      whose clips have 1 + F k frames).
    modes: conditioned modes to run besides text-to-video: "extend", "i2v".
    bouncing_share: the share of each group's scenes chosen among those where an object bounces
      within the clip (so that bounce accuracy has something to measure); the rest are the first
      eligible scenes.
    world_seed: seed of the world's scene stream the suite is drawn from.
    seed: sampling seed of the first video; video k uses seed + k.
    save_videos: write every generated video (mp4) and an index.html into
      WORKDIR/eval_generation/.
  """
  scenes_per_group: int = 2
  frames: Optional[int] = None
  height: Optional[int] = None
  width: Optional[int] = None
  extend_frames: Optional[int] = None
  modes: tuple[str, ...] = CONDITIONED_MODES
  bouncing_share: float = 0.5
  world_seed: int = 0
  seed: int = 0
  save_videos: bool = True

  def __post_init__(self):
    if self.scenes_per_group < 1:
      raise ValueError(f"scenes_per_group = {self.scenes_per_group} must be at least 1")
    unknown = [m for m in self.modes if m not in CONDITIONED_MODES]
    if unknown:
      raise ValueError(f"unknown mode(s) {unknown} in modes; choose from {CONDITIONED_MODES}")
    if not 0.0 <= self.bouncing_share <= 1.0:
      raise ValueError(f"bouncing_share = {self.bouncing_share} must be in [0, 1]")
    for name in ("frames", "height", "width", "extend_frames"):
      value = getattr(self, name)
      if value is not None and value < 1:
        raise ValueError(f"{name} = {value} must be positive (or None for the model's default)")


# ---------------------------------------------------------------------------------------------
# The suite.


@dataclasses.dataclass(frozen=True)
class Prompt:
  """One text-to-video request of the suite and what it states.

  Attributes:
    text: the caption given to the model.
    kind: "brief" or "descriptive".
    group: "seen" (training combinations) or "held_out".
    scene: the world scene the caption describes.
    split, index: where the scene comes from (`world.sample_scene(index, split=split, ...)`).
    expected: per prompted object, in caption order, only the attributes the caption states:
      always "color" and "shape"; "size" when the caption names sizes; "direction" and "bounces"
      (a tuple of edges, maybe empty) in descriptive captions, with "score_bounces": whether the
      bounces are scored (the object bounces, every bounce clear of the clip's ends).
    background: the background the caption states (descriptive captions), else None.
  """
  text: str
  kind: str
  group: str
  scene: world.Scene
  split: str
  index: int
  expected: tuple[dict[str, Any], ...]
  background: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class ConditionedCase:
  """One extension or image-to-video request.

  Attributes:
    mode: "extend" (continue `given`) or "i2v" (animate `given[0]`).
    prompt: the scene's descriptive caption.
    group: as in `Prompt`.
    scene: the scene whose world clip gives the frames.
    given_frames: frames of the world's clip given to the model (1 for i2v).
    new_frames: frames the model adds (for i2v: the whole clip, its first frame included).
  """
  mode: str
  prompt: str
  group: str
  scene: world.Scene
  given_frames: int
  new_frames: int

  def given(self, height: int, width: int) -> np.ndarray:
    """uint8 [given_frames, H, W, 3]: the world's own first frames of the scene."""
    return world.render(self.scene, frames=self.given_frames, height=height,
                        width=width)["video"]


@dataclasses.dataclass(frozen=True)
class Suite:
  """The prompts and conditioned cases, at one clip shape."""
  prompts: tuple[Prompt, ...]
  cases: tuple[ConditionedCase, ...]
  frames: int
  height: int
  width: int
  fps: float
  seed: int = 0


def _clear_bounces(trajectory: world.Trajectory, frames: int) -> bool:
  """Whether a trajectory bounces, each bounce at least two frames from either end of the clip.

  A bounce in the clip's second or second-to-last frame shows a single reversed step, which the
  analyzer cannot tell from a wiggle even in the world's own videos; such objects are not scored
  for bounces (their other attributes still are).
  """
  return bool(trajectory.bounces) and all(2 <= b.frame <= frames - 3 for b in trajectory.bounces)


def _bounces_within(scene: world.Scene, frames: int, height: int, width: int) -> bool:
  return any(_clear_bounces(world.simulate(obj, frames=frames, height=height, width=width,
                                           fps=scene.fps), frames) for obj in scene.objects)


def _choose_scenes(group: str, count: int, *, frames: int, height: int, width: int,
                   config: GenerationEvalConfig, world_config: world.WorldConfig
                   ) -> list[tuple[int, world.Scene]]:
  """`count` scenes of a group, deterministic: bouncing ones first, then the first eligible.

  Raises:
    ValueError: the split holds fewer eligible scenes than asked for within the search limit.
  """
  split = GROUPS[group]
  want_bouncing = math.ceil(config.bouncing_share * count)
  bouncing, others = [], []
  for index in range(_MAX_SCENE_SEARCH):
    scene = world.sample_scene(index, seed=config.world_seed, split=split, config=world_config)
    if group == "seen" and any(world.is_held_out(o, world_config.held_out)
                               for o in scene.objects):
      continue  # "test" also holds held-out combinations; this group is the trained ones
    if len(bouncing) < want_bouncing and _bounces_within(scene, frames, height, width):
      bouncing.append((index, scene))
    elif len(others) < count:
      others.append((index, scene))
    if len(bouncing) >= want_bouncing and len(bouncing) + len(others) >= count:
      break
  chosen = sorted(bouncing + others[:count - len(bouncing)], key=lambda item: item[0])
  if len(chosen) < count:
    raise ValueError(
        f"found only {len(chosen)} eligible scenes of group {group!r} (split {split!r}) in "
        f"{_MAX_SCENE_SEARCH} indices: lower scenes_per_group")
  return chosen


def expected_objects(scene: world.Scene, kind: str, trajectories: Sequence[world.Trajectory],
                      frames: int) -> tuple[dict[str, Any], ...]:
  expected = []
  for obj, trajectory in zip(scene.objects, trajectories):
    stated: dict[str, Any] = {"color": obj.color, "shape": obj.shape}
    if kind == "descriptive" or scene.brief_with_sizes:
      stated["size"] = obj.size
    if kind == "descriptive":
      stated["direction"] = obj.direction
      stated["bounces"] = tuple(b.edge for b in trajectory.bounces)
      stated["score_bounces"] = _clear_bounces(trajectory, frames)
    expected.append(stated)
  return tuple(expected)


def build_suite(config: GenerationEvalConfig = GenerationEvalConfig(), *,
                world_config: world.WorldConfig = world.WorldConfig(),
                default_shape: tuple[int, int, int] = (9, 32, 32)) -> Suite:
  """The fixed suite: its prompts and conditioned cases, a pure function of its arguments.

  Args:
    config: the suite's size, shape and modes.
    world_config: the world the model was trained on (its held-out combinations and frame rate).
    default_shape: (frames, height, width) used where `config` says None (the training clip).
  """
  frames = config.frames or default_shape[0]
  height = config.height or default_shape[1]
  width = config.width or default_shape[2]
  extend_frames = config.extend_frames or max(1, frames - 1)
  prompts: list[Prompt] = []
  cases: list[ConditionedCase] = []
  for group in GROUPS:
    for index, scene in _choose_scenes(group, config.scenes_per_group, frames=frames,
                                       height=height, width=width, config=config,
                                       world_config=world_config):
      trajectories = [world.simulate(o, frames=frames, height=height, width=width, fps=scene.fps)
                      for o in scene.objects]
      description = world.describe(scene, frames=frames, height=height, width=width)
      for kind, text in (("brief", world.caption(scene)), ("descriptive", description)):
        prompts.append(Prompt(
            text=text, kind=kind, group=group, scene=scene, split=GROUPS[group], index=index,
            expected=expected_objects(scene, kind, trajectories, frames),
            background=scene.background if kind == "descriptive" else None))
      for mode in config.modes:
        if mode == "extend":
          cases.append(ConditionedCase("extend", description, group, scene, given_frames=frames,
                                       new_frames=extend_frames))
        else:
          cases.append(ConditionedCase("i2v", description, group, scene, given_frames=1,
                                       new_frames=frames))
  return Suite(prompts=tuple(prompts), cases=tuple(cases), frames=frames, height=height,
               width=width, fps=float(world_config.fps), seed=config.seed)
