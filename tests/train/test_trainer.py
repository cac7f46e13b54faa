"""videogen/train/trainer.py: the same losses on any mesh, resume, guards, metrics (in process).

The reference is a 5-step run of the tiny stand-in (tests/standin) on one device, checkpointed at
steps 2, 4, 5; the other tests compare against it or resume copies of its workdir.
"""

from __future__ import annotations

import dataclasses
import glob
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from videogen import experiment as experiment_lib
from videogen.parallel import mesh as mesh_lib
from videogen.train import metrics as metrics_lib
from videogen.train import stages as stages_lib
from videogen.train import train_state as train_state_lib
from videogen.train import trainer

from tests.standin import experiment as standin_experiment
from tests.standin import stage as standin_stage

NUM_STEPS = 5


def _experiment(mesh_shape=(1, 1, 1), lengths=(8,), **train):
  config = standin_experiment.get_config("tiny")
  config.standin.depth = 1
  config.standin.lengths = lengths
  config.mesh.data, config.mesh.fsdp, config.mesh.tensor = mesh_shape
  config.train.standin.update({**dict(num_steps=NUM_STEPS, log_every=1, checkpoint_every=2,
                                      keep_checkpoints=3, warmup_steps=2, progress_bar=False),
                               **train})
  return experiment_lib.validate(config)


def _train(experiment, workdir, devices, stage=None, **kwargs):
  mesh = mesh_lib.create_mesh(experiment.mesh, devices)
  stage = stage or stages_lib.make_stage("standin", experiment)
  return trainer.train_stage(stage, experiment, str(workdir), mesh=mesh, **kwargs)


def _losses(workdir):
  return {row["step"]: row["loss"] for row in metrics_lib.read_metrics(str(workdir), "standin")
          if "loss" in row}


def _copy(reference, tmp_path, drop_steps=()):
  workdir = tmp_path / "run"
  shutil.copytree(reference.workdir, workdir)
  for step in drop_steps:
    shutil.rmtree(workdir / "checkpoints" / "standin" / str(step))
  return workdir


@dataclasses.dataclass
class Reference:
  workdir: str
  losses: dict[int, float]
  result: trainer.StageResult


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("reference")
  result = _train(_experiment(), workdir, jax.devices()[:1])
  return Reference(str(workdir), _losses(workdir), result)


def test_reference_run_learns_and_writes_its_outputs(reference):
  assert reference.result.status == "done" and reference.result.step == NUM_STEPS
  assert sorted(reference.losses) == list(range(1, NUM_STEPS + 1))
  assert reference.losses[NUM_STEPS] < reference.losses[1]
  checkpoints = os.path.join(reference.workdir, "checkpoints", "standin")
  assert sorted(os.listdir(checkpoints)) == ["2", "4", "5"]
  assert os.listdir(os.path.join(checkpoints, "5", "data")) == ["process_0-of-1.json"]
  events = os.listdir(os.path.join(reference.workdir, "tensorboard", "standin"))
  assert any(name.startswith("events.out.tfevents") for name in events)
  row = metrics_lib.read_metrics(reference.workdir)[-1]
  assert {"stage", "step", "loss", "grad_norm", "learning_rate", "mae"} <= set(row)
  curve = open(os.path.join(reference.workdir, "curves", "standin.svg")).read()
  assert "<svg" in curve and curve.count('<g id="raw">') == curve.count('<g id="smoothed">') == 1


def _traces(workdir):
  """The profiler traces of the stand-in stage, where TensorBoard's profile tab looks."""
  return glob.glob(os.path.join(workdir, "tensorboard", "standin", "plugins", "profile", "*",
                                "*.xplane.pb"))


def test_profile_steps_write_a_trace_for_tensorboard_and_none_when_off(reference, tmp_path):
  result = _train(_experiment(num_steps=3, profile_steps=(2, 3)), tmp_path, jax.devices()[:1])
  assert result.status == "done" and result.step == 3
  traces = _traces(str(tmp_path))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0  # one window, one trace
  assert _traces(reference.workdir) == []  # profile_steps=() by default
  # Profiling leaves the numerics alone (steps 1-3 are warm-up and peak, whatever num_steps).
  losses = _losses(tmp_path)
  for step in (1, 2, 3):
    assert losses[step] == pytest.approx(reference.losses[step], rel=1e-6)


def test_profile_steps_must_be_a_window():
  for bad in ((3,), (0, 2), (4, 2), (1, 2, 3)):
    with pytest.raises(ValueError, match=r"profile_steps = .* must be \(first, last\)"):
      _experiment(profile_steps=bad)


