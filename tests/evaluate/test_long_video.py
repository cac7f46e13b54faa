"""videogen/evaluate/long_video.py: identity per window, seams at every boundary, the report."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from data_pipelines.shapes import world
from videogen import workdir as workdir_lib
from videogen.diffusion import samplers
from videogen.evaluate import long_video
from videogen.generate import pipeline
from videogen.generate import windows as windows_lib

# A red square and a blue circle crossing a grey frame slowly, never touching an edge.
_SCENE = world.Scene("gray", (
    world.SceneObject("red", "square", "large", "right", (0.3, 0.35), 0.4),
    world.SceneObject("blue", "circle", "large", "left", (0.7, 0.7), 0.4)))
_FRAMES = 41


@pytest.fixture(scope="module")
def video():
  return world.render(_SCENE, frames=_FRAMES, height=32, width=32, fps=24)["video"]


@pytest.fixture(scope="module")
def spans():
  # 21 latent frames (F = 2) in windows of 5 given 2: [5] then [2 | 3] x 5 and [2 | 1 | 2 extra].
  plan = windows_lib.plan_windows(21, window=5, overlap=2, history=0, suffix=0)
  return long_video.window_spans(plan, temporal_factor=2)


def test_window_spans_tile_the_video_and_reach_back_over_the_given_frames(spans):
  assert spans[0] == long_video.Span(0, 0, 9)
  assert [s.start for s in spans[1:]] == [s.end for s in spans[:-1]]
  assert spans[-1].end == _FRAMES
  # Two given latents are 1 + 2 pixel frames before each later window's first new frame.
  assert all(s.start - s.given_start == 3 for s in spans[1:])


def test_the_worlds_own_video_keeps_its_identity_and_has_no_seams(video, spans):
  rows = long_video.window_rows(video, spans, expected=[{"color": "red"}, {"color": "blue"}])
  assert len(rows) == len(spans)
  assert rows[0]["shapes"] == {"blue": "circle", "red": "square"} and rows[0]["count"] == 2
  assert all(r["same_colors"] and r["same_shapes"] and r["same_count"] and r["prompt_count"]
             and r["vanished_frames"] == 0 for r in rows)
  seams = long_video.seam_ratios(video, [s.start for s in spans[1:]])
  assert len(seams) == len(spans) - 1
  assert max(seams) < 1.3, seams  # constant motion: the change at a seam is the change inside


def test_a_vanished_object_and_a_jump_show_where_they_happen(video, spans):
  broken = video.copy()
  cut = spans[3].start
  # From window 3 on, the blue circle is gone: its pixels are the background's.
  without_blue = world.render(world.Scene("gray", _SCENE.objects[:1]), frames=_FRAMES,
                              height=32, width=32, fps=24)["video"]
  broken[cut:] = without_blue[cut:]
  rows = long_video.window_rows(broken, spans)
  assert [r["same_count"] for r in rows] == [True] * 3 + [False] * (len(rows) - 3)
  assert [r["same_colors"] for r in rows[3:]] == [False] * (len(rows) - 3)
  assert rows[3]["vanished_frames"] == spans[3].end - cut  # its given frames still show both
  seams = long_video.seam_ratios(broken, [s.start for s in spans[1:]])
  assert np.argmax(seams) == 2 and seams[2] > 3 * max(np.delete(seams, 2)), seams


def test_a_loop_is_judged_across_its_wrap_around(video):
  # Played forwards then backwards, a clip returns to its first frame: no jump at the wrap...
  there_and_back = np.concatenate([video[:20], video[19:0:-1]])
  assert long_video.seam_ratios(there_and_back, [len(there_and_back)], cyclic=True)[0] < 1.3
  # ...played forwards alone, it jumps from its end back to its start.
  assert long_video.seam_ratios(video[:20], [20], cyclic=True)[0] > 3
  with pytest.raises(ValueError, match="boundary 20"):
    long_video.seam_ratios(video[:20], [20])


def test_summaries_pool_windows_and_seams(video, spans):
  rows = long_video.window_rows(video, spans)
  rows[2] = dict(rows[2], same_count=False, vanished_frames=4)
  summary = long_video.summarize_windows(rows, [1.0, 3.0])
  assert summary["windows"] == len(rows)
  assert summary["same_count"] == round(1 - 1 / len(rows), 4) and summary["same_colors"] == 1.0
  assert summary["vanished_frames"] == 4
  assert (summary["seam_mean"], summary["seam_max"]) == (2.0, 3.0)


def test_the_report_has_a_row_per_window_and_a_seam_at_every_boundary(tiny_workdir):
  # The tiny workdir's models (9x32x32 clips, F = 2), sampled cheaply.
  experiment = workdir_lib.saved_experiment(tiny_workdir, workdir_lib.DIT_STAGE)
  experiment = dataclasses.replace(experiment, sample=samplers.SamplerConfig(
      method="euler", num_steps=2, guidance_scale=3.0))
  generator = pipeline.load(tiny_workdir, experiment, progress=False)
  config = long_video.LongVideoConfig(frames=25, prompts=1, loops_and_connections=True,
                                      memory_check=True)
  report = long_video.evaluate_long_videos(
      generator, world.WorldConfig(), config, progress=False,
      variants={"clean": dict(context_noise=0.0), "noised": dict(context_noise=0.5)})
  json.dumps(report)  # the command writes it as JSON
  assert set(report["variants"]) == {"clean", "noised"}
  for name, level in (("clean", 0.0), ("noised", 0.5)):
    summary = report["variants"][name]["summary"]
    (detail,) = report["variants"][name]["prompts"]
    # 13 latent frames in windows of 5 given 2: [5], [2 | 3], [2 | 3], [2 | 2 | 1 extra].
    assert summary["windows"] == detail["windows"] == len(detail["per_window"]) == 4
    assert summary["context_noise"] == level and detail["frames"] == 25
    assert [r["frames"][1] for r in detail["per_window"]] == [9, 15, 21, 25]
    assert all("seam_ratio" in r for r in detail["per_window"][1:])
    assert "seam_ratio" not in detail["per_window"][0]
    assert all(summary[k] > 0 for k in ("seam_mean", "loop_wrap", "connect_in", "connect_out"))
    assert summary["short_frames"] == 7 and summary["seconds"] > 0  # 25 // 4, as 1 + 2k
  table = long_video.format_table(report)
  assert "clean" in table and "noised" in table
  assert long_video.metrics(report)["noised"]["windows"] == 4
