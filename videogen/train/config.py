"""The training sections of an experiment: how each stage trains (`config.train.<stage>`) and the
settings of the autoencoder and diffusion-transformer stages (`config.autoencoder_loss`,
`config.dit_stage`).

They live apart from the trainer and the stages so that the experiment schema
(`videogen.experiment`) can hold them without importing any training code.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal, Optional, Sequence

from data_pipelines import buckets as buckets_lib
from videogen.diffusion import distillation


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How one stage is trained (`config.train.<stage>`).

  Attributes:
    num_steps: total optimizer steps of the stage.
    optimizer: "adamw", "adafactor" or "muon" (Muon orthogonalises the momentum of the hidden
      matrices, `train_state.muon_dimensions`, and decays them; Adam with `b1`, `b2` and no
      weight decay trains the other weights).
    learning_rate: peak learning rate, reached after `warmup_steps` of linear warm-up.
    schedule: "cosine" decays to `final_learning_rate_fraction * learning_rate` at
      `decay_steps` (default `num_steps - phase_steps`) along a half cosine, "linear" along a
      straight line; "constant" stays at the peak.
    phase_steps: the last `phase_steps` of `num_steps` are a second phase at the constant
      `phase_learning_rate`; the warm-up and the schedule above span the steps before it. The
      optimizer, its moments and the EMA carry on; a stage may change its objective there too
      (the dit stage gives first frames at high noise: `config.dit_stage.phase_*`). 0 = none.
    phase_learning_rate: the learning rate of the phase (required when `phase_steps` > 0).
    learning_rate_scales: "PART=SCALE" entries, e.g. ("text_encoder=0.3",): the updates of that
      top-level part of the stage's trainable variables are scaled by SCALE, which scales its
      learning rate (and weight decay) throughout the schedule; unnamed parts take the schedule.
    b1, b2, eps: Adam moments.
    muon_momentum: Muon's momentum (optimizer "muon").
    weight_decay: decoupled weight decay of matrices (norm scales and biases are not decayed).
    clip_grad_norm: global gradient-norm clipping threshold; <= 0 turns clipping off.
    ema_decay: decay of the parameters' exponential moving average (0 = a copy).
    grad_accum_steps: split each batch into this many microbatches and average their gradients.
    log_every: steps between metric rows (the last step is always logged). A row holds the
      means of the metrics over the steps since the previous row (the learning rate: its value).
    checkpoint_every: steps between checkpoints (the last step is always saved).
    keep_checkpoints: how many of the newest checkpoints to keep (<= 0 keeps all).
    eval_every: steps between `stage.evaluate` calls; 0 = never.
    async_checkpoints: write checkpoints in the background.
    progress_bar: show a progress bar on process 0.
    profile_steps: (first, last): trace steps first..last (inclusive, numbered as in
      metrics.jsonl) with `jax.profiler` on process 0, into WORKDIR/tensorboard/<stage>/, where
      TensorBoard's profile tab shows them (`tensorboard --logdir WORKDIR/tensorboard`); () = off.
      Start after the first step, which includes the compilation.
  """
  num_steps: int = 1000
  optimizer: Literal["adamw", "adafactor", "muon"] = "adamw"
  learning_rate: float = 1e-3
  warmup_steps: int = 100
  schedule: Literal["cosine", "linear", "constant"] = "cosine"
  decay_steps: Optional[int] = None
  final_learning_rate_fraction: float = 0.1
  phase_steps: int = 0
  phase_learning_rate: Optional[float] = None
  learning_rate_scales: tuple[str, ...] = ()
  b1: float = 0.9
  b2: float = 0.999
  eps: float = 1e-8
  muon_momentum: float = 0.95
  weight_decay: float = 0.01
  clip_grad_norm: float = 1.0
  ema_decay: float = 0.999
  grad_accum_steps: int = 1
  log_every: int = 10
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  eval_every: int = 0
  async_checkpoints: bool = True
  progress_bar: bool = True
  profile_steps: tuple[int, ...] = ()

  def __post_init__(self):
    for name in ("num_steps", "grad_accum_steps", "log_every", "checkpoint_every"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} = {getattr(self, name)} must be at least 1")
    if not 0 <= self.phase_steps < self.num_steps:
      raise ValueError(f"phase_steps = {self.phase_steps} must be in [0, num_steps = "
                       f"{self.num_steps}): the phase is the last steps of the stage")
    if self.phase_steps and (self.phase_learning_rate is None or self.phase_learning_rate <= 0):
      raise ValueError(f"phase_learning_rate = {self.phase_learning_rate} must be > 0 when "
                       f"phase_steps = {self.phase_steps} (e.g. half of learning_rate)")
    parse_learning_rate_scales(self.learning_rate_scales)
    if not 0.0 <= self.ema_decay < 1.0:
      raise ValueError(f"ema_decay = {self.ema_decay} must be in [0, 1)")
    if not 0.0 <= self.muon_momentum < 1.0:
      raise ValueError(f"muon_momentum = {self.muon_momentum} must be in [0, 1)")
    if self.profile_steps and (len(self.profile_steps) != 2
                               or not 1 <= self.profile_steps[0] <= self.profile_steps[1]):
      raise ValueError(f"profile_steps = {self.profile_steps} must be (first, last) with "
                       f"1 <= first <= last, e.g. (10, 12), or () for no profile")


