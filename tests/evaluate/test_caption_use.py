"""videogen/evaluate/caption_use.py: counterfactual captions, gaps measured with fake loss
functions whose answers are known (the command: tests/evaluate/test_command.py)."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from data_pipelines.shapes import vocabulary
from data_pipelines.shapes import world
from videogen.evaluate import caption_use


def _scene(*motions):
  """A scene of one object per motion ("static" or a direction), distinct colours."""
  objects = tuple(
      world.SceneObject(color=color, shape="circle", size="small", direction=direction,
                        start=(0.5, 0.5), speed=0.0 if direction == vocabulary.STATIC else 0.4)
      for color, direction in zip(vocabulary.COLORS, motions))
  return world.Scene(background="black", objects=objects)


def _changes(before, after):
  """[(object index, field)] that differ, and whether the background does."""
  fields = [(i, f.name) for i, (a, b) in enumerate(zip(before.objects, after.objects))
            for f in dataclasses.fields(a) if getattr(a, f.name) != getattr(b, f.name)]
  return fields, before.background != after.background


@pytest.mark.parametrize("attribute", ["color", "shape", "size"])
def test_a_counterfactual_changes_one_attribute_of_one_object(attribute):
  scene = _scene("left", vocabulary.STATIC, "up-right")
  for seed in range(10):
    changed = caption_use.counterfactual(scene, attribute, np.random.default_rng(seed))
    fields, background = _changes(scene, changed)
    assert len(fields) == 1 and fields[0][1] == attribute and not background
    colors = [o.color for o in changed.objects]
    assert len(set(colors)) == len(colors)  # colours stay distinct


def test_direction_reverses_a_moving_object_and_motion_toggles_it():
  scene = _scene(vocabulary.STATIC, "up-left")
  for seed in range(5):
    changed = caption_use.counterfactual(scene, "direction", np.random.default_rng(seed))
    assert changed.objects[0] == scene.objects[0]  # the still object is never chosen
    assert changed.objects[1].direction == "down-right"
    assert changed.objects[1].speed == scene.objects[1].speed
  stopped = caption_use.counterfactual(_scene("down"), "motion", np.random.default_rng(0))
  assert stopped.objects[0].direction == vocabulary.STATIC and stopped.objects[0].speed == 0
  started = caption_use.counterfactual(_scene(vocabulary.STATIC), "motion",
                                       np.random.default_rng(0))
  assert started.objects[0].direction in vocabulary.DIRECTIONS and started.objects[0].speed > 0
  # The captions differ where the scenes do.
  describe = lambda s: world.describe(s, frames=9, height=32, width=32)
  assert "staying still" in describe(stopped) and "moving down" in describe(_scene("down"))


def test_counterfactuals_that_cannot_apply_are_none_and_unknown_ones_errors():
  rng = np.random.default_rng(0)
  assert caption_use.counterfactual(_scene(vocabulary.STATIC), "direction", rng) is None
  assert caption_use.counterfactual(_scene("left"), "caption", rng) is None
  assert caption_use.counterfactual(_scene("left"), "background", rng).background == "gray"
  with pytest.raises(ValueError, match="unknown attribute"):
    caption_use.counterfactual(_scene("left"), "speed", rng)


def _color_reader():
  """A fake model whose loss is 1 where the caption's colours differ from the clip's own (read
  from the first, true-caption call of each noise seed), else 0."""
  truth = {}

  def colours(caption):
    return {word for word in caption.replace(";", " ").split() if word in vocabulary.COLORS}

  def loss_fn(videos, captions, level, given, noise_seeds):
    assert videos.dtype == np.uint8 and len(videos) == len(captions) == len(noise_seeds)
    for caption, seed in zip(captions, noise_seeds):
      truth.setdefault(seed, caption)
    return np.array([float(colours(c) != colours(truth[s])) for c, s in zip(captions, noise_seeds)])

  return loss_fn


def test_gaps_show_the_words_a_model_reads():
  report = caption_use.measure_gaps(_color_reader(), levels=(0.5, 1.0), clips=16,
                                    progress=False)
  assert report["clips"] == 16 and list(report["given"]) == ["t2v", "first"]
  assert report["pairs"]["color"] == 16 and report["pairs"]["caption"] == 16
  assert 0 < report["pairs"]["direction"] <= 16  # scenes of still objects have no reversal
  for setting in ("t2v", "first"):
    assert list(report["given"][setting]) == ["0.5", "1"]
    for row in report["given"][setting].values():
      assert row["loss"] == 0.0
      assert row["gap"]["color"] == row["win_rate"]["color"] == 1.0
      assert row["gap"]["caption"] == row["win_rate"]["caption"] == 1.0  # no colours at all
      for attribute in ("shape", "size", "direction", "motion", "background"):
        assert row["gap"][attribute] == row["win_rate"][attribute] == 0.0, attribute
  table = caption_use.format_table(report).splitlines()
  assert table[0].startswith("given: t2v") and table[1].split()[2:] == list(caption_use.ATTRIBUTES)
  assert table[2].split()[:3] == ["0.5", "0.000", "+1.0000/1.00"]


def test_the_same_clip_gets_the_same_noise_seed_in_every_pass():
  calls = []

  def loss_fn(videos, captions, level, given, noise_seeds):
    calls.append((level, given, list(noise_seeds), videos.copy()))
    return np.zeros(len(videos))

  caption_use.measure_gaps(loss_fn, levels=(0.7,), given=("first",), clips=5, seed=3,
                           progress=False)
  base_level, base_given, base_seeds, base_videos = calls[0]
  assert (base_level, base_given, base_seeds) == (0.7, "first", [3, 4, 5, 6, 7])
  for _, _, seeds, videos in calls[1:]:
    for seed, video in zip(seeds, videos):
      np.testing.assert_array_equal(video, base_videos[seed - 3])


@pytest.mark.parametrize("kwargs, match", [
    (dict(levels=()), "noise levels"), (dict(levels=(0.0,)), "noise levels"),
    (dict(levels=(0.5, 0.5)), "repeat"), (dict(given=("last",)), "given"),
    (dict(clips=0), "clips")])
def test_bad_settings_are_refused(kwargs, match):
  with pytest.raises(ValueError, match=match):
    caption_use.measure_gaps(_color_reader(), progress=False, **kwargs)


def test_a_loss_function_must_return_one_loss_per_clip():
  with pytest.raises(ValueError, match="one loss per clip"):
    caption_use.measure_gaps(lambda v, c, l, g, s: np.zeros(1), levels=(0.5,), clips=3,
                             progress=False)


class _OracleGenerator:
  """Knows every clip's latents (a constant per clip), so its velocity is the exact flow target
  wherever a frame is noised (t > 0), and 0 at given frames."""

  def encode(self, video):
    return jnp.full((1, 5, 8, 8, 4), float(video.mean()) / 100.0)

  def encode_prompt(self, caption):
    return {"caption": caption}

  def velocity(self, x, t, cond):
    x0 = jnp.full(x.shape, float(self.x0_value))
    t = t[:, :, None, None, None]
    return jnp.where(t > 0, (x - x0) / jnp.where(t > 0, t, 1.0), 0.0)


def test_the_workdir_loss_is_the_flow_loss_over_the_frames_not_given():
  generator = _OracleGenerator()
  loss_fn = caption_use.generator_loss_fn(generator)
  video = np.full((1, 9, 32, 32, 3), 50, np.uint8)
  generator.x0_value = 0.5
  for level in (0.5, 1.0):
    # "first": frame 0 is given, its (zero) velocity is left out; "t2v": every frame is noised.
    for given in ("t2v", "first"):
      assert loss_fn(video, [""], level, given, [0])[0] == pytest.approx(0.0, abs=1e-10)
  generator.x0_value = 0.0  # x0 off by 0.5 everywhere: at t = 1 the error is 0.5^2 per value
  assert loss_fn(video, [""], 1.0, "t2v", [0])[0] == pytest.approx(0.25, rel=1e-5)


def test_the_training_measurement_reads_each_setting_at_its_own_level(monkeypatch):
  from videogen.generate import pipeline  # pylint: disable=g-import-not-at-top
  calls = []

  def fake_measure(loss_fn, *, levels, given, clips, **kwargs):
    del loss_fn, kwargs
    calls.append((levels, given, clips))
    applies = given == ("first",)  # say the clips' objects move only in the second setting
    return {"given": {given[0]: {f"{levels[0]:g}": {
        "gap": {"color": 0.25 * levels[0], "direction": 0.001 if applies else None},
        "win_rate": {"color": 0.75, "direction": 0.5 if applies else None}}}}}

  monkeypatch.setattr(pipeline, "Generator", lambda **kwargs: None)
  monkeypatch.setattr(caption_use, "generator_loss_fn", lambda generator: None)
  monkeypatch.setattr(caption_use, "measure_gaps", fake_measure)
  ranked = []
  monkeypatch.setattr(caption_use, "token_rank",
                      lambda encoder, tokenizer, captions: ranked.append(captions) or 5.5)
  scores = caption_use.stage_scores(None, None, None, None, None, shape=(9, 32, 32),
                                    world_config=world.WorldConfig(), clips=4)
  assert calls == [((0.9,), ("t2v",), 4), ((1.0,), ("first",), 4)]
  [captions] = ranked
  assert len(captions) == caption_use.RANK_CAPTIONS == len(set(captions))
  assert all(caption.endswith("background") for caption in captions)
  assert scores == {"text_token_rank": 5.5,
                    "caption_win_t2v_color": 0.75, "caption_win_first_color": 0.75,
                    "caption_win_first_direction": 0.5,
                    "caption_gap_t2v_color": pytest.approx(0.225),
                    "caption_gap_first_color": 0.25, "caption_gap_first_direction": 0.001}


def test_the_effective_rank_counts_the_directions_tokens_differ_along():
  rng = np.random.default_rng(0)
  along_one = rng.normal(size=(50, 1)) * rng.normal(size=(1, 16)) + 3.0  # a shared offset too
  assert caption_use.effective_rank(along_one) == pytest.approx(1.0)
  even = np.concatenate([np.eye(8), -np.eye(8)]) * 2.0  # 8 directions, equal energy
  assert caption_use.effective_rank(even) == pytest.approx(8.0)
  assert caption_use.effective_rank(np.ones((4, 3))) == 0.0  # no differences at all


def test_the_token_rank_reads_only_the_captions_tokens():
  class Tokenizer:
    def encode(self, captions):
      ids = np.array([[1, 2, 0], [3, 0, 0]], np.int32)[:len(captions)]
      return ids, ids > 0

  def encoder(ids, mask):
    table = np.array([[9.0, 9.0], [1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # padding far away
    return jnp.asarray(table[np.asarray(ids)]), None

  # Tokens (1, 0), (0, 1), (-1, 0) about their mean differ along two directions, unevenly.
  expected = caption_use.effective_rank(np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]))
  assert 1.0 < expected < 2.0
  assert caption_use.token_rank(encoder, Tokenizer(), ["a b", "c"]) == pytest.approx(expected)


def test_a_collapsed_token_rank_is_told_with_what_to_do():
  assert caption_use.collapse_warning(caption_use.COLLAPSED_RANK) is None
  assert caption_use.collapse_warning(7.0) is None
  warning = caption_use.collapse_warning(1.3)
  assert warning.startswith("the text encoder's caption tokens span 1.3 effective directions")
  assert "learning_rate_scales" in warning and "\n" not in warning
