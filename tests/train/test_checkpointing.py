"""videogen/train/checkpointing.py: named items, restore onto another mesh, damaged checkpoints."""

from __future__ import annotations

import logging
import os
import signal
import threading

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from videogen.train import checkpointing


def _tree(scale: float) -> dict:
  return {"step": jnp.asarray(int(scale), jnp.int32),
          "params": {"w": jnp.arange(32.0).reshape(8, 4) * scale, "b": jnp.ones(4) * scale}}


def _target(tree, mesh, spec_of_matrices=PartitionSpec()):
  def leaf(x):
    spec = spec_of_matrices if x.ndim == 2 else PartitionSpec()
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=NamedSharding(mesh, spec))
  return jax.tree.map(leaf, tree)


def _mesh(devices, shape=(1,), names=("fsdp",)):
  return jax.sharding.Mesh(np.asarray(devices).reshape(shape), names)


def _save_steps(directory, steps):
  checkpointer = checkpointing.Checkpointer(str(directory), keep=5, async_save=True)
  for step in steps:
    checkpointer.save(step, _tree(step), {"next_index": step * 10}, {"seed": 0, "lr": 0.1})
  checkpointer.close()


def test_round_trip_of_all_items_onto_another_mesh(tmp_path, devices):
  _save_steps(tmp_path, [1, 2])
  checkpointer = checkpointing.Checkpointer(str(tmp_path))
  assert checkpointer.all_steps() == [1, 2]
  mesh = _mesh(devices, (8,))
  restored = checkpointer.restore_latest(_target(_tree(0), mesh, PartitionSpec("fsdp")))
  checkpointer.close()
  assert restored.step == 2
  assert restored.data == {"next_index": 20}
  assert restored.config == {"seed": 0, "lr": 0.1}
  np.testing.assert_array_equal(restored.state["params"]["w"], np.arange(32.0).reshape(8, 4) * 2)
  # Saved from one device, restored split over eight.
  assert restored.state["params"]["w"].sharding.spec == PartitionSpec("fsdp")
  assert len(restored.state["params"]["w"].addressable_shards) == 8
  assert os.path.exists(tmp_path / "2" / "data" / "process_0-of-1.json")


def test_a_checkpoint_of_another_process_count_resumes_when_its_states_agree(tmp_path, devices):
  """The states of the two processes that wrote a checkpoint, read by one process: equal states
  are the global stream's place; states that differ are refused, and nothing is set aside."""
  _save_steps(tmp_path, [1])
  data = tmp_path / "1" / "data"
  (data / "process_0-of-1.json").rename(data / "process_0-of-2.json")
  (data / "process_1-of-2.json").write_text((data / "process_0-of-2.json").read_text())
  target = _target(_tree(0), _mesh(devices[:1]))
  checkpointer = checkpointing.Checkpointer(str(tmp_path))
  assert checkpointer.restore_latest(target).data == {"next_index": 10}
  (data / "process_1-of-2.json").write_text('{"next_index": 11}')
  with pytest.raises(checkpointing.CheckpointRestoreError,
                     match=r"states of 2 processes, and they differ, so a run of 1 cannot "
                           r"resume it: resume with 2 processes"):
    checkpointer.restore_latest(target)
  checkpointer.close()
  assert sorted(os.listdir(tmp_path)) == ["1"]


