"""videogen/generate/pipeline.py: decoding, determinism, conditioning, loading a workdir."""

import dataclasses
import hashlib
import logging
import os
import shutil
import tracemalloc

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import ml_collections
from flax import nnx


from data_pipelines import loader
from data_pipelines import tokenizer as tokenizer_lib
from data_pipelines import video_io
from videogen import config as config_lib
from videogen import experiment as experiment_lib
from videogen import pixels
from videogen import workdir as workdir_lib
from videogen.diffusion import flow
from videogen.generate import command
from videogen.generate import modes
from videogen.generate import pipeline
from videogen.models import text_to_video
from videogen.parallel import mesh as mesh_lib
from videogen.train import checkpointing
from videogen.train import config as configs
from videogen.train import config_changes


def test_decode_in_chunks_equals_one_pass(generator):
  latents = jax.random.normal(jax.random.key(0), (1, 5, 8, 8, 4))
  chunked = generator.decode(latents)  # chunks of 3 and 2 latent frames
  graphdef, state = nnx.split(generator.autoencoder)

  @jax.jit
  def one_pass(state, latents):
    autoencoder = nnx.merge(graphdef, state)
    return pixels.to_uint8(autoencoder.decode(autoencoder.denormalize_latents(latents)))[0]

  whole = np.asarray(one_pass(state, latents))
  assert chunked.shape == (9, 16, 16, 3) and chunked.dtype == np.uint8
  assert np.max(np.abs(chunked.astype(int) - whole.astype(int))) <= 1
  assert np.std(whole) > 5  # a random decoder draws something, not a flat frame


def test_same_seed_same_video_and_another_seed_another(generator):
  first = generator.generate("a red circle moving right", frames=9, seed=1)
  again = generator.generate("a red circle moving right", frames=9, seed=1)
  other = generator.generate("a red circle moving right", frames=9, seed=2)
  assert first.shape == (9, 16, 16, 3) and first.dtype == np.uint8
  np.testing.assert_array_equal(first, again)
  assert np.mean(first != other) > 0.1


# Videos a fixed seed gave before the pipeline was split into modules, pinning the whole pipeline
# (prompt encoding, noise, windows, given frames, decoding) on the CPU backend the tests run on.
# After a deliberate change of the numerics, record the new hashes and say why in the commit.
RECORDED_PROMPT = "a red circle moving right"
# request -> (shape, sha256 of the uint8 video's bytes).
RECORDED = {
    "t2v": ((9, 16, 16, 3),
        "11be92fe396437286dfbfce48a1eaa0c85f8bf4d5c1dfeabc7fa4df5630de1eb"),
    "long": ((17, 16, 16, 3),
        "0a1b17e21a8d89693fb797a18adfc745e87bde939522178033638479cabaa0c1"),
    "connect": ((14, 16, 16, 3),
        "ff97e763c1c9e9353baaab1eb29f0b6019fa8287c9578222d2da0de31b9fd9d1"),
    "edit": ((9, 16, 16, 3),
        "b7f978e5035afd1c70ee7bb122cb15e9eed20e80cc144f92b33de4eb6c47e78f"),
}


def _recorded_request(generator, clip, request: str) -> np.ndarray:
  if request == "t2v":
    return generator.generate(RECORDED_PROMPT, frames=9, seed=1)
  if request == "long":  # three windows: given frames re-encoded from decoded pixels
    return generator.generate(RECORDED_PROMPT, frames=17, seed=3)
  if request == "connect":  # a prefix and a suffix given
    return modes.connect(generator, RECORDED_PROMPT, clip[:5], clip[4:][::-1].copy(), frames=4,
                         seed=5).video
  if request == "edit":
    return modes.edit(generator, RECORDED_PROMPT, clip, strength=0.7, seed=5).video
  raise AssertionError(request)


@pytest.mark.skipif(jax.default_backend() != "cpu",
                    reason="the hashes were recorded on the CPU backend")
@pytest.mark.parametrize("request_name", sorted(RECORDED))
def test_a_fixed_seed_gives_the_recorded_video(generator, clip, request_name):
  video = _recorded_request(generator, clip, request_name)
  shape, digest = RECORDED[request_name]
  assert video.shape == shape and video.dtype == np.uint8
  assert hashlib.sha256(np.ascontiguousarray(video).tobytes()).hexdigest() == digest


