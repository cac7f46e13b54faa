"""Tests of the procedural world: determinism, geometry, physics, splits and captions."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from data_pipelines.shapes import vocabulary
from data_pipelines.shapes import world
from videogen.evaluate import analyzer


def _object(color="red", shape="square", size="small", direction="right", start=(0.5, 0.5),
            speed=0.4):
  return world.SceneObject(color, shape, size, direction, start, speed)


def _truth_without_video(sample):
  return json.dumps({k: v for k, v in sample.items() if k != "video"}, sort_keys=True)


# --- determinism ---------------------------------------------------------------------------------


def test_same_seed_and_index_give_identical_bytes():
  first = world.generate(5, seed=3, frames=9, height=32, width=48)
  second = world.generate(5, seed=3, frames=9, height=32, width=48)
  assert first["video"].tobytes() == second["video"].tobytes()
  assert _truth_without_video(first) == _truth_without_video(second)


@pytest.mark.parametrize("change", [{"index": 6}, {"seed": 4}, {"split": "test"}])
def test_different_index_seed_or_split_gives_a_different_sample(change):
  base = {"index": 5, "seed": 3, "split": "train"}
  reference = world.generate(base["index"], seed=base["seed"], split=base["split"], frames=9,
                             height=32, width=32)
  options = {**base, **change}
  other = world.generate(options["index"], seed=options["seed"], split=options["split"],
                         frames=9, height=32, width=32)
  assert reference["video"].tobytes() != other["video"].tobytes()
  assert _truth_without_video(reference) != _truth_without_video(other)


def test_sample_scene_rejects_bad_arguments():
  with pytest.raises(ValueError, match="unknown split"):
    world.sample_scene(0, seed=0, split="validation")
  with pytest.raises(ValueError, match="non-negative"):
    world.sample_scene(-1, seed=0)
  with pytest.raises(ValueError, match="held_out"):
    world.sample_scene(0, seed=0, split="held_out", config=world.WorldConfig(held_out=()))
  with pytest.raises(ValueError, match="hold out fewer"):
    world.sample_scene(0, seed=0, config=world.WorldConfig(held_out=("circle", "square",
                                                                     "triangle")))


@pytest.mark.parametrize("fields, message", [
    ({"min_objects": 0}, "min_objects"),
    ({"min_objects": 3, "max_objects": 2}, "max_objects"),
    ({"max_objects": 9}, "max_objects"),
    ({"fps": 0}, "fps"),
    ({"min_speed": 0.5, "max_speed": 0.4}, "min_speed"),
    ({"backgrounds": ("white",)}, "backgrounds"),
    ({"held_out": ("purple circle",)}, "purple"),
])
def test_world_config_rejects_invalid_settings(fields, message):
  with pytest.raises(ValueError, match=message):
    world.WorldConfig(**fields)


# --- geometry: any size, aspect ratio and length -------------------------------------------------


@pytest.mark.parametrize("frames, height, width", [(1, 16, 16), (9, 32, 48), (5, 48, 20),
                                                   (17, 64, 96)])
def test_render_has_the_requested_shape_and_ground_truth_lengths(frames, height, width):
  sample = world.generate(11, seed=0, frames=frames, height=height, width=width)
  assert sample["video"].shape == (frames, height, width, 3)
  assert sample["video"].dtype == np.uint8
  assert sample["fps"] == world.WorldConfig().fps
  for obj in sample["objects"]:
    assert np.asarray(obj["track"]).shape == (frames, 2)
    assert np.asarray(obj["boxes"]).shape == (frames, 4)


def test_tracks_are_resolution_independent_for_one_aspect_ratio():
  scene = world.sample_scene(2, seed=0)
  for (h1, w1), (h2, w2) in [((32, 32), (64, 64)), ((32, 48), (64, 96))]:
    small = world.render(scene, frames=13, height=h1, width=w1)
    large = world.render(scene, frames=13, height=h2, width=w2)
    for a, b in zip(small["objects"], large["objects"]):
      np.testing.assert_allclose(a["track"], b["track"], atol=1e-9)
      np.testing.assert_allclose(a["boxes"], b["boxes"], atol=1e-9)
      assert a["bounces"] == b["bounces"]


@pytest.mark.parametrize("height, width", [(32, 32), (40, 72), (72, 40)])
def test_sizes_are_fractions_of_the_short_side_on_any_aspect_ratio(height, width):
  scene = world.Scene("black", (_object(shape="square", size="large", direction="static",
                                        speed=0.0),))
  sample = world.render(scene, frames=1, height=height, width=width)
  covered = sample["video"][0].max(-1) > 0
  expected = 2 * world.SIZE_FRACTIONS["large"] * min(height, width)
  rows, cols = np.nonzero(covered)
  # A square stays square in pixels; its box is exact up to the one-pixel antialiased rim.
  assert abs((rows.max() - rows.min() + 1) - expected) <= 2.0
  assert abs((cols.max() - cols.min() + 1) - expected) <= 2.0
  box = np.asarray(sample["objects"][0]["boxes"][0])
  np.testing.assert_allclose((box[2] - box[0]) * width, expected)
  np.testing.assert_allclose((box[3] - box[1]) * height, expected)


@pytest.mark.parametrize("height, width", [(32, 32), (48, 80), (80, 48)])
def test_rendered_pixels_sit_where_the_ground_truth_track_says(height, width):
  """The analyzer's centre of each lone object follows the track to a fraction of a pixel."""
  for shape in vocabulary.SHAPES:
    scene = world.Scene("gray", (_object(color="cyan", shape=shape, size="large",
                                         direction="down-right", start=(0.3, 0.3)),))
    sample = world.render(scene, frames=9, height=height, width=width)
    found = analyzer.analyze(sample["video"]).objects
    assert len(found) == 1
    error_pixels = (found[0].track - np.asarray(sample["objects"][0]["track"])) * [width, height]
    assert np.abs(error_pixels).max() < 0.35, shape


