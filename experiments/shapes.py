r"""The main experiment: text-to-video on the procedural world of moving, bouncing shapes.

The main job (train the autoencoder, then the diffusion transformer and its text encoder, then a
sample gallery) on the tiny variant, under 15 minutes on a 2-core CPU:

    python -m videogen.main run --config=experiments/shapes.py:tiny --workdir=runs/tiny

The stages one at a time (each resumes from its checkpoints; a finished stage is skipped):

    python -m videogen.main train --config=experiments/shapes.py:tiny --workdir=runs/tiny \
        --config.stages=autoencoder
    python -m videogen.main train --config=experiments/shapes.py:tiny --workdir=runs/tiny \
        --config.stages=dit
    python -m videogen.main generate --workdir=runs/tiny --prompt='a red circle moving right' \
        --out=runs/tiny/red_circle.mp4

Both variants train the diffusion stage from a latent cache (the data encoded once by the frozen
autoencoder, into WORKDIR/latent_cache, instead of on every step). The dit stage builds it when it
is missing; to build it ahead, or to encode on every step instead:

    python -m videogen.train.latent_cache --config=experiments/shapes.py:tiny --workdir=runs/tiny
    python -m videogen.main train --config=experiments/shapes.py:tiny --workdir=runs/tiny \
        --config.stages=dit --config.dit_stage.latents=encode

Size and cost of the model, and speed figures:

    python -m videogen.main summary --config=experiments/shapes.py:tiny
    python -m videogen.main benchmark --config=experiments/shapes.py:small

Variants (`arg`):
  tiny   (default) 9-frame 32x32 clips plus 32x32 images (a quarter of the steps); the tiny
         autoencoder (2x4x4 compression, 8 latent channels) and a width-96, depth-4 transformer
         on 5x8x8 latents (80 tokens). Sized for a CPU.
  small  17-frame 128x128 clips, a wide 128x224 bucket and 128x128 images; the standard
         autoencoder (4x8x8, 16 channels) and a width-512, depth-12 transformer in bfloat16 on
         5x16x16 latents (320 tokens; 560 for the wide bucket). Sized for one accelerator.

Any field can be overridden on the command line, e.g. `--config.train.dit.num_steps=100`.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from data_pipelines.loader import DataConfig
from data_pipelines.tokenizer import TokenizerConfig
from videogen.config import to_config_dict
from videogen.diffusion.flow import FlowConfig
from videogen.diffusion.samplers import SamplerConfig
from videogen.evaluate.suite import GenerationEvalConfig
from videogen.models.autoencoder import AutoencoderConfig
from videogen.models.dit import DiTConfig
from videogen.models.text_encoder import TextEncoderConfig
from videogen.parallel.mesh import MeshConfig
from videogen.train.config import AutoencoderLossConfig
from videogen.train.config import DiTStageConfig
from videogen.train.config import TrainConfig

VARIANTS = ("tiny", "small")
# The world's captions hold about 600 distinct BPE pieces; 512 keeps every piece a learned one,
# so the trained tokenizer has exactly this many ids and the text encoder's table fits it.
VOCAB_SIZE = 512


def _tiny(config: ml_collections.ConfigDict) -> DiTStageConfig:
  """Fills the tiny variant's sections; returns its dit stage settings."""
  config.data = to_config_dict(DataConfig(buckets=("9x32x32:8", "1x32x32:16:0.25")))
  # 56 tokens hold every descriptive caption of a 9-frame 32x32 clip (at most 53 with the end
  # token, over 20,000 train scenes; 48 cut the background off 23 of them).
  config.tokenizer = to_config_dict(TokenizerConfig(vocab_size=VOCAB_SIZE, max_length=56))
  # The tiny autoencoder's latents (its shortcuts carry features' averages into them) have a
  # standard deviation of about 7 after its 4500 steps. Scaled to about 2 (scale_factor 0.28;
  # the dit stage logs the result as latent_std), a transformer trained for 2000 steps on them
  # followed prompted colours in 53% of objects, against 47% at 1.5 and 34% at 1 (48 prompts,
  # analyzer-scored): small objects stay visible through more of the noise schedule at the larger
  # scale.
  config.autoencoder = to_config_dict(dataclasses.replace(AutoencoderConfig.tiny(),
                                                          scale_factor=0.28))
  # Many cheap steps: 5-frame clips, one random 16x16 crop of each batch (the autoencoder is
  # convolutional, so crops teach it what whole frames do at a quarter of the cost), squared
  # error (it drives the objects, a small part of each frame, into the reconstruction sooner than
  # L1, whose unit gradients on the near-solved background drown them out).
  config.autoencoder_loss = to_config_dict(AutoencoderLossConfig(
      l1_weight=0.0, l2_weight=1.0, buckets=("5x32x32:4",), crop_size=16))
  config.text_encoder = to_config_dict(TextEncoderConfig.tiny(vocab_size=VOCAB_SIZE,
                                                              max_length=56))
  # Width 96, not the tiny default 128: at this budget more steps of a smaller transformer beat
  # fewer of a larger one (see config.train.dit below).
  config.dit = to_config_dict(DiTConfig.tiny(in_channels=8, input_size=(5, 8, 8), width=96))
  # Time shift 3 (training draws and the sampler's grid): more of the short run goes to high
  # noise levels, where layout, colour and count are decided. `evaluate --what=noise_levels` showed
  # the unshifted model losing them there: regenerated from t = 1 it kept colour in 0.57 of
  # objects and the count in 0.16 of clips, from t = 0.5 in 1.0 and 0.91. Shifted, the same
  # 3000 steps keep 0.92 and 0.75 from t = 1; on 64 prompts colour 0.94 (was 0.62) and count 0.72
  # (was 0.22). Shape (about 1/3, chance) and direction did not move.
  config.diffusion = to_config_dict(FlowConfig(min_shift=3.0))
  config.sample = to_config_dict(SamplerConfig(method="heun", num_steps=20, guidance_scale=4.0))
  config.train = ml_collections.ConfigDict()
  config.train.autoencoder = to_config_dict(TrainConfig(
      num_steps=4500, learning_rate=3e-3, warmup_steps=50, final_learning_rate_fraction=0.02,
      ema_decay=0.99, log_every=100, checkpoint_every=2250, keep_checkpoints=1, eval_every=4500))
  # About 6.5 minutes on 2 CPU cores, one evaluation at the end. The stage trains from a latent
  # cache of its first 1000 loader steps (encoded once, about 70 s), read three times over: the
  # tiny encoder costs about as much as the transformer's step, so 3000 cached steps (~0.1 s each)
  # take the time of 1600 that encode their own batches. A short run: learning rate 1e-3 (3e-3
  # followed prompted colours in 0.52-0.56 of objects against 0.73-0.79 at 1e-3 and 5e-4 after
  # 2400 steps), and EMA over the last ~50 steps, not the last 1000.
  config.train.dit = to_config_dict(TrainConfig(
      num_steps=3000, learning_rate=1e-3, warmup_steps=50, ema_decay=0.98, log_every=50,
      checkpoint_every=1500, keep_checkpoints=1, eval_every=3000))
  return DiTStageConfig(latents="cache", cache_steps=1000)