def parse_learning_rate_scales(entries: Sequence[str]) -> dict[str, float]:
  """`TrainConfig.learning_rate_scales` as {part: scale}; ValueError naming a malformed entry."""
  if isinstance(entries, str):
    raise ValueError(f"learning_rate_scales = {entries!r} must be a tuple of 'PART=SCALE' "
                     f"strings, e.g. ('text_encoder=0.3',)")
  scales = {}
  for entry in entries:
    part, separator, value = str(entry).partition("=")
    try:
      scale = float(value)
    except ValueError:
      scale = None
    if not separator or not part.strip() or scale is None or not 0 < scale < math.inf:
      raise ValueError(f"learning_rate_scales entry {entry!r} must be 'PART=SCALE' with a "
                       f"finite scale > 0, e.g. 'text_encoder=0.3'")
    if part.strip() in scales:
      raise ValueError(f"learning_rate_scales names {part.strip()!r} twice")
    scales[part.strip()] = scale
  return scales


@dataclasses.dataclass(frozen=True)
class AutoencoderLossConfig:
  """The `config.autoencoder_loss` section: loss weights, the discriminator and evaluation.

  Attributes:
    l1_weight: weight of the mean absolute error (on [-1, 1] pixels).
    l2_weight: weight of the mean squared error; its larger gradients on large errors speed up
      the first few hundred steps (where the plain L1 loss plateaus at blurry blobs).
    ssim_weight: weight of the structural term 1 - SSIM (0 leaves it out and skips computing it).
    kl_weight: weight of the KL divergence (nats per latent element, see `kl_divergence`).
    discriminator: build and train the 3D patch discriminator.
    disc_start: the step from which the adversarial terms count.
    disc_weight: base weight of the generator's adversarial term (times the adaptive weight).
    disc_channels: width of the discriminator's first layer.
    disc_layers: strided layers of the discriminator.
    adaptive_weight_max: clip of the adaptive weight.
    buckets: the batch shapes this stage trains on ("FRAMESxHEIGHTxWIDTH:BATCH[:WEIGHT]", as in
      `config.data.buckets`); empty trains on `config.data.buckets`. The autoencoder is
      convolutional and causal, so short clips teach it what long ones do, for less compute a step.
    crop_size: train on one random crop_size x crop_size window of each batch (0: whole frames),
      a multiple of the spatial compression. Without middle attention every output sees only a
      few latents of context, so crops teach the model the same as whole frames at a fraction of
      the cost a step; more steps is what a short run needs most. Evaluation uses whole frames.
    eval_videos: held-out videos measured at each eval step.
    eval_batch_size: videos per evaluation forward pass.
    eval_split: the data source's split the held-out videos come from.
    sample_videos: side-by-side (input | reconstruction) videos written at each eval step.
  """
  l1_weight: float = 1.0
  l2_weight: float = 0.0
  ssim_weight: float = 0.0
  kl_weight: float = 1e-6
  discriminator: bool = False
  disc_start: int = 2000
  disc_weight: float = 0.5
  disc_channels: int = 64
  disc_layers: int = 3
  adaptive_weight_max: float = 1e4
  buckets: tuple[str, ...] = ()
  crop_size: int = 0
  eval_videos: int = 16
  eval_batch_size: int = 8
  eval_split: str = "test"
  sample_videos: int = 4

  def __post_init__(self):
    for name in ("l1_weight", "l2_weight", "ssim_weight", "kl_weight", "disc_weight"):
      if getattr(self, name) < 0:
        raise ValueError(f"{name}={getattr(self, name)} must not be negative")
    if isinstance(self.buckets, str):
      raise ValueError(f"buckets={self.buckets!r} must be a tuple of specs, e.g. "
                       f"('{self.buckets}',)")
    for spec in self.buckets:
      buckets_lib.parse_bucket(spec)  # raises on a malformed spec
    if self.crop_size < 0:
      raise ValueError(f"crop_size={self.crop_size} must be >= 0 (0 trains on whole frames)")
    if self.eval_videos < 0 or self.eval_batch_size < 1 or self.sample_videos < 0:
      raise ValueError("eval_videos and sample_videos must be >= 0 and eval_batch_size >= 1")


