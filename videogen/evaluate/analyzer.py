"""Reads a video of the procedural world back into objects, using only its pixels.

    analysis = analyze(video)            # video: uint8 [T, H, W, 3]
    analysis.background                  # "black"
    analysis.counts                      # int [T], objects seen per frame
    for obj in analysis.objects:
      obj.color, obj.shape, obj.size, obj.direction, obj.bounces, obj.track  # track: [T, 2]

This is how generated videos are scored against their prompts (colour, shape, size, motion and
bounces) and how the world's own captions are checked against what it draws. The steps:

1. Background: the vocabulary background that most pixels sit close to; its observed colour (the
   median of those pixels) is the reference, so a slightly-off generated background still works.
2. Pixels: each pixel is explained as a blend of the background and one vocabulary colour (an
   antialiased edge) or, when that explains it clearly worse, as a blend of two vocabulary colours
   (where one object overlaps another). That gives every colour a soft coverage map in [0, 1].
3. Objects per frame: connected regions of the foreground, split by colour; each colour with enough
   coverage inside a region is one object (fragments of an object cut by an object in front of it
   stay in one region). Its coverage gives the area, centre and extent.
4. Tracks: objects are linked over frames by colour and nearest position.
5. Attributes per track, from its frames where it is least occluded (visible area near its
   largest): shape from the skewness of its coverage along y (an upright triangle's mass sits
   low) and from how much of its bounding box it fills (square ~1, circle ~0.79), size from its
   extent relative to the frame's short side, motion from the centre's displacements, bounces
   from reversals of motion next to an edge.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any, Sequence

import numpy as np
from scipy import ndimage

from data_pipelines.shapes import vocabulary
from data_pipelines.shapes import world

COLOR_NAMES: tuple[str, ...] = tuple(vocabulary.COLORS)
_PALETTE = np.asarray([vocabulary.COLORS[c] for c in COLOR_NAMES], np.float32)  # [C, 3]
_COLOR_PAIRS = np.asarray(list(itertools.combinations(range(len(COLOR_NAMES)), 2)))  # [P, 2]
# A pixel counts as a background pixel for the background vote within this RGB distance.
_BACKGROUND_RADIUS = 48.0
# A two-colour blend must explain a pixel better than any background blend by this RGB distance
# (orange lies within ~22 of the red/yellow midpoint, so plain noise must not turn it into a mix).
_MIX_MARGIN = 8.0
# Coverage below this is treated as noise; the soft maps are rescaled so that 0.5 stays 0.5.
_COVERAGE_FLOOR = 0.1
# Total coverage that makes a pixel part of a foreground region.
_FOREGROUND_THRESHOLD = 0.3
# Smallest object kept: this fraction of the smallest object the world draws (a small triangle),
# and never fewer than this many pixels.
_MIN_AREA_FRACTION = 0.15
_MIN_AREA_PIXELS = 2.0
# An object also needs "core" pixels (coverage >= _CORE_COVERAGE), at least this fraction of the
# smallest object's area: the blended rims where objects overlap can look like a third colour
# (a red/blue blend resembles a dim magenta) but never hold a solid pixel of it.
_CORE_COVERAGE = 0.75
_MIN_CORE_FRACTION = 0.1
# Frames where a track's visible area is at least this fraction of its largest are "clean".
_CLEAN_AREA_FRACTION = 0.85
# Shape boundaries. An upright triangle's coverage is skewed along y (skewness -0.57; measured
# -0.36 or below for small triangles down to 24x24 frames, while circles and squares stay within
# +-0.1); circles fill ~0.785 of their bounding box and squares ~1 (measured 0.76-0.84 and > 0.98
# on clean renders; compression and blur soften a square's edges, so the boundary sits lower than
# the middle).
_TRIANGLE_SKEW_BELOW = -0.25
_CIRCLE_FILL_BELOW = 0.86
# An object whose centre spans less than this fraction of the short side is static.
_STATIC_RANGE = 0.04
# Linking: a track may jump this many short sides per frame (the world moves at most ~0.08).
_MAX_STEP = 0.3


@dataclasses.dataclass
class ObjectAnalysis:
  """One object read back from a video.

  Attributes:
    color, shape, size: vocabulary words.
    direction: a key of `vocabulary.DIRECTIONS` (the direction it starts moving in, before any
      bounce), or `vocabulary.STATIC`.
    track: float [T, 2], the centre (cx, cy) of its bounding box normalised to [0, 1]; NaN in
      frames where it is not seen.
    bounces: frames where it reverses against an edge, in order (a corner gives two entries).
    present: bool [T], the frames where it is seen.
    bounce_edges: the edge of each bounce ("left", "right", "top", "bottom").
    area: its median visible area in clean frames, as a fraction of the frame.
    fill: its median fill ratio (area / bounding box area) in clean frames.
    extent: its median extent (the larger of width and height) in clean frames, as a fraction of
      the frame's short side.
  """
  color: str
  shape: str
  size: str
  direction: str
  track: np.ndarray
  bounces: list[int]
  present: np.ndarray
  bounce_edges: list[str] = dataclasses.field(default_factory=list)
  area: float = 0.0
  fill: float = 0.0
  extent: float = 0.0


@dataclasses.dataclass
class VideoAnalysis:
  """A video read back into objects.

  Attributes:
    background: a key of `vocabulary.BACKGROUNDS`.
    objects: the objects, in order of first appearance (then left to right).
    counts: int [T], how many objects are seen in each frame.
  """
  background: str
  objects: list[ObjectAnalysis]
  counts: np.ndarray


@dataclasses.dataclass
class _Detection:
  """One object in one frame, in pixels."""
  frame: int
  color: int
  area: float
  center: np.ndarray  # (x, y) coverage-weighted centroid
  width: float
  height: float
  skew: float  # skewness of the coverage along y: ~-0.57 for an upright triangle, ~0 otherwise


def _check_video(video: Any) -> np.ndarray:
  video = np.asarray(video)
  if video.ndim == 3:
    video = video[None]
  if video.ndim != 4 or video.shape[-1] != 3 or min(video.shape) < 1:
    raise ValueError(
        f"expected a video [T, H, W, 3] (or an image [H, W, 3]) of uint8 RGB, got shape "
        f"{video.shape}")
  if np.issubdtype(video.dtype, np.floating) and video.size and float(np.nanmax(video)) <= 1.0:
    raise ValueError(
        "got a float video with values in [0, 1]; pass uint8 RGB in [0, 255], e.g. "
        "np.clip(np.rint(video * 255), 0, 255).astype(np.uint8)")
  return video.astype(np.float32)


def _find_background(pixels: np.ndarray) -> tuple[str, np.ndarray]:
  """The vocabulary background most pixels are close to, and its observed colour."""
  sample = pixels.reshape(-1, 3)
  if len(sample) > 200_000:  # a strided sample is plenty for a vote
    sample = sample[:: len(sample) // 200_000]
  best_name, best_count, best_close = None, -1, None
  for name, rgb in vocabulary.BACKGROUNDS.items():
    close = np.linalg.norm(sample - np.asarray(rgb, np.float32), axis=-1) < _BACKGROUND_RADIUS
    if close.sum() > best_count:
      best_name, best_count, best_close = name, int(close.sum()), close
  if best_count == 0:
    return best_name, np.asarray(vocabulary.BACKGROUNDS[best_name], np.float32)
  return best_name, np.median(sample[best_close], axis=0).astype(np.float32)


def _segment_fit(pixels: np.ndarray, start: np.ndarray, end: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
  """Projects pixels onto segments start -> end.

  Args:
    pixels: [N, 3].
    start, end: [K, 3], the segments' ends.

  Returns:
    (t, residual), each [N, K]: the position along each segment in [0, 1] and the RGB distance
    from the pixel to that point.
  """
  direction = end - start  # [K, 3]
  length_sq = np.maximum(np.einsum("kc,kc->k", direction, direction), 1e-6)  # [K]
  # |p - s - t d|^2 expanded, so that no [N, K, 3] array is built.
  along = pixels @ direction.T - np.einsum("kc,kc->k", start, direction)  # [N, K]: (p - s).d
  offset_sq = (np.einsum("nc,nc->n", pixels, pixels)[:, None] - 2.0 * pixels @ start.T
               + np.einsum("kc,kc->k", start, start))  # [N, K]: |p - s|^2
  t = np.clip(along / length_sq, 0.0, 1.0)
  residual_sq = offset_sq - 2.0 * t * along + t * t * length_sq
  return t, np.sqrt(np.maximum(residual_sq, 0.0))


def _coverage_maps(pixels: np.ndarray, background: np.ndarray) -> np.ndarray:
  """Per-colour soft coverage of every pixel.

  Args:
    pixels: float [..., 3] RGB.
    background: [3], the observed background colour.

  Returns:
    float [..., C] in [0, 1]: how much of each pixel each vocabulary colour covers (a pixel of a
    two-colour blend gives its two colours shares summing to 1).
  """
  shape = pixels.shape[:-1]
  flat = pixels.reshape(-1, 3).astype(np.float64)
  num_colors = len(COLOR_NAMES)
  palette = _PALETTE.astype(np.float64)
  alpha_bg, residual_bg = _segment_fit(
      flat, np.broadcast_to(background.astype(np.float64), palette.shape), palette)
  rows = np.arange(len(flat))
  best_color = np.argmin(residual_bg, axis=-1)
  best_bg_residual = residual_bg[rows, best_color]
  coverage = np.zeros((len(flat), num_colors), np.float32)
  coverage[rows, best_color] = alpha_bg[rows, best_color]

  # Only pixels that no background blend explains can be a two-colour blend.
  unexplained = np.flatnonzero(best_bg_residual > _MIX_MARGIN)
  if len(unexplained):
    pairs = _COLOR_PAIRS
    share, residual_mix = _segment_fit(flat[unexplained], palette[pairs[:, 0]],
                                       palette[pairs[:, 1]])
    best_pair = np.argmin(residual_mix, axis=-1)
    local = np.arange(len(unexplained))
    use_mix = residual_mix[local, best_pair] + _MIX_MARGIN < best_bg_residual[unexplained]
    mixed = unexplained[use_mix]
    pair = pairs[best_pair[use_mix]]
    second_share = share[local[use_mix], best_pair[use_mix]]
    coverage[mixed] = 0.0
    coverage[mixed, pair[:, 0]] = 1.0 - second_share
    coverage[mixed, pair[:, 1]] = second_share
  # Suppress faint noise; (x - f) / (1 - 2f) keeps half coverage at half.
  coverage = np.clip((coverage - _COVERAGE_FLOOR) / (1.0 - 2.0 * _COVERAGE_FLOOR), 0.0, 1.0)
  return coverage.reshape(*shape, num_colors)


def _min_areas(height: int, width: int) -> tuple[float, float]:
  """The smallest visible area and core area (pixels) kept as an object."""
  radius = world.SIZE_FRACTIONS["small"] * min(height, width)
  smallest = 2.0 * radius * radius  # a small triangle: half its 2r x 2r box
  return (max(_MIN_AREA_PIXELS, _MIN_AREA_FRACTION * smallest),
          max(1.0, _MIN_CORE_FRACTION * smallest))


def _detect(coverage: np.ndarray, frame: int, min_area: float, min_core: float
            ) -> list[_Detection]:
  """Objects in one frame.

  Args:
    coverage: [H, W, C] soft coverage per colour.
    frame: the frame's index.
    min_area: smallest coverage sum (pixels) that counts as an object.
    min_core: fewest solidly covered pixels that count as an object.
  """
  foreground = coverage.sum(-1) >= _FOREGROUND_THRESHOLD
  labels, num_regions = ndimage.label(foreground, structure=np.ones((3, 3), bool))
  detections = []
  for region, window in enumerate(ndimage.find_objects(labels), start=1):
    if window is None:
      continue
    # One pixel of margin keeps the faint antialiased rim that fell below the threshold.
    rows = slice(max(window[0].start - 1, 0), window[0].stop + 1)
    cols = slice(max(window[1].start - 1, 0), window[1].stop + 1)
    inside = ndimage.binary_dilation(labels[rows, cols] == region, structure=np.ones((3, 3), bool))
    local = coverage[rows, cols] * inside[..., None]  # [h, w, C]
    solid = (local >= _CORE_COVERAGE).sum((0, 1))
    for color in np.flatnonzero((local.sum((0, 1)) >= min_area) & (solid >= min_core)):
      alpha = local[..., color]
      area = float(alpha.sum())
      ys = np.arange(rows.start, rows.start + alpha.shape[0]) + 0.5  # pixel centres
      xs = np.arange(cols.start, cols.start + alpha.shape[1]) + 0.5
      center = np.array([alpha.sum(0) @ xs, alpha.sum(1) @ ys]) / area
      # Soft extents: a column counts by the coverage of its most covered pixel.
      width = float(alpha.max(0).sum())
      height = float(alpha.max(1).sum())
      row_mass = alpha.sum(1)
      variance = row_mass @ (ys - center[1]) ** 2 / area
      skew = float(row_mass @ (ys - center[1]) ** 3 / area / max(variance, 1e-6) ** 1.5)
      detections.append(_Detection(frame, int(color), area, center, width, height, skew))
  return detections


def _link(detections_per_frame: Sequence[list[_Detection]], short_side: float
          ) -> list[list[_Detection]]:
  """Links detections into tracks: same colour, nearest position, greedy by distance."""
  tracks: list[list[_Detection]] = []
  for detections in detections_per_frame:
    candidates = []
    for d, detection in enumerate(detections):
      for k, track in enumerate(tracks):
        last = track[-1]
        if last.color != detection.color or last.frame == detection.frame:
          continue
        distance = float(np.linalg.norm(detection.center - last.center))
        if distance <= _MAX_STEP * short_side * (detection.frame - last.frame):
          candidates.append((distance, d, k))
    used_detections, used_tracks = set(), set()
    for _, d, k in sorted(candidates):
      if d in used_detections or k in used_tracks:
        continue
      tracks[k].append(detections[d])
      used_detections.add(d)
      used_tracks.add(k)
    tracks.extend([detection] for d, detection in enumerate(detections)
                  if d not in used_detections)
  return tracks


def _turning_points(positions: np.ndarray, threshold: float
                    ) -> tuple[int, list[tuple[int, int]]]:
  """Reversals of a 1-D motion, ignoring wiggles smaller than `threshold`.

  Returns:
    (first direction: +1, -1 or 0 when it never moves by more than the threshold,
     [(index of an extreme where the motion reverses, +1 for a maximum or -1 for a minimum)]).
  """
  first_direction, direction, extreme, turns = 0, 0, 0, []
  for k in range(1, len(positions)):
    step = positions[k] - positions[extreme]
    if direction == 0:
      if abs(step) > threshold:
        direction = first_direction = 1 if step > 0 else -1
        extreme = k
    elif step * direction >= 0:
      extreme = k
    elif abs(step) > threshold:
      turns.append((extreme, direction))
      direction, extreme = -direction, k
  return first_direction, turns


def _nearest_direction(dx: float, dy: float) -> str:
  angle = math.atan2(dy, dx)
  return max(vocabulary.DIRECTIONS, key=lambda name: math.cos(
      angle - math.atan2(vocabulary.DIRECTIONS[name][1], vocabulary.DIRECTIONS[name][0])))


def _summarise(track: list[_Detection], num_frames: int, height: int, width: int
               ) -> ObjectAnalysis:
  """Reads one track's attributes, motion and bounces."""
  short_side = float(min(height, width))
  frames = np.array([d.frame for d in track])
  areas = np.array([d.area for d in track])
  centers = np.stack([d.center for d in track])  # [n, 2] pixels
  extents = np.array([[d.width, d.height] for d in track])  # [n, 2] pixels
  clean = areas >= _CLEAN_AREA_FRACTION * areas.max()
  fill = float(np.median(areas[clean] / np.maximum(np.prod(extents[clean], -1), 1e-6)))
  skew = float(np.median([d.skew for d, keep in zip(track, clean) if keep]))
  if skew < _TRIANGLE_SKEW_BELOW:
    shape = "triangle"
  else:
    shape = "circle" if fill < _CIRCLE_FILL_BELOW else "square"
  half_extent = np.median(extents[clean], axis=0) / 2.0  # (x, y) pixels
  extent = float(np.median(extents[clean].max(-1))) / short_side
  small, large = (2.0 * world.SIZE_FRACTIONS[s] for s in ("small", "large"))
  size = "large" if extent > math.sqrt(small * large) else "small"
  if shape == "triangle":
    # The centroid of an upright triangle lies a sixth of its height below its box's centre.
    centers = centers - [0.0, 2.0 * half_extent[1] / 6.0]

  # Motion from the clean frames only: an occluded object's centroid is pulled aside.
  motion_frames, motion_centers = frames[clean], centers[clean] / short_side
  if len(motion_frames) < 2:
    motion_frames, motion_centers = frames, centers / short_side
  direction, bounce_list = vocabulary.STATIC, []
  span = np.ptp(motion_centers, axis=0) if len(motion_frames) > 1 else np.zeros(2)
  if span.max() >= _STATIC_RANGE:
    steps = np.abs(np.diff(motion_centers, axis=0)) / np.diff(motion_frames)[:, None]
    speed = np.median(steps, axis=0)  # per axis, short sides per frame
    velocity = np.zeros(2)
    for axis in range(2):
      if speed[axis] < 0.25 * speed.max():
        continue  # this axis only wiggles
      threshold = max(0.6 / short_side, 0.4 * speed[axis])
      first, _ = _turning_points(motion_centers[:, axis], threshold)
      velocity[axis] = first * speed[axis]
      # Bounces from every frame: a bounce seen through partial occlusion is still a reversal,
      # and the edge test below rejects wiggles away from the edges.
      positions = centers[:, axis] / short_side
      _, turns = _turning_points(positions, threshold)
      limit = (width if axis == 0 else height) / short_side
      half = half_extent[axis] / short_side
      tolerance = max(1.5 / short_side, 1.5 * speed[axis])
      for turn, side in turns:
        if side > 0 and positions[turn] + half >= limit - tolerance:
          bounce_list.append((int(frames[turn]), ("right", "bottom")[axis]))
        elif side < 0 and positions[turn] - half <= tolerance:
          bounce_list.append((int(frames[turn]), ("left", "top")[axis]))
    if velocity.any():
      direction = _nearest_direction(velocity[0], velocity[1])
  bounce_list.sort(key=lambda b: (b[0], vocabulary.EDGES.index(b[1])))

  present = np.zeros(num_frames, bool)
  present[frames] = True
  normalised = np.full((num_frames, 2), np.nan)
  normalised[frames] = centers / [width, height]
  return ObjectAnalysis(
      color=COLOR_NAMES[track[0].color], shape=shape, size=size, direction=direction,
      track=normalised, bounces=[f for f, _ in bounce_list], present=present,
      bounce_edges=[e for _, e in bounce_list],
      area=float(np.median(areas[clean])) / (height * width), fill=fill, extent=extent)