def test_antialiased_edges_hold_intermediate_values():
  scene = world.Scene("black", (_object(shape="circle", size="large", direction="static",
                                        speed=0.0, color="white"),))
  frame = world.render(scene, frames=1, height=32, width=32)["video"][0, ..., 0]
  partial = (frame > 0) & (frame < 250)
  assert partial.sum() >= 8  # a hard-edged circle would have none
  # Coverage sums to the true area: pi r^2 pixels.
  area = frame.astype(float).sum() / 250.0
  radius = world.SIZE_FRACTIONS["large"] * 32
  assert abs(area - math.pi * radius ** 2) < 0.02 * math.pi * radius ** 2


# --- physics -------------------------------------------------------------------------------------


def test_known_bounce_off_the_right_edge():
  # Half-extent 0.1: the box touches the right edge when cx = 0.9, after 0.2 / 0.4 = 0.5 s = frame 4
  # at 8 fps; one second later it is back where it started.
  scene = world.Scene("black", (_object(start=(0.7, 0.5), speed=0.4),), fps=8)
  truth = world.render(scene, frames=9, height=32, width=32)["objects"][0]
  assert truth["bounces"] == [{"frame": 4, "edge": "right"}]
  track = np.asarray(truth["track"])
  np.testing.assert_allclose(track[4], [0.9, 0.5])
  np.testing.assert_allclose(track[8], [0.7, 0.5])
  np.testing.assert_allclose(track[:, 1], 0.5)


def test_corner_bounce_records_both_edges():
  scene = world.Scene("black", (_object(direction="up-left", start=(0.3, 0.3),
                                        speed=0.2 * math.sqrt(2) / 0.5),), fps=8)
  bounces = world.render(scene, frames=9, height=32, width=32)["objects"][0]["bounces"]
  assert bounces == [{"frame": 4, "edge": "left"}, {"frame": 4, "edge": "top"}]