def _corrupt(step_dir):
  """Truncates every array data file of a checkpoint, as a crash mid-copy would."""
  damaged = 0
  for root, _, files in os.walk(step_dir / "state"):
    for name in files:
      path = os.path.join(root, name)
      if os.sep + "d" + os.sep in path + os.sep or "manifest" in name:
        with open(path, "r+b") as f:
          f.truncate(max(os.path.getsize(path) // 3, 1))
        damaged += 1
  assert damaged, "found no data files to damage"


def test_damaged_latest_checkpoint_falls_back_with_a_warning(tmp_path, devices, caplog):
  _save_steps(tmp_path, [1, 2])
  _corrupt(tmp_path / "2")
  checkpointer = checkpointing.Checkpointer(str(tmp_path))
  with caplog.at_level(logging.WARNING):
    restored = checkpointer.restore_latest(_target(_tree(0), _mesh(devices[:1])))
  assert restored.step == 1
  np.testing.assert_array_equal(restored.state["params"]["b"], np.ones(4))
  assert any("(step 2) is damaged" in record.getMessage() and "step 1 instead" in
             record.getMessage() for record in caplog.records)
  # The damaged one is set aside, so that training can write step 2 again.
  assert (tmp_path / "2.corrupt").exists() and not (tmp_path / "2").exists()
  assert checkpointer.all_steps() == [1]
  checkpointer.save(2, _tree(2), {"next_index": 20}, {"seed": 0})
  checkpointer.close()
  assert checkpointing.Checkpointer(str(tmp_path)).all_steps() == [1, 2]


def test_when_no_checkpoint_restores_nothing_is_renamed(tmp_path, devices):
  _save_steps(tmp_path, [1, 2])
  checkpointer = checkpointing.Checkpointer(str(tmp_path))
  # A target of another structure (as after an incompatible code change) fails on every step.
  incompatible = {"step": _tree(0)["step"], "weights": _tree(0)["params"]}
  with pytest.raises(checkpointing.CheckpointRestoreError,
                     match=r"none of the checkpoints .*\(step 2: .*; step 1: .*nothing was "
                           r"renamed"):
    checkpointer.restore_latest(_target(incompatible, _mesh(devices[:1])))
  assert checkpointer.all_steps() == [1, 2]
  assert sorted(os.listdir(tmp_path)) == ["1", "2"]
  checkpointer.close()


def test_damaged_config_item_also_falls_back(tmp_path, devices):
  _save_steps(tmp_path, [1, 2])
  for root, _, files in os.walk(tmp_path / "2" / "config"):
    for name in files:
      with open(os.path.join(root, name), "w") as f:
        f.write("{not json")
  checkpointer = checkpointing.Checkpointer(str(tmp_path))
  assert checkpointer.restore_latest(_target(_tree(0), _mesh(devices[:1]))).step == 1
  checkpointer.close()


def test_config_check_refusal_is_not_treated_as_damage(tmp_path, devices):
  _save_steps(tmp_path, [1])

  def refuse(saved):
    raise ValueError(f"different config: {saved}")

  checkpointer = checkpointing.Checkpointer(str(tmp_path))
  with pytest.raises(ValueError, match="different config"):
    checkpointer.restore_latest(_target(_tree(0), _mesh(devices[:1])), check_config=refuse)
  assert checkpointer.all_steps() == [1]  # not quarantined
  checkpointer.close()


def test_restore_subtree_reads_one_part(tmp_path, devices):
  _save_steps(tmp_path, [3])
  checkpointer = checkpointing.Checkpointer(str(tmp_path))
  target = _target(_tree(0)["params"], _mesh(devices, (8,)), PartitionSpec("fsdp"))
  params = checkpointer.restore_subtree(3, "params", target)
  checkpointer.close()
  assert set(params) == {"w", "b"}
  np.testing.assert_array_equal(params["w"], np.arange(32.0).reshape(8, 4) * 3)
  assert params["w"].sharding.spec == PartitionSpec("fsdp")


def test_a_target_of_other_shapes_is_refused_before_anything_is_read(tmp_path, devices,
                                                                      monkeypatch):
  """The misfit is named from the saved metadata: orbax finding it mid-read would cancel its
  other reads, and one finishing late printed a stray traceback beside the one-line error."""
  _save_steps(tmp_path, [3])
  checkpointer = checkpointing.Checkpointer(str(tmp_path), read_only=True)
  target = _target({"w": jnp.zeros((8, 2)), "b": jnp.zeros(4)}, _mesh(devices[:1]))

  def no_reads(*args, **kwargs):
    raise AssertionError("an array was read")
  for handler in (checkpointing.ocp.PyTreeCheckpointHandler,
                  checkpointing.ocp.StandardCheckpointHandler):
    monkeypatch.setattr(handler, "restore", no_reads)
  with pytest.raises(checkpointing.CheckpointMismatchError,
                     match=r"^params/w is saved with shape \(8, 4\), and the model's is "
                           r"\(8, 2\)$"):
    checkpointer.restore_subtree(3, "params", target)
  with pytest.raises(checkpointing.CheckpointRestoreError, match=r"params/w is saved with shape"):
    checkpointer.restore_latest({"step": _target(_tree(0), _mesh(devices[:1]))["step"],
                                 "params": target})
  assert checkpointer.all_steps() == [3]
  checkpointer.close()


def test_a_newest_checkpoint_of_another_model_is_refused_not_set_aside(tmp_path, devices):
  """Arrays of other shapes mean other model settings, not damage: the newest checkpoint is
  named in the error and kept, even where an older one would fit the target."""
  _save_steps(tmp_path, [3])
  checkpointer = checkpointing.Checkpointer(str(tmp_path), keep=5, async_save=False)
  wider = {"step": jnp.asarray(6, jnp.int32),
           "params": {"w": jnp.zeros((8, 6)), "b": jnp.zeros(4)}}
  checkpointer.save(6, wider, {"next_index": 60}, {"seed": 0, "lr": 0.1})
  checkpointer.wait()
  with pytest.raises(checkpointing.CheckpointRestoreError,
                     match=rf"^the checkpoint {tmp_path}/6 does not fit this config's model "
                           r"\(params/w is saved with shape \(8, 6\), and the model's is "
                           r"\(8, 4\)\): .*nothing was renamed"):
    checkpointer.restore_latest(_target(_tree(0), _mesh(devices[:1])))
  checkpointer.close()
  assert sorted(os.listdir(tmp_path)) == ["3", "6"]


def test_restore_subtree_reads_the_state_without_its_config(tmp_path, devices):
  """The config says how the transformer's blocks are laid out; without it (damaged) the state
  is read in the layout it was written in, as sampling read it before."""
  _save_steps(tmp_path, [3])
  for root, _, files in os.walk(tmp_path / "3" / "config"):
    for name in files:
      with open(os.path.join(root, name), "w") as f:
        f.write("{not json")
  checkpointer = checkpointing.Checkpointer(str(tmp_path), read_only=True)
  with pytest.raises(checkpointing.RESTORE_ERRORS):
    checkpointer.read_config(3)
  params = checkpointer.restore_subtree(3, "params", _target(_tree(0)["params"],
                                                             _mesh(devices[:1])))
  checkpointer.close()
  np.testing.assert_array_equal(params["b"], np.ones(4) * 3)


def test_empty_directory_restores_nothing(tmp_path, devices):
  checkpointer = checkpointing.Checkpointer(str(tmp_path / "none"))
  assert checkpointer.latest_step() is None
  assert checkpointer.restore_latest(_target(_tree(0), _mesh(devices[:1]))) is None
  checkpointer.close()


def test_read_only_opens_nothing_new(tmp_path):
  checkpointer = checkpointing.Checkpointer(str(tmp_path / "absent"), read_only=True)
  assert checkpointer.latest_step() is None
  checkpointer.close()
  assert not (tmp_path / "absent").exists()


def test_only_large_replicated_arrays_are_split_among_their_replicas(tmp_path, devices,
                                                                     monkeypatch):
  """Orbax writes a replicated array in slices, one per replica, each cut by a program compiled
  for its shape: only worth it from `MIN_REPLICA_SLICE_BYTES` per slice. Both arrays restore."""
  sliced = []
  slice_in_dim = jax.lax.slice_in_dim
  monkeypatch.setattr(jax.lax, "slice_in_dim",
                      lambda array, *args, **kwargs: sliced.append(array.shape)
                      or slice_in_dim(array, *args, **kwargs))
  mesh = _mesh(devices, (8,))
  large_shape = (8, checkpointing.MIN_REPLICA_SLICE_BYTES // 4)  # float32: 1 slice per row
  state = {"small": jnp.ones((8, 4)), "large": jnp.ones(large_shape)}
  state = jax.device_put(state, NamedSharding(mesh, PartitionSpec()))  # replicated over 8
  checkpointer = checkpointing.Checkpointer(str(tmp_path), async_save=False)
  checkpointer.save(1, state, {}, {})
  assert sliced == [large_shape] * 8
  restored = checkpointer.restore_latest(_target(state, mesh))
  checkpointer.close()
  jax.tree.map(np.testing.assert_array_equal, restored.state, state)


def test_saving_and_restoring_prints_no_array(tmp_path, devices, monkeypatch):
  """Orbax's `asyncio.run` on the main thread, with SIGINT at Python's default handler, made
  Python before 3.13 format the restored tree (each array copied to the host and printed) for a
  message it throws away. Nothing is printed; SIGINT's handler is the default again afterwards."""
  assert threading.current_thread() is threading.main_thread()  # where asyncio wraps SIGINT
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  printed = []
  array_type = type(jnp.zeros(1))
  array_repr = array_type.__repr__
  monkeypatch.setattr(array_type, "__repr__",
                      lambda array: printed.append(array.shape) or array_repr(array))
  try:
    checkpointer = checkpointing.Checkpointer(str(tmp_path), async_save=False)
    checkpointer.save(3, _tree(3), {"next_index": 30}, {"seed": 0})
    target = _target(_tree(0), _mesh(devices[:1]))
    restored = checkpointer.restore_latest(target)
    params = checkpointer.restore_subtree(3, "params", target["params"])
    checkpointer.close()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  finally:
    signal.signal(signal.SIGINT, previous)
  assert printed == []
  saved = _tree(3)["params"]["w"]
  np.testing.assert_array_equal(restored.state["params"]["w"], saved)
  np.testing.assert_array_equal(params["w"], saved)
