"""videogen/train/autoencoder_stage.py: the loss, the one-optimizer GAN split, the stage."""

import dataclasses
import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from data_pipelines import loader
from data_pipelines import video_io
from data_pipelines.shapes import world
from videogen import config as config_lib
from videogen import experiment as experiment_lib
from videogen import pixels
from videogen.models import autoencoder as ae
from videogen.parallel import mesh as mesh_lib
from videogen.train import autoencoder_stage as stage_lib
from videogen.train import config as configs
from videogen.train import metrics as metrics_lib
from videogen.train import stages as stages_lib
from videogen.train import trainer

MODEL = ae.AutoencoderConfig(
    base_channels=8, patch_size=2, channel_multipliers=(1, 2), num_res_blocks=1,
    spatial_downsample=(True,), temporal_downsample=(True,), latent_channels=4,
    middle_attention=False)
LOSS = configs.AutoencoderLossConfig(kl_weight=1e-3)
GAN = dataclasses.replace(LOSS, discriminator=True, disc_start=10, disc_channels=4, disc_layers=2)


@functools.lru_cache(maxsize=None)
def _model(loss_config=LOSS, model_config=MODEL):
  with nnx.use_eager_sharding(False):
    return stage_lib.AutoencoderWithDiscriminator(model_config, loss_config, rngs=nnx.Rngs(0))


@functools.lru_cache(maxsize=None)
def _videos(count=2, frames=5, size=16, split="train"):
  """uint8 [count, frames, size, size, 3] procedural-world clips."""
  return np.stack([world.generate(i, seed=0, frames=frames, height=size, width=size,
                                  split=split)["video"] for i in range(count)])


def _split(model):
  graphdef, params = nnx.split(model, nnx.Param)
  return graphdef, params


@functools.lru_cache(maxsize=None)
def _loss_fn(graphdef, config):
  """(params, videos, step) -> loss, with a fixed rng; jitted once per model and config."""

  def loss(params, videos, step):
    return stage_lib.autoencoder_loss(nnx.merge(graphdef, params), videos, jax.random.key(1),
                                      step, config)[0]

  return jax.jit(loss)


def test_loss_config_round_trips_and_rejects_negative_weights():
  parsed = config_lib.parse(configs.AutoencoderLossConfig, config_lib.to_config_dict(GAN),
                            "config.autoencoder_loss")
  assert parsed == GAN
  with pytest.raises(ValueError, match="kl_weight"):
    configs.AutoencoderLossConfig(kl_weight=-1.0)


def test_loss_is_l1_plus_weighted_kl_of_the_model_forward():
  """The loss's own decoding path (split at the last layer) equals `VideoAutoencoder.__call__`."""
  graphdef, params = _split(_model())
  videos = _videos()

  @jax.jit
  def both(params):
    model = nnx.merge(graphdef, params)
    loss, metrics = stage_lib.autoencoder_loss(model, videos, jax.random.key(1), 0, LOSS)
    target = pixels.to_model_range(videos)
    reconstruction, mean, logvar = model.autoencoder(target, rng=jax.random.key(1))
    return loss, metrics, reconstruction - target, ae.kl_divergence(mean, logvar)

  loss, metrics, error, kl_per_video = both(params)
  l1, kl = jnp.mean(jnp.abs(error)), jnp.mean(kl_per_video)
  np.testing.assert_allclose(metrics["l1"], l1, rtol=1e-5)
  np.testing.assert_allclose(metrics["kl"], kl, rtol=1e-5)
  np.testing.assert_allclose(loss, l1 + LOSS.kl_weight * kl, rtol=1e-5)
  assert 0 < float(metrics["psnr"]) < 30


def test_structural_and_squared_terms_add_their_weighted_values():
  graphdef, params = _split(_model())
  videos = _videos(frames=5, size=16)
  config = dataclasses.replace(LOSS, ssim_weight=0.5, l2_weight=2.0)

  @jax.jit
  def losses(params):
    model = nnx.merge(graphdef, params)
    return (stage_lib.autoencoder_loss(model, videos, jax.random.key(1), 0, config),
            stage_lib.autoencoder_loss(model, videos, jax.random.key(1), 0, LOSS)[0])

  (loss, metrics), base = losses(params)
  assert 0 < float(metrics["ssim"]) < 1
  np.testing.assert_allclose(loss, base + 0.5 * (1 - metrics["ssim"]) + 2.0 * metrics["mse"],
                             rtol=1e-5)


def _max_abs(tree):
  return max(float(np.abs(np.asarray(x)).max()) for x in jax.tree.leaves(tree))


