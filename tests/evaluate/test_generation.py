"""Tests of the generation suite's scoring, with fake generators whose right answers are known.

A fake that renders the world's own scene for each prompt must score (nearly) perfectly; fakes that
get one thing wrong (a colour, the frames after a seam, the first frame) must lose exactly that.
"""

from __future__ import annotations

import dataclasses
import json
import time

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_pipelines.shapes import vocabulary
from data_pipelines.shapes import world
from videogen.evaluate import generation
from videogen.evaluate import scoring
from videogen.evaluate import suite as suite_lib

CONFIG = suite_lib.GenerationEvalConfig(scenes_per_group=2)


@pytest.fixture(scope="module")
def suite():
  return suite_lib.build_suite(CONFIG, default_shape=(9, 32, 32))


def _scenes(suite):
  """prompt text -> scene, for the fakes (which, like a model, only see the text)."""
  scenes = {}
  for prompt in suite.prompts:
    scenes.setdefault(prompt.text, prompt.scene)
  for case in suite.cases:
    scenes.setdefault(case.prompt, case.scene)
  return scenes


def _truth_generator(suite, scene_edit=None):
  """Renders the prompt's scene: the clip, its continuation, or the clip opening with the image."""
  scenes = _scenes(suite)

  def generate(prompt, *, frames, height, width, seed, mode="t2v", image=None, video=None):
    del seed, image
    scene = scenes[prompt]
    if scene_edit is not None:
      scene = scene_edit(scene)
    total = frames + (len(video) if mode == "extend" else 0)
    return world.render(scene, frames=total, height=height, width=width)["video"]

  return generate


@pytest.fixture(scope="module")
def truth_report(suite):
  return generation.evaluate_generation(_truth_generator(suite), suite, progress=False)


def test_the_worlds_own_videos_score_perfectly(truth_report):
  metrics = truth_report.metrics
  for key in ("color_accuracy", "shape_accuracy", "size_accuracy", "direction_accuracy",
              "bounce_accuracy", "count_stability", "count_accuracy", "background_accuracy"):
    assert metrics[key] == 1.0, (key, metrics)
  for group in ("seen", "held_out"):
    assert metrics["by_group"][group]["color_accuracy"] == 1.0
  assert metrics["by_caption"]["brief"]["direction_accuracy"] is None  # brief states no motion
  # The world's continuation of its own clip is seamless; its first frame is the image.
  assert 0.8 <= metrics["extension_seam_ratio"] <= 1.25, metrics
  assert 0.8 <= metrics["i2v_seam_ratio"] <= 1.25, metrics
  assert metrics["i2v_first_frame_psnr"] == scoring.MAX_PSNR


def test_wrong_colours_cost_colour_accuracy_only(suite):
  def recolour_first(scene):
    used = {o.color for o in scene.objects}
    spare = next(c for c in vocabulary.COLORS if c not in used)
    first = dataclasses.replace(scene.objects[0], color=spare)
    return dataclasses.replace(scene, objects=(first,) + scene.objects[1:])

  report = generation.evaluate_generation(_truth_generator(suite, recolour_first), suite,
                                          progress=False)
  num_objects = sum(len(p.expected) for p in suite.prompts)
  expected = 1.0 - len(suite.prompts) / num_objects  # one wrong object per video
  assert report.metrics["color_accuracy"] == pytest.approx(expected, abs=1e-4)
  assert report.metrics["shape_accuracy"] == 1.0
  assert report.metrics["size_accuracy"] == 1.0
  assert report.metrics["count_stability"] == 1.0


