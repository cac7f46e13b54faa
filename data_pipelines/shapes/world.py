"""The procedural world: scenes of moving, bouncing shapes, their renderer and their captions.

A scene is defined in continuous, resolution-free units, so one scene renders at 32x32, 64x96 or
any other size, length and frame rate:
  * positions are normalised to [0, 1] along each axis of the frame (x to the right, y downwards);
  * sizes and speeds are fractions of the frame's short side, min(H, W) (speeds per second), so a
    circle stays round and a diagonal stays at 45 degrees on any aspect ratio;
  * time is in seconds; frame i is the scene at time i / fps.

Physics: every object moves at constant velocity and bounces elastically off the frame's edges: its
bounding box never leaves the frame, and when it touches an edge the velocity component normal to
that edge flips. Since an object's extent along an axis depends on the aspect ratio, the bounce
times do too; `render` (not `sample_scene`) runs the physics for the requested frame size.

    scene = sample_scene(7, seed=0, split="train")
    sample = render(scene, frames=17, height=32, width=32)
    sample["video"]        # uint8 [17, 32, 32, 3]
    sample["caption"]      # "a red circle and a blue square"
    sample["description"]  # "a small red circle moving up-left that bounces off the left edge; ..."

    sample = generate(7, seed=0, frames=17, height=32, width=32)  # the same, in one call

Splits: "train" never holds an object of a held-out combination (`WorldConfig.held_out`); "test"
is an independent stream of the same distribution (held-out combinations included); every scene of
"held_out" holds at least one object of a held-out combination.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from data_pipelines.shapes import vocabulary

# Half-extent of an object (radius of a circle, half the side of a square, half the base and half
# the height of a triangle) as a fraction of the frame's short side. At 32x32 a small object spans
# 6.4 pixels and a large one 11.5, so both stay visible and the analyzer tells them apart.
SIZE_FRACTIONS: dict[str, float] = {"small": 0.10, "large": 0.18}
SPLITS: tuple[str, ...] = ("train", "test", "held_out")
# Independent random streams per split: (seed, split code, index) seeds one scene.
_SPLIT_CODES: dict[str, int] = {"train": 0, "test": 1, "held_out": 2}
# How many times an object or a layout is resampled before giving up (train split) or settling for
# the best layout found (positions).
_MAX_ATTEMPTS = 64


@dataclasses.dataclass(frozen=True)
class HeldOut:
  """An attribute combination held out of training; None means "any value"."""
  color: str | None = None
  shape: str | None = None
  size: str | None = None

  def matches(self, color: str, shape: str, size: str) -> bool:
    return ((self.color is None or self.color == color)
            and (self.shape is None or self.shape == shape)
            and (self.size is None or self.size == size))

  def __str__(self) -> str:
    return " ".join(w for w in (self.size, self.color, self.shape) if w is not None)


def parse_held_out(spec: str) -> HeldOut:
  """Parses a held-out spec such as "green triangle", "large yellow square" or "red".

  A spec is any non-empty set of at most one size, one colour and one shape word, in any order;
  attributes it does not name match every value ("green triangle" holds out green triangles of
  both sizes).

  Raises:
    ValueError: for an empty spec, an unknown word or two words of the same kind.
  """
  words = spec.lower().split()
  if not words:
    raise ValueError(
        "empty held-out spec: name at least one size, colour or shape, e.g. 'green triangle'")
  kinds = {"size": vocabulary.SIZES, "color": tuple(vocabulary.COLORS), "shape": vocabulary.SHAPES}
  found: dict[str, str] = {}
  for word in words:
    kind = next((k for k, options in kinds.items() if word in options), None)
    if kind is None:
      raise ValueError(
          f"unknown word {word!r} in held-out spec {spec!r}; use sizes {vocabulary.SIZES}, "
          f"colours {tuple(vocabulary.COLORS)} and shapes {vocabulary.SHAPES}")
    if kind in found:
      raise ValueError(
          f"held-out spec {spec!r} names two {kind}s ({found[kind]!r} and {word!r}); "
          f"write one spec per combination, e.g. held_out=('red circle', 'blue circle')")
    found[kind] = word
  return HeldOut(**found)


def _as_held_out(held_out: Iterable[str | HeldOut] | str | HeldOut) -> tuple[HeldOut, ...]:
  if isinstance(held_out, (str, HeldOut)):
    held_out = (held_out,)
  return tuple(h if isinstance(h, HeldOut) else parse_held_out(h) for h in held_out)


def is_held_out(obj_attrs: Any, held_out: Iterable[str | HeldOut] | str | HeldOut) -> bool:
  """Whether an object matches any held-out combination.

  Args:
    obj_attrs: anything with color, shape and size: a `SceneObject`, an analyzer's object, or a
      mapping such as a ground-truth object dict {"color": ..., "shape": ..., "size": ...}.
    held_out: specs ("green triangle") or parsed `HeldOut`s.
  """
  if isinstance(obj_attrs, Mapping):
    color, shape, size = obj_attrs["color"], obj_attrs["shape"], obj_attrs["size"]
  else:
    color, shape, size = obj_attrs.color, obj_attrs.shape, obj_attrs.size
  return any(h.matches(color, shape, size) for h in _as_held_out(held_out))


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """The `data.world` config section: what scenes the world samples.

  Attributes:
    min_objects: fewest objects in a scene.
    max_objects: most objects in a scene.
    held_out: attribute combinations never shown in split "train" (see `parse_held_out`).
    fps: frames per second of rendered clips (`generate`), and the frame rate that start positions
      are chosen for: no object bounces within its first frame interval, so its first displacement
      shows its direction.
    static_probability: chance that an object stays still.
    min_speed: slowest moving object, in frame short sides per second.
    max_speed: fastest moving object, in frame short sides per second.
    backgrounds: background names (keys of `vocabulary.BACKGROUNDS`) to draw from.
    distinct_colors: give every object of a scene its own colour (otherwise only its own
      (colour, shape)). Distinct colours make brief captions unambiguous and let the analyzer
      separate overlapping objects by colour alone.
  """
  min_objects: int = 1
  max_objects: int = 3
  held_out: tuple[str, ...] = ("green triangle", "large yellow square")
  fps: int = 8
  static_probability: float = 0.2
  min_speed: float = 0.3
  max_speed: float = 0.6
  backgrounds: tuple[str, ...] = ("black", "gray")
  distinct_colors: bool = True

  def __post_init__(self):
    if not 1 <= self.min_objects <= self.max_objects:
      raise ValueError(
          f"need 1 <= min_objects <= max_objects, got min_objects={self.min_objects}, "
          f"max_objects={self.max_objects}")
    distinct = len(vocabulary.COLORS) if self.distinct_colors else (
        len(vocabulary.COLORS) * len(vocabulary.SHAPES))
    if self.max_objects > distinct:
      raise ValueError(
          f"max_objects={self.max_objects} exceeds the {distinct} objects a scene can hold with "
          f"distinct_colors={self.distinct_colors}; lower max_objects")
    if self.fps <= 0:
      raise ValueError(f"fps must be positive, got {self.fps}")
    if not 0.0 <= self.static_probability <= 1.0:
      raise ValueError(f"static_probability must be in [0, 1], got {self.static_probability}")
    if not 0.0 < self.min_speed <= self.max_speed:
      raise ValueError(
          f"need 0 < min_speed <= max_speed, got {self.min_speed} and {self.max_speed}")
    unknown = [b for b in self.backgrounds if b not in vocabulary.BACKGROUNDS]
    if unknown or not self.backgrounds:
      raise ValueError(
          f"backgrounds={self.backgrounds} must be a non-empty subset of "
          f"{tuple(vocabulary.BACKGROUNDS)}")
    _as_held_out(self.held_out)  # raises on an unknown word


@dataclasses.dataclass(frozen=True)
class SceneObject:
  """One object of a scene, in resolution-free units.

  Attributes:
    color, shape, size: vocabulary words.
    direction: a key of `vocabulary.DIRECTIONS`, or `vocabulary.STATIC`.
    start: (cx, cy), the centre of its bounding box at t = 0, normalised to [0, 1].
    speed: frame short sides per second (0 when static).
  """
  color: str
  shape: str
  size: str
  direction: str
  start: tuple[float, float]
  speed: float

  @property
  def half_extent(self) -> float:
    """Half the side of the bounding box, as a fraction of the frame's short side."""
    return SIZE_FRACTIONS[self.size]


