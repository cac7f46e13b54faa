"""videogen/parallel/memory.py: a step too large for the host stops with a clear error first."""

from __future__ import annotations

import contextlib
import logging

import jax
import jax.numpy as jnp
import pytest

from videogen import experiment as experiment_lib
from videogen.parallel import memory
from videogen.parallel import mesh as mesh_lib
from videogen.train import stages as stages_lib
from videogen.train import trainer

from tests.standin import experiment as standin_experiment

SIZE = 512  # x [SIZE, SIZE] float32: sin(x @ x.T) is a 1 MiB temporary.


@contextlib.contextmanager
def _absl_records():
  """The records absl logging writes inside the block."""
  records = []
  handler = logging.Handler()
  handler.emit = records.append
  logger = logging.getLogger("absl")
  logger.addHandler(handler)
  try:
    yield records
  finally:
    logger.removeHandler(handler)


def _compiled():
  x = jnp.ones((SIZE, SIZE), jnp.float32)
  return jax.jit(lambda x: jnp.sum(jnp.sin(x @ x.T) @ x)).lower(x).compile()


def test_host_available_bytes_reads_meminfo(tmp_path):
  meminfo = tmp_path / "meminfo"
  meminfo.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\n"
                     "MemAvailable:   12345678 kB\n")
  assert memory.host_available_bytes(str(meminfo)) == 12345678 * 1024
  assert memory.host_available_bytes(str(tmp_path / "missing")) is None
  meminfo.write_text("MemTotal: 1 kB\n")
  assert memory.host_available_bytes(str(meminfo)) is None


def test_required_bytes_counts_the_temporaries():
  required = memory.required_bytes(_compiled())
  assert required >= SIZE * SIZE * 4  # sin(x @ x.T), which the second product reads


def test_check_fits_refuses_a_step_larger_than_the_host():
  compiled = _compiled()
  devices = jax.local_devices()[:2]
  per_device = memory.required_bytes(compiled)
  memory.check_fits(compiled, what="the step", remedy="-", devices=devices,
                    available=2 * per_device)
  with _absl_records() as records:
    memory.check_fits(compiled, what="the close step", remedy="-", devices=devices,
                      available=int(2 * per_device / 0.9))
  assert any("the close step needs" in r.getMessage() for r in records)
  with pytest.raises(memory.StepMemoryError,
                     match=r"the toy step needs .* GiB of host memory beyond its inputs \(.* on "
                           r"each of 2 CPU device\(s\)\) .* available: .* Use smaller batches"):
    memory.check_fits(compiled, what="the toy step", remedy="Use smaller batches.",
                      devices=devices, available=2 * per_device - 1)


def test_local_devices_of_a_mesh():
  mesh = mesh_lib.create_mesh(mesh_lib.MeshConfig(data=-1), jax.devices())
  local = sorted(d.id for d in memory.local_devices(mesh))
  assert local == sorted(d.id for d in jax.local_devices())


def test_accelerators_are_left_to_report_their_own_errors():
  class FakeGpu:
    platform = "gpu"

  memory.check_fits(_compiled(), what="the step", remedy="-", devices=[FakeGpu()], available=0)


def test_devices_memory_is_the_hosts_for_cpus_and_the_sum_of_accelerators(monkeypatch):
  monkeypatch.setattr(memory, "host_available_bytes", lambda: 5 * 2**30)
  assert memory.devices_memory_bytes(jax.devices()) == 5 * 2**30  # 8 CPU devices share it

  class FakeGpu:
    platform = "gpu"

    def __init__(self, limit):
      self.limit = limit

    def memory_stats(self):
      return None if self.limit is None else {"bytes_limit": self.limit, "bytes_in_use": 1}

  assert memory.devices_memory_bytes([FakeGpu(3), FakeGpu(4)]) == 7
  assert memory.devices_memory_bytes([FakeGpu(3), FakeGpu(None)]) is None


def test_the_trainer_refuses_a_step_that_cannot_fit(tmp_path, monkeypatch):
  config = standin_experiment.get_config("tiny")
  config.standin.depth = 1
  config.mesh.data = 1
  config.train.standin.update(num_steps=2, progress_bar=False)
  experiment = experiment_lib.validate(config)
  mesh = mesh_lib.create_mesh(experiment.mesh, jax.devices()[:1])
  monkeypatch.setattr(memory, "host_available_bytes", lambda: 1)
  with pytest.raises(memory.StepMemoryError,
                     match=r"the standin train step for .* needs .* config.data.buckets"):
    trainer.train_stage(stages_lib.make_stage("standin", experiment), experiment,
                        str(tmp_path), mesh=mesh)
  assert not (tmp_path / "checkpoints" / "standin" / "2").exists()
