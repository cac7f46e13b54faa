"""The text-to-video model: the autoencoder, the text encoder and the diffusion transformer.

    graphdef, params, frozen = text_to_video.abstract_model(autoencoder_config, text_config,
                                                            dit_config)

The diffusion stage trains it and its checkpoint (WORKDIR/checkpoints/dit) holds it; the
generation pipeline restores it from there. Which of its variables train is part of the model's
definition (`trainable`), because the checkpoint stores the two parts apart ("params" and
"frozen"): the autoencoder never trains here (it is the autoencoder stage's, frozen), the text
encoder unless `text_config.frozen`.
"""

from __future__ import annotations

from flax import nnx

from videogen.models import autoencoder as autoencoder_lib
from videogen.models import dit as dit_lib
from videogen.models import text_encoder as text_encoder_lib


class TextToVideoModel(nnx.Module):
  """The three modules side by side (no computation of its own).

  Attributes:
    autoencoder: `VideoAutoencoder`: video [B, T, H, W, 3] <-> latents [B, t, h, w, C].
    text_encoder: `TextEncoder`: tokens [B, L] -> (context [B, L, D], pooled [B, D]).
    dit: `DiT`: (latents [B, t, h, w, C], timesteps [B, t], context) -> velocity.
  """

  def __init__(self, autoencoder_config: autoencoder_lib.AutoencoderConfig,
               text_config: text_encoder_lib.TextEncoderConfig, dit_config: dit_lib.DiTConfig, *,
               rngs: nnx.Rngs):
    self.autoencoder = autoencoder_lib.VideoAutoencoder(autoencoder_config, rngs=rngs)
    self.text_encoder = text_encoder_lib.TextEncoder(text_config, rngs=rngs)
    self.dit = dit_lib.DiT(dit_config, rngs=rngs)


def trainable(text_config: text_encoder_lib.TextEncoderConfig) -> nnx.filterlib.Filter:
  """The parameters the diffusion stage trains: the transformer's, and the text encoder's unless
  it is frozen; never the autoencoder's."""
  trained = ("dit",) if text_config.frozen else ("dit", "text_encoder")
  return nnx.All(nnx.Param, lambda path, _: bool(path) and path[0] in trained)


def student_trainable() -> nnx.filterlib.Filter:
  """The parameters the distill stage trains: the transformer's only (the student reads the
  teacher's text encoder and autoencoder, frozen)."""
  return nnx.All(nnx.Param, lambda path, _: bool(path) and path[0] == "dit")


def abstract_model(autoencoder_config: autoencoder_lib.AutoencoderConfig,
                   text_config: text_encoder_lib.TextEncoderConfig,
                   dit_config: dit_lib.DiTConfig, *,
                   trained: nnx.filterlib.Filter | None = None
                   ) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """(graphdef, trainable state, frozen state) of the model, abstract: shapes, dtypes and logical
  axes without allocating or initialising anything (the target of a checkpoint restore).

  `trained` selects the trainable part (default: the diffusion stage's, `trainable`; the distill
  stage's checkpoints split by `student_trainable`)."""
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: TextToVideoModel(autoencoder_config, text_config, dit_config,
                                                    rngs=nnx.Rngs(0)))
  return nnx.split(model, trainable(text_config) if trained is None else trained, ...)
