r"""The diffusion-transformer stage: text-to-video flow matching on frozen-autoencoder latents.

    python -m videogen.main train --config=experiments/shapes.py:tiny --workdir=runs/tiny \
        --config.stages=dit        # after the autoencoder stage has trained in the same workdir

The stage's model (`TextToVideoModel`) holds three modules:

  autoencoder   the `VideoAutoencoder`, frozen: left out of `trainable`, filled by `load_frozen`
                with the EMA parameters of the autoencoder stage (WORKDIR/checkpoints/autoencoder).
  text_encoder  trained jointly with the transformer, unless `config.text_encoder.frozen`.
  dit           the diffusion transformer.

One step of the loss (pure, traced once per batch shape inside the trainer's jitted step):

  video uint8 [B, T, H, W, 3] -> [-1, 1] -> frozen encoder -> posterior mean (or a draw) ->
  normalised latents x0 [B, t, h, w, C] (`autoencoder.normalize_latents`)
  captions -> dropped with probability `config.diffusion.caption_dropout` (all-False mask: the
  null caption that classifier-free guidance uses) -> text encoder -> (context, pooled)
  `flow.training_inputs`: noise, logit-normal timesteps shifted for the token count, and some
  latent frames given clean at timestep 0 (frame conditioning) -> DiT velocity -> mean squared
  error over the frames that are not given (`flow.flow_loss`).

Images are one-frame videos (a "1x32x32" bucket of the loader), so image and video training share
the model and the step (one compiled step per bucket shape).

Latents can instead come from a latent cache written once (`videogen.train.latent_cache`,
`config.dit_stage.latents = "cache"`): the batches then carry "latents" (the posterior mean) and
the autoencoder is skipped in the step.

The tokenizer is trained once on the data's captions and kept as WORKDIR/tokenizer.model (or read
from `config.tokenizer.model_path`); the generation pipeline reads it from the same place
(`tokenizer_path`). The text encoder's embedding table must hold every id the tokenizer emits:
`config.text_encoder.vocab_size` >= the trained tokenizer's real vocabulary size (equal is best:
rows above it are never used).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import nnx

from data_pipelines import loader as loader_lib
from data_pipelines import tokenizer as tokenizer_lib
from videogen import config as config_lib
from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from videogen.diffusion import flow
from videogen.diffusion import samplers
from videogen.models import autoencoder as autoencoder_lib
from videogen.models import dit as dit_lib
from videogen.models import text_encoder as text_encoder_lib
from videogen.parallel import multihost
from videogen.parallel import sharding as sharding_lib
from videogen.train import checkpointing
from videogen.train import stage as stage_lib

AUTOENCODER_STAGE = "autoencoder"
SAMPLES_DIR = "samples"
# Timesteps below this count as "low noise" in the split loss metrics.
_LOW_NOISE = 0.5


class TextToVideoModel(nnx.Module):
  """The three modules of the stage, side by side (no computation of its own).

  Attributes:
    autoencoder: `VideoAutoencoder` (frozen in this stage).
    text_encoder: `TextEncoder`.
    dit: `DiT`.
  """

  def __init__(self, autoencoder_config: autoencoder_lib.AutoencoderConfig,
               text_config: text_encoder_lib.TextEncoderConfig, dit_config: dit_lib.DiTConfig, *,
               rngs: nnx.Rngs):
    self.autoencoder = autoencoder_lib.VideoAutoencoder(autoencoder_config, rngs=rngs)
    self.text_encoder = text_encoder_lib.TextEncoder(text_config, rngs=rngs)
    self.dit = dit_lib.DiT(dit_config, rngs=rngs)


def load_or_train_tokenizer(experiment: experiment_lib.Experiment,
                            workdir: str) -> tokenizer_lib.Tokenizer:
  """The run's tokenizer: the saved asset, or one trained now on the data's captions and saved."""
  config = experiment.tokenizer
  data = experiment.data
  return tokenizer_lib.load_or_train(
      config, workdir_lib.tokenizer_path(workdir, experiment),
      lambda: loader_lib.captions(data, seed=experiment.seed, num=config.num_train_captions))


def video_to_model_range(video: jax.Array) -> jax.Array:
  """uint8 [..., 3] in [0, 255] -> float32 in [-1, 1] (the autoencoder's input range)."""
  return video.astype(jnp.float32) / 127.5 - 1.0


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


def _mesh_of(state: nnx.State) -> jax.sharding.Mesh:
  for leaf in jax.tree.leaves(state):
    sharding = getattr(leaf, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
      return sharding.mesh
  raise ValueError("the state's arrays carry no NamedSharding: build it with the trainer "
                   "(jax.jit with out_shardings from sharding.tree_shardings)")


def autoencoder_checkpoint_step(workdir: str) -> int:
  """The newest step of WORKDIR/checkpoints/autoencoder.

  Raises:
    FileNotFoundError: the autoencoder stage has not been trained in `workdir`.
  """
  return workdir_lib.require_step(
      workdir, AUTOENCODER_STAGE,
      f"the diffusion stage trains on the frozen autoencoder's latents, so train the autoencoder "
      f"first: python -m videogen.main train --config=<the experiment, e.g. "
      f"experiments/shapes.py:tiny> --workdir={workdir} --config.stages=autoencoder (or keep "
      f"'autoencoder' before 'dit' in config.stages)")


class AutoencoderMismatchError(ValueError):
  """The autoencoder checkpoint was trained with another architecture than config.autoencoder."""


def _check_autoencoder_architecture(saved: dict, experiment: experiment_lib.Experiment,
                                    where: str) -> None:
  """Raises AutoencoderMismatchError if the trained config computes another function."""
  section = saved.get("autoencoder") if isinstance(saved, dict) else None
  if not isinstance(section, dict):
    return  # a config without the section: the parameter restore is the only check
  trained = config_lib.parse(autoencoder_lib.AutoencoderConfig,
                             autoencoder_lib.upgrade_saved_config(section),
                             f"the config saved in {where}: autoencoder")
  current = experiment.autoencoder
  differences = autoencoder_lib.architecture_differences(trained, current)
  if differences:
    raise AutoencoderMismatchError(
        f"the autoencoder checkpoint {where} was trained with another architecture than "
        f"config.autoencoder ({'; '.join(differences)}): set those fields back (e.g. "
        f"--config.autoencoder.{differences[0].split(':')[0]}=...), or train the autoencoder "
        f"again with this config")


def restore_autoencoder(experiment: experiment_lib.Experiment, workdir: str, *,
                        mesh: jax.sharding.Mesh) -> tuple[nnx.GraphDef, nnx.State, int]:
  """The autoencoder stage's EMA autoencoder, sharded over `mesh` by the experiment's rules.

  Nothing is initialised or compiled: the abstract model of the autoencoder stage is the restore
  target, and only its `VideoAutoencoder` part is returned.

  Returns:
    (graphdef, state, step) of the `VideoAutoencoder`; `nnx.merge(graphdef, state)` builds it.

  Raises:
    FileNotFoundError: the autoencoder stage has no checkpoint in `workdir`.
    ValueError: the checkpoint does not fit `config.autoencoder` (it was trained with another):
      its parameters differ, or its saved config has another architecture (settings such as the
      parameter-free shortcuts change the function without changing the parameters).
  """
  # Imported here: stages imports every stage lazily, and the train-state helpers need the stage.
  from videogen.train import stages as stages_lib  # pylint: disable=g-import-not-at-top
  from videogen.train import train_state as train_state_lib  # pylint: disable=g-import-not-at-top
  step = autoencoder_checkpoint_step(workdir)
  rules = experiment.mesh.rules
  autoencoder_stage = stages_lib.make_stage(AUTOENCODER_STAGE, experiment)
  graphdef, abstract_params, abstract_frozen = train_state_lib.abstract_model(autoencoder_stage)
  target = sharding_lib.with_shardings(
      abstract_params, sharding_lib.tree_shardings(abstract_params, mesh, rules))
  directory = workdir_lib.checkpoint_dir(workdir, AUTOENCODER_STAGE)
  checkpointer = checkpointing.Checkpointer(directory, async_save=False)
  try:
    _check_autoencoder_architecture(checkpointer.read_config(step), experiment,
                                    f"{directory}/{step}")
    params = checkpointer.restore_subtree(step, "ema_params", target)
  except AutoencoderMismatchError:
    raise  # already says what differs and what to do
  except checkpointing.RESTORE_ERRORS as error:
    raise ValueError(
        f"the autoencoder checkpoint {directory}/{step} does not fit config.autoencoder ({error}); "
        f"train the autoencoder again with this config, or use the config it was trained "
        f"with") from error
  finally:
    checkpointer.close()
  # A partial restore leaves the target's abstract leaves where the checkpoint lacks a path.
  missing = [jax.tree_util.keystr(path)
             for path, leaf in jax.tree_util.tree_leaves_with_path(params)
             if not isinstance(leaf, jax.Array)]
  if missing:
    raise ValueError(
        f"the autoencoder checkpoint {directory}/{step} lacks {len(missing)} parameter(s) of the "
        f"autoencoder stage's model (e.g. {missing[0]}): it was written by another version or "
        f"config of the autoencoder stage; train the autoencoder again")
  model = nnx.merge(graphdef, params, abstract_frozen)
  autoencoder = model if isinstance(model, autoencoder_lib.VideoAutoencoder) else getattr(
      model, "autoencoder", None)
  if not isinstance(autoencoder, autoencoder_lib.VideoAutoencoder):
    raise TypeError(f"the autoencoder stage's model {type(model).__name__} is not a "
                    f"VideoAutoencoder and has no `autoencoder` attribute holding one")
  autoencoder_graph, autoencoder_state = nnx.split(autoencoder)
  return autoencoder_graph, autoencoder_state, step


class DiTStage(stage_lib.Stage):
  """Trains the text encoder and the diffusion transformer on frozen-autoencoder latents."""

  name = "dit"

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
    # The autoencoder is never trained here; the text encoder only when it is not frozen.
    trained = ("dit",) if self.text_config.frozen else ("dit", "text_encoder")
    self.trainable = nnx.All(nnx.Param, lambda path, _: bool(path) and path[0] in trained)

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
    if problems:
      raise ValueError("the dit stage's configs disagree: " + "; ".join(problems))

  # -- model -------------------------------------------------------------------------------------

  def create_model(self, rngs: nnx.Rngs) -> TextToVideoModel:
    return TextToVideoModel(self.autoencoder_config, self.text_config, self.dit_config, rngs=rngs)

  def load_frozen(self, state: nnx.State, workdir: str) -> nnx.State:
    """Fills `state["autoencoder"]` with the autoencoder stage's EMA parameters.

    Raises:
      FileNotFoundError: the autoencoder stage has not been trained in `workdir`.
    """
    autoencoder_checkpoint_step(workdir)  # a missing checkpoint is named before anything else
    _, restored, step = restore_autoencoder(self.experiment, workdir, mesh=_mesh_of(state))
    current = state["autoencoder"]
    if jax.tree.structure(restored) != jax.tree.structure(current):
      raise ValueError("the autoencoder stage's VideoAutoencoder differs in structure from "
                       "config.autoencoder's: use the config the autoencoder was trained with")
    state["autoencoder"] = jax.tree.map(
        lambda new, old: jax.device_put(new, old.sharding).astype(old.dtype), restored, current)
    autoencoder_training = self.experiment.train.get(AUTOENCODER_STAGE)
    if autoencoder_training is not None and step < autoencoder_training.num_steps:
      logging.warning("dit stage: the autoencoder checkpoint is at step %d of its %d steps; the "
                      "diffusion transformer trains on a partly trained autoencoder", step,
                      autoencoder_training.num_steps)
    logging.info("dit stage: frozen autoencoder restored from its step-%d EMA parameters", step)
    return state

  # -- loss --------------------------------------------------------------------------------------

  def _latents(self, model: TextToVideoModel, batch: dict[str, jax.Array],
               rng: jax.Array) -> jax.Array:
    """Clean normalised latents [B, t, h, w, C] of the batch (encoded, or read from the cache)."""
    posterior_rng = rng if self.config.sample_posterior else None
    if "latents" in batch:
      return clean_latents(model.autoencoder, batch["latents"], batch.get("logvar"),
                           posterior_rng)
    mean, logvar = model.autoencoder.encode(video_to_model_range(batch["video"]))
    return clean_latents(model.autoencoder, mean, logvar, posterior_rng)

  def _text(self, model: TextToVideoModel, batch: dict[str, jax.Array],
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

  def loss(self, model: TextToVideoModel, batch: dict[str, jax.Array], rng: jax.Array,
           step: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The rectified-flow loss over the frames that are not given; see the module docstring.

    Metrics: latent_std (of the normalised clean latents: about 1 when the autoencoder's
    scale_factor fits), given_frames (fraction of latent frames given clean), captions_dropped
    (fraction of the batch), loss_low_noise / loss_high_noise (the loss of the examples drawn
    below / above t = 0.5; 0 when none was).
    """
    del step
    latent_rng, text_rng, flow_rng = jax.random.split(rng, 3)
    latents = self._latents(model, batch, latent_rng)
    context, context_mask, pooled, dropped = self._text(model, batch, text_rng)
    inputs = flow.training_inputs(
        flow_rng, latents, num_tokens=num_tokens(latents.shape[1:], self.dit_config.patch_size),
        config=self.flow_config)
    prediction = model.dit(inputs.noisy_latents, inputs.timesteps, context, context_mask,
                           pooled if self.dit_config.pooled_dim is not None else None)
    loss = flow.flow_loss(prediction, inputs.target, inputs.loss_mask)

    # Per-example losses, to see where in time the model is weak.
    squared = jnp.mean(jnp.square(prediction - inputs.target), axis=(2, 3, 4))  # [B, t]
    weights = inputs.loss_mask.astype(jnp.float32)
    per_example = jnp.sum(squared * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
    noise_level = jnp.max(inputs.timesteps, axis=1)  # the drawn t (given frames hold 0)
    low = (noise_level < _LOW_NOISE) & (jnp.sum(weights, axis=1) > 0)
    high = (noise_level >= _LOW_NOISE) & (jnp.sum(weights, axis=1) > 0)

    def masked_mean(values, mask):
      mask = mask.astype(jnp.float32)
      return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    metrics = {
        "latent_std": jnp.std(latents),
        "given_frames": jnp.mean(inputs.condition_mask.astype(jnp.float32)),
        "captions_dropped": jnp.mean(dropped.astype(jnp.float32)),
        "loss_low_noise": masked_mean(per_example, low),
        "loss_high_noise": masked_mean(per_example, high),
    }
    return loss, metrics

  # -- data --------------------------------------------------------------------------------------

  def tokenizer(self, workdir: str) -> tokenizer_lib.Tokenizer:
    """The run's tokenizer (trained and saved on first use), checked against the text encoder."""
    tokenizer = load_or_train_tokenizer(self.experiment, workdir)
    if self.text_config.mode != "text":
      return tokenizer
    if tokenizer.vocab_size > self.text_config.vocab_size:
      raise ValueError(
          f"the tokenizer {workdir_lib.tokenizer_path(workdir, self.experiment)} has "
          f"{tokenizer.vocab_size} ids but config.text_encoder.vocab_size is "
          f"{self.text_config.vocab_size}: set --config.text_encoder.vocab_size="
          f"{tokenizer.vocab_size}")
    if tokenizer.vocab_size < self.text_config.vocab_size:
      logging.warning("the tokenizer has %d ids, config.text_encoder.vocab_size %d: the "
                      "embedding's last %d rows are never used; set "
                      "config.text_encoder.vocab_size=%d to drop them", tokenizer.vocab_size,
                      self.text_config.vocab_size,
                      self.text_config.vocab_size - tokenizer.vocab_size, tokenizer.vocab_size)
    if tokenizer.max_length > self.text_config.max_length:
      raise ValueError(f"the tokenizer emits {tokenizer.max_length} tokens per caption but "
                       f"config.text_encoder.max_length is {self.text_config.max_length}")
    return tokenizer

  def make_iterator(self, *, mesh: jax.sharding.Mesh, seed: int,
                    workdir: str) -> stage_lib.BatchIterator:
    """Loader batches (pixels, encoded in the step) or latent-cache batches (latents)."""
    if self.text_config.mode != "text":
      raise ValueError("config.text_encoder.mode='class' needs a labelled data set, which the "
                       "video loader does not provide; use mode='text' with captions")
    tokenizer = self.tokenizer(workdir)
    batch_axes = tuple(self.rules["batch"])
    if self.config.latents == "encode":
      return loader_lib.make_iterator(self.data_config, tokenizer=tokenizer, mesh=mesh, seed=seed,
                                      batch_axes=batch_axes)
    # Imported here: only cached runs need it.
    from videogen.train import latent_cache  # pylint: disable=g-import-not-at-top
    if not latent_cache.has_cache(self.experiment, workdir):
      try:
        autoencoder_checkpoint_step(workdir)
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

  def evaluate(self, model: TextToVideoModel, step: int, workdir: str) -> dict[str, float]:
    """Samples `config.dit_stage.eval_prompts` with few steps into WORKDIR/samples/dit_<step>/.

    Writes one .mp4 and one .gif per prompt, a contact sheet (contact_sheet.png) and the prompts
    (prompts.txt), from process 0. Returns {"sample_seconds": wall time of sampling + decoding},
    and on the procedural world the caption win rates (see `eval_caption_clips`).
    """
    from data_pipelines import video_io  # pylint: disable=g-import-not-at-top
    tokenizer = tokenizer_lib.Tokenizer.load(workdir_lib.tokenizer_path(workdir, self.experiment),
                                             self.tokenizer_config.max_length)
    start = time.perf_counter()
    videos = sample_videos(model, tokenizer, list(self.config.eval_prompts),
                           shape=self.sample_shape(), flow_config=self.flow_config,
                           sample_config=dataclasses.replace(
                               self.sample_config, num_steps=self.config.eval_steps,
                               seed=self.config.eval_seed))
    seconds = time.perf_counter() - start
    if multihost.is_primary():
      directory = os.path.join(workdir, SAMPLES_DIR, f"dit_{step:06d}")
      os.makedirs(directory, exist_ok=True)
      fps = float(self.data_config.world.fps)
      for index, video in enumerate(videos):
        for suffix in (".mp4", ".gif"):
          video_io.write_video(os.path.join(directory, f"{index:02d}{suffix}"), video, fps=fps)
      video_io.write_contact_sheet(os.path.join(directory, "contact_sheet.png"), list(videos),
                                   labels=list(self.config.eval_prompts))
      with open(os.path.join(directory, "prompts.txt"), "w") as f:
        f.write("".join(f"{index:02d} {prompt}\n"
                        for index, prompt in enumerate(self.config.eval_prompts)))
      logging.info("dit stage: %d samples of step %d in %s (%.1fs)", len(videos), step, directory,
                    seconds)
    scores = {"sample_seconds": seconds}
    if self.config.eval_caption_clips and self.data_config.source == "shapes":
      # Imported here: the evaluation package reads pixels back, which training never needs.
      from videogen.evaluate import caption_use  # pylint: disable=g-import-not-at-top
      scores.update(caption_use.stage_scores(
          model.autoencoder, model.text_encoder, model.dit, tokenizer, self.flow_config,
          shape=self.sample_shape(), world_config=self.data_config.world,
          clips=self.config.eval_caption_clips))
    return scores


# ------------------------------------------------------------------------------------------------
# Sampling for evaluation: the networks jitted once with their parameters as arguments, so each
# evaluation reuses the compiled functions with the new parameters.
# ------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _encode_text(graphdef: nnx.GraphDef, state: nnx.State, ids: jax.Array,
                 mask: jax.Array) -> dict[str, jax.Array]:
  embeddings, pooled = nnx.merge(graphdef, state)(ids, mask)
  return {"context": embeddings, "context_mask": mask, "pooled": pooled}


@functools.partial(jax.jit, static_argnums=(0, 5))
def _velocity(graphdef: nnx.GraphDef, state: nnx.State, x: jax.Array, t: jax.Array,
              cond: dict[str, jax.Array], use_pooled: bool) -> jax.Array:
  return nnx.merge(graphdef, state)(x, t, cond["context"], cond["context_mask"],
                                    cond["pooled"] if use_pooled else None)


@functools.partial(jax.jit, static_argnums=0)
def _decode(graphdef: nnx.GraphDef, state: nnx.State, latents: jax.Array) -> jax.Array:
  """Normalised latents [B, t, h, w, C] -> uint8 video [B, T, H, W, 3]."""
  autoencoder = nnx.merge(graphdef, state)
  video = autoencoder.decode(autoencoder.denormalize_latents(latents))
  return jnp.round((jnp.clip(video, -1.0, 1.0) + 1.0) * 127.5).astype(jnp.uint8)


def sample_videos(model: TextToVideoModel, tokenizer: tokenizer_lib.Tokenizer,
                  prompts: list[str], *, shape: tuple[int, int, int],
                  flow_config: flow.FlowConfig,
                  sample_config: samplers.SamplerConfig) -> np.ndarray:
  """Text-to-video samples of the stage's model, all prompts in one batch.

  Args:
    model: the stage's model (EMA parameters for evaluation).
    tokenizer: encodes the prompts.
    prompts: N non-empty prompts.
    shape: (frames, height, width) of the videos; frames = 1 + F k.
    flow_config: the training objective (its time shift sets the sampling grid).
    sample_config: method, steps, guidance scale, seed and negative prompt.

  Returns:
    uint8 [N, frames, height, width, 3].
  """
  frames, height, width = shape
  latent_shape = (len(prompts), *model.autoencoder.latent_shape(frames, height, width))
  text_graph, text_state = nnx.split(model.text_encoder)
  dit_graph, dit_state = nnx.split(model.dit)
  ae_graph, ae_state = nnx.split(model.autoencoder)
  ids, mask = tokenizer.encode(prompts)
  cond = _encode_text(text_graph, text_state, jnp.asarray(ids), jnp.asarray(mask))
  negative = None
  if sample_config.guidance_scale != 1.0:
    if sample_config.negative_prompt.strip():
      negative_ids, negative_mask = tokenizer.encode([sample_config.negative_prompt] * len(prompts))
    else:  # the null caption, as training's caption dropout makes it
      negative_ids = np.full_like(ids, tokenizer.pad_id)
      negative_mask = np.zeros_like(mask)
    negative = _encode_text(text_graph, text_state, jnp.asarray(negative_ids),
                            jnp.asarray(negative_mask))
  use_pooled = model.dit.config.pooled_dim is not None
  velocity = lambda x, t, c: _velocity(dit_graph, dit_state, x, t, c, use_pooled)
  shift = samplers.sampling_shift(sample_config, flow_config,
                                  num_tokens(latent_shape[1:], model.dit.config.patch_size))
  noise = samplers.initial_noise(jax.random.key(sample_config.seed), latent_shape)
  latents = samplers.sample(velocity, noise, config=sample_config, shift=shift,
                            conditioning=cond, negative_conditioning=negative, progress=False,
                            jit=False)
  return np.asarray(_decode(ae_graph, ae_state, latents))
