"""The train state pytree, the optimizer, and the pure train step shared by every stage.

    tx = make_optimizer(train_config)
    step_fn = make_train_step(stage, graphdef, tx, train_config, mesh=mesh,
                              rules=mesh_config.rules,
                              sequence_parallel=mesh_config.sequence_parallel)
    state, metrics = step_fn(state, batch)      # pure; jitted once per batch shape by the trainer

The state holds the trainable variables (`stage.trainable`) and the frozen ones apart: only the
trainable ones get optimizer state and an EMA copy.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from videogen.parallel import axes
from videogen.parallel import sharding as sharding_lib
from videogen.train import config as config_lib
from videogen.train import stage as stage_lib

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes; checkpointed whole.

  Attributes:
    step: int32 [], the number of steps taken.
    params: the trainable variables (an `nnx.State`).
    frozen: the other variables of the model, carried unchanged (an `nnx.State`, maybe empty).
    opt_state: the optax state of `params`.
    ema_params: exponential moving average of `params`, used for evaluation and sampling.
    rng: uint32 [2] key data; step `n` draws from `fold_in(rng, n)`.
  """
  step: jax.Array
  params: nnx.State
  frozen: nnx.State
  opt_state: optax.OptState
  ema_params: nnx.State
  rng: jax.Array

  def checkpoint_tree(self) -> dict[str, Any]:
    """The checkpointed tree: every field, by name.

    The frozen variables are included, so that a stage's checkpoint alone rebuilds its model for
    sampling (the diffusion stage's holds the frozen autoencoder); on resume they are restored
    over what init and `stage.load_frozen` produced.
    """
    return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}

  @classmethod
  def from_checkpoint_tree(cls, tree: dict[str, Any]) -> TrainState:
    return cls(**tree)