def _check_physics(truth, frames, fps, height, width):
  track = np.asarray(truth["track"])
  boxes = np.asarray(truth["boxes"])
  assert boxes.min() >= -1e-9 and boxes.max() <= 1 + 1e-9, "the object left the frame"
  bounce_frames = {(b["frame"], b["edge"]) for b in truth["bounces"]}
  for axis, (low_edge, high_edge) in enumerate((("left", "right"), ("top", "bottom"))):
    steps = np.diff(track[:, axis])
    if truth["direction"] == vocabulary.STATIC:
      assert np.all(steps == 0)
      continue
    speed = np.abs(steps).max()
    for k in range(1, frames - 1):
      before, after = steps[k - 1], steps[k]
      if before * after < 0:  # the motion reverses at frame k: a recorded bounce at an edge
        edge = high_edge if before > 0 else low_edge
        assert (k, edge) in bounce_frames, (k, edge, truth["bounces"])
        touching = boxes[k, axis + 2] if edge == high_edge else boxes[k, axis]
        assert abs(touching - (edge == high_edge)) <= speed / 2 + 1e-9
    # Elastic: between bounces every step has the same length; a step spanning a bounce is shorter.
    spans_bounce = np.zeros(frames - 1, bool)
    spans_bounce[-1] = True  # a bounce nearest the last frame is not recorded (no reversal shown)
    for b in truth["bounces"]:
      if b["edge"] in (low_edge, high_edge):
        spans_bounce[max(b["frame"] - 1, 0): b["frame"] + 1] = True
    np.testing.assert_allclose(np.abs(steps[~spans_bounce]), speed, rtol=1e-9, atol=1e-12)
    assert np.all(np.abs(steps[spans_bounce]) <= speed + 1e-12)
  for frame, edge in bounce_frames:
    assert 1 <= frame <= frames - 2
  del fps, height, width


@pytest.mark.parametrize("frames, height, width", [(17, 32, 32), (13, 32, 64), (17, 64, 24)])
def test_bounce_physics_over_many_scenes(frames, height, width):
  num_bounces = 0
  for index in range(60):
    sample = world.generate(index, seed=1, frames=frames, height=height, width=width)
    for truth in sample["objects"]:
      _check_physics(truth, frames, sample["fps"], height, width)
      num_bounces += len(truth["bounces"])
  assert num_bounces >= 20  # objects do reach the edges within ~2 s


@pytest.mark.parametrize("height, width", [(32, 32), (32, 64), (56, 24)])
def test_first_step_shows_direction_and_speed_in_pixels(height, width):
  """Speeds are in short sides per second on every axis: a diagonal stays at 45 degrees."""
  for index in range(60):
    scene = world.sample_scene(index, seed=2)
    sample = world.render(scene, frames=9, height=height, width=width)
    for obj, truth in zip(scene.objects, sample["objects"]):
      if obj.direction == vocabulary.STATIC:
        continue
      track = np.asarray(truth["track"]) * [width, height]  # pixels
      expected = np.asarray(vocabulary.DIRECTIONS[obj.direction]) * obj.speed * min(
          height, width) / scene.fps
      np.testing.assert_allclose(track[1] - track[0], expected, atol=1e-6)
      assert np.linalg.norm(expected) >= 0.035 * min(height, width)  # visible motion


def test_objects_start_apart_and_have_distinct_colours():
  overlapping = total = 0
  for index in range(200):
    scene = world.sample_scene(index, seed=0)
    colors = [o.color for o in scene.objects]
    assert len(set(colors)) == len(colors)
    assert world.WorldConfig().min_objects <= len(scene.objects) <= world.WorldConfig().max_objects
    for a in range(len(scene.objects)):
      for b in range(a + 1, len(scene.objects)):
        first, second = scene.objects[a], scene.objects[b]
        distance = math.dist(first.start, second.start)
        total += 1
        overlapping += distance < first.half_extent + second.half_extent
  assert total > 100
  assert overlapping <= 0.02 * total


def test_every_vocabulary_word_occurs():
  seen = {"color": set(), "shape": set(), "size": set(), "direction": set(), "background": set()}
  for index in range(150):
    scene = world.sample_scene(index, seed=0, split="test")
    seen["background"].add(scene.background)
    for o in scene.objects:
      for key in ("color", "shape", "size", "direction"):
        seen[key].add(getattr(o, key))
  assert seen["color"] == set(vocabulary.COLORS)
  assert seen["shape"] == set(vocabulary.SHAPES)
  assert seen["size"] == set(vocabulary.SIZES)
  assert seen["direction"] == set(vocabulary.MOTIONS)
  assert seen["background"] == set(vocabulary.BACKGROUNDS)


# --- held-out combinations -----------------------------------------------------------------------


def test_parse_held_out():
  assert world.parse_held_out("green triangle") == world.HeldOut(color="green", shape="triangle")
  assert world.parse_held_out("Large YELLOW square") == world.HeldOut("yellow", "square", "large")
  assert world.parse_held_out("red") == world.HeldOut(color="red")
  with pytest.raises(ValueError, match="'purple'"):
    world.parse_held_out("purple circle")
  with pytest.raises(ValueError, match="two colors"):
    world.parse_held_out("red blue")
  with pytest.raises(ValueError, match="empty"):
    world.parse_held_out("  ")