def test_one_gradient_of_the_sum_updates_each_player_with_its_own_loss():
  graphdef, params = _split(_model(GAN))
  videos, step = _videos(), jnp.asarray(20)  # after disc_start

  @jax.jit
  def all_grads(params):
    def both_losses(params):
      generator, discriminator, _ = stage_lib.autoencoder_loss_terms(
          nnx.merge(graphdef, params), videos, jax.random.key(1), step, GAN)
      return generator, discriminator

    _, pullback = jax.vjp(both_losses, params)
    one, zero = jnp.ones(()), jnp.zeros(())
    return {"total": pullback((one, one))[0], "generator": pullback((one, zero))[0],
            "discriminator": pullback((zero, one))[0]}

  grads = all_grads(params)
  # The generator loss does not move the discriminator, the discriminator loss not the autoencoder.
  assert _max_abs(grads["generator"]["discriminator"]) == 0
  assert _max_abs(grads["discriminator"]["autoencoder"]) == 0
  assert _max_abs(grads["discriminator"]["discriminator"]) > 0
  # So the summed loss's gradient is each player's own gradient.
  for player, part in (("autoencoder", "generator"), ("discriminator", "discriminator")):
    for got, expected in zip(jax.tree.leaves(grads["total"][player]),
                             jax.tree.leaves(grads[part][player])):
      np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-9)


def test_adversarial_terms_switch_on_at_disc_start():
  graphdef, params = _split(_model(GAN))
  videos = _videos()
  plain_loss = _loss_fn(_split(_model(LOSS))[0], LOSS)
  plain_params = _split(_model(LOSS))[1]
  before = _loss_fn(graphdef, GAN)(params, videos, jnp.asarray(GAN.disc_start - 1))
  np.testing.assert_allclose(before, plain_loss(plain_params, videos, 0), rtol=1e-5)
  grads_before = jax.grad(_loss_fn(graphdef, GAN))(params, videos,
                                                   jnp.asarray(GAN.disc_start - 1))
  assert _max_abs(grads_before["discriminator"]) == 0
  after = _loss_fn(graphdef, GAN)(params, videos, jnp.asarray(GAN.disc_start))
  assert abs(float(after) - float(before)) > 1e-4


def test_adaptive_weight_is_the_ratio_of_gradient_norms_at_the_last_kernel():
  """Brute force: differentiate both terms with respect to the whole model, read the kernel."""
  graphdef, params = _split(_model(GAN))
  videos = _videos()
  metrics = jax.jit(lambda p: stage_lib.autoencoder_loss(
      nnx.merge(graphdef, p), videos, jax.random.key(1), 20, GAN)[1])(params)

  def terms(params):
    model = nnx.merge(graphdef, params)
    target = pixels.to_model_range(videos)
    reconstruction, _, _ = model.autoencoder(target, rng=jax.random.key(1))
    return (stage_lib.reconstruction_loss(reconstruction, target, GAN),
            -jnp.mean(model.discriminator(reconstruction)))

  kernel = lambda g: g["autoencoder"]["decoder"]["conv_out"]["kernel"][...]
  grads = jax.jit(lambda p: (jax.grad(lambda p: terms(p)[0])(p),
                             jax.grad(lambda p: terms(p)[1])(p)))(params)
  reconstruction_grad, adversarial_grad = kernel(grads[0]), kernel(grads[1])
  expected = np.linalg.norm(reconstruction_grad) / (np.linalg.norm(adversarial_grad) + 1e-4)
  np.testing.assert_allclose(metrics["adaptive_weight"], expected, rtol=1e-4)


@pytest.mark.parametrize("config", [LOSS, dataclasses.replace(GAN, disc_start=0)],
                         ids=["plain", "gan"])
def test_a_short_training_run_lowers_the_loss(config):
  graphdef, params = _split(_model(config))
  videos = _videos(count=4)
  optimizer = optax.adam(3e-3)
  opt_state = optimizer.init(params)

  @jax.jit
  def train_step(params, opt_state, step):
    def loss_fn(params):
      model = nnx.merge(graphdef, params)
      return stage_lib.autoencoder_loss(model, videos, jax.random.fold_in(jax.random.key(0), step),
                                        step, config)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  l1s = []
  for step in range(25):
    params, opt_state, metrics = train_step(params, opt_state, step)
    l1s.append(float(metrics["l1"]))
  assert np.all(np.isfinite(l1s))
  assert np.mean(l1s[-3:]) < 0.6 * np.mean(l1s[:3]), l1s


def _experiment(buckets=("5x16x16:8",), loss=None, **train):
  config = ml_collections.ConfigDict()
  config.name = "autoencoder_test"
  config.seed = 0
  config.stages = ("autoencoder",)
  config.autoencoder = config_lib.to_config_dict(MODEL)
  config.autoencoder_loss = config_lib.to_config_dict(dataclasses.replace(
      LOSS, eval_videos=3, eval_batch_size=2, sample_videos=2, **(loss or {})))
  config.data = config_lib.to_config_dict(loader.DataConfig(buckets=buckets))
  config.mesh = config_lib.to_config_dict(mesh_lib.MeshConfig(data=4, fsdp=2))
  config.train = ml_collections.ConfigDict({"autoencoder": config_lib.to_config_dict(
      configs.TrainConfig(**{**dict(num_steps=2, warmup_steps=1, log_every=1, eval_every=2,
                                    checkpoint_every=2, async_checkpoints=False,
                                    progress_bar=False), **train}))})
  return experiment_lib.validate(config)


