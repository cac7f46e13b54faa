r"""The diffusion-transformer stage: text-to-video flow matching on frozen-autoencoder latents.

    python -m videogen.main train --config=experiments/shapes.py:tiny --workdir=runs/tiny \
        --config.stages=dit        # after the autoencoder stage has trained in the same workdir

The stage's model (`videogen.models.text_to_video.TextToVideoModel`) holds three modules:

  autoencoder   the `VideoAutoencoder`, frozen: left out of `trainable`, filled by `load_frozen`
                with the EMA parameters of the autoencoder stage (WORKDIR/checkpoints/autoencoder,
                read by `latent_cache.restore_autoencoder`, which the latent cache encodes with).
  text_encoder  trained jointly with the transformer, unless `config.text_encoder.frozen`;
                at random at first, or as the text stage pre-trained it
                (`config.dit_stage.pretrained_text_encoder`; `videogen.train.text_stage`).
  dit           the diffusion transformer.

With `config.dit_stage.init_from` the text encoder and the transformer start instead as another
run's trained dit stage left them: fine-tuning, with a fresh optimizer from step 0.

One step of the loss (pure, traced once per batch shape inside the trainer's jitted step):

  video uint8 [B, T, H, W, 3] -> [-1, 1] -> frozen encoder -> posterior mean (or a draw) ->
  normalised latents x0 [B, t, h, w, C] (`autoencoder.normalize_latents`)
  captions -> dropped with probability `config.diffusion.caption_dropout` (all-False mask: the
  null caption that classifier-free guidance uses) -> text encoder -> (context, pooled)
  `flow.training_inputs`: noise, logit-normal timesteps shifted for the token count, and some
  latent frames given clean at timestep 0 (frame conditioning) -> DiT velocity -> mean squared
  error over the frames that are not given (`flow.flow_loss`). With masked training
  (`config.diffusion.mask_ratio`) the transformer sees, and the error counts, only a random
  subset of each frame's tokens (`DiT.kept_velocity`).

Images are one-frame videos (a "1x32x32" bucket of the loader), so image and video training share
the model and the step (one compiled step per bucket shape).

Latents can instead come from a latent cache written once (`videogen.train.latent_cache`,
`config.dit_stage.latents = "cache"`): the batches then carry "latents" (the posterior mean) and
the autoencoder is skipped in the step.

The tokenizer is trained once on the data's captions and kept as WORKDIR/tokenizer.model (or read
from `config.tokenizer.model_path`); the generation pipeline reads it from the same place
(`workdir.tokenizer_path`). The text encoder's embedding table must hold every id the tokenizer
emits: `config.text_encoder.vocab_size` >= the trained tokenizer's real vocabulary size (equal is
best: rows above it are never used).

Evaluation samples the stage's prompts through the generation pipeline's `Generator`, the one
users call: a sample of step S is what `generate --seed=<eval_seed> --steps=<eval_steps>` gives
at the same shape from that checkpoint.
"""

from __future__ import annotations

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from data_pipelines import loader as loader_lib
from data_pipelines import tokenizer as tokenizer_lib
from data_pipelines import video_io
from videogen import experiment as experiment_lib
from videogen import pixels
from videogen import workdir as workdir_lib
from videogen.diffusion import flow
from videogen.evaluate import caption_use
from videogen.generate import pipeline
from videogen.models import autoencoder as autoencoder_lib
from videogen.models import dit as dit_lib
from videogen.models import layers
from videogen.models import text_to_video
from videogen.parallel import axes
from videogen.parallel import multihost
from videogen.train import checkpointing
from videogen.train import latent_cache
from videogen.train import stage as stage_lib
from videogen.train import text_stage

SAMPLES_DIR = "samples"
# Timesteps below this count as "low noise" in the split loss metrics.
_LOW_NOISE = 0.5