def test_the_prompt_changes_the_video(generator):
  red = generator.generate("a red circle", frames=9, seed=1)
  blue = generator.generate("a blue square moving up", frames=9, seed=1)
  assert np.any(red != blue)


@pytest.mark.parametrize("prompt", ["", "   "])
def test_an_empty_prompt_is_a_clear_error(generator, prompt):
  with pytest.raises(ValueError, match="prompt is empty"):
    generator.generate(prompt, frames=9)


@pytest.mark.parametrize("settings, message", [
    (dict(frames=0), "frames = 0 must be at least 1"),
    (dict(frames=-3), "frames = -3 must be at least 1"),
    (dict(height=0), "height = 0 must be a positive number of pixels"),
    (dict(width=-8), "width = -8 must be a positive number of pixels"),
    (dict(guidance=-1.0), "guidance = -1.0 must be >= 0"),
    (dict(guidance=float("nan")), "guidance = nan must be >= 0"),
    (dict(steps=0), "num_steps = 0 must be >= 1"),
])
def test_impossible_settings_are_refused_not_rounded(generator, settings, message):
  with pytest.raises(ValueError, match=message):
    generator.generate("a red circle", **settings)


def test_frames_and_sizes_are_rounded_not_refused(generator, caplog):
  with caplog.at_level(logging.WARNING):
    video = generator.generate("a red circle", frames=8, height=15, width=17, seed=0)
  # 8 -> 9 frames (1 + 2k); 15, 17 -> 16 (a multiple of 2 x 2 x 2: autoencoder and patch).
  assert video.shape == (9, 16, 16, 3)
  assert "generating 9 frames" in caplog.text and "using 16" in caplog.text


def test_fit_size_defaults_to_the_input_and_keeps_its_aspect_ratio(generator):
  # Sizes are multiples of 4: the autoencoder halves them, the transformer's patch is 2x2.
  assert generator.spatial_multiple == (4, 4)
  assert generator.fit_size(None, None) == (16, 16)  # the default shape
  assert generator.fit_size(None, None, like=(12, 20)) == (12, 20)
  assert generator.fit_size(None, 24, like=(12, 20)) == (16, 24)  # 14.4 -> 16
  assert generator.fit_size(None, 24) == (16, 24)


def _record_decodes(generator, monkeypatch):
  """Makes `generator.decode` keep every latent window it decodes."""
  decoded = []
  original = generator.decode

  def recording(latents, **kwargs):
    decoded.append(np.asarray(latents))
    return original(latents, **kwargs)

  monkeypatch.setattr(generator, "decode", recording)
  return decoded


def test_long_videos_are_windows_that_continue_each_other(generator, monkeypatch):
  decoded = _record_decodes(generator, monkeypatch)
  video = generator.generate("a red circle moving right", frames=17, seed=3)
  assert video.shape == (17, 16, 16, 3)
  # 9 latent frames with a 5-frame window: [5 new], [2 given | 3 new], [2 given | 1 new | 2
  # dropped]: one shape for all three.
  assert [latents.shape[1] for latents in decoded] == [5, 5, 5]
  # Each window is given the last 3 frames made so far, encoded as a clip of their own...
  np.testing.assert_array_equal(decoded[1][:, :2], generator.prefix_latents(video[:9], 2))
  np.testing.assert_array_equal(decoded[2][:, :2], generator.prefix_latents(video[:15], 2))
  # ...and keeps only its new frames (after the 1 + 2 given ones).
  np.testing.assert_array_equal(video[9:15], generator.decode(jnp.asarray(decoded[1]))[3:])
  np.testing.assert_array_equal(video[15:], generator.decode(jnp.asarray(decoded[2]))[3:5])


