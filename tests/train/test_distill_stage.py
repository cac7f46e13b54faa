"""videogen/train/distill_stage.py: the student starts as the teacher, trains and resumes exactly,
and generation picks it.

One distilled workdir per module: a copy of the session's `tiny_workdir` (its dit stage is the
teacher) whose distill stage runs 4 steps on 8 cached trajectories of a 4-step teacher.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from videogen.generate import modes
from videogen.generate import pipeline
from videogen.parallel import mesh as mesh_lib
from videogen.train import distill_stage
from videogen.train import metrics as metrics_lib
from videogen.train import stages as stages_lib
from videogen.train import trainer

from tests import conftest


def _experiment(teacher: dict | None = None, **train) -> experiment_lib.Experiment:
  config = conftest._tiny_workdir_config()
  config.stages = ("distill",)
  config.train.distill.update(num_steps=4, warmup_steps=1, log_every=1, checkpoint_every=2,
                              keep_checkpoints=0, eval_every=0, async_checkpoints=False,
                              progress_bar=False, **train)
  config.distill_stage.update(trajectories=8, trajectory_batch=8, batch_size=8, teacher_steps=4,
                              **(teacher or {}))
  return experiment_lib.validate(config)


def _replicated(state: nnx.State, mesh: jax.sharding.Mesh) -> nnx.State:
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.tree.map(lambda x: jax.device_put(x, sharding), state)


def _train(experiment: experiment_lib.Experiment, workdir: str) -> trainer.StageResult:
  mesh = mesh_lib.create_mesh(experiment.mesh, jax.devices())
  return trainer.train_stage(stages_lib.make_stage("distill", experiment), experiment, workdir,
                             mesh=mesh)


def _params(result) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves((result.state.params, result.state.ema_params,
                                                  result.state.opt_state))]


@pytest.fixture(scope="module")
def distilled(tiny_workdir, tmp_path_factory):
  """(workdir, experiment, the train result) of 4 distill steps on a copy of tiny_workdir."""
  workdir = str(tmp_path_factory.mktemp("distill") / "run")
  shutil.copytree(tiny_workdir, workdir)
  experiment = _experiment()
  result = _train(experiment, workdir)
  assert result.status == "done" and result.step == 4
  return workdir, experiment, result


def test_the_stage_is_registered_and_needs_a_trained_teacher(tmp_path):
  experiment = _experiment()
  stage = distill_stage.DistillStage(experiment)
  assert stage.name == "distill" and stage.student_config.step_size_embedding
  mesh = mesh_lib.create_mesh(experiment.mesh, jax.devices()[:1])
  with pytest.raises(FileNotFoundError, match="train it first with --config.stages=dit"):
    stage.teacher(str(tmp_path), mesh)


def test_the_student_starts_as_the_teacher(tiny_workdir):
  """initial_params copies every teacher weight; only the step embedding is new, and its output
  layer is zero."""
  experiment = _experiment()
  stage = distill_stage.DistillStage(experiment)
  with nnx.use_eager_sharding(False):
    student = stage.create_model(nnx.Rngs(0))
  mesh = mesh_lib.create_mesh(experiment.mesh, jax.devices()[:1])
  params = stage.initial_params(_replicated(nnx.state(student, stage.trainable), mesh),
                                tiny_workdir)
  teacher = {path: leaf for path, leaf in nnx.to_flat_state(
      nnx.state(stage.teacher(tiny_workdir, mesh).dit, nnx.Param))}
  new = 0
  for path, leaf in nnx.to_flat_state(params["dit"]):
    if path[0] == "step_embed":
      new += 1
      if path[1] == "linear_out":
        np.testing.assert_array_equal(np.asarray(leaf[...]), 0.0)
    else:
      np.testing.assert_array_equal(np.asarray(leaf[...]), np.asarray(teacher[path][...]))
  assert new == 4 and len(teacher) == len(list(nnx.to_flat_state(params["dit"]))) - new


def test_trajectory_batches_visit_each_trajectory_once_an_epoch_and_resume_exactly():
  experiment = _experiment()
  mesh = mesh_lib.create_mesh(experiment.mesh, jax.devices()[:1])
  arrays = {"states": np.arange(10, dtype=np.float32)}

  def iterator():
    return distill_stage.TrajectoryIterator(arrays, batch_size=4, seed=3, mesh=mesh,
                                            batch_axes=("data",))

  batches = iterator()
  served = np.concatenate([np.asarray(next(batches)["states"]) for _ in range(5)])
  for epoch in (served[:10], served[10:20]):
    assert sorted(epoch) == list(range(10))
  assert not np.array_equal(served[:10], served[10:20])  # each epoch its own order
  resumed = iterator()
  resumed.set_state({"position": 8})
  np.testing.assert_array_equal(np.asarray(next(resumed)["states"]), served[8:12])


def test_the_initial_student_has_no_loss_on_the_euler_teachers_own_steps(tiny_workdir,
                                                                         tmp_path):
  """A 4-step Euler teacher without guidance takes exactly the 4-step schedule's steps, and the
  student starts as that teacher (whatever its weights): its loss there is 0. The trajectories
  move, so a target of the wrong sign or scale would leave a loss of the size of their steps."""
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_workdir, workdir)
  experiment = _experiment(teacher=dict(teacher_method="euler", teacher_guidance=1.0))
  stage = distill_stage.DistillStage(experiment)
  mesh = mesh_lib.create_mesh(experiment.mesh, jax.devices()[:1])
  # The few-step test teacher barely moves its latents: give its transformer random weights.
  teacher = stage.teacher(workdir, mesh).dit
  weights = nnx.state(teacher, nnx.Param)
  keys = iter(jax.random.split(jax.random.key(0), len(jax.tree.leaves(weights))))
  nnx.update(teacher, jax.tree.map(
      lambda w: w + 0.1 * jax.random.normal(next(keys), w.shape, w.dtype), weights))
  with nnx.use_eager_sharding(False):
    student = stage.create_model(nnx.Rngs(0))
  nnx.update(student, stage.load_frozen(_replicated(nnx.state(student), mesh), workdir))
  nnx.update(student, stage.initial_params(nnx.state(student, stage.trainable), workdir))
  batch = {key: jnp.asarray(value) for key, value in stage.trajectories(workdir, mesh).items()}
  losses = []
  for seed in range(4):  # each draw picks a schedule per example
    _, metrics = stage.loss(student, batch, jax.random.key(seed), 0)
    losses.append(float(metrics["loss_4step"]))
  states = batch["states"]  # [B, 5, ...]: the 4-step grid's points, t = 1 first
  step_size = float(np.mean(np.square(states[:, 1:] - states[:, :-1])))
  assert step_size > 1e-4, step_size
  assert max(losses) < 1e-6 * step_size, (losses, step_size)


def test_the_stage_trains_from_the_teacher(distilled, tiny_workdir):
  workdir, experiment, result = distilled
  cache = os.path.join(workdir, workdir_lib.DISTILL_CACHE_DIR, distill_stage.TRAJECTORIES_FILE)
  with np.load(cache) as data:
    assert data["states"].shape == (8, 5, 5, 8, 8, 8)  # 4-step grid points of 5x8x8x8 latents
    times = data["times"][0]
  assert times[0] == 1.0 and times[-1] == 0.0 and np.all(np.diff(times) < 0)
  teacher, _ = trainer.load_model(experiment, tiny_workdir, "dit")
  for part in ("text_encoder", "autoencoder"):  # frozen: the teacher's
    jax.tree.map(np.testing.assert_array_equal,
                 jax.tree.map(np.asarray, result.state.frozen[part]),
                 jax.tree.map(np.asarray, nnx.state(getattr(teacher, part), nnx.Param)))
  rows = [row for row in metrics_lib.read_metrics(workdir, "distill") if "loss" in row]
  assert [row["step"] for row in rows] == [1, 2, 3, 4]
  assert all(np.isfinite(row["loss"]) for row in rows)


def test_a_resumed_run_is_identical(distilled, tmp_path):
  """From its step-2 checkpoint (the trajectory cache kept), the run ends bitwise where the
  uninterrupted one did."""
  workdir, experiment, result = distilled
  resumed = str(tmp_path / "resumed")
  shutil.copytree(workdir, resumed)
  shutil.rmtree(os.path.join(resumed, "checkpoints", "distill", "4"))
  assert workdir_lib.latest_step(resumed, "distill") == 2
  again = _train(experiment, resumed)
  assert again.status == "done" and again.step == 4
  for ours, theirs in zip(_params(again), _params(result), strict=True):
    np.testing.assert_array_equal(ours, theirs)


def test_generation_picks_the_student_up_to_its_steps(distilled, caplog):
  workdir, _, _ = distilled
  generator = pipeline.load(workdir, progress=False)
  assert generator.student is not None and generator.student_steps == 4
  assert generator.uses_student(4) and not generator.uses_student(5)
  caplog.set_level(logging.INFO)
  first = generator.generate("a red circle", steps=2, seed=3)
  assert "using the distilled student (2 steps)" in caplog.text
  again = generator.generate("a red circle", steps=2, seed=3)
  other = generator.generate("a red circle", steps=2, seed=4)
  caplog.clear()
  teacher = generator.generate("a red circle", steps=5, seed=3)
  assert "distilled student" not in caplog.text
  assert first.shape == teacher.shape == (*generator.default_shape, 3)
  assert first.dtype == teacher.dtype == np.uint8
  np.testing.assert_array_equal(first, again)
  assert not np.array_equal(first, other)
  # A mode with given frames runs through the student too, keeping the given frame verbatim.
  video = modes.image_to_video(generator, "a red circle", first[0], steps=1, seed=3).video
  assert video.shape == first.shape
  np.testing.assert_array_equal(video[0], first[0])


def test_the_student_says_what_it_does_not_use_and_refuses_a_pyramid(distilled, caplog):
  workdir, _, _ = distilled
  generator = pipeline.load(workdir, progress=False)
  caplog.set_level(logging.INFO)
  generator.generate("a red circle", steps=1, seed=3, guidance=7.0)
  assert "not used: the heun sampler, guidance_scale 7, the negative prompt" in caplog.text
  generator.sample_config = dataclasses.replace(generator.sample_config,
                                                frame_schedule="pyramid")
  with pytest.raises(ValueError, match="samples every frame together"):
    generator.generate("a red circle", steps=1, seed=3)


def test_an_older_teacher_checkpoint_loads_without_the_newest_student(distilled):
  workdir, _, _ = distilled
  step = workdir_lib.latest_step(workdir, workdir_lib.DIT_STAGE)
  assert pipeline.load(workdir, progress=False).student is not None
  assert pipeline.load(workdir, progress=False, step=step).student is None


def test_a_student_without_its_steps_is_refused(distilled):
  workdir, _, _ = distilled
  generator = pipeline.load(workdir, progress=False)
  with pytest.raises(ValueError, match="student_steps = 0"):
    pipeline.Generator(autoencoder=generator.autoencoder, text_encoder=generator.text_encoder,
                       dit=generator.student, tokenizer=generator.tokenizer,
                       flow_config=generator.flow_config,
                       student=generator.student)
