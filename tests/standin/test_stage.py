"""tests/standin/stage.py: the synthetic data iterator and the stand-in loss."""

from __future__ import annotations

import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from videogen.parallel import mesh as mesh_lib
from videogen.parallel import sharding as sharding_lib

from tests.standin import model as standin
from tests.standin import stage as standin_stage

CONFIG = standin.StandinConfig(features=4, batch_size=8, lengths=(3, 5), num_batches=6)
RULES = standin.RULES


def _iterator(devices, seed=0, config=CONFIG, **mesh_sizes):
  mesh = mesh_lib.create_mesh(mesh_lib.MeshConfig(**mesh_sizes), devices)
  return standin_stage.StandinIterator(config, mesh=mesh, rules=RULES, seed=seed)


def _take(iterator, count):
  return [{k: np.asarray(v) for k, v in next(iterator).items()} for _ in range(count)]


def test_batches_are_sharded_over_the_batch_axes(devices):
  batch = next(_iterator(devices, data=2, fsdp=2, tensor=2))
  assert batch["inputs"].shape[0] == 8 and batch["inputs"].shape[2] == 4
  assert batch["inputs"].sharding.spec == P(("data", "fsdp"))
  assert batch["targets"].shape == batch["inputs"].shape


def test_same_seed_same_batches_on_any_mesh(devices):
  one_device = _take(_iterator(devices[:1]), 4)
  eight_devices = _take(_iterator(devices, data=4, fsdp=2), 4)
  for a, b in zip(one_device, eight_devices):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
  other_seed = _take(_iterator(devices[:1], seed=1), 1)
  assert not np.array_equal(other_seed[0]["targets"][:, :1], one_device[0]["targets"][:, :1])


def test_set_state_continues_exactly(devices):
  iterator = _iterator(devices)
  _take(iterator, 3)
  state = iterator.get_state()
  expected = _take(iterator, 9)  # crosses the epoch boundary (6 batches)
  fresh = _iterator(devices)
  fresh.set_state(state)
  for a, b in zip(expected, _take(fresh, 9)):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(a["targets"], b["targets"])


def test_batches_come_in_the_configured_buckets(devices):
  lengths = {batch["inputs"].shape[1] for batch in _take(_iterator(devices[:1]), 12)}
  assert lengths == {3, 5}


def test_targets_are_the_teacher_function(devices):
  batch = _take(_iterator(devices[:1]), 1)[0]
  a, b = standin_stage.teacher_weights(CONFIG.features, 0)
  x = batch["inputs"].astype(np.float64)
  expected = np.tanh(x @ a) + x.mean(axis=1, keepdims=True) @ b
  np.testing.assert_allclose(batch["targets"], expected, rtol=1e-5, atol=1e-5)


def test_one_process_holds_every_row(devices):
  mesh = mesh_lib.create_mesh(mesh_lib.MeshConfig(data=2, fsdp=4), devices)
  sharding = sharding_lib.batch_sharding(mesh, RULES)
  assert standin_stage.process_rows(sharding, 16) == range(0, 16)


def test_a_batch_size_the_mesh_cannot_split_is_a_clear_error(devices):
  config = standin.StandinConfig(batch_size=6)
  with pytest.raises(ValueError, match="batch_size = 6 is not divisible by the 8 batch shards"):
    _iterator(devices, config=config)
