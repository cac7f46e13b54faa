r"""The one trainer: every stage of an experiment, with sharding, checkpoints, resume and guards.

    results = train(experiment, workdir)       # `python -m videogen.main train` (train.command)

`train` builds the mesh from `config.mesh` and trains each stage of `config.stages` in order; a
stage whose latest checkpoint is already at `num_steps` is skipped. `train_stage` trains one stage
in the sections a reader finds by their banners:

  Mesh        the mesh comes from `train`; its rules table maps logical axis names to mesh axes.
  Checkpoint  a stage already trained (under the same config) is skipped before anything is
              built; a checkpoint written under another config is refused unless
              `allow_config_change` (`config_changes`).
  Model       the optimizer, and `nnx.eval_shape`'s abstract model.
  Shard       `jax.jit(init, out_shardings=...)` builds the state already sharded, so no model
              ever lands whole on one device; `stage.load_frozen` fills the frozen variables,
              `stage.initial_params` may start the trainable ones from other weights.
  Input       the stage's iterator of sharded global batches.
  Checkpoint  resume: the newest checkpoint that reads back whole is restored onto those
              shardings (whatever mesh saved it), with the data iterator's position; a damaged
              one is set aside with a warning. The checkpoint holds the frozen variables too, so
              that it alone rebuilds the model for sampling.
  Update      the pure step, compiled once per batch shape (`.lower().compile()`, memory
              analysis logged) with explicit in/out shardings and a donated state, which
              crosses the jit boundary as its flat list of leaves.
  Evals       `stage.evaluate` on the EMA parameters every `eval_every` steps.
  Loop        metrics to metrics.jsonl and TensorBoard, and after the stage its loss curve to
              WORKDIR/curves/<stage>.svg; checkpoints every `checkpoint_every` steps (async), at
              the end and on SIGTERM, each before that step's evaluation, which cannot lose it by
              failing; a `jax.profiler` trace of `profile_steps`. A non-finite loss or gradient
              stops the run naming the step; the state it produced is never saved, so the last
              checkpoint on disk is the last good one.
"""

from __future__ import annotations

import dataclasses
import time
import zlib
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import tqdm
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from videogen import config as config_lib
from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from videogen.parallel import memory as memory_lib
from videogen.parallel import mesh as mesh_lib
from videogen.parallel import multihost
from videogen.parallel import sharding as sharding_lib
from videogen.train import checkpointing
from videogen.train import config as configs
from videogen.train import config_changes
from videogen.train import curves as curves_lib
from videogen.train import metrics as metrics_lib
from videogen.train import preemption as preemption_lib
from videogen.train import profiling
from videogen.train import stage as stage_lib
from videogen.train import stages as stages_lib
from videogen.train import train_state as train_state_lib
from videogen.train.train_state import TrainState


class NonFiniteError(FloatingPointError):
  """A step produced a non-finite loss or gradient norm."""


class ConfigChangedError(ValueError):
  """The workdir holds checkpoints written under a different config."""


@dataclasses.dataclass
class StageResult:
  """How `train_stage` ended: "done", "skipped" (trained before) or "preempted" (saved, stopped)."""
  name: str
  status: Literal["done", "skipped", "preempted"]
  step: int
  state: TrainState | None = None


# ---------------------------------------------------------------------------------------------
# Pieces of the loop.


def _batch_signature(batch: dict[str, jax.Array]) -> tuple:
  return tuple((name, value.shape, str(value.dtype)) for name, value in sorted(batch.items()))


def describe_batch(batch: dict[str, jax.Array]) -> str:
  """The batch's arrays and shapes for messages, e.g. "tokens[8, 48], video[8, 9, 32, 32, 3]"."""
  return ", ".join(f"{name}{list(value.shape)}" for name, value in sorted(batch.items()))


def _log_memory(compiled: Any, shapes: str, seconds: float) -> None:
  analysis = compiled.memory_analysis()
  if analysis is None:
    logging.info("compiled the train step for %s in %.1fs", shapes, seconds)
    return
  mib = lambda n: f"{n / 2**20:.1f} MiB"
  logging.info("compiled the train step for %s in %.1fs; per device: arguments %s, outputs %s, "
               "temporaries %s, aliased (donated) %s, code %s", shapes, seconds,
               mib(analysis.argument_size_in_bytes), mib(analysis.output_size_in_bytes),
               mib(analysis.temp_size_in_bytes), mib(analysis.alias_size_in_bytes),
               mib(analysis.generated_code_size_in_bytes))