@dataclasses.dataclass(frozen=True)
class Scene:
  """A scene: the background, the objects and how its brief caption is worded.

  Attributes:
    background: a key of `vocabulary.BACKGROUNDS`.
    objects: drawn in order of size (large first, so that a small object is never hidden) and
      otherwise in this order; captions name them in this order.
    fps: the frame rate `render` uses when given none.
    brief_with_sizes: whether the brief caption names sizes ("a large red circle").
  """
  background: str
  objects: tuple[SceneObject, ...]
  fps: int = 8
  brief_with_sizes: bool = False


def _check_split(split: str) -> None:
  if split not in SPLITS:
    raise ValueError(f"unknown split {split!r}; choose one of {SPLITS}")


def _sample_attributes(rng: np.random.Generator, config: WorldConfig,
                       taken: Sequence[tuple[str, str, str]],
                       forced: HeldOut | None = None) -> tuple[str, str, str]:
  """Draws (colour, shape, size) unlike the objects `taken`, with the words `forced` names."""
  colors = [c for c in vocabulary.COLORS
            if not (config.distinct_colors and any(t[0] == c for t in taken))]
  for _ in range(_MAX_ATTEMPTS):
    color = colors[rng.integers(len(colors))]
    shape = vocabulary.SHAPES[rng.integers(len(vocabulary.SHAPES))]
    size = vocabulary.SIZES[rng.integers(len(vocabulary.SIZES))]
    if forced is not None:
      color, shape, size = forced.color or color, forced.shape or shape, forced.size or size
    if not any(t[:2] == (color, shape) for t in taken):
      return color, shape, size
  raise ValueError(f"could not draw an object unlike {taken}: lower max_objects")


