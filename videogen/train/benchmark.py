r"""Train-step speed and per-device state memory of a stage on several meshes.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 \
        python -m videogen.train.benchmark --config=experiments/standin.py:base --steps=10

prints, for each layout (1 device; 8 devices data-parallel; 8 devices FSDP by default), the
compile time, the mean step time and the bytes of parameters + optimizer state (and of the EMA
copy) held by one device. On fake CPU devices the 8 "devices" share the host's cores, so the step
time shows the sharding overhead, not a speed-up.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import jax
from absl import app
from absl import flags
from ml_collections import config_flags
from jax.sharding import NamedSharding, PartitionSpec

from videogen import experiment as experiment_lib
from videogen.parallel import mesh as mesh_lib
from videogen.parallel import sharding as sharding_lib
from videogen.train import stages as stages_lib
from videogen.train import train_state as train_state_lib

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment file and variant.")
_STAGE = flags.DEFINE_string("stage", None, "Stage to measure (default: the first of the config).")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps per layout (after one warm-up step).")
_LAYOUTS = flags.DEFINE_list(
    "layouts", ["1:1x1x1", "8:8x1x1", "8:1x8x1"],
    "devices:data x fsdp x tensor for each measurement, e.g. 8:2x2x2.")


@dataclasses.dataclass
class Measurement:
  devices: int
  mesh: str
  compile_seconds: float
  step_seconds: float
  params_and_optimizer_bytes: int
  ema_bytes: int


def measure(experiment: experiment_lib.Experiment, stage_name: str,
            devices: Sequence[jax.Device], steps: int) -> Measurement:
  """Builds the stage's state over `devices` (mesh from `experiment.mesh`) and times its step."""
  mesh_config = experiment.mesh
  mesh = mesh_lib.create_mesh(mesh_config, devices)
  stage = stages_lib.make_stage(stage_name, experiment)
  config = experiment.train[stage_name]
  tx = train_state_lib.make_optimizer(config)
  state, shardings = train_state_lib.init_sharded_train_state(stage, tx, experiment.seed, mesh,
                                                              mesh_config.rules)
  graphdef, _, _ = train_state_lib.abstract_model(stage)
  step_fn = train_state_lib.make_train_step(stage, graphdef, tx, config, mesh=mesh,
                                            rules=mesh_config.rules)
  iterator = stage.make_iterator(mesh=mesh, seed=experiment.seed, workdir="")
  batches = [next(iterator) for _ in range(steps + 1)]
  if len({tuple(b[k].shape for k in sorted(b)) for b in batches}) > 1:
    raise ValueError("the batches come in several shapes: give the stage a single bucket so that "
                     "one compiled step is timed")
  start = time.perf_counter()
  compiled = jax.jit(step_fn, in_shardings=(shardings, {k: v.sharding for k, v in
                                                        batches[0].items()}),
                     out_shardings=(shardings, NamedSharding(mesh, PartitionSpec())),
                     donate_argnums=(0,)).lower(state, batches[0]).compile()
  compile_seconds = time.perf_counter() - start
  resident = (sharding_lib.bytes_per_device(state.params)
              + sharding_lib.bytes_per_device(state.opt_state))
  ema = sharding_lib.bytes_per_device(state.ema_params)
  state, metrics = compiled(state, batches[0])
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for batch in batches[1:]:
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  return Measurement(len(devices), mesh_lib.describe(mesh), compile_seconds,
                     (time.perf_counter() - start) / steps, resident, ema)


def main(argv: list[str]) -> None:
  del argv
  if _CONFIG.value is None:
    raise app.UsageError("give --config=experiments/<file>.py:<variant>")
  base = _CONFIG.value
  stage_name = _STAGE.value or tuple(base.stages)[0]
  measurements: list[Any] = []
  for layout in _LAYOUTS.value:
    count, _, sizes = layout.partition(":")
    config = base.copy_and_resolve_references()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = (int(s) for s in sizes.split("x"))
    if int(count) > jax.device_count():
      raise app.UsageError(f"layout {layout} needs {count} devices, {jax.device_count()} exist: "
                           f"set XLA_FLAGS=--xla_force_host_platform_device_count={count}")
    experiment = experiment_lib.validate(config)
    measurements.append(measure(experiment, stage_name, jax.devices()[:int(count)], _STEPS.value))
  print(f"{'mesh':<48} {'compile s':>9} {'step ms':>9} {'params+opt MiB/dev':>19} "
        f"{'EMA MiB/dev':>12}")
  for m in measurements:
    print(f"{m.mesh:<48} {m.compile_seconds:9.1f} {m.step_seconds * 1e3:9.1f} "
          f"{m.params_and_optimizer_bytes / 2**20:19.2f} {m.ema_bytes / 2**20:12.2f}")


if __name__ == "__main__":
  app.run(main)
