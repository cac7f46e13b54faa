"""The autoencoder stage: trains `VideoAutoencoder` (and optionally a 3D patch discriminator).

    python -m videogen.main train --config=experiments/shapes.py:tiny --workdir=runs/tiny

Loss (`autoencoder_loss`), on videos converted from uint8 to [-1, 1]:

    generator     = l1_weight |x - x'| + l2_weight (x - x')^2 + ssim_weight (1 - SSIM(x, x'))
                    + kl_weight KL
                    + [step >= disc_start] disc_weight lambda (-D(x'))
    discriminator = [step >= disc_start] (hinge(D(x) real) + hinge(D(x') fake)) / 2
    loss          = generator + discriminator

with x' decoded from a posterior sample, and lambda the adaptive weight of Esser et al. (2021): the
norm of the reconstruction term's gradient at the decoder's last kernel over the norm of the
adversarial term's gradient there (clipped, not differentiated). The trainer has ONE optimizer
for the autoencoder and the discriminator together, so the two players are kept apart inside the
loss: the generator terms see the discriminator's parameters through `stop_gradient`, and the
discriminator term sees the reconstruction through `stop_gradient`. One gradient of the sum then
holds exactly the generator gradient for the autoencoder's parameters and exactly the
discriminator gradient for the discriminator's. The switch at `disc_start` is a `jnp.where`-style
multiplication on the traced step, so the compiled step never changes shape.

The model the trainer holds is `AutoencoderWithDiscriminator`: its `autoencoder` attribute is the
`VideoAutoencoder` (checkpoint paths start with "autoencoder/"), its `discriminator` is None unless
`config.autoencoder_loss.discriminator` is set.

Evaluation (`AutoencoderStage.evaluate`): PSNR and SSIM of posterior-mean reconstructions on
held-out videos (`eval_split` of the data source, "test" for the procedural world), and
side-by-side (input | reconstruction) videos in WORKDIR/samples/autoencoder/step_<step>/.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from data_pipelines import loader
from data_pipelines import video_io
from videogen import experiment as experiment_lib
from videogen import pixels
from videogen.evaluate import metrics as metrics_lib
from videogen.models import autoencoder as autoencoder_lib
from videogen.models import discriminator as discriminator_lib
from videogen.parallel import multihost
from videogen.train import config as configs
from videogen.train import stage as stage_lib

# Added to the adversarial gradient norm in the adaptive weight, so it stays finite.
_ADAPTIVE_EPSILON = 1e-4


class AutoencoderWithDiscriminator(nnx.Module):
  """What the autoencoder stage trains: `autoencoder` and the optional `discriminator`."""

  def __init__(self, autoencoder: autoencoder_lib.AutoencoderConfig,
               loss: configs.AutoencoderLossConfig, *, rngs: nnx.Rngs):
    self.autoencoder = autoencoder_lib.VideoAutoencoder(autoencoder, rngs=rngs)
    self.discriminator = (discriminator_lib.PatchDiscriminator3D(
        loss.disc_channels, loss.disc_layers, epsilon=autoencoder.norm_epsilon,
        dtype=jnp.dtype(autoencoder.dtype), param_dtype=jnp.dtype(autoencoder.param_dtype),
        rngs=rngs) if loss.discriminator else None)


def _frozen(module: nnx.Module) -> nnx.Module:
  """A copy of `module` whose parameters are constants to differentiation (stop_gradient)."""
  graphdef, state = nnx.split(module)
  return nnx.merge(graphdef, jax.tree.map(jax.lax.stop_gradient, state))


def reconstruction_loss(reconstruction: jax.Array, video: jax.Array,
                        config: configs.AutoencoderLossConfig) -> jax.Array:
  """l1_weight L1 + l2_weight MSE + ssim_weight (1 - SSIM); videos [B, T, H, W, 3] in [-1, 1]."""
  error = reconstruction - video
  loss = config.l1_weight * jnp.mean(jnp.abs(error))
  if config.l2_weight:
    loss = loss + config.l2_weight * jnp.mean(jnp.square(error))
  if config.ssim_weight:
    similarity = metrics_lib.ssim(reconstruction, video, max_value=2.0)
    loss = loss + config.ssim_weight * (1.0 - jnp.mean(similarity))
  return loss


def random_crop(video: jax.Array, size: int, rng: jax.Array) -> jax.Array:
  """One random size x size window of every video in the batch (the same window for all).

  Args:
    video: [B, T, H, W, C] with H, W >= size.
    size: the window's side; 0 returns video unchanged.
    rng: picks the window's corner, uniformly over the valid corners.

  Returns:
    [B, T, size, size, C].
  """
  if not size:
    return video
  height, width = video.shape[2:4]
  top_rng, left_rng = jax.random.split(rng)
  top = jax.random.randint(top_rng, (), 0, height - size + 1)
  left = jax.random.randint(left_rng, (), 0, width - size + 1)
  return jax.lax.dynamic_slice_in_dim(
      jax.lax.dynamic_slice_in_dim(video, top, size, axis=2), left, size, axis=3)


def _hinge_discriminator_loss(logits_real: jax.Array, logits_fake: jax.Array) -> jax.Array:
  return 0.5 * (jnp.mean(jax.nn.relu(1.0 - logits_real)) + jnp.mean(jax.nn.relu(1.0 + logits_fake)))


def autoencoder_loss_terms(model: AutoencoderWithDiscriminator, video: jax.Array, rng: jax.Array,
                           step: jax.Array, config: configs.AutoencoderLossConfig
                           ) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """The generator and discriminator losses, kept apart by stop_gradient (module docstring).

  Args:
    model: the stage's model.
    video: uint8 [B, T, H, W, 3].
    rng: a key for the posterior sample.
    step: the training step (int scalar, may be traced).
    config: the loss settings.

  Returns:
    (generator loss, discriminator loss, scalar metrics): the generator loss has no gradient with
    respect to the discriminator's parameters, the discriminator loss none with respect to the
    autoencoder's.
  """
  autoencoder = model.autoencoder
  decoder = autoencoder.decoder
  target = pixels.to_model_range(video)
  mean, logvar = autoencoder.encode(target)
  latents = autoencoder.sample(mean, logvar, rng)
  features, _ = decoder.features(latents.astype(decoder.conv_out.dtype))
  kernel, bias = decoder.conv_out.kernel[...], decoder.conv_out.bias[...]

  def output_layer(features: jax.Array, kernel: jax.Array, bias: jax.Array) -> jax.Array:
    patches, _ = autoencoder_lib.causal_conv3d(features, kernel, bias)
    return decoder.unpatchify(patches).astype(jnp.float32)

  reconstruction = output_layer(features, kernel, bias)
  rec_loss = reconstruction_loss(reconstruction, target, config)
  kl = jnp.mean(autoencoder_lib.kl_divergence(mean, logvar))
  l1 = jnp.mean(jnp.abs(reconstruction - target))
  mse = jnp.mean(jnp.square(reconstruction - target))
  psnr = metrics_lib.psnr(jnp.clip(reconstruction, -1.0, 1.0), target, max_value=2.0)
  generator = rec_loss + config.kl_weight * kl
  metrics = {"l1": l1, "mse": mse, "kl": kl, "psnr": jnp.mean(psnr), "reconstruction": rec_loss,
             "logvar": jnp.mean(logvar)}
  if config.ssim_weight:
    metrics["ssim"] = jnp.mean(metrics_lib.ssim(reconstruction, target, max_value=2.0))
  if model.discriminator is None:
    return generator, jnp.zeros((), jnp.float32), metrics

  active = (jnp.asarray(step) >= config.disc_start).astype(jnp.float32)
  frozen_discriminator = _frozen(model.discriminator)
  logits_fake, pullback_to_pixels = jax.vjp(frozen_discriminator, reconstruction)
  adversarial = -jnp.mean(logits_fake)
  # The adaptive weight: both terms' gradients at the decoder's last kernel, as constants.
  adversarial_pixel_grad = pullback_to_pixels(
      jnp.full_like(logits_fake, -1.0 / logits_fake.size))[0]
  reconstruction_pixel_grad = jax.grad(reconstruction_loss)(
      jax.lax.stop_gradient(reconstruction), target, config)
  _, pullback_to_kernel = jax.vjp(
      lambda k: output_layer(jax.lax.stop_gradient(features), k, jax.lax.stop_gradient(bias)),
      jax.lax.stop_gradient(kernel))
  reconstruction_kernel_grad = pullback_to_kernel(reconstruction_pixel_grad)[0]
  adversarial_kernel_grad = pullback_to_kernel(jax.lax.stop_gradient(adversarial_pixel_grad))[0]
  adaptive_weight = jax.lax.stop_gradient(jnp.clip(
      jnp.linalg.norm(reconstruction_kernel_grad.astype(jnp.float32))
      / (jnp.linalg.norm(adversarial_kernel_grad.astype(jnp.float32)) + _ADAPTIVE_EPSILON),
      0.0, config.adaptive_weight_max))
  generator = generator + active * config.disc_weight * adaptive_weight * adversarial

  logits_real = model.discriminator(target)
  logits_fake_for_discriminator = model.discriminator(jax.lax.stop_gradient(reconstruction))
  discriminator = active * _hinge_discriminator_loss(logits_real, logits_fake_for_discriminator)
  metrics.update({
      "adversarial": adversarial, "adaptive_weight": adaptive_weight,
      "discriminator": discriminator, "logits_real": jnp.mean(logits_real),
      "logits_fake": jnp.mean(logits_fake_for_discriminator), "disc_active": active})
  return generator, discriminator, metrics


def autoencoder_loss(model: AutoencoderWithDiscriminator, video: jax.Array, rng: jax.Array,
                     step: jax.Array, config: configs.AutoencoderLossConfig
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(generator + discriminator loss, metrics); see `autoencoder_loss_terms`.

  With `config.crop_size`, the loss is that of one random crop of the batch.
  """
  if config.crop_size:
    crop_rng, rng = jax.random.split(rng)
    video = random_crop(video, config.crop_size, crop_rng)
  generator, discriminator, metrics = autoencoder_loss_terms(model, video, rng, step, config)
  return generator + discriminator, metrics