# What to change when a train step does not fit in memory (`memory_lib.check_fits`).
MEMORY_REMEDY = ("Use smaller batches (the per-bucket batch sizes of config.data.buckets, or of "
                 "config.autoencoder_loss.buckets for the autoencoder stage), rematerialisation "
                 "(config.dit.remat, config.autoencoder.remat), or more devices.")


def stage_salt(name: str) -> int:
  """What makes a stage's keys its own: the initial state's and the steps' keys are derived, inside
  the jitted init, from the experiment seed and this."""
  return zlib.crc32(name.encode()) & 0x7FFFFFFF


class StepCompiler:
  """Compiles the train step once per distinct batch signature, ahead of running it.

  The state crosses the jit boundary as its flat list of leaves (`flatten`, `unflatten`): the
  loop holds that list, so no step pays Python to flatten and rebuild the state's nnx Variables.
  A call of the tiny transformer's step then costs the host 0.8-1.4 ms, not 5-10 ms
  (docs/studies/step_dispatch.py). A 0.14 s CPU step hides either (docs/tiny_run.md); an
  accelerator's steps take 10-44 ms (docs/accelerator.md). A compiled step that cannot fit in
  the host's memory (CPU devices) is refused with a `memory_lib.StepMemoryError` before it runs.
  """

  def __init__(self, step_fn, state: TrainState, state_shardings: Any, mesh: jax.sharding.Mesh,
               name: str):
    self._name = name
    self._treedef = jax.tree.structure(state)
    self._leaf_shardings = self._treedef.flatten_up_to(state_shardings)
    self._replicated = NamedSharding(mesh, PartitionSpec())
    self._local_devices = memory_lib.local_devices(mesh)
    self._compiled: dict[tuple, Any] = {}

    def flat_step(leaves: list[jax.Array], batch: dict[str, jax.Array]) -> tuple[list, Any]:
      new_state, metrics = step_fn(self.unflatten(leaves), batch)
      return self.flatten(new_state), metrics

    self._flat_step = flat_step

  def flatten(self, state: TrainState) -> list[jax.Array]:
    """The state's leaves, in the order the compiled steps take and return them."""
    return self._treedef.flatten_up_to(state)

  def unflatten(self, leaves: list[jax.Array]) -> TrainState:
    return self._treedef.unflatten(leaves)

  def lower(self, leaves: list[jax.Array], batch: dict[str, jax.Array]) -> jax.stages.Lowered:
    """The step for `batch`'s shapes, lowered: the program `__call__` compiles (and the
    benchmark times, `videogen.evaluate.benchmark.train_step_figures`)."""
    batch_shardings = {name: value.sharding for name, value in batch.items()}
    jitted = jax.jit(self._flat_step, in_shardings=(self._leaf_shardings, batch_shardings),
                     out_shardings=(self._leaf_shardings, self._replicated),
                     donate_argnums=(0,))
    # The step traces itself inside `activation_sharding` (`make_train_step`).
    return jitted.lower(leaves, batch)

  def __call__(self, leaves: list[jax.Array], batch: dict[str, jax.Array]) -> Any:
    """The compiled step for `batch`'s shapes: `(leaves, batch) -> (leaves, metrics)`."""
    signature = _batch_signature(batch)
    if signature not in self._compiled:
      start = time.perf_counter()
      compiled = self.lower(leaves, batch).compile()
      shapes = describe_batch(batch)
      _log_memory(compiled, shapes, time.perf_counter() - start)
      memory_lib.check_fits(compiled, devices=self._local_devices,
                            what=f"the {self._name} train step for {shapes}",
                            remedy=MEMORY_REMEDY)
      self._compiled[signature] = compiled
    return self._compiled[signature]

  @property
  def num_compiled(self) -> int:
    return len(self._compiled)


class _IntervalMeans:
  """Means of the step metrics since the last metric row (since the start, after a resume).

  One step's loss is a noisy sample (a diffusion loss depends on the noise level drawn at that
  step), so each row holds the interval's means; the learning rate is the logged step's own.
  """
  _LAST_VALUE = ("learning_rate",)

  def __init__(self):
    self.sums: dict[str, float] = {}
    self.last: dict[str, float] = {}
    self.count = 0

  def add(self, values: dict[str, float]) -> None:
    for key, value in values.items():
      self.sums[key] = self.sums.get(key, 0.0) + value
    self.last = values
    self.count += 1

  def pop(self) -> dict[str, float]:
    row = {key: total / self.count for key, total in self.sums.items()}
    row.update({key: self.last[key] for key in self._LAST_VALUE if key in self.last})
    self.sums, self.last, self.count = {}, {}, 0
    return row