class CopyGivenFrames(nnx.Module):
  """A stand-in network whose prediction of the clean latents is the mean of the given frames.

  Given frames are the ones fed at timestep 0; the velocity (x - x0) / t then carries every
  other frame exactly onto that mean with Euler steps, so the result shows which latents were
  given, and where.
  """

  def __init__(self, config):
    self.config = config

  def __call__(self, latents, timesteps, context, context_mask, pooled):
    given = (timesteps == 0).astype(jnp.float32)[..., None, None, None]  # [B, t, 1, 1, 1]
    target = jnp.sum(latents * given, axis=1, keepdims=True) / jnp.maximum(
        jnp.sum(given, axis=1, keepdims=True), 1.0)
    t = timesteps[..., None, None, None]
    return jnp.where(t > 0, (latents - target) / jnp.maximum(t, 1e-6), 0.0)


@pytest.fixture(scope="module")
def copying_generator(generator):
  return pipeline.Generator(
      autoencoder=generator.autoencoder, text_encoder=generator.text_encoder,
      dit=CopyGivenFrames(generator.dit.config), tokenizer=generator.tokenizer,
      flow_config=generator.flow_config, sample_config=generator.sample_config,
      window_frames=9, default_shape=(9, 16, 16), chunk_latent_frames=3, progress=False)


def test_given_frames_are_held_at_timestep_zero_where_they_belong(copying_generator, clip,
                                                                   monkeypatch):
  decoded = _record_decodes(copying_generator, monkeypatch)
  before, after = clip[:5], clip[4:][::-1]
  new = copying_generator.generate("a red circle", frames=4, before=before, after=after, seed=0)
  (latents,) = decoded
  assert latents.shape[1] == 5  # [2 given | 2 new | 1 given]
  prefix = np.asarray(copying_generator.prefix_latents(before, 2))
  suffix = np.asarray(copying_generator.suffix_latents(after, 1))
  np.testing.assert_array_equal(latents[:, :2], prefix)
  np.testing.assert_array_equal(latents[:, 4:], suffix)
  given_mean = np.concatenate([prefix, suffix], axis=1).mean(axis=1)
  np.testing.assert_allclose(latents[:, 2], given_mean, atol=1e-4)
  np.testing.assert_allclose(latents[:, 3], given_mean, atol=1e-4)
  # The new pixel frames are the 4 decoded after the 1 + 2 given ones.
  np.testing.assert_array_equal(new, copying_generator.decode(jnp.asarray(latents))[3:7])


def test_image_first_samples_the_image_of_that_seed_then_the_clip_given_it(generator,
                                                                          monkeypatch):
  decoded = _record_decodes(generator, monkeypatch)
  prompt = "a red circle moving right"
  image = generator.generate(prompt, frames=1, seed=3)
  together = generator.generate(prompt, frames=9, seed=3)
  monkeypatch.setattr(generator, "sample_config", dataclasses.replace(
      generator.sample_config, frame_schedule="image_first"))
  video = generator.generate(prompt, frames=9, seed=3)
  image_latents, _, video_latents = decoded
  # The clip's first latent frame is the one-frame request's, held bit for bit while the rest
  # is sampled, and the causal decoder turns it into the same first frame.
  np.testing.assert_array_equal(video_latents[:, :1], image_latents)
  np.testing.assert_array_equal(video[0], image[0])
  assert np.mean(video[1:] != together[1:]) > 0.1


def test_prefix_latents_are_the_start_of_a_clip(generator, clip):
  """A causal encoder: the last 3 frames encoded alone are a clip's first 2 latent frames."""
  np.testing.assert_allclose(generator.prefix_latents(clip, 2), generator.encode(clip[-3:]))
  assert not np.allclose(generator.prefix_latents(clip, 2), generator.encode(clip[:3]))


def test_edit_at_low_strength_stays_near_the_input(generator, clip):
  reconstruction = generator.decode(generator.encode(clip)).astype(float)
  light = generator.generate("a red circle", edit_source=clip, strength=0.05, seed=0)
  full = generator.generate("a red circle", edit_source=clip, strength=1.0, seed=0)
  assert light.shape == clip.shape
  assert np.mean(np.abs(light - reconstruction)) < 0.5 * np.mean(np.abs(full - reconstruction))


def test_edit_of_a_short_input_edits_what_there_is(generator, clip, caplog):
  with caplog.at_level(logging.WARNING):
    video = generator.generate("a red circle", edit_source=clip, frames=11, seed=0)
  assert video.shape == (9, 16, 16, 3)
  assert "editing 9 frames: the input has 9" in caplog.text