def analyze(video: np.ndarray) -> VideoAnalysis:
  """Reads a video into its background, objects and per-frame object counts.

  Args:
    video: uint8 [T, H, W, 3] RGB (an image [H, W, 3] is a one-frame video).

  Returns:
    A `VideoAnalysis`. Tracks seen in fewer than 30% of the frames (flicker, noise) are dropped.
  """
  pixels = _check_video(video)
  num_frames, height, width, _ = pixels.shape
  background, background_rgb = _find_background(pixels)
  coverage = _coverage_maps(pixels, background_rgb)  # [T, H, W, C]
  min_area, min_core = _min_areas(height, width)
  detections = [_detect(coverage[t], t, min_area, min_core) for t in range(num_frames)]
  tracks = _link(detections, float(min(height, width)))
  min_frames = max(1, math.ceil(0.3 * num_frames))
  objects = [_summarise(track, num_frames, height, width)
             for track in tracks if len(track) >= min_frames]
  objects.sort(key=lambda o: (int(np.argmax(o.present)), float(np.nanmin(o.track[:, 0]))))
  counts = np.sum([o.present for o in objects], axis=0, dtype=np.int64) if objects else (
      np.zeros(num_frames, np.int64))
  return VideoAnalysis(background=background, objects=objects, counts=counts)