def _check_finite(name: str, step: int, metrics: dict[str, float],
                  checkpointer: checkpointing.Checkpointer) -> None:
  loss, grad_norm = metrics["loss"], metrics["grad_norm"]
  if np.isfinite(loss) and np.isfinite(grad_norm):
    return
  checkpointer.wait()
  last = checkpointer.latest_step()
  kept = (f"the last good checkpoint is step {last} in {checkpointer.directory}" if last is not None
          else "no checkpoint was saved yet")
  raise NonFiniteError(
      f"stage {name}: non-finite {'loss' if not np.isfinite(loss) else 'gradient'} at step {step} "
      f"(loss={loss}, grad_norm={grad_norm}); the run stopped and {kept}. Lower "
      f"config.train.{name}.learning_rate or clip harder (clip_grad_norm), then run the same "
      f"command to resume from that checkpoint")


def _check_config(saved: dict[str, Any], current: dict[str, Any], *, name: str, workdir: str,
                  allow_config_change: bool) -> None:
  """Refuses (or, when allowed, logs) a resume under a config that computes something else."""
  differences = config_changes.config_differences(saved, current, stage=name)
  if not differences:
    return
  listed = config_lib.listed(differences, 12)
  if allow_config_change:
    logging.warning("stage %s: resuming under a changed config (--allow_config_change): %s",
                    name, listed)
    return
  raise ConfigChangedError(
      f"{workdir} holds checkpoints of stage {name} made with a different config: {listed}. "
      f"Use a new --workdir, or pass --allow_config_change to resume under the new config")