def test_a_metric_row_holds_the_means_since_the_previous_row(reference, tmp_path):
  _train(_experiment(log_every=3), tmp_path, jax.devices()[:1])
  rows = {row["step"]: row for row in metrics_lib.read_metrics(str(tmp_path), "standin")}
  assert sorted(rows) == [3, 5]  # every third step, and the last
  per_step = metrics_lib.read_metrics(reference.workdir, "standin")  # log_every=1
  for step, first in ((3, 1), (5, 4)):
    steps = [row for row in per_step if first <= row["step"] <= step]
    for key in ("loss", "grad_norm", "mae"):
      assert rows[step][key] == pytest.approx(np.mean([row[key] for row in steps]), rel=1e-6)
    assert rows[step]["learning_rate"] == steps[-1]["learning_rate"]  # its own, not a mean
  # Timing of the steps since the previous row: wall-clock rate and the process's CPU per step.
  assert rows[5]["steps_per_second"] > 0 and rows[5]["cpu_seconds_per_step"] > 0


@pytest.mark.parametrize("mesh_shape", [(8, 1, 1), (2, 4, 1), (2, 2, 2)])
def test_same_losses_on_eight_devices(reference, devices, tmp_path, mesh_shape):
  result = _train(_experiment(mesh_shape), tmp_path, devices)
  losses = _losses(tmp_path)
  assert sorted(losses) == sorted(reference.losses)
  np.testing.assert_allclose([losses[s] for s in sorted(losses)],
                             [reference.losses[s] for s in sorted(losses)], rtol=0, atol=1e-5)
  data, fsdp, tensor = mesh_shape
  expected = P("fsdp" if fsdp > 1 else None, "tensor" if tensor > 1 else None)
  assert result.state.params["blocks"][0]["mlp_in"].get_value().sharding.spec == expected


def test_restore_onto_another_mesh(reference, devices, tmp_path):
  workdir = _copy(reference, tmp_path, drop_steps=(4, 5))
  result = _train(_experiment((2, 2, 2)), workdir, devices)
  assert result.status == "done"
  losses = _losses(workdir)
  assert sorted(losses) == list(range(1, NUM_STEPS + 1))  # steps 3..5 rewritten, not duplicated
  for step in (3, 4, 5):
    assert losses[step] == pytest.approx(reference.losses[step], abs=1e-5)
  assert result.state.params["embed_in"].get_value().sharding.spec == P(None, "fsdp")


def test_a_finished_stage_is_skipped(reference):
  result = _train(_experiment(), reference.workdir, jax.devices()[:1])
  assert result.status == "skipped" and result.step == NUM_STEPS


def test_a_different_config_is_refused_unless_allowed(reference, tmp_path):
  workdir = _copy(reference, tmp_path)
  changed = _experiment(learning_rate=0.5)
  with pytest.raises(trainer.ConfigChangedError,
                     match=r"config.train.standin.learning_rate: 0.003 -> 0.5.*"
                           r"--allow_config_change"):
    _train(changed, workdir, jax.devices()[:1])
  assert _train(changed, workdir, jax.devices()[:1], allow_config_change=True).status == "skipped"
  # Parallelism and bookkeeping may change freely.
  assert _train(_experiment((2, 2, 2), log_every=3), workdir, jax.devices()).status == "skipped"


def test_a_damaged_latest_checkpoint_falls_back_to_the_previous(reference, tmp_path, caplog):
  workdir = _copy(reference, tmp_path, drop_steps=(5,))
  latest = workdir / "checkpoints" / "standin" / "4"
  for root, _, files in os.walk(latest / "state"):
    for name in files:
      if os.sep + "d" in root or name.startswith("manifest"):
        with open(os.path.join(root, name), "r+b") as f:
          f.truncate(1)
  with caplog.at_level(logging.WARNING):
    result = _train(_experiment(), workdir, jax.devices()[:1])
  assert any("(step 4) is damaged" in r.getMessage() for r in caplog.records)
  assert result.status == "done" and result.step == NUM_STEPS
  assert (workdir / "checkpoints" / "standin" / "4.corrupt").exists()
  losses = _losses(workdir)
  assert [losses[step] for step in (3, 4, 5)] == [reference.losses[step] for step in (3, 4, 5)]
  for new, old in zip(jax.tree.leaves(result.state.params),
                      jax.tree.leaves(reference.result.state.params)):
    np.testing.assert_array_equal(new, old)


class PoisonedStage(standin_stage.StandinStage):
  """The stand-in whose loss turns NaN from the 4th step on."""

  def loss(self, model, batch, rng, step):
    loss, metrics = super().loss(model, batch, rng, step)
    return jnp.where(step >= 3, jnp.nan, loss), metrics


def test_a_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
  experiment = _experiment()
  with pytest.raises(trainer.NonFiniteError, match=r"non-finite loss at step 4 .*last good "
                                                   r"checkpoint is step 2"):
    _train(experiment, tmp_path, jax.devices()[:1], stage=PoisonedStage(experiment))
  assert sorted(os.listdir(tmp_path / "checkpoints" / "standin")) == ["2"]
  assert max(_losses(tmp_path)) == 3  # the bad step is not logged as a loss


class EvaluatedStage(standin_stage.StandinStage):
  """Records what `evaluate` was given."""

  calls: list

  def evaluate(self, model, step, workdir):
    self.calls.append((step, np.asarray(model.embed_in[...])))
    return {"embed_in_norm": float(np.linalg.norm(np.asarray(model.embed_in[...])))}