def test_buckets_the_autoencoder_cannot_encode_are_refused_at_start_up():
  with pytest.raises(ValueError, match="frames must be 1 \\+ 2k"):
    stages_lib.make_stage("autoencoder", _experiment(buckets=("4x16x16:8",)))
  with pytest.raises(ValueError, match="multiples of 4"):
    stages_lib.make_stage("autoencoder", _experiment(buckets=("5x18x16:8",)))


def test_random_crop_takes_one_window_of_the_batch():
  videos = jnp.asarray(_videos(count=2, frames=5, size=16))
  windows = {}
  for seed in range(12):
    crop = stage_lib.random_crop(videos, 8, jax.random.key(seed))
    assert crop.shape == (2, 5, 8, 8, 3)
    # The crop is a window of the input at one corner, the same for the whole batch.
    corners = [(top, left) for top in range(9) for left in range(9)
               if np.array_equal(np.asarray(videos[:, :, top:top + 8, left:left + 8]), crop)]
    assert corners, f"seed {seed}: the crop is no window of the input"
    windows[seed] = corners[0]
  assert len(set(windows.values())) > 6  # the corners vary with the key
  assert stage_lib.random_crop(videos, 0, jax.random.key(0)) is videos


def test_the_stage_trains_on_its_own_buckets_and_crops():
  """autoencoder_loss.buckets replaces config.data.buckets for training, not for evaluation."""
  stage = stages_lib.make_stage("autoencoder", _experiment(
      buckets=("5x16x16:8",), loss=dict(buckets=("1x16x16:4",), crop_size=8)))
  assert [b.shape for b in stage.train_data_config.parsed_buckets()] == [(1, 16, 16)]
  assert [b.shape for b in stage.data_config.parsed_buckets()] == [(5, 16, 16)]
  graphdef, params = _split(_model(dataclasses.replace(LOSS, crop_size=8)))
  loss, metrics = jax.jit(lambda p: stage_lib.autoencoder_loss(
      nnx.merge(graphdef, p), _videos(), jax.random.key(0), 0,
      dataclasses.replace(LOSS, crop_size=8)))(params)
  assert np.isfinite(float(loss)) and float(metrics["l1"]) > 0
  with pytest.raises(ValueError, match="not a multiple of the autoencoder's spatial"):
    stages_lib.make_stage("autoencoder", _experiment(loss=dict(crop_size=6)))
  with pytest.raises(ValueError, match="larger than the frames"):
    stages_lib.make_stage("autoencoder", _experiment(loss=dict(crop_size=20)))
  with pytest.raises(ValueError, match="autoencoder_loss.buckets has"):
    stages_lib.make_stage("autoencoder", _experiment(loss=dict(buckets=("4x16x16:8",))))
  with pytest.raises(ValueError, match="bad bucket"):
    configs.AutoencoderLossConfig(buckets=("16x16",))


def test_held_out_videos_differ_from_training_videos():
  data = loader.DataConfig(buckets=("5x16x16:8",))
  held_out = stage_lib.held_out_videos(data, split="test", count=3, batch_size=2, seed=0)
  assert held_out.shape == (3, 5, 16, 16, 3) and held_out.dtype == np.uint8
  np.testing.assert_array_equal(held_out[0], _videos(1, 5, 16, split="test")[0])
  assert not np.array_equal(held_out[0], _videos(1, 5, 16)[0])


@pytest.mark.slow
def test_trainer_runs_the_stage_and_its_evaluation(tmp_path, devices):
  """Two sharded steps through the shared trainer, then PSNR / SSIM and side-by-side videos."""
  experiment = _experiment()
  mesh = mesh_lib.create_mesh(experiment.mesh, devices)
  stage = stages_lib.make_stage("autoencoder", experiment)
  result = trainer.train_stage(stage, experiment, str(tmp_path), mesh=mesh)
  assert result.status == "done" and result.step == 2
  rows = metrics_lib.read_metrics(str(tmp_path), "autoencoder")
  losses = [row for row in rows if "loss" in row]
  assert [row["step"] for row in losses] == [1, 2]
  assert all(np.isfinite(row["psnr"]) and row["l1"] > 0 for row in losses)
  evaluations = [row for row in rows if "eval/psnr" in row]
  assert len(evaluations) == 1 and -1 <= evaluations[0]["eval/ssim"] <= 1
  assert 0 < evaluations[0]["eval/psnr"] < 60
  samples = tmp_path / "samples" / "autoencoder" / "step_0000002"
  written = sorted(os.listdir(samples))
  assert written == ["reconstruction_00.mp4", "reconstruction_01.mp4"]
  side_by_side, _ = video_io.read_video(samples / written[0])
  assert side_by_side.shape[:3] == (5, 16, 32)  # input | reconstruction