def train_stage(stage: stage_lib.Stage, experiment: experiment_lib.Experiment, workdir: str, *,
                mesh: jax.sharding.Mesh, writer: metrics_lib.MetricWriter | None = None,
                allow_config_change: bool = False) -> StageResult:
  """Trains one stage to `config.train.<stage>.num_steps`, resuming from its checkpoints.

  Args:
    stage: what to train.
    experiment: the validated experiment (its `train[stage.name]` config is used).
    workdir: the run's directory; checkpoints go to WORKDIR/checkpoints/<stage>/.
    mesh: the device mesh.
    writer: where metrics go (default: a new `MetricWriter(workdir)`).
    allow_config_change: resume even if the checkpoint's config differs from this one.

  Returns:
    How the stage ended, with the final state ("done" and "preempted").

  Raises:
    NonFiniteError: a step had a non-finite loss or gradient.
    ConfigChangedError: the checkpoints were written under another config.
    checkpointing.CheckpointRestoreError: there are checkpoints but none restores.
  """
  name = stage.name
  config: configs.TrainConfig = experiment.train[name]
  own_writer = writer is None
  writer = metrics_lib.MetricWriter(workdir) if writer is None else writer
  checkpointer = checkpointing.Checkpointer(
      workdir_lib.checkpoint_dir(workdir, name), keep=config.keep_checkpoints,
      async_save=config.async_checkpoints)
  current_config = config_changes.experiment_json(experiment)
  check_config = lambda saved: _check_config(saved, current_config, name=name, workdir=workdir,
                                             allow_config_change=allow_config_change)
  progress = None
  profile = profiling.ProfileWindow(config.profile_steps,
                                    metrics_lib.tensorboard_dir(workdir, name))
  try:
    # == Mesh ===================================================================================
    # Built by `train`; the rules table maps the model's logical axis names onto it.
    rules = experiment.mesh.rules

    # == Checkpoint: a stage trained before is skipped before anything is built =================
    latest = checkpointer.latest_step()
    if latest is not None and latest >= config.num_steps:
      try:
        saved_config = checkpointer.read_config(latest)
      except checkpointing.RESTORE_ERRORS:
        saved_config = None  # damaged: the restore below falls back past it
      if saved_config is not None:
        check_config(saved_config)
        logging.info("stage %s: already trained (checkpoint at step %d >= num_steps=%d); skipping",
                     name, latest, config.num_steps)
        return StageResult(name, "skipped", latest)

    # == Model ==================================================================================
    tx = train_state_lib.make_optimizer(config)
    graphdef, abstract_params, _ = train_state_lib.abstract_model(stage)
    train_state_lib.check_learning_rate_scales(config, abstract_params, name)

    # == Shard: the state initialised directly into its shardings ===============================
    state, state_shardings = train_state_lib.init_sharded_train_state(
        stage, tx, experiment.seed, mesh, rules, salt=stage_salt(name))
    full = stage.load_frozen(nnx.merge_state(state.params, state.frozen), workdir)
    _, frozen = nnx.split_state(full, stage.trainable, ...)
    state = state.replace(frozen=frozen)
    # The EMA starts from the starting weights, also where the stage replaced some (a student
    # starting as its teacher, a text encoder as the text stage's), in place or not.
    params = stage.initial_params(state.params, workdir)
    state = state.replace(params=params, ema_params=jax.tree.map(jnp.copy, params))
    num_params = sum(x.size for x in jax.tree.leaves(state.params))
    logging.info("stage %s: %d trainable parameters; mesh %s; parameters + optimizer state + EMA "
                 "take %.2f MiB per device", name, num_params, mesh_lib.describe(mesh),
                 sharding_lib.bytes_per_device(state) / 2**20)

    # == Input ==================================================================================
    iterator = stage.make_iterator(mesh=mesh, seed=experiment.seed, workdir=workdir)

    # == Checkpoint: resume the state and the data position =====================================
    abstract_state = jax.eval_shape(lambda s: s, state)
    target = sharding_lib.with_shardings(abstract_state, state_shardings).checkpoint_tree()
    restored = checkpointer.restore_latest(target, check_config=check_config)
    if restored is not None:
      state = TrainState.from_checkpoint_tree(restored.state)
      iterator.set_state(restored.data)
      writer.resume(name, restored.step)
      logging.info("stage %s: resumed from step %d", name, restored.step)
    step = int(state.step)
    if step >= config.num_steps:
      return StageResult(name, "skipped", step, state)

    # == Update =================================================================================
    step_fn = train_state_lib.make_train_step(
        stage, graphdef, tx, config, mesh=mesh, rules=rules,
        sequence_parallel=experiment.mesh.sequence_parallel)
    compiler = StepCompiler(step_fn, state, state_shardings, mesh, stage.name)

    # == Evals ==================================================================================
    def evaluate(at_step: int, trained: TrainState) -> None:
      """`stage.evaluate` on the EMA parameters; its scores go to the metrics as eval/<name>."""
      model = nnx.merge(graphdef, trained.ema_params, trained.frozen)
      scores = stage.evaluate(model, at_step, workdir)
      if scores:
        writer.write(name, at_step, {f"eval/{k}": v for k, v in scores.items()})

    # == Loop ===================================================================================
    progress = tqdm.tqdm(total=config.num_steps, initial=step, desc=f"train {name}", unit="step",
                         disable=not (multihost.is_primary() and config.progress_bar),
                         dynamic_ncols=True, mininterval=1.0)
    pending: list[tuple[int, dict[str, jax.Array]]] = []
    # Steps/s between logged steps, from the step count and the wall clock (reset after a compile),
    # and the process's CPU seconds per step: the compute measure a busy machine does not inflate.
    timer = {"time": time.perf_counter(), "cpu": time.process_time(), "step": step}
    interval = _IntervalMeans()

    def drain() -> None:
      """Fetches the metrics of finished steps, checks them and logs the due ones."""
      for done_step, device_metrics in pending:
        values = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        _check_finite(name, done_step, values, checkpointer)
        interval.add(values)
        progress.update(1)
        if done_step % config.log_every == 0 or done_step == config.num_steps:
          row = interval.pop()
          now, cpu_now = time.perf_counter(), time.process_time()
          if done_step > timer["step"]:
            row["steps_per_second"] = (done_step - timer["step"]) / (now - timer["time"])
            row["cpu_seconds_per_step"] = (cpu_now - timer["cpu"]) / (done_step - timer["step"])
          timer.update(time=now, cpu=cpu_now, step=done_step)
          writer.write(name, done_step, row)
          progress.set_postfix(loss=f"{row['loss']:.4g}", refresh=False)
      pending.clear()

    status = "done"
    # The loop holds the state as the compiled step's flat leaves; `state` is rebuilt from them
    # only where it is read (a checkpoint, an evaluation, the result).
    leaves = compiler.flatten(state)
    del state  # donated by the first step
    with preemption_lib.PreemptionWatch() as preemption:
      while step < config.num_steps:
        if config.phase_steps and step == config.num_steps - config.phase_steps:
          logging.info("stage %s: steps %d-%d are the phase, at a constant learning rate of %g "
                       "(the stage may train another objective there: its loss need not "
                       "compare with the steps before)", name, step + 1, config.num_steps,
                       config.phase_learning_rate)
        profile.before_step(step + 1)
        with jax.profiler.TraceAnnotation("data"):
          batch = next(iterator)
        compiled_before = compiler.num_compiled
        compiled = compiler(leaves, batch)
        if compiler.num_compiled != compiled_before:
          drain()
          # Keep compilation out of steps/s and CPU seconds per step.
          timer.update(time=time.perf_counter(), cpu=time.process_time(), step=step)
        with jax.profiler.StepTraceAnnotation("step", step_num=step + 1):
          leaves, step_metrics = compiled(leaves, batch)
        step += 1
        with jax.profiler.TraceAnnotation("metrics"):
          drain()  # the previous step's metrics: this one is already queued behind it
        pending.append((step, step_metrics))
        profile.after_step(step, leaves)
        stopping = preemption.should_stop(step)
        save_now = stopping or step % config.checkpoint_every == 0 or step == config.num_steps
        evaluate_now = config.eval_every > 0 and step % config.eval_every == 0
        if save_now or evaluate_now:
          drain()  # never save or evaluate a state whose loss was not checked
        # Saved before the evaluation, so that an evaluation that fails (or a preemption's grace
        # period that runs out during one) costs no trained step.
        if save_now:
          with jax.profiler.TraceAnnotation("checkpoint"):
            checkpointer.save(step, compiler.unflatten(leaves).checkpoint_tree(),
                              iterator.get_state(), current_config)
          if stopping and evaluate_now:
            checkpointer.wait()
        if evaluate_now:
          with jax.profiler.TraceAnnotation("evaluate"):
            evaluate(step, compiler.unflatten(leaves))
        if stopping:
          logging.warning("stage %s: stopped by preemption at step %d after saving; run the same "
                          "command to resume", name, step)
          status = "preempted"
          break
      drain()
    checkpointer.wait()
    writer.flush()
    if multihost.is_primary():
      for path in curves_lib.write_curves(workdir, stages=[name]):
        logging.info("stage %s: loss curve in %s", name, path)
    return StageResult(name, status, step, compiler.unflatten(leaves))
  finally:
    profile.close()
    if progress is not None:
      progress.close()
    checkpointer.close()
    if own_writer:
      writer.close()