class _NoTokens:
  """A stand-in tokenizer for the loader: the autoencoder reads no text. Encodes to one pad."""

  def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((len(texts), 1), np.int32), np.zeros((len(texts), 1), bool)


def held_out_videos(data: loader.DataConfig, *, split: str, count: int, batch_size: int,
                    seed: int) -> np.ndarray:
  """`count` videos uint8 [count, T, H, W, 3] of `split`, shaped as the first training bucket."""
  bucket = data.parsed_buckets()[0]
  spec = f"{bucket.frames}x{bucket.height}x{bucket.width}:{batch_size}"
  config = dataclasses.replace(data, split=split, buckets=(spec,), shuffle=False)
  batches = loader.StepBatches(config, tokenizer=_NoTokens(), seed=seed)
  videos = [batches(step)["video"] for step in range(math.ceil(count / batch_size))]
  return np.concatenate(videos)[:count]


class AutoencoderStage(stage_lib.Stage):
  """Trains the video autoencoder; constructed by the trainer as `AutoencoderStage(experiment)`."""

  name = "autoencoder"

  def __init__(self, experiment: experiment_lib.Experiment):
    self.model_config: autoencoder_lib.AutoencoderConfig = experiment.autoencoder
    self.loss_config: configs.AutoencoderLossConfig = experiment.autoencoder_loss
    self.data_config: loader.DataConfig = experiment.data
    self.rules = experiment.mesh.rules
    self.seed = experiment.seed
    self._check_buckets()
    self._eval_videos: np.ndarray | None = None
    self._eval_fn = None

  @property
  def train_data_config(self) -> loader.DataConfig:
    """config.data with this stage's own buckets, if it has any."""
    if not self.loss_config.buckets:
      return self.data_config
    return dataclasses.replace(self.data_config, buckets=self.loss_config.buckets)

  def _check_buckets(self) -> None:
    """Every training bucket must be encodable: a clear error at start-up, not at a step."""
    temporal, spatial = self.model_config.temporal_factor, self.model_config.spatial_factor
    where = ("config.autoencoder_loss.buckets" if self.loss_config.buckets
             else "config.data.buckets")
    crop = self.loss_config.crop_size
    if crop % spatial:
      raise ValueError(
          f"config.autoencoder_loss.crop_size={crop} is not a multiple of the autoencoder's "
          f"spatial compression {spatial}: use {max(spatial, crop // spatial * spatial)}")
    for bucket in self.train_data_config.parsed_buckets():
      if (bucket.frames - 1) % temporal or bucket.height % spatial or bucket.width % spatial:
        raise ValueError(
            f"{where} has {bucket}, which the autoencoder "
            f"({temporal}x{spatial}x{spatial}) cannot encode: frames must be 1 + {temporal}k and "
            f"height and width multiples of {spatial}")
      if crop > min(bucket.height, bucket.width):
        raise ValueError(
            f"config.autoencoder_loss.crop_size={crop} is larger than the frames of bucket "
            f"{bucket} in {where}: use at most {min(bucket.height, bucket.width)}, or 0")

  def create_model(self, rngs: nnx.Rngs) -> nnx.Module:
    return AutoencoderWithDiscriminator(self.model_config, self.loss_config, rngs=rngs)

  def loss(self, model: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array,
           step: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    return autoencoder_loss(model, batch["video"], rng, step, self.loss_config)

  def make_iterator(self, *, mesh: jax.sharding.Mesh, seed: int,
                    workdir: str) -> stage_lib.BatchIterator:
    del workdir
    return loader.make_iterator(self.train_data_config, tokenizer=_NoTokens(), mesh=mesh,
                                seed=seed,
                                batch_axes=tuple(self.rules.get("batch", ("data", "fsdp"))))

  def evaluate(self, model: nnx.Module, step: int, workdir: str) -> dict[str, float]:
    """PSNR / SSIM on held-out videos; writes side-by-side videos from process 0."""
    config = self.loss_config
    if config.eval_videos == 0:
      return {}
    if self._eval_videos is None:
      self._eval_videos = held_out_videos(
          self.data_config, split=config.eval_split, count=config.eval_videos,
          batch_size=config.eval_batch_size, seed=self.seed)
    graphdef, state = nnx.split(model.autoencoder)
    if self._eval_fn is None:
      self._eval_fn = jax.jit(_reconstruct_and_measure, static_argnums=0)
    replicated = _replicated_sharding(state)
    psnrs, ssims, samples = [], [], []
    for start in range(0, len(self._eval_videos), config.eval_batch_size):
      videos = self._eval_videos[start:start + config.eval_batch_size]
      if replicated is not None:
        videos = jax.make_array_from_process_local_data(replicated, videos)
      reconstruction, psnr, ssim = self._eval_fn(graphdef, state, videos)
      psnrs.append(np.asarray(psnr))
      ssims.append(np.asarray(ssim))
      if sum(len(s) for s in samples) < config.sample_videos:
        samples.append(pixels.to_uint8(np.asarray(reconstruction, np.float32)))
    if config.sample_videos and multihost.is_primary():
      self._write_samples(np.concatenate(samples)[:config.sample_videos], step, workdir)
    return {"psnr": float(np.mean(np.concatenate(psnrs))),
            "ssim": float(np.mean(np.concatenate(ssims)))}

  def evaluation_context(self) -> dict[str, Any]:
    """The compression ("FxSxS"), latent channels and held-out videos behind the scores."""
    config = self.model_config
    factor = config.spatial_factor
    return {"compression": f"{config.temporal_factor}x{factor}x{factor}",
            "latent_channels": config.latent_channels,
            "num_videos": 0 if self._eval_videos is None else len(self._eval_videos)}

  def _write_samples(self, reconstructions: np.ndarray, step: int, workdir: str) -> None:
    folder = os.path.join(workdir, "samples", self.name, f"step_{step:07d}")
    fps = self.data_config.world.fps
    for index, reconstruction in enumerate(reconstructions):
      side_by_side = np.concatenate([self._eval_videos[index], reconstruction], axis=2)
      video_io.write_video(os.path.join(folder, f"reconstruction_{index:02d}.mp4"), side_by_side,
                           fps=fps)


def _replicated_sharding(state: nnx.State) -> jax.sharding.NamedSharding | None:
  """A fully replicated sharding on the mesh the parameters live on (None off a mesh)."""
  for leaf in jax.tree.leaves(state):
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
      return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
  return None


def _reconstruct_and_measure(graphdef: nnx.GraphDef, state: nnx.State, videos: jax.Array
                             ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """uint8 videos [B, T, H, W, 3] -> (mean reconstruction [B, T, H, W, 3], PSNR [B], SSIM [B]).

  The reconstruction decodes the posterior mean and is clipped to [-1, 1].
  """
  autoencoder = nnx.merge(graphdef, state)
  target = pixels.to_model_range(videos)
  reconstruction, _, _ = autoencoder(target, sample_posterior=False)
  reconstruction = jnp.clip(reconstruction, -1.0, 1.0)
  # The standard 11x11 window, or the largest odd one that fits smaller frames.
  ssim_window = min(11, target.shape[2], target.shape[3])
  ssim_window -= 1 - ssim_window % 2
  return (reconstruction, metrics_lib.psnr(reconstruction, target, max_value=2.0),
          metrics_lib.ssim(reconstruction, target, max_value=2.0, window_size=ssim_window))