@dataclasses.dataclass(frozen=True)
class DiTStageConfig:
  """The `config.dit_stage` section: where the stage's latents come from and how it evaluates.

  Attributes:
    latents: "encode" runs the frozen encoder on every batch's pixels inside the step; "cache"
      reads latents that `python -m videogen.main cache_latents` wrote once (built on first use
      when missing, on a single process).
    cache_dir: the latent cache; None = WORKDIR/latent_cache.
    cache_steps: how many loader steps the cache holds; None = `config.train.dit.num_steps`, so a
      cached run sees exactly the batches an encoding run sees (a longer run wraps around).
    cache_dtype: storage dtype of cached latents (float16 halves the disk for large runs).
    sample_posterior: train on a draw from the encoder's posterior instead of its mean.
    eval_prompts: prompts sampled at each evaluation (`config.train.dit.eval_every`).
    eval_steps: sampler steps of those samples (few: evaluation must stay cheap).
    eval_seed: noise seed of those samples (fixed, so evaluations are comparable across steps).
    eval_caption_clips: test clips of the procedural world that each evaluation scores with
      `videogen.evaluate.caption_use` (noise level 0.9, and 1 with the first frame given; when
      the data is the procedural world; 0 = never): metrics.jsonl gets
      `caption_win_<t2v|first>_<attribute>`, the fraction of clips on which the true caption
      beats one with that attribute changed (0.5: the word is not used yet), and
      `caption_gap_<t2v|first>_<attribute>`, the mean loss it saves (about 0 for an unused
      word, whose win rate on a few clips can still stray from 0.5), so a run shows when it
      learns each word.
    pretrained_text_encoder: start the text encoder from the text stage's (WORKDIR/checkpoints/
      text, CLIP's objective on caption-clip pairs; `videogen.train.text_stage`) instead of at
      random; it then trains on unless `config.text_encoder.frozen`.
    init_from: another run's workdir whose trained dit stage the text encoder and transformer
      start from (the EMA parameters of its newest checkpoint) instead of at random, with a fresh
      optimizer at step 0: fine-tuning on other data, or another optimizer or objective on
      trained weights. This run takes that run's tokenizer (copied into WORKDIR; a different
      one there is refused) and must have its autoencoder, config.dit and config.text_encoder.
    phase_condition_probability, phase_condition_weights, phase_condition_logit_mean,
    phase_condition_logit_std: config.diffusion's frame conditioning in the given-frame phase,
      the last `config.train.dit.phase_steps` steps: by default 90% of clips get their first
      latent frame clean and the rest noised at t about 0.99, where the frames no longer show
      where objects went and only the caption can say (docs/learning_curve.md: it is what makes
      the caption steer motion).
  """
  latents: Literal["encode", "cache"] = "encode"
  cache_dir: Optional[str] = None
  cache_steps: Optional[int] = None
  cache_dtype: Literal["float32", "float16"] = "float32"
  sample_posterior: bool = False
  eval_prompts: tuple[str, ...] = (
      "a red circle", "a large blue square moving right", "a small yellow triangle moving down",
      "a white circle and a magenta square")
  eval_steps: int = 12
  eval_seed: int = 0
  eval_caption_clips: int = 16
  pretrained_text_encoder: bool = False
  init_from: Optional[str] = None
  phase_condition_probability: float = 0.9
  phase_condition_weights: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 0.0)
  phase_condition_logit_mean: Optional[float] = 4.0
  phase_condition_logit_std: Optional[float] = 0.3

  def __post_init__(self):
    if self.init_from is not None and not self.init_from.strip():
      raise ValueError("init_from is empty: give the workdir of a run whose dit stage trained, "
                       "or leave it unset to start at random")
    if self.init_from and self.pretrained_text_encoder:
      raise ValueError("init_from starts the text encoder too, from that run's: drop "
                       "pretrained_text_encoder (or init_from)")
    if self.cache_steps is not None and self.cache_steps < 1:
      raise ValueError(f"cache_steps = {self.cache_steps} must be >= 1, or None for "
                       f"config.train.dit.num_steps")
    if self.eval_steps < 1:
      raise ValueError(f"eval_steps = {self.eval_steps} must be >= 1 (try 12)")
    if self.eval_caption_clips < 0:
      raise ValueError(f"eval_caption_clips = {self.eval_caption_clips} must be >= 0 (0: no "
                       f"caption evaluation)")
    if any(not prompt.strip() for prompt in self.eval_prompts):
      raise ValueError(f"eval_prompts {self.eval_prompts} holds an empty prompt: give captions "
                       f"such as 'a red circle'")


