r"""The main experiment: text-to-video on the procedural world of moving, bouncing shapes.

The main job (train the autoencoder, then the diffusion transformer and its text encoder, then a
sample gallery) on the tiny variant, 10 to 23 minutes on a 2-core CPU by the machine
(docs/tiny_run.md):

    python -m videogen.main run --config=experiments/shapes.py:tiny --workdir=runs/tiny

The stages one at a time (each resumes from its checkpoints; a finished stage is skipped):

    python -m videogen.main train --config=experiments/shapes.py:tiny --workdir=runs/tiny \
        --config.stages=autoencoder
    python -m videogen.main train --config=experiments/shapes.py:tiny --workdir=runs/tiny \
        --config.stages=dit
    python -m videogen.main generate --workdir=runs/tiny --prompt='a red circle moving right' \
        --out=runs/tiny/red_circle.mp4

A few-step student (1, 2 or 4 steps, guidance folded in; docs/few_step.md), after the dit stage:

    python -m videogen.main train --config=experiments/shapes.py:tiny --workdir=runs/tiny \
        --config.stages=distill
    python -m videogen.main generate --workdir=runs/tiny --prompt='a red circle' --steps=2

A text encoder pre-trained on caption-clip pairs (CLIP's loss; docs/learning_curve.md), which the
dit stage then starts from (fine-tuned, or held with --config.text_encoder.frozen=True):

    python -m videogen.main train --config=experiments/shapes.py:tiny --workdir=runs/tiny \
        --config.stages='("autoencoder", "text", "dit")' \
        --config.dit_stage.pretrained_text_encoder=True

Both variants train the diffusion stage from a latent cache (the data encoded once by the frozen
autoencoder, into WORKDIR/latent_cache, instead of on every step). The dit stage builds it when it
is missing; to build it ahead, or to encode on every step instead:

    python -m videogen.main cache_latents --config=experiments/shapes.py:tiny --workdir=runs/tiny
    python -m videogen.main train --config=experiments/shapes.py:tiny --workdir=runs/tiny \
        --config.stages=dit --config.dit_stage.latents=encode

Size and cost of the model, and speed figures:

    python -m videogen.main summary --config=experiments/shapes.py:tiny
    python -m videogen.main benchmark --config=experiments/shapes.py:small

Variants (`arg`):
  tiny   (default) 9-frame 32x32 clips plus 32x32 images (a quarter of the steps); the tiny
         autoencoder (2x4x4 compression, 8 latent channels) and a width-96, depth-4 transformer
         on 5x8x8 latents (80 tokens). Sized for a CPU.
  long   the tiny variant trained 11 times longer, with Muon, its last 9,000 transformer steps
         in the given-frame phase (`config.train.dit.phase_steps`), sampled image first: the
         recipe that draws shapes and moves objects as prompted (docs/learning_curve.md),
         80 to 150 CPU minutes on top of the tiny autoencoder's. Only the transformer's
         settings differ from tiny's: `--autoencoder_from=runs/tiny` takes a tiny run's
         autoencoder, tokenizer and latent cache, and `run` trains the transformer alone.
  gpu    the tiny variant's world, clip shape and autoencoder, with a width-384, depth-8
         transformer in bfloat16 (cuDNN flash attention on a GPU) and batches of 256 clips and
         512 images: sized for a few minutes of one H200 (experiments/accelerator/run.sh), so
         that its generation suite compares with the tiny run's.
  small  17-frame 128x128 clips, a wide 128x224 bucket and 128x128 images; the standard
         autoencoder (4x8x8, 16 channels) and a width-512, depth-12 transformer in bfloat16 on
         5x16x16 latents (320 tokens; 560 for the wide bucket). Sized for one accelerator.

Any field can be overridden on the command line, e.g. `--config.train.dit.num_steps=100`. Why the
tiny settings are what they are, with the measurements: docs/tiny_run.md.
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
from videogen.train.config import DistillStageConfig
from videogen.train.config import TrainConfig

VARIANTS = ("tiny", "long", "small", "gpu")
# Below the world's ~600 distinct pieces, so the trained tokenizer has exactly this many ids.
VOCAB_SIZE = 512


def _tiny(config: ml_collections.ConfigDict) -> DiTStageConfig:
  """Fills the tiny variant's sections; returns its dit stage settings."""
  config.data = to_config_dict(DataConfig(buckets=("9x32x32:8", "1x32x32:16:0.25")))
  # 56 tokens hold every descriptive caption of a 9-frame 32x32 clip (docs/tiny_run.md).
  config.tokenizer = to_config_dict(TokenizerConfig(vocab_size=VOCAB_SIZE, max_length=56))
  # Latents of std about 7 scaled to about 2: small objects survive more of the noise schedule.
  config.autoencoder = to_config_dict(dataclasses.replace(AutoencoderConfig.tiny(),
                                                          scale_factor=0.28))
  # Many cheap steps (short clips, 16x16 crops); squared error brings the small objects in sooner.
  config.autoencoder_loss = to_config_dict(AutoencoderLossConfig(
      l1_weight=0.0, l2_weight=1.0, buckets=("5x32x32:4",), crop_size=16))
  config.text_encoder = to_config_dict(TextEncoderConfig.tiny(vocab_size=VOCAB_SIZE,
                                                              max_length=56))
  # Width 96, not 128: at this budget more steps of a smaller transformer beat fewer of a larger.
  # Its 4 blocks unrolled, not scanned: a CPU step costs 14% less (docs/tiny_run.md).
  # Absolute positions beside the rotary ones: at frame sizes it never trained on, the object
  # count holds (docs/learning_curve.md, "Absolute positions beside the rotary ones").
  config.dit = to_config_dict(DiTConfig.tiny(in_channels=8, input_size=(5, 8, 8), width=96,
                                             scan_layers=False, position_embedding="rope+sincos"))
  # Time shift 3: more of a short run goes to high noise, where layout, colour and count are set.
  config.diffusion = to_config_dict(FlowConfig(min_shift=3.0))
  config.sample = to_config_dict(SamplerConfig(method="heun", num_steps=20, guidance_scale=4.0))
  config.train = ml_collections.ConfigDict()
  config.train.autoencoder = to_config_dict(TrainConfig(
      num_steps=4500, learning_rate=3e-3, warmup_steps=50, final_learning_rate_fraction=0.02,
      ema_decay=0.99, log_every=100, checkpoint_every=2250, keep_checkpoints=1, eval_every=4500))
  # About 6.5 CPU minutes; a short run wants EMA over its last ~50 steps, not the last 1000.
  # The text encoder at 0.3 of the rate: at the full rate its tokens can collapse onto one
  # direction, a weak run (docs/learning_curve.md, "What makes a run weak").
  config.train.dit = to_config_dict(TrainConfig(
      num_steps=3000, learning_rate=1e-3, warmup_steps=50, ema_decay=0.98, log_every=50,
      checkpoint_every=1500, keep_checkpoints=1, eval_every=3000,
      learning_rate_scales=("text_encoder=0.3",)))
  # Caption-clip pre-training of the text encoder (docs/learning_curve.md); not in config.stages
  # by default.
  config.train.text = to_config_dict(TrainConfig(
      num_steps=1000, learning_rate=1e-3, warmup_steps=50, ema_decay=0.98, log_every=50,
      checkpoint_every=1000, keep_checkpoints=1, eval_every=0))
  # A few CPU minutes on top of the dit stage (docs/few_step.md); not in config.stages by default.
  config.train.distill = to_config_dict(TrainConfig(
      num_steps=500, learning_rate=2e-4, warmup_steps=50, ema_decay=0.98, log_every=25,
      checkpoint_every=250, keep_checkpoints=1))
  config.distill_stage = to_config_dict(DistillStageConfig(trajectories=384, batch_size=16))
  # The tiny encoder costs as much as a transformer step: encode 1000 steps once, read them thrice.
  return DiTStageConfig(latents="cache", cache_steps=1000)