def sample_scene(index: int, *, seed: int, split: str = "train",
                 config: WorldConfig = WorldConfig()) -> Scene:
  """Samples scene number `index` of a split: a pure function of (seed, split, index, config).

  Raises:
    ValueError: for a negative seed or index, an unknown split, a "held_out" split without
      held-out combinations, or held-out combinations that leave the train split nothing to draw.
  """
  _check_split(split)
  if index < 0 or seed < 0:
    raise ValueError(f"seed and index must be non-negative, got seed={seed}, index={index}")
  held_out = _as_held_out(config.held_out)
  if split == "held_out" and not held_out:
    raise ValueError("split 'held_out' needs WorldConfig.held_out, e.g. ('green triangle',)")
  rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_CODES[split], index]))

  num_objects = int(rng.integers(config.min_objects, config.max_objects + 1))
  # The held-out split forces one object, at a random place in the caption's order, to one
  # held-out combination; it is drawn first so that no other object takes its colour.
  forced_slot, forced = -1, None
  if split == "held_out":
    forced_slot = int(rng.integers(num_objects))
    forced = held_out[rng.integers(len(held_out))]
  order = sorted(range(num_objects), key=lambda slot: slot != forced_slot)
  attributes: dict[int, tuple[str, str, str]] = {}
  for slot in order:
    for _ in range(_MAX_ATTEMPTS):
      drawn = _sample_attributes(rng, config, list(attributes.values()),
                                 forced if slot == forced_slot else None)
      # Train resamples (deterministically, from the same stream) any held-out object.
      if split != "train" or not any(h.matches(*drawn) for h in held_out):
        break
    else:
      raise ValueError(
          f"held_out={config.held_out} excludes (nearly) every object from the train split; "
          f"hold out fewer combinations")
    attributes[slot] = drawn

  motions = []
  for _ in range(num_objects):
    if rng.random() < config.static_probability:
      motions.append((vocabulary.STATIC, 0.0))
    else:
      direction = tuple(vocabulary.DIRECTIONS)[rng.integers(len(vocabulary.DIRECTIONS))]
      motions.append((direction, float(rng.uniform(config.min_speed, config.max_speed))))
  sizes = [attributes[slot][2] for slot in range(num_objects)]
  starts = _sample_starts(rng, sizes, motions, config.fps)
  objects = tuple(
      SceneObject(*attributes[slot], direction=motions[slot][0], start=starts[slot],
                  speed=motions[slot][1])
      for slot in range(num_objects))
  background = config.backgrounds[rng.integers(len(config.backgrounds))]
  return Scene(background=background, objects=objects, fps=config.fps,
               brief_with_sizes=bool(rng.random() < 0.5))