def test_edit_strength_out_of_range_is_a_clear_error(generator, clip):
  with pytest.raises(ValueError, match="strength"):
    generator.generate("a red circle", edit_source=clip, strength=0.0)


def _tiny_experiment(model_configs, sample_config, max_tokens):
  config = ml_collections.ConfigDict()
  config.name, config.seed, config.stages = "generate_test", 0, ("dit",)
  for name, section in model_configs.items():
    config[name] = config_lib.to_config_dict(section)
  config.diffusion = config_lib.to_config_dict(flow.FlowConfig())
  config.sample = config_lib.to_config_dict(sample_config)
  config.tokenizer = config_lib.to_config_dict(
      tokenizer_lib.TokenizerConfig(vocab_size=300, max_length=max_tokens))
  config.data = config_lib.to_config_dict(loader.DataConfig(buckets=("9x16x16:8",)))
  config.mesh = config_lib.to_config_dict(mesh_lib.MeshConfig(data=1, fsdp=4, tensor=2))
  config.train = ml_collections.ConfigDict()
  config.train.dit = config_lib.to_config_dict(configs.TrainConfig(num_steps=1))
  return experiment_lib.validate(config)


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory, make_generator, model_configs, generator):
  """A workdir as the trainer leaves it: WORKDIR/checkpoints/dit/<step> and the tokenizer.

  Its EMA weights are the session generator's models; its raw (non-EMA) weights are zeros, so
  a load that restored the wrong ones would generate another video.
  """
  workdir = tmp_path_factory.mktemp("workdir")
  experiment = _tiny_experiment(model_configs, generator.sample_config,
                                generator.tokenizer.max_length)
  graphdef, abstract_params, abstract_frozen = text_to_video.abstract_model(
      experiment.autoencoder, experiment.text_encoder, experiment.dit)
  model = nnx.merge(graphdef, abstract_params, abstract_frozen)
  fresh = make_generator()
  model.autoencoder, model.text_encoder, model.dit = (fresh.autoencoder, fresh.text_encoder,
                                                      fresh.dit)
  _, ema_params, frozen = nnx.split(model, text_to_video.trainable(experiment.text_encoder), ...)
  state = {"step": jnp.asarray(7, jnp.int32), "params": jax.tree.map(jnp.zeros_like, ema_params),
           "frozen": frozen, "opt_state": {"count": jnp.zeros((), jnp.int32)},
           "ema_params": ema_params, "rng": jax.random.key_data(jax.random.key(0))}
  checkpointer = checkpointing.Checkpointer(workdir_lib.checkpoint_dir(workdir, "dit"),
                                            async_save=False)
  checkpointer.save(7, state, {}, config_changes.experiment_json(experiment))
  checkpointer.close()
  generator.tokenizer.save(workdir_lib.tokenizer_path(str(workdir)))
  return str(workdir)


def test_load_restores_the_ema_weights_onto_a_mesh(trained_workdir, generator, devices,
                                                   monkeypatch, tmp_path, capsys):
  # FSDP x tensor over 4 of the 8 devices: every device runs the whole (tiny) model on this
  # 2-core machine, so more devices only cost time.
  mesh = mesh_lib.create_mesh(mesh_lib.MeshConfig(data=1, fsdp=2, tensor=2), devices[:4])
  loaded = pipeline.load(trained_workdir, mesh=mesh, progress=False)  # the saved experiment
  for kernel in (loaded.dit.blocks.mlp.up.kernel, loaded.autoencoder.decoder.conv_in.kernel):
    assert len(kernel.sharding.device_set) == 4 and not kernel.sharding.is_fully_replicated
  assert loaded.default_shape == (9, 16, 16) and loaded.window_latents == 5
  assert loaded.sample_config == generator.sample_config
  expected = generator.generate("a red circle moving right", frames=9, seed=4)
  video = loaded.generate("a red circle moving right", frames=9, seed=4)
  assert np.max(np.abs(video.astype(int) - expected.astype(int))) <= 1

  # The command on that workdir: the same video, written as .mp4 and .gif, and its speed.
  monkeypatch.setattr(pipeline, "load", lambda workdir, experiment: loaded)
  out = tmp_path / "red.mp4"
  assert command.command(None, trained_workdir, prompt="a red circle moving right", out=str(out),
                         frames=9, seed=4) == 0
  assert "real-time factor" in capsys.readouterr().out
  assert video_io.read_video(out.with_suffix(".gif"))[0].shape == (9, 16, 16, 3)


