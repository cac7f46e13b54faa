"""videogen/train/layer_layout.py: a checkpoint of the transformer's blocks stacked (scan_layers)
restores into blocks one set per layer and back, in the trainer and for sampling."""

from __future__ import annotations

import shutil

import jax
import numpy as np
import pytest

from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from videogen.parallel import mesh as mesh_lib
from videogen.parallel import sharding as sharding_lib
from videogen.train import autoencoder_from
from videogen.train import checkpointing
from videogen.train import config_changes
from videogen.train import layer_layout
from videogen.train import metrics as metrics_lib
from videogen.train import stages as stages_lib
from videogen.train import train_state as train_state_lib
from videogen.train import trainer

from tests import conftest

DIT = workdir_lib.DIT_STAGE
DEPTH = 2


def _experiment(config, *, scan_layers: bool, num_steps: int = 2,
                optimizer: str = "adamw") -> experiment_lib.Experiment:
  """The tiny workdir's config, the dit stage alone with two blocks, a constant learning rate
  (so that a run may be resumed for more steps) and its blocks stacked or not."""
  config.stages = (DIT,)
  config.dit.update(depth=DEPTH, scan_layers=scan_layers)
  config.train.dit.update(num_steps=num_steps, schedule="constant", optimizer=optimizer)
  config.dit_stage.cache_steps = 3  # one latent cache for the 2 steps and their resumption
  return experiment_lib.validate(config)


def _stacked_run(root, tiny_workdir: str, optimizer: str) -> str:
  """A workdir whose dit stage trained 2 steps with its blocks stacked."""
  workdir = str(root / f"stacked_{optimizer}")
  experiment = _experiment(conftest._tiny_workdir_config(), scan_layers=True, optimizer=optimizer)
  autoencoder_from.take(experiment, workdir, tiny_workdir)
  results = trainer.train(experiment, workdir)
  assert [r.status for r in results] == ["done"]
  return workdir


@pytest.fixture(scope="module")
def stacked_run(tmp_path_factory, tiny_workdir):
  return _stacked_run(tmp_path_factory.mktemp("layout"), tiny_workdir, "adamw")


@pytest.fixture(scope="module")
def stacked_muon_run(tmp_path_factory, tiny_workdir):
  """Muon's state: a momentum for the hidden kernels, Adam's two moments for the rest, and an
  empty place for each weight in the other optimizer's part."""
  return _stacked_run(tmp_path_factory.mktemp("layout"), tiny_workdir, "muon")


def _target(experiment: experiment_lib.Experiment, mesh) -> dict:
  stage = stages_lib.make_stage(DIT, experiment)
  tx = train_state_lib.make_optimizer(experiment.train[DIT])
  abstract = jax.eval_shape(lambda: train_state_lib.init_train_state(stage, tx, 0))
  shardings = sharding_lib.tree_shardings(abstract, mesh, experiment.mesh.rules)
  return sharding_lib.with_shardings(abstract, shardings).checkpoint_tree()


