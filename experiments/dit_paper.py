r"""The DiT paper's class-conditional ImageNet 256x256 models (Peebles & Xie, 2023), as variants.

    python -m videogen.main summary --config=experiments/dit_paper.py:xl2

Variants `s2, s4, s8, b2, b4, b8, l2, l4, l8, xl2, xl4, xl8` are sizes S/B/L/XL with patch 2/4/8 on
32x32x4 latents (256x256 images through an 8x VAE), one frame, learned-sigma output, fixed sin-cos
positions, no cross-attention, and a 1000-class label embedding (plus the null class) added to
the timestep embedding. `summary` reproduces the paper's Table 4 parameter counts and its "Gflops"
(multiply-adds, see videogen/evaluate/summary.py); `tests/experiments/test_dit_paper.py` checks
them. The experiment is here to measure those models: it has no image data section, so training
it needs a `data` section for an image data set first.
"""

from __future__ import annotations

import ml_collections

from videogen.config import to_config_dict
from videogen.models.dit import DiTConfig
from videogen.models.text_encoder import TextEncoderConfig
from videogen.train.config import TrainConfig

SIZES = ("s", "b", "l", "xl")
PATCHES = (2, 4, 8)
VARIANTS = tuple(f"{size}{patch}" for size in SIZES for patch in PATCHES)
NUM_CLASSES = 1000


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the DiT paper model named by `arg`, e.g. "xl2" (DiT-XL/2); default "s8"."""
  variant = (arg or "s8").lower()
  if variant not in VARIANTS:
    raise ValueError(f"unknown DiT paper variant {arg!r}: choose one of {', '.join(VARIANTS)}")
  size, patch = variant[:-1].upper(), int(variant[-1])
  dit = DiTConfig.paper(size, patch)
  config = ml_collections.ConfigDict()
  config.name = f"dit_paper_{variant}"
  config.seed = 0
  config.stages = ("dit",)
  config.dit = to_config_dict(dit)
  config.text_encoder = to_config_dict(TextEncoderConfig.classes(NUM_CLASSES, dit.width))
  config.train = ml_collections.ConfigDict()
  # The paper's schedule: AdamW at a constant 1e-4, no weight decay, EMA 0.9999, batch 256.
  config.train.dit = to_config_dict(TrainConfig(
      num_steps=400_000, learning_rate=1e-4, warmup_steps=0, schedule="constant",
      weight_decay=0.0, clip_grad_norm=0.0, ema_decay=0.9999, checkpoint_every=50_000))
  return config