def test_load_names_what_is_missing(trained_workdir, tmp_path):
  with pytest.raises(FileNotFoundError, match="no checkpoint of stage 'dit' .* train it first"):
    pipeline.load(str(tmp_path))
  workdir = tmp_path / "copy"
  shutil.copytree(trained_workdir, workdir)
  os.remove(workdir_lib.tokenizer_path(str(workdir)))
  with pytest.raises(FileNotFoundError, match="tokenizer .* is missing"):
    pipeline.load(str(workdir), progress=False)


def test_estimate_memory_counts_the_video_a_decoded_chunk_and_the_attention_logits(
    tiny_workdir_config):
  experiment = experiment_lib.validate(tiny_workdir_config)
  # 9x32x32 by default (the training clip): 5 latent frames of 8x8 (2x4x4 compression, 1x1x1
  # patches) = 320 tokens; 2 heads; guidance 4 runs two branches.
  estimate = pipeline.estimate_memory(experiment, platform="cpu")
  assert (estimate.frames, estimate.height, estimate.width, estimate.tokens) == (9, 32, 32, 320)
  assert estimate.video_bytes == 9 * 32 * 32 * 3
  assert estimate.decode_bytes == 8 * 32 * 32 * 3 * 4  # 4 latent frames -> 8 pixel frames
  assert estimate.attention_bytes == 2 * 2 * 320 ** 2 * 4
  # Sizes round as the generator rounds them; one branch without guidance.
  wide = pipeline.estimate_memory(experiment, height=30, width=100001, guidance=1.0,
                                  platform="cpu")
  assert (wide.height, wide.width, wide.tokens) == (32, 100000, 5 * 8 * 25000)
  assert wide.attention_bytes == 2 * (5 * 8 * 25000) ** 2 * 4
  # A long video is made window by window: the tokens stop at the window, the video grows.
  long = pipeline.estimate_memory(experiment, frames=1001, platform="cpu")
  assert long.tokens == 320 and long.video_bytes == 1001 * 32 * 32 * 3
  # Flash attention (16-bit on GPU) and splash (TPU) keep no logits in memory.
  assert pipeline.estimate_memory(experiment, platform="tpu").attention_bytes == 0
  tiny_workdir_config.dit.dtype = "bfloat16"
  half = experiment_lib.validate(tiny_workdir_config)
  assert pipeline.estimate_memory(half, platform="gpu").attention_bytes == 0
  assert pipeline.estimate_memory(half, platform="cpu").attention_bytes > 0


def test_a_generator_on_a_mesh_traces_the_activation_constraints_and_keeps_the_video(
    make_generator, devices):
  mesh = mesh_lib.create_mesh(mesh_lib.MeshConfig(data=2, fsdp=4), devices)
  plain = make_generator()
  sharded = make_generator(sharding=(mesh, mesh_lib.DEFAULT_RULES))
  x = jnp.zeros((2, 3, 4, 4, plain.dit.config.in_channels), jnp.float32)
  t = jnp.full((2, 3), 0.5, jnp.float32)
  cond = plain.encode_prompt("a red circle")
  cond = jax.tree.map(lambda a: jnp.concatenate([a, a]), cond)

  def constraints(generator):
    text = pipeline._apply_dit.lower(generator._dit_graph, generator._dit_state, x, t, cond,
                                     sharding=generator._sharding).as_text()
    return text.count("sharding_constraint")

  assert constraints(plain) == 0
  assert constraints(sharded) > 0  # the DiT's block boundaries, pinned to the mesh
  np.testing.assert_array_equal(sharded.generate("a red circle", frames=9, seed=3),
                                plain.generate("a red circle", frames=9, seed=3))


# ------------------------------------------------------------------------------------------------
# Long videos: bounded memory, context noise, one progress bar.