def clean_latents(autoencoder: autoencoder_lib.VideoAutoencoder, mean: jax.Array,
                  logvar: jax.Array | None, rng: jax.Array | None) -> jax.Array:
  """The posterior mean (or a draw when rng is given) [B, t, h, w, C], normalised, no gradient."""
  latents = mean
  if rng is not None:
    if logvar is None:
      raise ValueError("sample_posterior needs the posterior's log-variance; a latent cache "
                       "written without it cannot provide it: rebuild the cache with "
                       "--config.dit_stage.sample_posterior=True")
    latents = autoencoder.sample(mean, logvar, rng)
  return jax.lax.stop_gradient(autoencoder.normalize_latents(latents.astype(jnp.float32)))


def num_tokens(latent_shape: tuple[int, ...], patch_size: tuple[int, int, int]) -> int:
  """Tokens of a latent (t, h, w, ...) cut into patches (pt, ph, pw)."""
  t, h, w = latent_shape[:3]
  return -(-t // patch_size[0]) * (h // patch_size[1]) * (w // patch_size[2])


def mesh_of(state: nnx.State) -> jax.sharding.Mesh:
  """The mesh a trainer-built state's arrays are sharded over."""
  for leaf in jax.tree.leaves(state):
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
      return sharding.mesh
  raise ValueError("the state's arrays carry no NamedSharding: build it with the trainer "
                   "(jax.jit with out_shardings from sharding.tree_shardings)")


class DiTStage(stage_lib.Stage):
  """Trains the text encoder and the diffusion transformer on frozen-autoencoder latents."""

  name = workdir_lib.DIT_STAGE

  def __init__(self, experiment: experiment_lib.Experiment):
    self.experiment = experiment
    self.autoencoder_config = experiment.autoencoder
    self.text_config = experiment.text_encoder
    self.dit_config = experiment.dit
    self.flow_config = experiment.diffusion
    self.sample_config = experiment.sample
    self.tokenizer_config = experiment.tokenizer
    self.data_config = experiment.data
    self.config = experiment.dit_stage
    self.rules = experiment.mesh.rules
    self._check_configs()
    self.trainable = text_to_video.trainable(self.text_config)
    # The given-frame phase: from this step on, config.dit_stage.phase_*'s frame conditioning.
    training = experiment.train.get(self.name)
    self.phase_start = (training.num_steps - training.phase_steps
                        if training is not None and training.phase_steps else None)
    self.phase_flow_config = None
    if self.phase_start is not None:
      try:
        self.phase_flow_config = dataclasses.replace(
            self.flow_config, condition_probability=self.config.phase_condition_probability,
            condition_weights=self.config.phase_condition_weights,
            condition_logit_mean=self.config.phase_condition_logit_mean,
            condition_logit_std=self.config.phase_condition_logit_std)
      except ValueError as error:
        raise ValueError(f"config.dit_stage.phase_*: {error}") from error

  def _check_configs(self) -> None:
    dit, text, autoencoder = self.dit_config, self.text_config, self.autoencoder_config
    problems = []
    if dit.in_channels != autoencoder.latent_channels:
      problems.append(f"config.dit.in_channels ({dit.in_channels}) must equal "
                      f"config.autoencoder.latent_channels ({autoencoder.latent_channels})")
    if dit.learn_sigma:
      problems.append("config.dit.learn_sigma must be False: the flow objective predicts a "
                      "velocity, not a variance")
    if dit.context_dim not in (None, text.width) or (
        text.mode == "text" and dit.context_dim is None):
      problems.append(f"config.dit.context_dim ({dit.context_dim}) must equal "
                      f"config.text_encoder.width ({text.width})")
    if dit.pooled_dim not in (None, text.width):
      problems.append(f"config.dit.pooled_dim ({dit.pooled_dim}) must equal "
                      f"config.text_encoder.width ({text.width}), or be None")
    if text.mode == "text" and self.tokenizer_config.max_length > text.max_length:
      problems.append(f"config.tokenizer.max_length ({self.tokenizer_config.max_length}) exceeds "
                      f"config.text_encoder.max_length ({text.max_length}): make them equal")
    if self.config.init_from and text.frozen:
      problems.append("config.dit_stage.init_from needs config.text_encoder.frozen=False: the "
                      "run it starts from trains its text encoder with its transformer")
    if problems:
      raise ValueError("the dit stage's configs disagree: " + "; ".join(problems))

  # -- model -------------------------------------------------------------------------------------

  def create_model(self, rngs: nnx.Rngs) -> text_to_video.TextToVideoModel:
    return text_to_video.TextToVideoModel(self.autoencoder_config, self.text_config,
                                          self.dit_config, rngs=rngs)

  def load_frozen(self, state: nnx.State, workdir: str) -> nnx.State:
    """Fills `state["autoencoder"]` with the autoencoder stage's EMA parameters.

    Raises:
      FileNotFoundError: the autoencoder stage has not been trained in `workdir`.
    """
    workdir_lib.autoencoder_checkpoint_step(workdir)  # named before anything else is built
    autoencoder, step = latent_cache.restore_autoencoder(self.experiment, workdir,
                                                         mesh=mesh_of(state))
    restored = nnx.state(autoencoder)
    current = state["autoencoder"]
    if jax.tree.structure(restored) != jax.tree.structure(current):
      raise ValueError("the autoencoder stage's VideoAutoencoder differs in structure from "
                       "config.autoencoder's: use the config the autoencoder was trained with")
    state["autoencoder"] = jax.tree.map(
        lambda new, old: jax.device_put(new, old.sharding).astype(old.dtype), restored, current)
    autoencoder_training = self.experiment.train.get(workdir_lib.AUTOENCODER_STAGE)
    if autoencoder_training is not None and step < autoencoder_training.num_steps:
      logging.warning("dit stage: the autoencoder checkpoint is at step %d of its %d steps; the "
                      "diffusion transformer trains on a partly trained autoencoder", step,
                      autoencoder_training.num_steps)
    logging.info("dit stage: frozen autoencoder restored from its step-%d EMA parameters", step)
    if self.config.pretrained_text_encoder and self.text_config.frozen:
      state["text_encoder"] = self._pretrained_text_encoder(state["text_encoder"], workdir)
    if self._starts_from_source(workdir):
      self._check_source_autoencoder(state["autoencoder"])
    return state

  def initial_params(self, params: nnx.State, workdir: str) -> nnx.State:
    """With `init_from`, the text encoder and transformer start as that run's; otherwise the text
    encoder starts as the text stage's with `pretrained_text_encoder` (here when it trains on;
    `load_frozen` when it is frozen) and the transformer at random."""
    if self._starts_from_source(workdir):
      return self._source_params(params, workdir)
    if self.config.pretrained_text_encoder and not self.text_config.frozen:
      params["text_encoder"] = self._pretrained_text_encoder(params["text_encoder"], workdir)
    return params

  # -- starting from another run (`config.dit_stage.init_from`) ---------------------------------

  def _starts_from_source(self, workdir: str) -> bool:
    """Whether this run starts from `init_from` now: not when it resumes from its own checkpoint
    (which may outlive the source)."""
    return bool(self.config.init_from) and workdir_lib.latest_step(workdir, self.name) is None

  def _source_step(self) -> int:
    return workdir_lib.require_step(
        self.config.init_from, self.name,
        "config.dit_stage.init_from must name a workdir whose dit stage has trained")

  def _source_params(self, current: nnx.State, workdir: str) -> nnx.State:
    """The EMA parameters of `init_from`'s newest dit checkpoint, placed as `current` is; this
    run's tokenizer becomes that run's."""
    source = self.config.init_from
    step = self._source_step()
    workdir_lib.copy_tokenizer(source, workdir, self.experiment,
                               option=f"config.dit_stage.init_from={source}")
    _, abstract, _ = text_to_video.abstract_model(self.autoencoder_config, self.text_config,
                                                  self.dit_config)
    try:
      restored, _ = workdir_lib.restore_part(source, self.name, "ema_params", abstract,
                                             experiment=self.experiment, mesh=mesh_of(current),
                                             step=step)
    except checkpointing.RESTORE_ERRORS as error:
      raise workdir_lib.WorkdirMismatchError(
          f"the dit checkpoint {step} of {source} does not fit this run's model ({error}): "
          f"config.dit and config.text_encoder must be the ones that run trained with") from error
    logging.info("dit stage: text encoder and transformer start from %s, step %d (EMA)",
                 source, step)
    return jax.tree.map(lambda new, old: jax.device_put(new, old.sharding).astype(old.dtype),
                        restored, current)

  def _check_source_autoencoder(self, autoencoder: nnx.State) -> None:
    """Refuses an `init_from` run whose transformer learned another autoencoder's latents."""
    source = self.config.init_from
    _, _, abstract = text_to_video.abstract_model(self.autoencoder_config, self.text_config,
                                                  self.dit_config)
    frozen, step = workdir_lib.restore_part(
        source, self.name, "frozen", nnx.State({"autoencoder": abstract["autoencoder"]}),
        experiment=self.experiment, mesh=mesh_of(autoencoder), step=self._source_step())
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), frozen["autoencoder"],
                        autoencoder)
    if not all(jax.tree.leaves(same)):
      raise workdir_lib.WorkdirMismatchError(
          f"the dit checkpoint {step} of {self.config.init_from} was trained on another "
          f"autoencoder than this run's: copy its checkpoints/autoencoder into this workdir "
          f"(a transformer reads only the latents it learned)")

  def _pretrained_text_encoder(self, current: nnx.State, workdir: str) -> nnx.State:
    restored, _ = text_stage.restore_text_encoder(self.experiment, workdir, mesh_of(current))
    if jax.tree.structure(restored) != jax.tree.structure(current):
      raise ValueError("the text stage's text encoder differs in structure from "
                       "config.text_encoder's: use the config the text stage was trained with")
    return jax.tree.map(lambda new, old: jax.device_put(new, old.sharding).astype(old.dtype),
                        restored, current)

  # -- loss --------------------------------------------------------------------------------------

  def _latents(self, model: text_to_video.TextToVideoModel, batch: dict[str, jax.Array],
               rng: jax.Array) -> jax.Array:
    """Clean normalised latents [B, t, h, w, C] of the batch (encoded, or read from the cache)."""
    posterior_rng = rng if self.config.sample_posterior else None
    if "latents" in batch:
      return clean_latents(model.autoencoder, batch["latents"], batch.get("logvar"),
                           posterior_rng)
    mean, logvar = model.autoencoder.encode(pixels.to_model_range(batch["video"]))
    return clean_latents(model.autoencoder, mean, logvar, posterior_rng)

  def _text(self, model: text_to_video.TextToVideoModel, batch: dict[str, jax.Array],
            rng: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """(context [B, L, D], context mask [B, L], pooled [B, D], dropped bool [B]).

    A dropped caption becomes the null caption exactly as the sampler builds it: padding ids
    under an all-False mask.
    """
    probability = self.flow_config.caption_dropout
    token_mask = flow.drop_captions(rng, batch["token_mask"].astype(bool), probability)
    dropped = ~jnp.any(token_mask, axis=1)
    tokens = jnp.where(token_mask, batch["tokens"], tokenizer_lib.PAD_ID)
    context, pooled = model.text_encoder(tokens, token_mask)
    return context, token_mask, pooled, dropped

  def loss(self, model: text_to_video.TextToVideoModel, batch: dict[str, jax.Array],
           rng: jax.Array, step: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The rectified-flow loss over the frames that are not given; see the module docstring.

    With `config.diffusion.mask_ratio` > 0 the transformer sees and the loss counts a random
    subset of each frame's tokens.
    With `config.diffusion.weighting` the flow term is weighted per frame by noise level, and
    with `config.diffusion.frame_difference_weight` > 0 the loss adds that weight times
    `flow.frame_difference_loss` (logged as loss_frame_difference); either way loss_flow logs the
    plain flow loss, comparable across these options.
    In the given-frame phase (the last `config.train.dit.phase_steps` steps) the frame
    conditioning is `config.dit_stage.phase_*`'s.

    Metrics: latent_std (of the normalised clean latents: about 1 when the autoencoder's
    scale_factor fits), given_frames (fraction of latent frames given clean), captions_dropped
    (fraction of the batch), loss_low_noise / loss_high_noise (the loss of the examples drawn
    below / above t = 0.5; 0 when none was).
    """
    latent_rng, text_rng, flow_rng = jax.random.split(rng, 3)
    latents = self._latents(model, batch, latent_rng)
    context, context_mask, pooled, dropped = self._text(model, batch, text_rng)
    if self.dit_config.pooled_dim is None:
      pooled = None
    inputs = self._training_inputs(flow_rng, latents, step)
    # Its own stream, so that the noise and timesteps are those of the unmasked objective.
    keep_rng = jax.random.fold_in(flow_rng, 1) if self.flow_config.mask_ratio > 0 else None
    loss, flow_metrics = self._flow_objective(model.dit, inputs, context, context_mask, pooled,
                                              keep_rng)
    metrics = {
        "latent_std": jnp.std(latents),
        "given_frames": jnp.mean(inputs.condition_mask.astype(jnp.float32)),
        "captions_dropped": jnp.mean(dropped.astype(jnp.float32)),
        **flow_metrics,
    }
    return loss, metrics

  def _training_inputs(self, rng: jax.Array, latents: jax.Array,
                       step: jax.Array) -> flow.FlowTrainingInputs:
    """`flow.training_inputs` under config.diffusion, or from `phase_start` on under the phase's
    frame conditioning (the same random streams either way)."""
    tokens = num_tokens(latents.shape[1:], self.dit_config.patch_size)

    def inputs(config: flow.FlowConfig) -> flow.FlowTrainingInputs:
      return flow.training_inputs(rng, latents, num_tokens=tokens, config=config)

    if self.phase_start is None:
      return inputs(self.flow_config)
    return jax.lax.cond(step >= self.phase_start, lambda: inputs(self.phase_flow_config),
                        lambda: inputs(self.flow_config))

  def _flow_objective(self, dit: dit_lib.DiT, inputs: flow.FlowTrainingInputs,
                      context: jax.Array, context_mask: jax.Array, pooled: jax.Array | None,
                      keep_rng: jax.Array | None) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The loss and its metrics (loss_flow, loss_frame_difference, loss_low_noise,
    loss_high_noise) of the transformer's velocity: over every token, or with `keep_rng` over
    the tokens masked training keeps."""
    weights = flow.timestep_weights(inputs.timesteps, self.flow_config)
    if keep_rng is not None:
      prediction, target, loss_mask, weights = self._kept_token_terms(
          dit, inputs, weights, context, context_mask, pooled, keep_rng)
    else:
      prediction = dit(inputs.noisy_latents, inputs.timesteps, context, context_mask, pooled)
      target, loss_mask = inputs.target, inputs.loss_mask
    loss = flow.flow_loss(prediction, target, loss_mask, weights)
    metrics = {}
    if weights is not None or self.flow_config.frame_difference_weight > 0:
      # The plain flow loss, comparable across weightings and extra terms.
      metrics["loss_flow"] = flow.flow_loss(prediction, target, loss_mask)
    if self.flow_config.frame_difference_weight > 0:
      difference = flow.frame_difference_loss(prediction, inputs.target, inputs.timesteps,
                                              inputs.loss_mask,
                                              inputs.loss_mask | inputs.condition_mask)
      loss = loss + self.flow_config.frame_difference_weight * difference
      metrics["loss_frame_difference"] = difference

    # Per-example losses, to see where in time the model is weak.
    squared = jnp.square(prediction - target)
    counted = jnp.broadcast_to(flow.expand_frames(loss_mask, squared),
                               squared.shape).astype(jnp.float32)
    example_axes = tuple(range(1, squared.ndim))
    counts = jnp.sum(counted, axis=example_axes)
    per_example = jnp.sum(squared * counted, axis=example_axes) / jnp.maximum(counts, 1.0)
    noise_level = jnp.max(inputs.timesteps, axis=1)  # the drawn t (given frames hold 0)

    def mean_where(mask: jax.Array) -> jax.Array:
      mask = (mask & (counts > 0)).astype(jnp.float32)
      return jnp.sum(per_example * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    metrics["loss_low_noise"] = mean_where(noise_level < _LOW_NOISE)
    metrics["loss_high_noise"] = mean_where(noise_level >= _LOW_NOISE)
    return loss, metrics

  def _kept_token_terms(self, dit: dit_lib.DiT, inputs: flow.FlowTrainingInputs,
                        weights: jax.Array | None, context: jax.Array, context_mask: jax.Array,
                        pooled: jax.Array | None, rng: jax.Array
                        ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """Masked training: (prediction, target, loss mask, weights) of the kept tokens only, each
    [B, t' * k, patch values], from a transformer that sees only those tokens."""
    patch = self.dit_config.patch_size
    frames, height, width = layers.check_patchable(inputs.noisy_latents.shape, patch)
    keep = flow.kept_tokens(rng, inputs.noisy_latents.shape[0], frames, height * width,
                            self.flow_config.mask_ratio)

    def kept(values: jax.Array) -> jax.Array:
      """Per-frame values [B, t, ...] (a prefix of the latents' shape) -> the kept patches."""
      values = jnp.broadcast_to(flow.expand_frames(values, inputs.target), inputs.target.shape)
      return layers.gather_tokens(layers.patchify(values, patch), keep)

    prediction = dit.kept_velocity(inputs.noisy_latents, inputs.timesteps, context,
                                         context_mask, pooled, keep=keep)
    return (prediction, kept(inputs.target), kept(inputs.loss_mask),
            None if weights is None else kept(weights))

  # -- data --------------------------------------------------------------------------------------

  def tokenizer(self, workdir: str) -> tokenizer_lib.Tokenizer:
    """The run's tokenizer (trained and saved on first use), checked against the text encoder."""
    tokenizer = workdir_lib.load_or_train_tokenizer(self.experiment, workdir)
    if self.text_config.mode != "text":
      return tokenizer
    workdir_lib.check_tokenizer(tokenizer, self.experiment, workdir)
    return tokenizer

  def make_iterator(self, *, mesh: jax.sharding.Mesh, seed: int,
                    workdir: str) -> stage_lib.BatchIterator:
    """Loader batches (pixels, encoded in the step) or latent-cache batches (latents)."""
    if self.text_config.mode != "text":
      raise ValueError("config.text_encoder.mode='class' needs a labelled data set, which the "
                       "video loader does not provide; use mode='text' with captions")
    tokenizer = self.tokenizer(workdir)
    batch_axes = tuple(self.rules[axes.ACT_BATCH])
    if self.config.latents == "encode":
      return loader_lib.make_iterator(self.data_config, tokenizer=tokenizer, mesh=mesh, seed=seed,
                                      batch_axes=batch_axes)
    if not latent_cache.has_cache(self.experiment, workdir):
      try:
        workdir_lib.autoencoder_checkpoint_step(workdir)
      except FileNotFoundError:
        # Training never gets here (load_frozen needs the checkpoint first); a benchmark or a
        # test of the step on a fresh directory does: give it the pixels the step can encode.
        logging.warning("config.dit_stage.latents='cache' but %s has no autoencoder checkpoint "
                        "to build the latent cache from: the batches carry pixels, encoded in "
                        "the step", workdir)
        return loader_lib.make_iterator(self.data_config, tokenizer=tokenizer, mesh=mesh,
                                        seed=seed, batch_axes=batch_axes)
    return latent_cache.open_or_build(self.experiment, workdir, tokenizer=tokenizer, mesh=mesh,
                                      seed=seed)

  # -- evaluation --------------------------------------------------------------------------------

  def sample_shape(self) -> tuple[int, int, int]:
    """(frames, height, width) of evaluation samples: the longest training clip's bucket."""
    buckets = self.data_config.parsed_buckets()
    return max(buckets, key=lambda bucket: (bucket.frames, bucket.height * bucket.width)).shape

  def evaluation_generator(self, model: text_to_video.TextToVideoModel,
                           tokenizer: tokenizer_lib.Tokenizer) -> pipeline.Generator:
    """The generation pipeline over the stage's modules, with the evaluation's sampler settings
    (`config.dit_stage.eval_steps`, `eval_seed`) and one window of the sample shape."""
    return pipeline.Generator(
        autoencoder=model.autoencoder, text_encoder=model.text_encoder, dit=model.dit,
        tokenizer=tokenizer, flow_config=self.flow_config,
        sample_config=dataclasses.replace(self.sample_config, num_steps=self.config.eval_steps,
                                          seed=self.config.eval_seed),
        default_shape=self.sample_shape(), fps=float(self.data_config.world.fps),
        progress=False)

  def evaluate(self, model: text_to_video.TextToVideoModel, step: int,
               workdir: str) -> dict[str, float]:
    """Samples `config.dit_stage.eval_prompts` with few steps into WORKDIR/samples/dit_<step>/.

    Each prompt is sampled by the generation pipeline (`evaluation_generator`) at the sample
    shape. Writes one .mp4 and one .gif per prompt, a contact sheet (contact_sheet.png) and the
    prompts (prompts.txt), from process 0. Returns {"sample_seconds": wall time of sampling +
    decoding}, and on the procedural world the caption win rates (see `eval_caption_clips`).
    """
    tokenizer = workdir_lib.load_tokenizer(workdir, self.experiment)
    generator = self.evaluation_generator(model, tokenizer)
    frames, height, width = generator.default_shape
    start = time.perf_counter()
    videos = [generator.generate(prompt, frames=frames, height=height, width=width)
              for prompt in self.config.eval_prompts]
    seconds = time.perf_counter() - start
    if multihost.is_primary():
      directory = os.path.join(workdir, SAMPLES_DIR, f"dit_{step:06d}")
      os.makedirs(directory, exist_ok=True)
      for index, video in enumerate(videos):
        for suffix in (".mp4", ".gif"):
          video_io.write_video(os.path.join(directory, f"{index:02d}{suffix}"), video,
                               fps=generator.fps)
      video_io.write_contact_sheet(os.path.join(directory, "contact_sheet.png"), videos,
                                   labels=list(self.config.eval_prompts))
      with open(os.path.join(directory, "prompts.txt"), "w") as f:
        f.write("".join(f"{index:02d} {prompt}\n"
                        for index, prompt in enumerate(self.config.eval_prompts)))
      logging.info("dit stage: %d samples of step %d in %s (%.1fs)", len(videos), step, directory,
                   seconds)
    scores = {"sample_seconds": seconds}
    if self.config.eval_caption_clips and self.data_config.source == "shapes":
      scores.update(caption_use.stage_scores(
          model.autoencoder, model.text_encoder, model.dit, tokenizer, self.flow_config,
          shape=self.sample_shape(), world_config=self.data_config.world,
          clips=self.config.eval_caption_clips))
      warning = caption_use.collapse_warning(scores["text_token_rank"])
      if warning and multihost.is_primary():
        logging.warning("dit stage, step %d: %s", step, warning)
    return scores