def make_schedule(config: Any) -> optax.Schedule:
  """Linear warm-up from 0 to `learning_rate`, then cosine or linear decay (or constant), then the
  phase's constant `phase_learning_rate` over the last `phase_steps`.

  Args:
    config: a `videogen.train.config.TrainConfig`.
  """
  if config.phase_steps:
    start = config.num_steps - config.phase_steps
    before = make_schedule(dataclasses.replace(config, num_steps=start, phase_steps=0))
    return optax.join_schedules(
        [before, optax.constant_schedule(config.phase_learning_rate)], [start])
  peak = config.learning_rate
  warmup = max(config.warmup_steps, 0)
  if config.schedule == "constant":
    after = optax.constant_schedule(peak)
  else:
    end = config.decay_steps if config.decay_steps is not None else config.num_steps
    length, final = max(end - warmup, 1), config.final_learning_rate_fraction
    after = (optax.linear_schedule(peak, final * peak, length) if config.schedule == "linear"
             else optax.cosine_decay_schedule(peak, decay_steps=length, alpha=final))
  if warmup == 0:
    return after
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def _decay_mask(params: Any) -> Any:
  """Weight decay on matrices only: norm scales and biases (rank < 2) are not decayed."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def muon_dimensions(params: Any) -> Any:
  """How Muon sees each weight of `params` (NNX Variables carrying logical axis names).

  Returns the tree of `params` with, at each Variable, `MuonDimensionNumbers` for a hidden
  kernel or None for a weight Adam trains. Read from the logical names: the scanned "layers"
  axis is a batch of matrices; a kernel that starts with "embed" reduces over it and writes its
  other axes (queries, keys, values, the MLP's up-projection, adaLN modulation), any other kernel
  writes its last axis (attention's output, the MLP's down-projection, a convolution). Kernels
  whose input or output axes are all unnamed sit at the network's edge (the patch and
  time-frequency inputs, the velocity head) and stay with Adam, as do token embeddings (a
  "vocab" axis), biases and norm scales.
  """
  def for_variable(path, variable):
    names = (sharding_lib.variable_axes(variable) if isinstance(variable, nnx.Variable)
             else None)
    if (names is None or getattr(path[-1], "key", None) != "kernel"
        or axes.VOCAB in names):  # a lookup table, not a product
      return None
    matrix_axes = [i for i, name in enumerate(names) if name != axes.LAYERS]
    if len(matrix_axes) < 2:
      return None
    split = 1 if names[matrix_axes[0]] == axes.EMBED else len(matrix_axes) - 1
    reduction, output = matrix_axes[:split], matrix_axes[split:]
    if all(names[i] is None for i in reduction) or all(names[i] is None for i in output):
      return None
    return optax.contrib.MuonDimensionNumbers(tuple(reduction), tuple(output))

  return jax.tree_util.tree_map_with_path(
      for_variable, params, is_leaf=lambda x: isinstance(x, nnx.Variable))


class LearningRateScaleError(ValueError):
  """`TrainConfig.learning_rate_scales` names a part that the stage does not train."""


def check_learning_rate_scales(config: Any, params: Any, stage_name: str = "") -> None:
  """Raises `LearningRateScaleError` unless each part that `config.learning_rate_scales` names is
  a top-level key of the trainable variables `params` (an `nnx.State`, possibly abstract)."""
  parts = sorted(params.keys())
  where = f"config.train.{stage_name}." if stage_name else ""
  stage = f"the {stage_name} stage" if stage_name else "this stage"
  for part in config_lib.parse_learning_rate_scales(config.learning_rate_scales):
    if part not in parts:
      raise LearningRateScaleError(f"{where}learning_rate_scales names {part!r}, which {stage} "
                                   f"does not train: name one of {parts}")


def _part_mask(config: Any, part: str) -> Callable[[Any], Any]:
  """The optax mask of the variables under the top-level key `part` of the trainable ones."""
  def mask(params: Any) -> Any:
    check_learning_rate_scales(config, params)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[0], "key", None) == part, params)
  return mask


def make_optimizer(config: Any) -> optax.GradientTransformation:
  """The optimizer of a `TrainConfig`: global-norm clipping, then AdamW, Adafactor or Muon, then
  the `learning_rate_scales` of named parts."""
  schedule = make_schedule(config)
  if config.optimizer == "adamw":
    optimizer = optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                            weight_decay=config.weight_decay, mask=_decay_mask)
  elif config.optimizer == "adafactor":
    optimizer = optax.adafactor(schedule, weight_decay_rate=config.weight_decay or None,
                                weight_decay_mask=_decay_mask)
  elif config.optimizer == "muon":
    # consistent_rms=0.2 matches the update size of AdamW (Liu et al. 2025, "Muon is Scalable
    # for LLM Training"), so learning_rate and weight_decay mean what they mean for "adamw".
    optimizer = optax.contrib.muon(
        schedule, beta=config.muon_momentum, eps=config.eps, weight_decay=config.weight_decay,
        adam_b1=config.b1, adam_b2=config.b2, consistent_rms=0.2,
        muon_weight_dimension_numbers=muon_dimensions)
  else:
    raise ValueError(f"unknown optimizer {config.optimizer!r}; choose 'adamw', 'adafactor' or "
                     f"'muon'")
  scales = config_lib.parse_learning_rate_scales(config.learning_rate_scales)
  transforms = [optimizer] + [optax.masked(optax.scale(scale), _part_mask(config, part))
                              for part, scale in scales.items()]
  if config.clip_grad_norm > 0:
    transforms.insert(0, optax.clip_by_global_norm(config.clip_grad_norm))
  return optax.chain(*transforms) if len(transforms) > 1 else optimizer


# XLA options for compiling the initialisation, per platform. On a CPU, LLVM's optimisations of
# the many random-number kernels take 20-30 s a stage for a program that runs once; unoptimised it
# compiles in 3-8 s (docs/tiny_run.md). The values differ from an optimised compile by an ulp in
# about 2% of the elements; every run and mesh initialises this way, so a machine repeats itself.
INIT_COMPILER_OPTIONS: dict[str, dict[str, Any]] = {"cpu": {"xla_backend_optimization_level": 0}}


def init_train_state(stage: stage_lib.Stage, tx: optax.GradientTransformation, seed: int,
                     salt: int = 0) -> TrainState:
  """Builds the model and its fresh state. Meant to run under `jax.jit` or `jax.eval_shape`.

  Eager sharding is off while the model is built: parameters carry logical names only, and the
  trainer places them with `out_shardings` derived from the rules table.

  Args:
    stage: builds the model.
    tx: the optimizer, to initialise its state.
    seed: the experiment seed.
    salt: distinguishes the stages of one experiment (their keys differ).
  """
  init_key, step_key = jax.random.split(jax.random.fold_in(jax.random.key(seed), salt))
  with nnx.use_eager_sharding(False):
    model = stage.create_model(nnx.Rngs(init_key))
  _, params, frozen = nnx.split(model, stage.trainable, ...)
  return TrainState(
      step=jnp.zeros((), jnp.int32), params=params, frozen=frozen, opt_state=tx.init(params),
      ema_params=jax.tree.map(jnp.copy, params), rng=jax.random.key_data(step_key))


def init_sharded_train_state(stage: stage_lib.Stage, tx: optax.GradientTransformation,
                             seed: int, mesh: jax.sharding.Mesh, rules: Any,
                             salt: int = 0) -> tuple[TrainState, Any]:
  """A fresh train state built directly into its shardings; returns (state, state shardings).

  The state is first traced abstractly (`jax.eval_shape`), its logical axis names are mapped to
  `NamedSharding`s on `mesh` by `rules`, and the init is jitted with those `out_shardings`, so no
  model ever lands whole on one device. It is compiled with `INIT_COMPILER_OPTIONS`.
  """
  init = lambda: init_train_state(stage, tx, seed, salt)
  shardings = sharding_lib.tree_shardings(jax.eval_shape(init), mesh, rules)
  lowered = jax.jit(init, out_shardings=shardings).lower()
  options = INIT_COMPILER_OPTIONS.get(mesh.devices.flat[0].platform)
  return lowered.compile(compiler_options=options)(), shardings


def abstract_model(stage: stage_lib.Stage) -> tuple[nnx.GraphDef, nnx.State, nnx.State]:
  """(graphdef, abstract trainable state, abstract frozen state) without allocating anything."""
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: stage.create_model(nnx.Rngs(0)))
  return nnx.split(model, stage.trainable, ...)


def _microbatches(batch: Batch, count: int, mesh: jax.sharding.Mesh,
                  batch_axes: tuple[str, ...]) -> Batch:
  """[B, ...] -> [count, B / count, ...], microbatch i holding rows i, i + count, ...

  Strided rather than contiguous, so that every microbatch is spread over all the devices that
  hold the batch (a contiguous split would put each microbatch on a fraction of them).
  """
  def split(x):
    if x.shape[0] % count:
      raise ValueError(f"batch size {x.shape[0]} is not divisible by grad_accum_steps={count}")
    rows = x.reshape(x.shape[0] // count, count, *x.shape[1:])
    micro = jnp.swapaxes(rows, 0, 1)
    spec = PartitionSpec(None, batch_axes if batch_axes else None)
    return jax.lax.with_sharding_constraint(micro, NamedSharding(mesh, spec))
  return jax.tree.map(split, batch)


def make_train_step(stage: stage_lib.Stage, graphdef: nnx.GraphDef,
                    tx: optax.GradientTransformation, config: Any, *,
                    mesh: jax.sharding.Mesh, rules: sharding_lib.Rules,
                    sequence_parallel: str) -> Callable[[TrainState, Batch],
                                                        tuple[TrainState, Metrics]]:
  """The pure step `(state, batch) -> (state, metrics)` for `stage`.

  The step traces its body inside `sharding.activation_sharding(mesh, rules, sequence_parallel)`,
  so however it is jitted (the trainer, the benchmark, a test), the models' activation constraints
  and sequence-parallel attention take effect; its own context is the innermost one.

  A step whose loss or gradient norm is not finite leaves the state unchanged (the metrics still
  report the bad values, and the trainer stops on them), so the state stays the last good one.

  Args:
    stage: supplies the loss.
    graphdef: the model's graph definition (from `nnx.split`).
    tx: the optimizer.
    config: the stage's `TrainConfig` (ema_decay, grad_accum_steps).
    mesh, rules: to constrain the activations and keep microbatches sharded like the batch.
    sequence_parallel: how attention splits its tokens over the mesh's "sequence" axis
      (`MeshConfig.sequence_parallel`: "auto", "ulysses" or "ring"). No default: the step's
      context overrides any its caller entered, so the caller names the method here.
  """
  schedule = make_schedule(config)
  accum_steps = config.grad_accum_steps
  batch_axes = sharding_lib.batch_axes(mesh, rules)

  def loss_fn(params, frozen, batch, rng, step):
    model = nnx.merge(graphdef, params, frozen)
    loss, metrics = stage.loss(model, batch, rng, step)
    return loss, metrics

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def gradients(state: TrainState, batch: Batch, rng: jax.Array):
    if accum_steps == 1:
      return grad_fn(state.params, state.frozen, batch, rng, state.step)
    micro = _microbatches(batch, accum_steps, mesh, batch_axes)

    def accumulate(carry, inputs):
      index, microbatch = inputs
      (loss, metrics), grads = grad_fn(state.params, state.frozen, microbatch,
                                       jax.random.fold_in(rng, index), state.step)
      return jax.tree.map(jnp.add, carry, ((loss, metrics), grads)), None

    zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(
        lambda: grad_fn(state.params, state.frozen, jax.tree.map(lambda x: x[0], micro), rng,
                        state.step)))
    summed, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(accum_steps), micro))
    return jax.tree.map(lambda x: x / accum_steps, summed)

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    with sharding_lib.activation_sharding(mesh, rules, sequence_parallel):
      return sharded_step(state, batch)

  def sharded_step(state: TrainState, batch: Batch) -> tuple[TrainState, Metrics]:
    rng = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    # Named scopes label the phases in a profile (`TrainConfig.profile_steps`).
    with jax.named_scope("loss_and_gradients"):
      (loss, stage_metrics), grads = gradients(state, batch, rng)
    with jax.named_scope("optimizer"):
      grad_norm = optax.tree.norm(grads)
      updates, opt_state = tx.update(grads, state.opt_state, state.params)
      params = optax.apply_updates(state.params, updates)
    with jax.named_scope("ema"):
      decay = config.ema_decay
      ema_params = jax.tree.map(lambda ema, new: decay * ema + (1.0 - decay) * new,
                                state.ema_params, params)
    stepped = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                            ema_params=ema_params)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), stepped, state)
    metrics = {"loss": loss, "grad_norm": grad_norm,
               "learning_rate": jnp.asarray(schedule(state.step), jnp.float32)}
    for name, value in stage_metrics.items():
      if name in metrics:
        raise ValueError(f"stage {stage.name!r} returns a metric named {name!r}, which the trainer "
                         f"already reports; rename it")
      metrics[name] = value
    return new_state, jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), metrics)

  return train_step