def _small(config: ml_collections.ConfigDict) -> DiTStageConfig:
  """Fills the small variant's sections; returns its dit stage settings."""
  config.data = to_config_dict(DataConfig(
      buckets=("17x128x128:16", "17x128x224:8:0.5", "1x128x128:64:0.25"), num_workers=4))
  # 64 tokens hold every descriptive caption of a 17-frame clip (at most about 55).
  config.tokenizer = to_config_dict(TokenizerConfig(vocab_size=VOCAB_SIZE, max_length=64))
  config.autoencoder = to_config_dict(AutoencoderConfig.standard())
  config.autoencoder_loss = to_config_dict(AutoencoderLossConfig())
  config.text_encoder = to_config_dict(TextEncoderConfig.small(vocab_size=VOCAB_SIZE,
                                                               max_length=64))
  config.dit = to_config_dict(DiTConfig.small(in_channels=16, input_size=(5, 16, 16)))
  config.diffusion = to_config_dict(FlowConfig())
  config.sample = to_config_dict(SamplerConfig(method="heun", num_steps=30, guidance_scale=4.0))
  config.train = ml_collections.ConfigDict()
  config.train.autoencoder = to_config_dict(TrainConfig(
      num_steps=100_000, learning_rate=1e-4, warmup_steps=1000, ema_decay=0.999,
      checkpoint_every=2000, eval_every=5000))
  config.train.dit = to_config_dict(TrainConfig(
      num_steps=200_000, learning_rate=3e-4, warmup_steps=2000, ema_decay=0.9999,
      checkpoint_every=2000, eval_every=5000))
  # The standard encoder costs about 60 times the transformer's forward pass per clip (962 vs 16
  # GMACs): encode 20k steps once (about 12 GB in float16) and read them ten times over.
  return DiTStageConfig(latents="cache", cache_steps=20_000, cache_dtype="float16")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the shapes experiment for `arg`: "tiny" (default) or "small"."""
  variant = arg or "tiny"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of experiments/shapes.py: choose one of "
                     f"{', '.join(VARIANTS)}, e.g. --config=experiments/shapes.py:tiny")
  config = ml_collections.ConfigDict()
  config.name = f"shapes_{variant}"
  config.seed = 0
  config.stages = ("autoencoder", "dit")
  config.mesh = to_config_dict(MeshConfig())
  stage_settings = {"tiny": _tiny, "small": _small}[variant](config)
  config.dit_stage = to_config_dict(stage_settings)  # latent source, evaluation samples
  # The generation suite of `evaluate --what=generation` (its defaults: 16 videos), written out so
  # that `--config.eval_generation.scenes_per_group=8` has a section to override.
  config.eval_generation = to_config_dict(GenerationEvalConfig())
  return config