def _flat(tree) -> dict:
  return {jax.tree_util.keystr(path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_a_stacked_checkpoint_restores_one_block_at_a_time_and_back(optimizer, request, tmp_path,
                                                                    devices):
  stacked_run = request.getfixturevalue("stacked_run" if optimizer == "adamw"
                                        else "stacked_muon_run")
  mesh = mesh_lib.create_mesh(mesh_lib.MeshConfig(fsdp=8))
  config = conftest._tiny_workdir_config()
  stacked_experiment = _experiment(config, scan_layers=True, optimizer=optimizer)
  unrolled_experiment = _experiment(config, scan_layers=False, optimizer=optimizer)
  stacked_target = _target(stacked_experiment, mesh)
  unrolled_target = _target(unrolled_experiment, mesh)
  assert layer_layout.is_stacked(stacked_target) is True
  assert layer_layout.is_stacked(unrolled_target) is False

  checkpointer = checkpointing.Checkpointer(workdir_lib.checkpoint_dir(stacked_run, DIT),
                                            read_only=True)
  as_saved = checkpointer.restore(2, stacked_target).state
  unrolled = checkpointer.restore(2, unrolled_target).state
  checkpointer.close()
  assert jax.tree.structure(unrolled) == jax.tree.structure(unrolled_target)
  saved, converted, wanted = _flat(as_saved), _flat(unrolled), _flat(unrolled_target)
  # Every block array of the parameters, the EMA and the optimizer's moments is block i of the
  # stack; the rest is read as it is.
  block_arrays = 0
  for path, array in converted.items():
    assert array.sharding == wanted[path].sharding, path
    if "['dit']['blocks'][" in path:
      index = int(path.split("['dit']['blocks'][")[1].split("]")[0])
      stacked_path = path.replace(f"['dit']['blocks'][{index}]", "['dit']['blocks']")
      np.testing.assert_array_equal(array, np.asarray(saved[stacked_path])[index], path)
      block_arrays += 1
    else:
      np.testing.assert_array_equal(array, saved[path], path)
  def in_block(part):
    return sum(part in path and "['dit']['blocks'][0]" in path for path in converted)
  # The parameters, the EMA and the moments: Adam's two, or for Muon's kernels its one.
  params, muon = in_block("['params']"), in_block("['muon']")
  assert params > 10 and in_block("") == 4 * params - muon
  assert block_arrays == DEPTH * in_block("") and (muon > 0) == (optimizer == "muon")

  # Written one block at a time, the state reads back stacked as it was.
  unrolled_dir = str(tmp_path / "unrolled")
  writer = checkpointing.Checkpointer(unrolled_dir, async_save=False)
  writer.save(2, unrolled, {}, config_changes.experiment_json(unrolled_experiment))
  restacked = writer.restore(2, stacked_target).state
  writer.close()
  assert jax.tree.structure(restacked) == jax.tree.structure(stacked_target)
  stacked_wanted = _flat(stacked_target)
  for path, array in _flat(restacked).items():
    np.testing.assert_array_equal(array, saved[path], path)
    assert array.sharding == stacked_wanted[path].sharding, path
  stack = _flat(restacked)["['params']['dit']['blocks']['mlp']['up']['kernel'].value"]
  assert tuple(stack.sharding.spec)[:2] == (None, "fsdp")  # (layers, embed, mlp)


def test_the_trainer_resumes_a_stacked_run_with_its_blocks_unrolled(stacked_run, tmp_path,
                                                                     devices):
  """Step 3 trained from the stacked checkpoint is the same step whichever layout runs it."""
  results = {}
  for scan_layers in (True, False):
    workdir = str(tmp_path / f"scan_{scan_layers}")
    shutil.copytree(stacked_run, workdir)
    experiment = _experiment(conftest._tiny_workdir_config(), scan_layers=scan_layers,
                             num_steps=3)
    [result] = trainer.train(experiment, workdir)
    assert result.status == "done" and result.step == 3
    rows = [row for row in metrics_lib.read_metrics(workdir, DIT) if "loss" in row]
    assert [row["step"] for row in rows] == [1, 2, 3]  # resumed, not started over
    results[scan_layers] = rows[-1]["loss"], _trained_model(workdir, experiment)
  (stacked_loss, stacked_model), (unrolled_loss, unrolled_model) = results[True], results[False]
  np.testing.assert_allclose(unrolled_loss, stacked_loss, rtol=1e-5)
  for block in range(DEPTH):
    np.testing.assert_allclose(unrolled_model.dit.blocks[block].mlp.up.kernel.get_value(),
                               stacked_model.dit.blocks.mlp.up.kernel.get_value()[block],
                               atol=1e-6)


def _trained_model(workdir: str, experiment: experiment_lib.Experiment):
  """The EMA model of the workdir's dit stage, its blocks laid out as `experiment` says."""
  graphdef, params, frozen = train_state_lib.abstract_model(stages_lib.make_stage(DIT, experiment))
  return workdir_lib.restore_model(workdir, DIT, graphdef, params, frozen,
                                   experiment=experiment)[0]


def test_sampling_reads_a_stacked_checkpoint_into_unrolled_blocks(stacked_run,
                                                                  tiny_workdir_config):
  model = _trained_model(stacked_run, _experiment(tiny_workdir_config, scan_layers=False))
  saved = workdir_lib.saved_experiment(stacked_run, DIT)
  assert saved.dit.scan_layers and not model.dit.config.scan_layers
  stacked = _trained_model(stacked_run, saved)
  for block in range(DEPTH):
    np.testing.assert_array_equal(
        model.dit.blocks[block].self_attention.query.kernel.get_value(),
        np.asarray(stacked.dit.blocks.self_attention.query.kernel.get_value())[block])


def test_a_tree_without_transformer_blocks_is_read_as_it_is():
  tree = {"params": {"text_encoder": {"blocks": {0: {"w": jax.ShapeDtypeStruct((2,), "f4")}}}}}
  assert layer_layout.is_stacked(tree) is None
  assert layer_layout.source_tree(tree, {"dit": {"scan_layers": True, "depth": 2}}) is tree
  assert layer_layout.source_tree(tree, {}) is tree