def _long(config: ml_collections.ConfigDict) -> DiTStageConfig:
  """Fills the long variant's sections; returns its dit stage settings."""
  stage_settings = _tiny(config)
  # Muon draws shapes at 12,000 steps that AdamW draws at 30,000.
  # Its last 9,000 steps give first frames at high noise: only then does the caption steer motion.
  # They begin at step 24,000 of a 30,000-step decay: in the same 33,000 steps as a 3,000-step
  # phase after the whole decay, more objects move as prompted (0.49 against 0.36 over four seeds,
  # the weakest seeds gaining most: docs/learning_curve.md, "A longer given-frame phase").
  # It keeps tiny's absolute positions: with them, more objects move as prompted after the phase
  # ("Absolute positions under the long recipe").
  # Its figures were measured with the text encoder at the transformer's rate.
  config.train.dit.update(num_steps=33_000, optimizer="muon", decay_steps=30_000, phase_steps=9000,
                          phase_learning_rate=5e-4, checkpoint_every=3000, keep_checkpoints=0,
                          learning_rate_scales=())
  # The phase's objects move as prompted only when the first frame is drawn before the rest.
  config.sample.frame_schedule = "image_first"
  return stage_settings


def _gpu(config: ml_collections.ConfigDict) -> DiTStageConfig:
  """Fills the gpu variant's sections; returns its dit stage settings."""
  stage_settings = _tiny(config)
  # 12 of the 16 cores render the world; the loader measures whether they keep up.
  config.data = to_config_dict(DataConfig(buckets=("9x32x32:256", "1x32x32:512:0.25"),
                                          num_workers=12))
  config.autoencoder = to_config_dict(dataclasses.replace(
      AutoencoderConfig.tiny(), scale_factor=0.28, dtype="bfloat16"))
  config.autoencoder_loss = to_config_dict(AutoencoderLossConfig(
      l1_weight=0.0, l2_weight=1.0, buckets=("5x32x32:64",), crop_size=16))
  config.text_encoder = to_config_dict(TextEncoderConfig.tiny(
      vocab_size=VOCAB_SIZE, max_length=56, dtype="bfloat16"))
  # Head size 64, which cuDNN's flash attention takes; 80 tokens a clip, as in tiny.
  config.dit = to_config_dict(DiTConfig.tiny(in_channels=8, input_size=(5, 8, 8), width=384,
                                             depth=8, num_heads=6, dtype="bfloat16"))
  # Sized for about 3 minutes of an H200; run.sh also stops a stage at its wall-clock budget.
  config.train.autoencoder = to_config_dict(TrainConfig(
      num_steps=4000, learning_rate=3e-3, warmup_steps=100, final_learning_rate_fraction=0.02,
      ema_decay=0.99, log_every=100, checkpoint_every=4000, keep_checkpoints=1, eval_every=0))
  config.train.dit = to_config_dict(TrainConfig(
      num_steps=6000, learning_rate=5e-4, warmup_steps=200, ema_decay=0.999, log_every=100,
      checkpoint_every=2000, keep_checkpoints=1, eval_every=0))
  # 500 loader steps (about 150k clips and images) rendered and encoded once, read about 12 times.
  return dataclasses.replace(stage_settings, cache_steps=500)


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
  config.train.text = to_config_dict(TrainConfig(
      num_steps=5000, learning_rate=5e-4, warmup_steps=200, ema_decay=0.999,
      checkpoint_every=1000))
  config.train.distill = to_config_dict(TrainConfig(
      num_steps=20_000, learning_rate=5e-5, warmup_steps=500, ema_decay=0.999,
      checkpoint_every=2000))
  config.distill_stage = to_config_dict(DistillStageConfig(trajectories=8192, batch_size=32))
  # The standard encoder costs ~60x the transformer's forward pass: encode 20k steps once (12 GB).
  return DiTStageConfig(latents="cache", cache_steps=20_000, cache_dtype="float16")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the shapes experiment for `arg`: "tiny" (default), "long", "small" or "gpu"."""
  variant = arg or "tiny"
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {arg!r} of experiments/shapes.py: choose one of "
                     f"{', '.join(VARIANTS)}, e.g. --config=experiments/shapes.py:tiny")
  config = ml_collections.ConfigDict()
  config.name = f"shapes_{variant}"
  config.seed = 0
  config.stages = ("autoencoder", "dit")
  config.mesh = to_config_dict(MeshConfig())
  stage_settings = {"tiny": _tiny, "long": _long, "small": _small, "gpu": _gpu}[variant](config)
  config.dit_stage = to_config_dict(stage_settings)  # latent source, evaluation samples
  # Written out so that `--config.eval_generation.scenes_per_group=8` has a section to override.
  config.eval_generation = to_config_dict(GenerationEvalConfig())
  return config