def _sample_starts(rng: np.random.Generator, sizes: Sequence[str],
                   motions: Sequence[tuple[str, float]], fps: int) -> list[tuple[float, float]]:
  """Start centres that keep every object inside the frame and apart from the others.

  Each object keeps a margin of one frame's travel from the edge it moves towards, so no object
  bounces within its first frame interval. The bounds hold on any aspect ratio: an object's
  normalised extent and speed along an axis are largest on a square frame. Layouts where two
  objects' inscribed circles overlap are redrawn; after `_MAX_ATTEMPTS` the most spread-out layout
  is kept.
  """
  bounds = []
  for size, (direction, speed) in zip(sizes, motions):
    radius = SIZE_FRACTIONS[size]
    unit = vocabulary.DIRECTIONS.get(direction, (0.0, 0.0))
    margin = speed / fps
    bounds.append([(radius + (margin if u < 0 else 0.0), 1.0 - radius - (margin if u > 0 else 0.0))
                   for u in unit])
  radii = np.array([SIZE_FRACTIONS[s] for s in sizes])
  best, best_gap = None, -np.inf
  for _ in range(_MAX_ATTEMPTS):
    centres = np.array([[rng.uniform(lo, hi) for lo, hi in axes] for axes in bounds])
    distances = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    gaps = distances - (radii[:, None] + radii[None])
    gap = np.min(gaps[~np.eye(len(sizes), dtype=bool)], initial=np.inf)
    if gap > best_gap:
      best, best_gap = centres, gap
    if gap >= 0:
      break
  return [(float(x), float(y)) for x, y in best]


# ---------------------------------------------------------------------------------------------
# Physics.


@dataclasses.dataclass(frozen=True)
class Bounce:
  """A bounce: at `time` seconds (frame `frame`, the nearest one) the object touches `edge`."""
  time: float
  frame: int
  edge: str


@dataclasses.dataclass(frozen=True)
class Trajectory:
  """An object's motion sampled at the frames of a clip.

  Attributes:
    centers: [T, 2] (cx, cy) of the bounding box, normalised to [0, 1].
    half_extents: (hx, hy), half the box's width and height, normalised.
    bounces: every bounce whose nearest frame lies strictly inside the clip (1 .. T-2), so that
      the frames show the reversal, in time order (a corner gives two at one time).
  """
  centers: np.ndarray
  half_extents: tuple[float, float]
  bounces: tuple[Bounce, ...]

  @property
  def boxes(self) -> np.ndarray:
    """[T, 4] (x0, y0, x1, y1), normalised."""
    hx, hy = self.half_extents
    return np.concatenate([self.centers - [hx, hy], self.centers + [hx, hy]], axis=-1)


def _fold(unfolded: np.ndarray, length: float) -> np.ndarray:
  """Folds free motion into [0, length] by reflection at both ends (a triangle wave)."""
  if length <= 0:
    return np.zeros_like(unfolded)
  phase = np.mod(unfolded, 2 * length)
  return np.where(phase <= length, phase, 2 * length - phase)