def _host_bytes_beyond_the_output(generator, frames: int) -> tuple[int, int]:
  """(peak bytes NumPy and Python allocate while generating `frames` frames of 48x48 beyond the
  output, the output's bytes). The frames are large enough for the pixels to dominate the
  Python objects each window leaves to the garbage collector."""
  tracemalloc.start()
  try:
    video = generator.generate("a red circle", frames=frames, height=48, width=48, seed=0)
    _, peak = tracemalloc.get_traced_memory()
  finally:
    tracemalloc.stop()
  return peak - video.nbytes, video.nbytes


def test_a_480_frame_video_needs_no_more_memory_than_a_short_one_beyond_its_frames(generator):
  # Compiles every window shape first.
  generator.generate("a red circle", frames=17, height=48, width=48, seed=0)
  short_extra, short_bytes = _host_bytes_beyond_the_output(generator, 121)
  long_extra, long_bytes = _host_bytes_beyond_the_output(generator, 481)
  assert long_bytes == 481 * 48 * 48 * 3
  # Keeping every window (or re-joining the video for each next window's context) would add at
  # least the extra frames' bytes again; a bounded working set adds a small part of them.
  assert long_extra - short_extra < 0.5 * (long_bytes - short_bytes), (short_extra, long_extra)


@pytest.mark.parametrize("level, clean_below", [(0.0, 0.0), (0.3, 0.0), (1.0, 0.0), (1.0, 0.9)])
def test_context_noise_shows_given_frames_noised_to_at_most_the_new_frames_time(
    make_generator, level, clean_below):
  generator = make_generator(context_noise=level, context_clean_below=clean_below)
  times = []
  original = generator.velocity

  def spy(x, t, cond):
    times.append(np.asarray(t))
    return original(x, t, cond)

  generator.velocity = spy
  video = generator.generate("a red circle", frames=17, seed=3)
  # 9 latent frames in windows of 5: [5 new], [2 given | 3 new], [2 given | 1 new | 2 dropped];
  # two Euler steps each, both guidance branches in one call.
  assert len(times) == 6
  for t in times[:2]:
    assert np.all(t == t[:, :1]) and np.all(t > 0)
  for t in times[2:]:
    new_time = t[:, 2:]
    assert np.all(new_time == new_time[:, :1]) and np.all(new_time > 0)
    expected = np.where(new_time[:, :2] < clean_below, 0.0, np.minimum(level, new_time[:, :2]))
    np.testing.assert_allclose(t[:, :2], expected, rtol=1e-6)
  if clean_below:
    # The first step (t = 1) sees them noised, the second (below 0.9) clean.
    assert np.all(times[2][:, :2] == 1.0) and np.all(times[3][:, :2] == 0.0)
  plain = make_generator().generate("a red circle", frames=17, seed=3)
  # The first window is given nothing; later ones see their given frames differently.
  np.testing.assert_array_equal(video[:9], plain[:9])
  assert (level == 0.0) == np.array_equal(video[9:], plain[9:])


def test_context_noise_out_of_range_is_a_clear_error(make_generator, generator):
  with pytest.raises(ValueError, match="context_noise = 1.5 must be in"):
    make_generator(context_noise=1.5)
  with pytest.raises(ValueError, match="context_clean_below = 2.0 must be in"):
    generator.with_windows(context_clean_below=2.0)
  with pytest.raises(ValueError, match="context_noise = -0.1 must be in"):
    generator.generate("a red circle", frames=17, context_noise=-0.1)


def test_a_long_video_shows_one_progress_bar_over_its_frames(make_generator, capsys):
  generator = make_generator(progress=True)
  generator.generate("a red circle", frames=29, seed=0)
  err = capsys.readouterr().err
  assert "generating 29 frames" in err and "0/29 [" in err  # counted in frames
  assert "sampling" not in err and "decoding" not in err and "windows" not in err


def test_with_windows_changes_the_plan_and_shares_the_models(generator):
  wider = generator.with_windows(window_frames=17, overlap=3, context_noise=0.2)
  assert (wider.window_latents, wider.overlap, wider.context_noise) == (9, 3, 0.2)
  assert (generator.window_latents, generator.overlap, generator.context_noise) == (5, 2, 0.0)
  assert wider.dit is generator.dit and wider.autoencoder is generator.autoencoder
  video = wider.generate("a red circle", frames=25, seed=1)
  assert video.shape == (25, 16, 16, 3)