def test_the_confusion_says_what_was_drawn_instead(suite, truth_report):
  # The world's own videos: every prompted value is read back as itself, nothing else.
  truth = truth_report.metrics["confusion"]
  assert list(truth) == ["color", "shape", "size", "direction"]
  for attribute, table in truth.items():
    for stated, found in table.items():
      assert list(found) == [stated], (attribute, stated, found)
  prompted_shapes = sum(sum(found.values()) for found in truth["shape"].values())
  assert prompted_shapes == sum(1 for p in suite.prompts for e in p.expected if "shape" in e)

  # A model that draws every object as a circle: a third right by chance, and the confusion
  # shows why.
  def circles_only(scene):
    return dataclasses.replace(scene, objects=tuple(
        dataclasses.replace(o, shape="circle") for o in scene.objects))

  report = generation.evaluate_generation(_truth_generator(suite, circles_only), suite,
                                          progress=False)
  shapes = report.metrics["confusion"]["shape"]
  for stated, found in shapes.items():
    assert found == {"circle": truth["shape"][stated][stated]}, (stated, found)
  assert report.metrics["confusion"]["color"] == truth["color"]
  assert "square" in shapes and "confusion (prompted -> read):" in generation.format_table(report)


def test_a_jump_at_the_seam_and_a_wrong_first_frame_are_measured(suite):
  truth = _truth_generator(suite)

  def jumping(prompt, *, frames, height, width, seed, mode="t2v", image=None, video=None):
    made = truth(prompt, frames=frames, height=height, width=width, seed=seed, mode=mode,
                 image=image, video=video)
    if mode == "extend":  # the continuation loses every object at once
      made[len(video):] = made[len(video):, :1, :1]
    if mode == "i2v":  # the clip opens on another picture
      made = np.concatenate([255 - made[:1], made[1:]])
    return made

  report = generation.evaluate_generation(jumping, suite, progress=False)
  assert report.metrics["extension_seam_ratio"] > 2.0, report.metrics
  assert report.metrics["i2v_first_frame_psnr"] < 15.0
  assert report.metrics["i2v_seam_ratio"] > 2.0
  assert report.metrics["color_accuracy"] == 1.0  # text-to-video is untouched


def test_speed_figures_follow_the_generators_time():
  tiny = suite_lib.build_suite(
      dataclasses.replace(CONFIG, scenes_per_group=1, modes=()), default_shape=(9, 32, 32))
  truth = _truth_generator(tiny)

  def slow(prompt, **kwargs):
    time.sleep(0.05)
    return truth(prompt, **kwargs)

  metrics = generation.evaluate_generation(slow, tiny, progress=False).metrics
  assert metrics["seconds_per_video"] >= 0.05
  assert metrics["real_time_factor"] == pytest.approx(
      9 / 8 / metrics["seconds_per_video"], rel=1e-3)
  assert metrics["extension_seam_ratio"] is None  # no extension case in this suite


def test_metrics_json_has_every_field_within_range(truth_report):
  metrics = json.loads(json.dumps(truth_report.metrics))
  for key in ("color_accuracy", "shape_accuracy", "size_accuracy", "direction_accuracy",
              "bounce_accuracy", "count_stability", "count_accuracy"):
    assert 0.0 <= metrics[key] <= 1.0, key
  assert 0.0 <= metrics["i2v_first_frame_psnr"] <= scoring.MAX_PSNR
  for key in ("extension_seam_ratio", "i2v_seam_ratio", "seconds_per_video", "real_time_factor"):
    assert metrics[key] > 0.0, key
  assert metrics["prompts"] == 8 and metrics["videos"] == 16
  assert set(metrics["by_group"]) == {"seen", "held_out"}
  table = generation.format_table(truth_report)
  assert len(table.splitlines()) > metrics["videos"]


class _FakeGenerator:
  """The parts of `pipeline.Generator` the modes use; new frames are a constant grey."""
  temporal_factor = 4
  default_shape = (9, 16, 16)
  fps = 8.0

  def fit_size(self, height, width, *args, **kwargs):
    del args, kwargs  # every size fits this fake
    return height, width

  def generate(self, prompt, *, frames, height, width, before=None, **options):
    del prompt, options
    return np.full((frames, height, width, 3), 77, np.uint8)


