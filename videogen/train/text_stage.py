r"""The text stage: pre-trains the text encoder on caption-clip pairs before the dit stage.

    python -m videogen.main train --config=experiments/shapes.py:tiny --workdir=runs/tiny \
        --config.stages='("autoencoder", "text", "dit")' \
        --config.dit_stage.pretrained_text_encoder=True

The stage trains `videogen.models.caption_clip.CaptionClipModel` with CLIP's contrastive loss: each
caption of a batch against every clip's latents (the latent cache of the dit stage, built here
first when it is missing, so the two stages read the same encoded data). Its checkpoint
(WORKDIR/checkpoints/text) holds the text encoder, which the dit stage starts from when
`config.dit_stage.pretrained_text_encoder` is set: fine-tuned with the transformer, or held as it
is with `config.text_encoder.frozen` (Imagen's frozen, pre-trained text encoder). The clip encoder
exists only to train it, and nothing else reads it.

Why: trained jointly with the transformer from scratch, the text encoder learns only the words
the flow loss pays for soon. The contrastive loss pays, from the first step, for the words that
tell the clips of a batch apart. On the procedural world it gives a frozen text encoder the
colours and counts a random one loses, but it separates shapes and directions no better than joint
training does (docs/learning_curve.md, "A text encoder pre-trained on caption-clip pairs").

Metrics: contrastive_accuracy (the share of captions and clips of a batch whose nearest partner is
their own; chance 1 / batch), temperature (the learned one).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import logging
from flax import nnx

from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from videogen.models import caption_clip
from videogen.train import latent_cache
from videogen.train import stage as stage_lib


class TextStage(stage_lib.Stage):
  """Trains the text encoder against latent clips (the caption-clip model)."""

  name = workdir_lib.TEXT_STAGE

  def __init__(self, experiment: experiment_lib.Experiment):
    self.experiment = experiment
    self.text_config = experiment.text_encoder
    self.config = experiment.text_stage
    if self.text_config.mode != "text":
      raise ValueError("the text stage trains a text encoder on captions: it needs "
                       "config.text_encoder.mode='text'")

  def create_model(self, rngs: nnx.Rngs) -> caption_clip.CaptionClipModel:
    return caption_clip.CaptionClipModel(self.text_config, self.config,
                                         self.experiment.autoencoder.latent_channels, rngs=rngs)

  def loss(self, model: caption_clip.CaptionClipModel, batch: dict[str, jax.Array],
           rng: jax.Array, step: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """CLIP's symmetric cross-entropy of the batch's captions against its clips."""
    del rng, step
    # What the dit stage models, from the cached posterior means.
    latents = self.experiment.autoencoder.normalize_latents(batch["latents"].astype(jnp.float32))
    text, clip = model(batch["tokens"], batch["token_mask"].astype(bool), latents)
    loss, accuracy = caption_clip.contrastive_loss(text, clip, model.logit_scale[...])
    temperature = 1.0 / caption_clip.inverse_temperature(model.logit_scale[...])
    return loss, {"contrastive_accuracy": accuracy, "temperature": temperature}

  def make_iterator(self, *, mesh: jax.sharding.Mesh, seed: int,
                    workdir: str) -> stage_lib.BatchIterator:
    """The dit stage's latent cache (built first when missing: it needs the autoencoder stage's
    checkpoint and the tokenizer)."""
    workdir_lib.require_step(
        workdir, workdir_lib.AUTOENCODER_STAGE,
        "the text stage reads clips as the trained autoencoder's latents: train it first with "
        "--config.stages=autoencoder (or keep 'autoencoder' before 'text' in config.stages)")
    tokenizer = workdir_lib.load_or_train_tokenizer(self.experiment, workdir)
    workdir_lib.check_tokenizer(tokenizer, self.experiment, workdir)
    return latent_cache.open_or_build(self.experiment, workdir, tokenizer=tokenizer, mesh=mesh,
                                      seed=seed)


def restore_text_encoder(experiment: experiment_lib.Experiment, workdir: str,
                         mesh: jax.sharding.Mesh | None = None) -> tuple[nnx.State, int]:
  """The text stage's text encoder (EMA parameters) and its step, for the dit stage to start from;
  on `mesh` (default: that of `config.mesh` over all devices).

  Raises:
    FileNotFoundError: the text stage has not been trained in `workdir`.
  """
  workdir_lib.require_step(
      workdir, workdir_lib.TEXT_STAGE,
      "config.dit_stage.pretrained_text_encoder starts from the text stage's text encoder: "
      "train it first with --config.stages=text (or keep 'text' before 'dit' in config.stages), "
      "or set --config.dit_stage.pretrained_text_encoder=False")
  stage = TextStage(experiment)
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: stage.create_model(nnx.Rngs(0)))
  graphdef, params, frozen = nnx.split(abstract, stage.trainable, ...)
  model, step = workdir_lib.restore_model(workdir, workdir_lib.TEXT_STAGE, graphdef, params,
                                          frozen, experiment=experiment, mesh=mesh)
  logging.info("text encoder restored from the text stage's step-%d EMA parameters", step)
  return nnx.state(model.text_encoder, nnx.Param), step

