"""videogen/evaluate/scoring.py: one video scored against its prompt, many pooled, seams and
PSNR."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from data_pipelines.shapes import world
from videogen.evaluate import scoring
from videogen.evaluate import suite as suite_lib


@pytest.fixture(scope="module")
def suite():
  return suite_lib.build_suite(suite_lib.GenerationEvalConfig(scenes_per_group=2),
                               default_shape=(9, 32, 32))


def test_a_missing_object_counts_wrong_in_every_attribute_and_in_the_count(suite):
  prompt = next(p for p in suite.prompts if p.kind == "descriptive" and len(p.expected) > 1)
  scene = dataclasses.replace(prompt.scene, objects=prompt.scene.objects[1:])
  video = world.render(scene, frames=9, height=32, width=32)["video"]
  score = scoring.score_video(video, prompt.expected, prompt.background)
  for attribute in ("color", "shape", "size", "direction"):
    assert score.totals[attribute] == len(prompt.expected)
    assert score.hits[attribute] == len(prompt.expected) - 1
  assert score.readings[0] == {a: [prompt.expected[0][a], None]
                               for a in ("color", "shape", "size", "direction")}
  assert scoring.confusion([{"readings": score.readings}])["shape"][
      prompt.expected[0]["shape"]].get(scoring.MISSING) == 1
  assert score.count_stability == 0.0 and not score.count_correct


def test_score_videos_pools_each_video_against_its_own_prompt(suite):
  prompts = [p for p in suite.prompts if len(p.expected) == 2][:2]
  rendered = [world.render(p.scene, frames=9, height=32, width=32)["video"] for p in prompts]
  truth = scoring.score_videos(rendered, prompts)
  assert [truth[f"{a}_accuracy"] for a in ("color", "shape", "size", "count")] == [1.0] * 4
  # The second scene without its first object: 3 of the 4 prompted objects, 1 of 2 counts.
  scene = dataclasses.replace(prompts[1].scene, objects=prompts[1].scene.objects[1:])
  videos = [rendered[0], world.render(scene, frames=9, height=32, width=32)["video"]]
  pooled = scoring.score_videos(videos, prompts)
  assert [pooled[f"{a}_accuracy"] for a in ("color", "shape", "size")] == [0.75] * 3
  assert pooled["count_accuracy"] == 0.5
  with pytest.raises(ValueError):  # a video without its prompt is an error, not dropped
    scoring.score_videos(videos, prompts[:1])


def test_only_stated_attributes_are_scored():
  # A brief caption without sizes: a large object for "a red circle" is right, not wrong.
  obj = world.SceneObject("red", "circle", "large", "static", (0.5, 0.5), 0.0)
  video = world.render(world.Scene("black", (obj,)), frames=5, height=32, width=32)["video"]
  score = scoring.score_video(video, [{"color": "red", "shape": "circle"}])
  assert score.totals == {"color": 1, "shape": 1}
  assert score.hits == {"color": 1, "shape": 1}
  stated_small = scoring.score_video(video, [{"color": "red", "shape": "circle",
                                                 "size": "small"}])
  assert stated_small.hits.get("size", 0) == 0 and stated_small.totals["size"] == 1


def test_seam_ratio_and_psnr_helpers():
  still = np.zeros((6, 8, 8, 3), np.uint8)
  assert scoring.seam_ratio(still, 3)[0] == 1.0  # still, continued still: seamless
  ramp = np.stack([np.full((8, 8, 3), 10 * k, np.uint8) for k in range(6)])
  assert scoring.seam_ratio(ramp, 3)[0] == pytest.approx(1.0)
  jump = ramp.copy()
  jump[3:] += 100
  ratio, at_seam, inside = scoring.seam_ratio(jump, 3)
  assert (at_seam, inside) == (pytest.approx(110.0), pytest.approx(10.0))
  assert ratio == pytest.approx(110.5 / 10.5)
  with pytest.raises(ValueError, match="seam"):
    scoring.seam_ratio(ramp, 6)
  image = np.full((4, 4, 3), 100, np.uint8)
  assert scoring.psnr(image, image) == scoring.MAX_PSNR
  assert scoring.psnr(image + 1, image) == pytest.approx(10 * np.log10(255.0 ** 2))


def test_direction_is_split_into_objects_prompted_to_move_and_to_stay_still():
  moving = world.SceneObject("red", "circle", "large", "right", (0.3, 0.5), 0.5)
  still = world.SceneObject("blue", "square", "large", "static", (0.7, 0.5), 0.0)
  frozen = world.Scene("black", (dataclasses.replace(moving, direction="static", speed=0.0),
                                 still))
  video = world.render(frozen, frames=9, height=32, width=32)["video"]
  prompted = [{"color": "red", "shape": "circle", "direction": "right"},
              {"color": "blue", "shape": "square", "direction": "static"}]
  score = scoring.score_video(video, prompted)
  # Everything drawn still: half the directions right, none of the motion.
  assert (score.hits["direction"], score.totals["direction"]) == (1, 2)
  assert (score.hits.get("motion", 0), score.totals["motion"]) == (0, 1)
  assert (score.hits["still"], score.totals["still"]) == (1, 1)
  pooled = scoring.accuracies([score.accuracy_row()])
  assert (pooled["direction_accuracy"], pooled["motion_accuracy"],
          pooled["still_accuracy"]) == (0.5, 0.0, 1.0)
  moved = scoring.score_video(
      world.render(world.Scene("black", (moving, still)), frames=9, height=32, width=32)["video"],
      prompted)
  assert scoring.accuracies([moved.accuracy_row()])["motion_accuracy"] == 1.0
  brief = scoring.accuracies([scoring.score_video(video, [{"color": "red"}]).accuracy_row()])
  assert brief["motion_accuracy"] is None and brief["still_accuracy"] is None
