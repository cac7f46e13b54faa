r"""The distill stage: a few-step student of the dit stage's transformer, guidance folded in.

    python -m videogen.main train --config=experiments/shapes.py:tiny --workdir=runs/tiny \
        --config.stages=distill      # after the dit stage has trained in the same workdir
    python -m videogen.main generate --workdir=runs/tiny --prompt='a red circle' --steps=2

Method: trajectory (flow-map) distillation with step-size conditioning (Luhman & Luhman 2021;
the step-size embedding of shortcut models and "Align Your Flow"; see
`videogen.diffusion.distillation`):

  1. Cache (once, WORKDIR/distill_cache, `config.distill_stage`): `trajectories` training captions
     (`loader.captions`) and noise from fixed seeds, each integrated by the teacher (the dit
     stage's EMA model, restored with `workdir.restore_model`) with its sampler and guidance
     (config.sample's, e.g. Heun with 20 steps and guidance 4), its state recorded at the K + 1
     points of the student's finest grid (K = max(student_steps); the grids of the other step
     counts are subsets of it, on the teacher's time shift).
  2. Train: the student is the teacher's transformer plus a zero-initialised step-size
     embedding (`DiTConfig.step_size_embedding`), so at step 0 it is the teacher's conditional
     branch. For a random step (t -> s) of a random schedule (1, 2 or 4 steps; each schedule
     drawn equally often) of a cached trajectory, it predicts the velocity v(x_t, t, d = t - s),
     and the loss is the squared error against (x_s - x_t) / (s - t), the teacher's average
     velocity over that step: x_t + (s - t) v lands on the teacher's x_s.

The stage's model is the whole `TextToVideoModel` (so that its checkpoint alone samples); only the
transformer trains (`text_to_video.student_trainable`): the autoencoder and the text encoder are
the teacher's, frozen. `videogen.generate.pipeline.load` picks the student for `--steps` <= K.
The trajectories are text-to-video ones: the student holds given frames (image-to-video,
extension, loops) as the teacher does, but it never saw them in distillation.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import logging
from flax import nnx

from data_pipelines import loader as loader_lib
from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from videogen.diffusion import distillation
from videogen.diffusion import samplers
from videogen.models import dit as dit_lib
from videogen.models import text_to_video
from videogen.parallel import axes
from videogen.parallel import multihost
from videogen.train import dit_stage
from videogen.train import stage as stage_lib

TRAJECTORIES_FILE = "trajectories.npz"
SETTINGS_FILE = "settings.json"


def student_dit_config(experiment: experiment_lib.Experiment) -> dit_lib.DiTConfig:
  """The student's transformer: the teacher's (`config.dit`) with the step-size embedding."""
  return dataclasses.replace(experiment.dit, step_size_embedding=True)


def teacher_sampler(experiment: experiment_lib.Experiment) -> samplers.SamplerConfig:
  """The teacher's sampler: config.sample with the distill stage's steps, method, guidance."""
  config = experiment.distill_stage
  sample = experiment.sample
  return dataclasses.replace(
      sample, num_steps=config.teacher_steps, method=config.teacher_method or sample.method,
      guidance_scale=(sample.guidance_scale if config.teacher_guidance is None
                      else config.teacher_guidance))


class TrajectoryIterator:
  """Batches of cached trajectories, shuffled per epoch from (seed, epoch); exactly resumable.

  Yields {"states": float32 [B, K + 1, t, h, w, C], "times": float32 [B, K + 1],
  "tokens": int32 [B, L], "token_mask": bool [B, L]}, sharded over the mesh's batch axes.
  """

  def __init__(self, arrays: dict[str, np.ndarray], *, batch_size: int, seed: int,
               mesh: jax.sharding.Mesh, batch_axes: tuple[str, ...]):
    self.arrays = arrays
    self.size = len(arrays["states"])
    self.batch_size = batch_size
    self.seed = seed
    self.position = 0  # examples served so far
    self._epoch, self._epoch_order = -1, np.arange(0)
    self.sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(batch_axes))

  def __iter__(self) -> TrajectoryIterator:
    return self

  def _order(self, epoch: int) -> np.ndarray:
    """The epoch's permutation of the trajectories (the last one drawn is kept)."""
    if self._epoch != epoch:
      self._epoch = epoch
      self._epoch_order = np.random.default_rng([self.seed, epoch]).permutation(self.size)
    return self._epoch_order

  def _indices(self) -> np.ndarray:
    return np.asarray([self._order(position // self.size)[position % self.size]
                       for position in range(self.position, self.position + self.batch_size)])

  def __next__(self) -> dict[str, jax.Array]:
    indices = self._indices()
    self.position += self.batch_size
    return {key: jax.device_put(value[indices], self.sharding)
            for key, value in self.arrays.items()}

  def get_state(self) -> dict[str, Any]:
    return {"position": self.position}

  def set_state(self, state: dict[str, Any]) -> None:
    self.position = int(state["position"])


class DistillStage(stage_lib.Stage):
  """Distils the dit stage's transformer into a 1-K step student; see the module docstring."""

  name = workdir_lib.DISTILL_STAGE

  def __init__(self, experiment: experiment_lib.Experiment):
    self.experiment = experiment
    self.config = experiment.distill_stage
    self.teacher_stage = dit_stage.DiTStage(experiment)  # checks the configs agree
    self.student_config = student_dit_config(experiment)
    self.trainable = text_to_video.student_trainable()
    self.pairs = distillation.schedule_pairs(self.config.student_steps, self.config.max_steps)
    self.pair_probabilities = distillation.pair_probabilities(self.pairs)
    self._teacher: text_to_video.TextToVideoModel | None = None

  # -- model -------------------------------------------------------------------------------------

  def create_model(self, rngs: nnx.Rngs) -> text_to_video.TextToVideoModel:
    return text_to_video.TextToVideoModel(self.experiment.autoencoder,
                                          self.experiment.text_encoder, self.student_config,
                                          rngs=rngs)

  def teacher(self, workdir: str, mesh: jax.sharding.Mesh) -> text_to_video.TextToVideoModel:
    """The dit stage's model with its EMA weights (restored once, on `mesh`).

    Raises:
      FileNotFoundError: the dit stage has not been trained in `workdir`.
    """
    if self._teacher is None:
      workdir_lib.require_step(
          workdir, workdir_lib.DIT_STAGE,
          "the distill stage distils the dit stage's transformer: train it first with "
          "--config.stages=dit (or keep 'dit' before 'distill' in config.stages)")
      graphdef, params, frozen = text_to_video.abstract_model(
          self.experiment.autoencoder, self.experiment.text_encoder, self.experiment.dit)
      self._teacher, step = workdir_lib.restore_model(
          workdir, workdir_lib.DIT_STAGE, graphdef, params, frozen, experiment=self.experiment,
          mesh=mesh)
      logging.info("distill stage: teacher restored from the dit stage's step-%d EMA weights",
                   step)
    return self._teacher

  def load_frozen(self, state: nnx.State, workdir: str) -> nnx.State:
    """The autoencoder and the text encoder: the teacher's."""
    teacher = nnx.state(self.teacher(workdir, dit_stage.mesh_of(state)))
    for part in ("autoencoder", "text_encoder"):
      state[part] = jax.tree.map(
          lambda new, old: jax.device_put(new, old.sharding).astype(old.dtype), teacher[part],
          state[part])
    return state

  def initial_params(self, params: nnx.State, workdir: str) -> nnx.State:
    """The transformer starts as the teacher's; only the step-size embedding is new (and zero at
    its output, so the student starts as the teacher's conditional branch)."""
    teacher = nnx.state(self.teacher(workdir, dit_stage.mesh_of(params)).dit, nnx.Param)
    teacher_leaves = {jax.tree_util.keystr(path): leaf
                      for path, leaf in jax.tree_util.tree_leaves_with_path(teacher)}
    used = []

    def pick(path, leaf):
      key = jax.tree_util.keystr(path)
      if key not in teacher_leaves:
        return leaf
      used.append(key)
      return jax.device_put(teacher_leaves[key], leaf.sharding).astype(leaf.dtype)

    params["dit"] = jax.tree_util.tree_map_with_path(pick, params["dit"])
    if len(used) != len(teacher_leaves):
      missing = sorted(set(teacher_leaves) - set(used))
      raise ValueError(f"the student lacks {len(missing)} of the teacher's parameters (e.g. "
                       f"{missing[0]}): config.dit must be the one the dit stage trained")
    return params

  # -- loss --------------------------------------------------------------------------------------

  def loss(self, model: text_to_video.TextToVideoModel, batch: dict[str, jax.Array],
           rng: jax.Array, step: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Squared error of the student's velocity against the teacher's average velocity over a
    random step of a random schedule (see the module docstring).

    Metrics: loss_<n>step, the loss of the steps of the n-step schedule drawn (0 when none was).
    """
    del step
    states, times = batch["states"], batch["times"]
    size = states.shape[0]
    choice = jax.random.categorical(rng, jnp.log(jnp.asarray(self.pair_probabilities)),
                                    shape=(size,))
    pairs = jnp.asarray(self.pairs)[choice]  # [B, 3]: (i, j, n)
    rows = jnp.arange(size)
    x_t, x_s = states[rows, pairs[:, 0]], states[rows, pairs[:, 1]]
    t, s = times[rows, pairs[:, 0]], times[rows, pairs[:, 1]]
    token_mask = batch["token_mask"].astype(bool)
    context, pooled = model.text_encoder(batch["tokens"], token_mask)
    velocity = model.dit(x_t, t, context, token_mask,
                         pooled if self.student_config.pooled_dim is not None else None,
                         step_sizes=t - s)
    target = (x_s - x_t) / (s - t)[:, None, None, None, None]
    per_example = jnp.mean(jnp.square(velocity - target), axis=(1, 2, 3, 4))
    metrics = {}
    for n in sorted(set(self.config.student_steps)):
      drawn = (pairs[:, 2] == n).astype(jnp.float32)
      metrics[f"loss_{n}step"] = jnp.sum(per_example * drawn) / jnp.maximum(jnp.sum(drawn), 1.0)
    return jnp.mean(per_example), metrics

  # -- data --------------------------------------------------------------------------------------

  def settings(self, workdir: str) -> dict[str, Any]:
    """What the cached trajectories depend on (a cache made under other settings is rebuilt)."""
    teacher = teacher_sampler(self.experiment)
    return {"teacher_step": workdir_lib.require_step(workdir, workdir_lib.DIT_STAGE),
            "sampler": dataclasses.asdict(teacher), "shape": list(self.sample_shape()),
            "points": self.config.max_steps, "trajectories": self.config.trajectories,
            "seed": self.config.seed}

  def sample_shape(self) -> tuple[int, int, int]:
    """(frames, height, width) of the trajectories: the dit stage's sample shape."""
    return self.teacher_stage.sample_shape()

  def trajectories(self, workdir: str, mesh: jax.sharding.Mesh) -> dict[str, np.ndarray]:
    """The cached teacher trajectories (built now when missing or made under other settings)."""
    directory = workdir_lib.distill_cache_dir(workdir, self.experiment)
    path = os.path.join(directory, TRAJECTORIES_FILE)
    settings = self.settings(workdir)
    settings_path = os.path.join(directory, SETTINGS_FILE)
    if os.path.exists(path) and os.path.exists(settings_path):
      with open(settings_path) as f:
        if json.load(f) == json.loads(json.dumps(settings)):
          with np.load(path) as data:
            return {key: data[key] for key in data.files}
      logging.warning("distill stage: %s was made under other settings; rebuilding it", path)
    arrays = self.build_trajectories(workdir, mesh)
    if multihost.is_primary():
      os.makedirs(directory, exist_ok=True)
      np.savez(path + ".tmp.npz", **arrays)
      os.replace(path + ".tmp.npz", path)
      with open(settings_path, "w") as f:
        json.dump(settings, f, indent=2)
    return arrays

  def build_trajectories(self, workdir: str, mesh: jax.sharding.Mesh) -> dict[str, np.ndarray]:
    """Integrates the teacher from fixed noise for `trajectories` training captions."""
    config = self.config
    teacher = self.teacher(workdir, mesh)
    tokenizer = self.teacher_stage.tokenizer(workdir)
    captions = list(loader_lib.captions(self.experiment.data, seed=config.seed,
                                        num=config.trajectories))
    if not captions:
      raise ValueError("the data holds no captions to distil on: check config.data")
    captions = [captions[i % len(captions)] for i in range(config.trajectories)]
    tokens, token_mask = tokenizer.encode(captions)
    null_tokens = np.full_like(tokens[:1], tokenizer.pad_id)
    null_mask = np.zeros_like(token_mask[:1])

    frames, height, width = self.sample_shape()
    autoencoder = self.experiment.autoencoder
    latent_shape = (1 + (frames - 1) // autoencoder.temporal_factor,
                    height // autoencoder.spatial_factor, width // autoencoder.spatial_factor,
                    autoencoder.latent_channels)
    sampler = teacher_sampler(self.experiment)
    shift = samplers.sampling_shift(sampler, self.experiment.diffusion, dit_stage.num_tokens(
        latent_shape, self.experiment.dit.patch_size))
    graphdef, state = nnx.split(teacher)
    pooled_used = self.experiment.dit.pooled_dim is not None

    @jax.jit
    def integrate(state, noise, ids, mask):
      def encode(ids, mask):
        context, pooled = nnx.merge(graphdef, state).text_encoder(ids, mask)
        return {"context": context, "context_mask": mask, "pooled": pooled}

      def velocity(carried, x, t, cond):
        return nnx.merge(graphdef, carried).dit(x, t, cond["context"], cond["context_mask"],
                                                cond["pooled"] if pooled_used else None)

      positive = encode(ids, mask)
      negative = encode(jnp.broadcast_to(null_tokens, ids.shape),
                        jnp.broadcast_to(null_mask, mask.shape))
      return distillation.teacher_states(velocity, noise, config=sampler, shift=shift,
                                         points=config.max_steps, conditioning=positive,
                                         negative_conditioning=negative, params=state)

    key = jax.random.key(config.seed)
    states = []
    starts = range(0, config.trajectories, config.trajectory_batch)
    for start in tqdm.tqdm(starts, desc="teacher trajectories", unit="batch",
                           disable=not multihost.is_primary()):
      stop = min(start + config.trajectory_batch, config.trajectories)
      # One key per trajectory: its noise does not depend on the batching.
      noise = jnp.stack([samplers.initial_noise(jax.random.fold_in(key, index), latent_shape)
                         for index in range(start, stop)])
      states.append(np.asarray(integrate(state, noise, jnp.asarray(tokens[start:stop]),
                                         jnp.asarray(token_mask[start:stop]))))
    grid = distillation.student_grid(config.max_steps, shift)
    logging.info("distill stage: %d teacher trajectories (%s, %d steps, guidance %g) at times %s",
                 config.trajectories, sampler.method, sampler.num_steps, sampler.guidance_scale,
                 np.round(grid, 4).tolist())
    return {"states": np.concatenate(states).astype(np.float32),
            "times": np.broadcast_to(grid, (config.trajectories, len(grid))).astype(np.float32),
            "tokens": np.asarray(tokens, np.int32), "token_mask": np.asarray(token_mask, bool)}

  def make_iterator(self, *, mesh: jax.sharding.Mesh, seed: int,
                    workdir: str) -> stage_lib.BatchIterator:
    arrays = self.trajectories(workdir, mesh)
    return TrajectoryIterator(arrays, batch_size=self.config.batch_size, seed=seed, mesh=mesh,
                              batch_axes=tuple(self.experiment.mesh.rules[axes.ACT_BATCH]))