@dataclasses.dataclass(frozen=True)
class DistillStageConfig:
  """The `config.distill_stage` section: the few-step student the distill stage makes.

  The stage caches the teacher's (the dit stage's EMA transformer) sampling trajectories once,
  then trains a copy of it with a step-size embedding to jump along them
  (`videogen.diffusion.distillation`; `videogen.train.distill_stage`).

  Attributes:
    student_steps: the step counts the student learns (each divides the largest, K); generation
      uses the student for any `--steps` up to K.
    teacher_steps: the teacher sampler's steps (a multiple of K); its method and guidance are
      config.sample's unless set below.
    teacher_method: "euler" or "heun"; None: config.sample.method.
    teacher_guidance: the teacher's classifier-free guidance scale, folded into the student;
      None: config.sample.guidance_scale.
    trajectories: teacher trajectories cached (each a training caption and a noise draw).
    trajectory_batch: trajectories integrated per teacher call while caching.
    batch_size: trajectories per training step.
    seed: seed of the captions and the noise of the trajectories.
    cache_dir: where the trajectories go; None = WORKDIR/distill_cache.
  """
  student_steps: tuple[int, ...] = (1, 2, 4)
  teacher_steps: int = 20
  teacher_method: Optional[Literal["euler", "heun"]] = None
  teacher_guidance: Optional[float] = None
  trajectories: int = 512
  trajectory_batch: int = 64
  batch_size: int = 16
  seed: int = 0
  cache_dir: Optional[str] = None

  def __post_init__(self):
    if self.teacher_steps < 1:
      raise ValueError(f"teacher_steps = {self.teacher_steps} must be at least 1")
    distillation.check_steps(self.student_steps, self.teacher_steps)  # the grids nest
    for name in ("trajectories", "trajectory_batch", "batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"{name} = {getattr(self, name)} must be at least 1")
    if self.teacher_guidance is not None and self.teacher_guidance < 0:
      raise ValueError(f"teacher_guidance = {self.teacher_guidance} must be >= 0 (1: none)")

  @property
  def max_steps(self) -> int:
    """K: the student's finest schedule, the most steps it samples with."""
    return max(self.student_steps)