def test_generator_fn_returns_the_given_frames_then_the_new_ones():
  generate = generation.generator_fn(_FakeGenerator())
  clip = np.random.default_rng(0).integers(0, 255, (9, 16, 16, 3), dtype=np.uint8)
  extended = generate("a red circle", frames=8, height=16, width=16, seed=0, mode="extend",
                      video=clip)
  np.testing.assert_array_equal(extended[:9], clip)
  assert extended.shape == (17, 16, 16, 3) and (extended[9:] == 77).all()
  opened = generate("a red circle", frames=9, height=16, width=16, seed=0, mode="i2v",
                    image=clip[0])
  np.testing.assert_array_equal(opened[0], clip[0])
  assert opened.shape == (9, 16, 16, 3)
  assert generate("a red circle", frames=9, height=16, width=16, seed=0).shape == (9, 16, 16, 3)


class _TextEncoder(nnx.Module):
  """tokens [B, L], mask [B, L] -> (embeddings [B, L, D], masked-mean pooled [B, D])."""

  def __init__(self, vocab_size, width, *, rngs):
    self.embed = nnx.Embed(vocab_size, width, rngs=rngs)

  def __call__(self, tokens, mask):
    embeddings = self.embed(tokens)
    weights = mask[..., None].astype(embeddings.dtype)
    return embeddings, (embeddings * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)


@pytest.mark.slow  # ~15-30 s: compiling the tiny models' eager init and three window shapes
def test_a_real_pipeline_runs_the_suite_end_to_end(tmp_path):
  """A tiny randomly initialised generator through the pipeline's modes: every field in range."""
  from data_pipelines import tokenizer as tokenizer_lib
  from videogen.diffusion import flow
  from videogen.diffusion import samplers
  from videogen.generate import pipeline
  from videogen.models import autoencoder as autoencoder_lib
  from videogen.models import dit as dit_lib

  # Extensions of 4 frames stay within one 9-frame window (fewer shapes to compile).
  suite = suite_lib.build_suite(dataclasses.replace(CONFIG, scenes_per_group=1, extend_frames=4),
                                 default_shape=(9, 16, 16))
  tokenizer = tokenizer_lib.train_tokenizer(
      [p.text for p in suite.prompts] * 20, str(tmp_path / "tokenizer.model"),
      tokenizer_lib.TokenizerConfig(vocab_size=300, max_length=48))
  with nnx.use_eager_sharding(False):
    autoencoder = autoencoder_lib.VideoAutoencoder(autoencoder_lib.AutoencoderConfig(
        base_channels=8, channel_multipliers=(1, 1), num_res_blocks=1,
        spatial_downsample=(True,), temporal_downsample=(True,), latent_channels=4,
        middle_attention=False, attention_heads=1), rngs=nnx.Rngs(0))
    text_encoder = _TextEncoder(tokenizer.vocab_size, 16, rngs=nnx.Rngs(1))
    dit = dit_lib.DiT(dit_lib.DiTConfig(
        width=32, depth=1, num_heads=2, patch_size=(1, 2, 2), in_channels=4,
        input_size=(5, 8, 8), context_dim=16, pooled_dim=16, frequency_dim=32,
        attention_backend="xla"), rngs=nnx.Rngs(2))
  generator = pipeline.Generator(
      autoencoder=autoencoder, text_encoder=text_encoder, dit=dit, tokenizer=tokenizer,
      flow_config=flow.FlowConfig(), window_frames=9, default_shape=(9, 16, 16), progress=False,
      sample_config=samplers.SamplerConfig(method="euler", num_steps=2, guidance_scale=2.0))
  report = generation.evaluate_generation(generation.generator_fn(generator), suite,
                                          progress=False)
  metrics = json.loads(json.dumps(report.metrics))
  assert metrics["videos"] == 8 and [r["frames"] for r in report.rows] == [9] * 4 + [13, 9] * 2
  for key in ("color_accuracy", "shape_accuracy", "count_stability", "count_accuracy"):
    assert 0.0 <= metrics[key] <= 1.0, key
  # The pipeline keeps the given image verbatim as the first frame.
  assert metrics["i2v_first_frame_psnr"] == scoring.MAX_PSNR
  for key in ("extension_seam_ratio", "i2v_seam_ratio", "seconds_per_video", "real_time_factor"):
    assert metrics[key] > 0.0, key