def test_buckets_compile_once_each_and_evaluate_sees_ema_params(devices, tmp_path, caplog):
  experiment = _experiment(lengths=(4, 8), eval_every=3, ema_decay=0.5)
  stage = EvaluatedStage(experiment)
  stage.calls = []
  with caplog.at_level(logging.INFO):
    result = _train(experiment, tmp_path, devices[:1], stage=stage)
  compiles = [r for r in caplog.records if "compiled the train step" in r.getMessage()]
  assert len(compiles) == 2  # one per bucket length, not one per step
  assert [step for step, _ in stage.calls] == [3]
  evaluations = [row for row in metrics_lib.read_metrics(str(tmp_path)) if "eval/embed_in_norm"
                 in row]
  assert [row["step"] for row in evaluations] == [3]
  # EMA and raw parameters differ after training; the final EMA is what load_model returns.
  assert not np.allclose(result.state.ema_params["embed_in"][...],
                         result.state.params["embed_in"][...])
  model, step = trainer.load_model(experiment, str(tmp_path), "standin",
                                   mesh=mesh_lib.create_mesh(mesh_lib.MeshConfig(), devices[:1]))
  assert step == NUM_STEPS
  np.testing.assert_array_equal(model.embed_in[...], result.state.ema_params["embed_in"][...])


def test_the_loops_step_on_the_states_leaves_computes_the_pure_step(devices):
  """The loop hands the compiled step the state's flat leaves; it is the pure step on the state."""
  experiment = _experiment(mesh_shape=(2, 2, 2))
  mesh = mesh_lib.create_mesh(experiment.mesh, devices)
  rules = experiment.mesh.rules
  stage = stages_lib.make_stage("standin", experiment)
  config = experiment.train["standin"]
  tx = train_state_lib.make_optimizer(config)
  graphdef, _, _ = train_state_lib.abstract_model(stage)
  state, shardings = train_state_lib.init_sharded_train_state(stage, tx, experiment.seed, mesh,
                                                              rules)
  step_fn = train_state_lib.make_train_step(stage, graphdef, tx, config, mesh=mesh, rules=rules,
                                            sequence_parallel="auto")
  batch = next(stage.make_iterator(mesh=mesh, seed=experiment.seed, workdir=""))
  expected, expected_metrics = jax.jit(step_fn, out_shardings=(shardings, None))(state, batch)

  compiler = trainer.StepCompiler(step_fn, state, shardings, mesh, "standin")
  leaves = compiler.flatten(state)
  assert len(leaves) == len(jax.tree.leaves(state))
  leaves, metrics = compiler(leaves, batch)(leaves, batch)
  assert state.params["embed_in"][...].is_deleted()  # donated
  stepped = compiler.unflatten(leaves)
  assert jax.tree.structure(stepped) == jax.tree.structure(expected)
  assert int(stepped.step) == 1
  for got, want in zip(jax.tree.leaves(stepped), jax.tree.leaves(expected)):
    assert got.sharding.is_equivalent_to(want.sharding, got.ndim)
    np.testing.assert_array_equal(got, want)
  assert {k: float(v) for k, v in metrics.items()} == {
      k: float(v) for k, v in expected_metrics.items()}


class FailingEvaluationStage(standin_stage.StandinStage):
  """An evaluation that raises, as a sampler out of memory would."""

  def evaluate(self, model, step, workdir):
    raise RuntimeError(f"evaluation failed at step {step}")


def test_a_failing_evaluation_keeps_the_checkpoint_of_its_step(tmp_path):
  experiment = _experiment(eval_every=NUM_STEPS)
  with pytest.raises(RuntimeError, match=f"evaluation failed at step {NUM_STEPS}"):
    _train(experiment, tmp_path, jax.devices()[:1], stage=FailingEvaluationStage(experiment))
  checkpoints = sorted(os.listdir(tmp_path / "checkpoints" / "standin"), key=int)
  assert checkpoints == ["2", "4", str(NUM_STEPS)]
  _, step = trainer.load_model(experiment, str(tmp_path), "standin",
                               mesh=mesh_lib.create_mesh(mesh_lib.MeshConfig(), jax.devices()[:1]))
  assert step == NUM_STEPS


def test_train_runs_the_stages_of_the_config(reference):
  results = trainer.train(_experiment(), reference.workdir, devices=jax.devices()[:1])
  assert [(r.name, r.status, r.step) for r in results] == [("standin", "skipped", NUM_STEPS)]


def test_experiment_variants_validate():
  for variant in ("tiny", "base", "tiny,fsdp", "base,tensor"):
    experiment = experiment_lib.validate(standin_experiment.get_config(variant))
    assert experiment.stages == ("standin",)
  with pytest.raises(ValueError, match="unknown variant"):
    standin_experiment.get_config("huge")


def test_unknown_stage_names_list_the_known_ones():
  with pytest.raises(ValueError,
                     match="unknown stage 'vae'.*autoencoder, dit, distill, text, standin"):
    stages_lib.make_stage("vae", _experiment())