def test_is_held_out_accepts_dicts_objects_and_specs():
  held_out = ("green triangle", "large yellow square")
  assert world.is_held_out({"color": "green", "shape": "triangle", "size": "small"}, held_out)
  assert world.is_held_out(_object(color="yellow", shape="square", size="large"), held_out)
  assert not world.is_held_out(_object(color="yellow", shape="square", size="small"), held_out)
  assert not world.is_held_out(_object(color="green", shape="circle"), held_out)
  assert world.is_held_out(_object(color="red"), "red")


@pytest.mark.parametrize("held_out", [("green triangle", "large yellow square"), ("red",),
                                      ("small circle",)])
def test_held_out_never_in_train_always_in_held_out_sometimes_in_test(held_out):
  config = world.WorldConfig(held_out=held_out)
  train = [o for i in range(300) for o in world.sample_scene(i, seed=0, config=config).objects]
  assert not any(world.is_held_out(o, held_out) for o in train)
  for index in range(100):
    scene = world.sample_scene(index, seed=0, split="held_out", config=config)
    assert any(world.is_held_out(o, held_out) for o in scene.objects)
  test = [o for i in range(300)
          for o in world.sample_scene(i, seed=0, split="test", config=config).objects]
  assert any(world.is_held_out(o, held_out) for o in test)


def test_every_held_out_combination_appears_in_the_held_out_split():
  config = world.WorldConfig()
  found = set()
  for index in range(60):
    for o in world.sample_scene(index, seed=0, split="held_out", config=config).objects:
      found.update(spec for spec in config.held_out if world.is_held_out(o, spec))
  assert found == set(config.held_out)


# --- captions ------------------------------------------------------------------------------------


def test_brief_caption_names_every_object_colour_and_shape():
  with_sizes = 0
  for index in range(40):
    sample = world.generate(index, seed=0, frames=9, height=32, width=32)
    for obj in sample["objects"]:
      assert f"{obj['color']} {obj['shape']}" in sample["caption"]
    with_sizes += any(s in sample["caption"].split() for s in vocabulary.SIZES)
    assert re.fullmatch(r"(an? [a-z ]+?)((, | and )an? [a-z ]+?)*", sample["caption"])
  assert 5 < with_sizes < 35  # the wording varies with the index


def test_description_names_attributes_motion_bounces_and_background():
  for index in range(40):
    sample = world.generate(index, seed=0, frames=17, height=32, width=32)
    description = sample["description"]
    assert description.endswith(f"on a {sample['background']} background")
    clauses = description.split("; ")[:-1]
    assert len(clauses) == len(sample["objects"])
    for clause, obj in zip(clauses, sample["objects"]):
      motion = ("staying still" if obj["direction"] == vocabulary.STATIC
                else f"moving {obj['direction']}")
      phrase = f"{obj['size']} {obj['color']} {obj['shape']} {motion}"
      assert clause.split(" that ")[0] in (f"a {phrase}", f"an {phrase}")
      assert re.findall(r"the (\w+) edge", clause) == [b["edge"] for b in obj["bounces"]]


def test_describe_matches_render():
  scene = world.sample_scene(3, seed=0)
  for frames, height, width in [(17, 32, 32), (9, 48, 64)]:
    rendered = world.render(scene, frames=frames, height=height, width=width)
    assert world.describe(scene, frames=frames, height=height, width=width) == (
        rendered["description"])
    assert world.caption(scene) == rendered["caption"]


def test_captions_agree_with_the_pixels():
  """The analyzer reads every captioned object back: colour, size, shape and motion."""
  agreed = total = 0
  for index in range(40):
    sample = world.generate(index, seed=5, frames=13, height=32, width=32)
    found = analyzer.analyze(sample["video"])
    assert found.background == sample["background"]
    assert sorted(o.color for o in found.objects) == sorted(
        o["color"] for o in sample["objects"])
    for obj in found.objects:
      motion = "staying still" if obj.direction == vocabulary.STATIC else f"moving {obj.direction}"
      phrase = f"{obj.size} {obj.color} {obj.shape} {motion}"
      total += 1
      agreed += phrase in sample["description"]
      assert f"{obj.color} {obj.shape}" in sample["caption"]
  assert agreed >= 0.97 * total