def match_objects(analysis: VideoAnalysis, truth: Sequence[dict]
                  ) -> list[tuple[dict, ObjectAnalysis | None]]:
  """Pairs ground-truth (or prompted) objects with analyzed ones.

  Args:
    analysis: from `analyze`.
    truth: object dicts with at least "color" (e.g. `render(...)["objects"]`); when they carry a
      "track", the nearest track breaks ties between objects of the same colour.

  Returns:
    One (truth object, analyzed object or None) pair per truth object, in the truth's order. Each
    analyzed object is used at most once; same colour first, then the smallest mean distance.
  """
  candidates = []
  for i, target in enumerate(truth):
    for j, found in enumerate(analysis.objects):
      if found.color != target["color"]:
        continue
      distance = 0.0
      if "track" in target:
        expected = np.asarray(target["track"], float)
        seen = found.present[: len(expected)]
        if seen.any():
          distance = float(np.mean(np.linalg.norm(
              found.track[: len(expected)][seen] - expected[seen], axis=-1)))
      candidates.append((distance, i, j))
  pairs: list[ObjectAnalysis | None] = [None] * len(truth)
  used = set()
  for _, i, j in sorted(candidates):
    if pairs[i] is None and j not in used:
      pairs[i] = analysis.objects[j]
      used.add(j)
  return list(zip(truth, pairs))
