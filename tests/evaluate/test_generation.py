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


def test_suite_is_fixed_and_holds_both_groups_and_caption_kinds(suite):
  again = suite_lib.build_suite(CONFIG, default_shape=(9, 32, 32))
  assert [p.text for p in again.prompts] == [p.text for p in suite.prompts]
  assert len(suite.prompts) == 2 * 2 * 2  # groups x scenes x caption kinds
  assert len(suite.cases) == 2 * 2 * 2    # groups x scenes x (extend, i2v)
  held_out = world.WorldConfig().held_out
  for prompt in suite.prompts:
    has_held_out = any(world.is_held_out(o, held_out) for o in prompt.scene.objects)
    assert has_held_out == (prompt.group == "held_out"), prompt.text
    stated = set().union(*(set(e) for e in prompt.expected))
    if prompt.kind == "brief":
      # A brief caption names colour and shape (sizes only in some scenes), never motion.
      assert {"color", "shape"} <= stated and not stated & {"direction", "bounces"}
      assert ("size" in stated) == prompt.scene.brief_with_sizes
    else:
      assert {"color", "shape", "size", "direction", "bounces"} <= stated
      assert prompt.background == prompt.scene.background
  # Bouncing scenes were preferred, so bounce accuracy has objects to score.
  assert any(e.get("score_bounces") for p in suite.prompts for e in p.expected)


def test_suite_settings_are_checked():
  with pytest.raises(ValueError, match="unknown mode"):
    suite_lib.GenerationEvalConfig(modes=("t2i",))
  with pytest.raises(ValueError, match="scenes_per_group"):
    suite_lib.GenerationEvalConfig(scenes_per_group=0)


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
  assert metrics["i2v_first_frame_psnr"] == generation.MAX_PSNR


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


def test_a_missing_object_counts_wrong_in_every_attribute_and_in_the_count(suite):
  prompt = next(p for p in suite.prompts if p.kind == "descriptive" and len(p.expected) > 1)
  scene = dataclasses.replace(prompt.scene, objects=prompt.scene.objects[1:])
  video = world.render(scene, frames=9, height=32, width=32)["video"]
  score = generation.score_video(video, prompt.expected, prompt.background)
  for attribute in ("color", "shape", "size", "direction"):
    assert score.totals[attribute] == len(prompt.expected)
    assert score.hits[attribute] == len(prompt.expected) - 1
  assert score.readings[0] == {a: [prompt.expected[0][a], None]
                               for a in ("color", "shape", "size", "direction")}
  assert generation.confusion([{"readings": score.readings}])["shape"][
      prompt.expected[0]["shape"]].get(generation.MISSING) == 1
  assert score.count_stability == 0.0 and not score.count_correct


def test_only_stated_attributes_are_scored():
  # A brief caption without sizes: a large object for "a red circle" is right, not wrong.
  obj = world.SceneObject("red", "circle", "large", "static", (0.5, 0.5), 0.0)
  video = world.render(world.Scene("black", (obj,)), frames=5, height=32, width=32)["video"]
  score = generation.score_video(video, [{"color": "red", "shape": "circle"}])
  assert score.totals == {"color": 1, "shape": 1}
  assert score.hits == {"color": 1, "shape": 1}
  stated_small = generation.score_video(video, [{"color": "red", "shape": "circle",
                                                 "size": "small"}])
  assert stated_small.hits.get("size", 0) == 0 and stated_small.totals["size"] == 1


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


def test_seam_ratio_and_psnr_helpers():
  still = np.zeros((6, 8, 8, 3), np.uint8)
  assert generation.seam_ratio(still, 3)[0] == 1.0  # still, continued still: seamless
  ramp = np.stack([np.full((8, 8, 3), 10 * k, np.uint8) for k in range(6)])
  assert generation.seam_ratio(ramp, 3)[0] == pytest.approx(1.0)
  jump = ramp.copy()
  jump[3:] += 100
  ratio, at_seam, inside = generation.seam_ratio(jump, 3)
  assert (at_seam, inside) == (pytest.approx(110.0), pytest.approx(10.0))
  assert ratio == pytest.approx(110.5 / 10.5)
  with pytest.raises(ValueError, match="seam"):
    generation.seam_ratio(ramp, 6)
  image = np.full((4, 4, 3), 100, np.uint8)
  assert generation.psnr(image, image) == generation.MAX_PSNR
  assert generation.psnr(image + 1, image) == pytest.approx(10 * np.log10(255.0 ** 2))


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
  assert 0.0 <= metrics["i2v_first_frame_psnr"] <= generation.MAX_PSNR
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


def test_evaluate_command_errors_say_what_to_do(tmp_path, capsys):
  assert generation.evaluate(None, str(tmp_path), what="speling") == 2
  assert "choose one of: generation" in capsys.readouterr().err
  assert generation.evaluate(None, None, what="generation") == 2
  assert "--workdir" in capsys.readouterr().err
  assert generation.evaluate(None, str(tmp_path), what="generation") == 1
  error = capsys.readouterr().err
  assert "checkpoints/dit" in error and "videogen.main train" in error


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
  assert metrics["i2v_first_frame_psnr"] == generation.MAX_PSNR
  for key in ("extension_seam_ratio", "i2v_seam_ratio", "seconds_per_video", "real_time_factor"):
    assert metrics[key] > 0.0, key


def test_main_wires_the_evaluate_command_and_its_what_flag(tmp_path):
  import subprocess
  import sys
  result = subprocess.run(
      [sys.executable, "-m", "videogen.main", "evaluate", f"--workdir={tmp_path}",
       "--what=generation"], capture_output=True, text=True, timeout=120)
  assert result.returncode == 1, result.stderr
  assert "no checkpoint of stage 'dit'" in result.stderr


@pytest.mark.slow  # ~10-20 s: the shrunk autoencoder reconstructs 16 held-out clips
def test_autoencoder_evaluation_reports_its_scores_and_what_they_are_about(
    tiny_workdir, tmp_path, capsys):
  """`evaluate --what=autoencoder`: the last printed line is the JSON of the issue's contract."""
  import shutil
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_workdir, workdir)  # the shared workdir is read-only
  assert generation.evaluate(None, workdir, what="autoencoder") == 0
  last_line = capsys.readouterr().out.strip().splitlines()[-1]
  result = json.loads(last_line)
  assert result["compression"] == "2x4x4" and result["latent_channels"] == 8
  assert result["num_videos"] == 16 and result["step"] == 2
  assert 0.0 < result["psnr"] < 60.0 and -1.0 <= result["ssim"] <= 1.0  # barely trained
  with open(f"{workdir}/eval_autoencoder.json") as f:
    assert json.load(f) == result