def simulate(obj: SceneObject, *, frames: int, height: int, width: int, fps: int) -> Trajectory:
  """Runs one object's constant-velocity, elastic-bounce motion for a frame size.

  Along each axis the centre moves freely in unfolded coordinates and is folded back into the
  interval its box allows; the free motion crosses a multiple of that interval's length exactly
  when the box touches an edge (even multiples: the left/top edge, odd: the right/bottom edge).
  """
  short_side = min(height, width)
  unit = vocabulary.DIRECTIONS.get(obj.direction, (0.0, 0.0))
  times = np.arange(frames) / fps
  last_time = times[-1] if frames else 0.0
  centers = np.zeros((frames, 2))
  half_extents = []
  bounces: list[Bounce] = []
  for axis, (extent, edges) in enumerate(((width, ("left", "right")),
                                          (height, ("top", "bottom")))):
    half = obj.half_extent * short_side / extent  # normalised half-extent along this axis
    velocity = obj.speed * unit[axis] * short_side / extent  # normalised units per second
    length = 1.0 - 2.0 * half
    offset = obj.start[axis] - half  # in [0, length]
    centers[:, axis] = half + _fold(offset + velocity * times, length)
    half_extents.append(half)
    if velocity == 0.0 or length <= 0:
      continue
    end = offset + velocity * last_time
    if velocity > 0:
      crossings = range(math.floor(offset / length) + 1, math.floor(end / length) + 1)
    else:
      crossings = range(math.ceil(offset / length) - 1, math.ceil(end / length) - 1, -1)
    for k in crossings:
      time = (k * length - offset) / velocity
      frame = math.floor(time * fps + 0.5)
      if 1 <= frame <= frames - 2:
        bounces.append(Bounce(time=time, frame=frame, edge=edges[k % 2]))
  bounces.sort(key=lambda b: (b.time, vocabulary.EDGES.index(b.edge)))
  return Trajectory(centers=centers, half_extents=(half_extents[0], half_extents[1]),
                    bounces=tuple(bounces))


# ---------------------------------------------------------------------------------------------
# Rendering.