def load_model(experiment: experiment_lib.Experiment, workdir: str, stage_name: str, *,
               mesh: jax.sharding.Mesh | None = None, use_ema: bool = True,
               step: int | None = None) -> tuple[nnx.Module, int]:
  """A trained stage's model from WORKDIR/checkpoints/<stage>/, sharded over `mesh`.

  For generation, evaluation and export. Only the (EMA) parameters and the frozen variables are
  read from the checkpoint; the optimizer state stays on disk.

  Args:
    experiment: the validated experiment the workdir was trained with.
    workdir: the run's directory.
    stage_name: which stage's model.
    mesh: where to place it (default: the mesh of `config.mesh` over all devices).
    use_ema: the EMA parameters (default) or the raw ones.
    step: which checkpoint (default: the latest).

  Returns:
    (model, step of the checkpoint it came from).

  Raises:
    FileNotFoundError: the stage has no checkpoint in `workdir`.
  """
  graphdef, params, frozen = train_state_lib.abstract_model(
      stages_lib.make_stage(stage_name, experiment))
  return workdir_lib.restore_model(workdir, stage_name, graphdef, params, frozen,
                                   experiment=experiment, mesh=mesh, use_ema=use_ema, step=step)


def train(experiment: experiment_lib.Experiment, workdir: str, *, allow_config_change: bool = False,
          devices: list[jax.Device] | None = None) -> list[StageResult]:
  """Trains every stage of `experiment.stages` in order; stops after a preempted stage.

  Args:
    experiment: the validated experiment.
    workdir: the run's directory (created if missing).
    allow_config_change: resume checkpoints written under a different config.
    devices: the devices of the mesh (default: all).
  """
  mesh = mesh_lib.create_mesh(experiment.mesh, devices)
  logging.info("mesh: %s", mesh_lib.describe(mesh))
  writer = metrics_lib.MetricWriter(workdir)
  results = []
  try:
    for name in experiment.stages:
      stage = stages_lib.make_stage(name, experiment)
      result = train_stage(stage, experiment, workdir, mesh=mesh, writer=writer,
                           allow_config_change=allow_config_change)
      results.append(dataclasses.replace(result, state=None))
      if result.status == "preempted":
        break
  finally:
    writer.close()
  return results