def _coverage(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
  """Antialiased coverage in [0, 1] of a shape centred at the origin.

  Args:
    shape: a vocabulary shape.
    dx, dy: pixel-centre offsets from the shape's box centre, in pixels (broadcastable).
    radius: half the side of its bounding box, in pixels.

  The coverage is a one-pixel box filter of the edge: exact for the square's sides, and
  0.5 - signed distance (clipped) for the circle and the triangle.
  """
  if shape == "square":
    return (np.clip(radius - np.abs(dx) + 0.5, 0.0, 1.0)
            * np.clip(radius - np.abs(dy) + 0.5, 0.0, 1.0))
  if shape == "circle":
    distance = np.sqrt(dx * dx + dy * dy) - radius
  elif shape == "triangle":
    # Upright: apex at (0, -radius), base from (-radius, radius) to (radius, radius); each side's
    # signed distance along its outward normal, the shape being their intersection.
    inv_sqrt5 = 1.0 / math.sqrt(5.0)
    distance = np.maximum(
        dy - radius,
        np.maximum((-2.0 * dx - dy - radius) * inv_sqrt5, (2.0 * dx - dy - radius) * inv_sqrt5))
  else:
    raise ValueError(f"unknown shape {shape!r}; choose one of {vocabulary.SHAPES}")
  return np.clip(0.5 - distance, 0.0, 1.0)


def _draw_order(scene: Scene) -> list[int]:
  """Large objects first, so that a small one is drawn over (never hidden by) a large one."""
  return sorted(range(len(scene.objects)),
                key=lambda i: (-SIZE_FRACTIONS[scene.objects[i].size], i))


def render(scene: Scene, *, frames: int, height: int, width: int,
           fps: int | None = None) -> dict:
  """Renders a scene and its ground truth at a frame size, length and frame rate.

  Args:
    scene: from `sample_scene`.
    frames, height, width: the clip's shape; any positive values, any aspect ratio.
    fps: frames per second; the scene's own frame rate when None.

  Returns:
    {"video": uint8 [T, H, W, 3], "caption": brief caption, "description": descriptive caption,
     "background": str, "fps": int, "objects": [per object, in caption order: {"color", "shape",
     "size", "direction", "track": [[cx, cy]] * T, "boxes": [[x0, y0, x1, y1]] * T (normalised),
     "bounces": [{"frame": int, "edge": str}, ...]}]}
  """
  if frames < 1 or height < 1 or width < 1:
    raise ValueError(
        f"frames, height and width must be positive, got {frames}, {height}, {width}")
  fps = scene.fps if fps is None else fps
  if fps <= 0:
    raise ValueError(f"fps must be positive, got {fps}")
  trajectories = [simulate(o, frames=frames, height=height, width=width, fps=fps)
                  for o in scene.objects]
  short_side = min(height, width)
  pixel_x = np.arange(width, dtype=np.float32) + 0.5   # pixel centres, in pixels
  pixel_y = np.arange(height, dtype=np.float32) + 0.5
  canvas = np.empty((frames, height, width, 3), np.float32)
  canvas[...] = np.asarray(vocabulary.BACKGROUNDS[scene.background], np.float32)
  for i in _draw_order(scene):
    obj, centers = scene.objects[i], trajectories[i].centers
    dx = pixel_x[None, None, :] - (centers[:, 0] * width).astype(np.float32)[:, None, None]
    dy = pixel_y[None, :, None] - (centers[:, 1] * height).astype(np.float32)[:, None, None]
    alpha = _coverage(obj.shape, dx, dy, obj.half_extent * short_side)[..., None]  # [T, H, W, 1]
    color = np.asarray(vocabulary.COLORS[obj.color], np.float32)
    canvas = canvas * (1.0 - alpha) + color * alpha
  video = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
  return {
      "video": video,
      "caption": caption(scene),
      "description": _describe(scene, trajectories),
      "background": scene.background,
      "fps": int(fps),
      "objects": [{
          "color": o.color, "shape": o.shape, "size": o.size, "direction": o.direction,
          "track": t.centers.tolist(), "boxes": t.boxes.tolist(),
          "bounces": [{"frame": b.frame, "edge": b.edge} for b in t.bounces],
      } for o, t in zip(scene.objects, trajectories)],
  }


def generate(index: int, *, seed: int, frames: int, height: int, width: int,
             split: str = "train", config: WorldConfig = WorldConfig()) -> dict:
  """`render(sample_scene(index, ...), ...)` at the config's frame rate; see `render`."""
  scene = sample_scene(index, seed=seed, split=split, config=config)
  return render(scene, frames=frames, height=height, width=width, fps=config.fps)


# ---------------------------------------------------------------------------------------------
# Captions.


def _join(phrases: Sequence[str], separator: str = ", ") -> str:
  """["a", "b", "c"] -> "a, b and c"."""
  if len(phrases) <= 1:
    return "".join(phrases)
  return separator.join(phrases[:-1]) + " and " + phrases[-1]


def _with_article(noun_phrase: str) -> str:
  """"orange circle" -> "an orange circle", "red circle" -> "a red circle"."""
  return ("an " if noun_phrase[0] in "aeiou" else "a ") + noun_phrase


def caption(scene: Scene) -> str:
  """The brief caption: every object's colour and shape, and sizes for half of the scenes.

  "a red circle", "a large red circle and a small blue square", "an orange triangle".
  """
  words = [" ".join(([o.size] if scene.brief_with_sizes else []) + [o.color, o.shape])
           for o in scene.objects]
  return _join([_with_article(w) for w in words])


def _motion_phrase(direction: str) -> str:
  return "staying still" if direction == vocabulary.STATIC else f"moving {direction}"


def _describe(scene: Scene, trajectories: Sequence[Trajectory]) -> str:
  clauses = []
  for obj, trajectory in zip(scene.objects, trajectories):
    clause = _with_article(f"{obj.size} {obj.color} {obj.shape} {_motion_phrase(obj.direction)}")
    if trajectory.bounces:
      edges = [f"the {b.edge} edge" for b in trajectory.bounces]
      clause += " that bounces off " + ", then ".join(edges)
    clauses.append(clause)
  return "; ".join(clauses) + f"; on a {scene.background} background"


def describe(scene: Scene, *, frames: int, height: int, width: int, fps: int | None = None) -> str:
  """The descriptive caption of a scene rendered at this size, length and frame rate.

  It names, per object, size, colour, shape, motion ("moving up-left" / "staying still") and each
  bounce seen in the clip, then the background:
  "a large red circle moving up-left that bounces off the left edge, then the top edge;
   a small blue square staying still; on a black background".
  """
  fps = scene.fps if fps is None else fps
  trajectories = [simulate(o, frames=frames, height=height, width=width, fps=fps)
                  for o in scene.objects]
  return _describe(scene, trajectories)
