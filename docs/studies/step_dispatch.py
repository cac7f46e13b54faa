"""The host's cost of one train-step call, the state passed as a TrainState or as its leaves
(docs/tiny_run.md).

    python docs/studies/step_dispatch.py experiments/shapes.py:tiny

For each stage of the preset, the step is the identity on the donated state (one increment, no
other arithmetic), so a call's time is what the host spends on it: the TrainState's nnx
Variables flattened and rebuilt by Python, or the flat leaves the trainer's loop passes
(`trainer.StepCompiler`). Three runs of 300 calls each.
"""
import sys
import time

import jax
import jax.numpy as jnp

from videogen import cli
from videogen import experiment as experiment_lib
from videogen.parallel import mesh as mesh_lib
from videogen.train import stages as stages_lib
from videogen.train import train_state as train_state_lib
from videogen.train import trainer

experiment = experiment_lib.validate(cli.load_config_file(sys.argv[1]))
mesh = mesh_lib.create_mesh(experiment.mesh)
rules = experiment.mesh.rules
batch = {"x": jnp.zeros((8, 4))}
CALLS = 300


def identity_step(state, batch):
  return state.replace(step=state.step + 1), {"loss": batch["x"].sum()}


def seconds_per_call(call, carried):
  start = time.perf_counter()
  for _ in range(CALLS):
    carried, _ = call(carried, batch)
  jax.block_until_ready(carried)
  return (time.perf_counter() - start) / CALLS, carried


for name in experiment.stages:
  stage = stages_lib.make_stage(name, experiment)
  tx = train_state_lib.make_optimizer(experiment.train[name])
  state, shardings = train_state_lib.init_sharded_train_state(stage, tx, experiment.seed, mesh,
                                                              rules)
  with_state = jax.jit(identity_step, donate_argnums=(0,)).lower(state, batch).compile()
  compiler = trainer.StepCompiler(identity_step, state, shardings, mesh, name)
  leaves = compiler.flatten(jax.tree.map(jnp.copy, state))
  with_leaves = compiler(leaves, batch)
  for _ in range(3):
    a, state = seconds_per_call(with_state, state)
    b, leaves = seconds_per_call(with_leaves, leaves)
    print(f"{name}: {len(leaves)} leaves; a call with the TrainState {a * 1e3:.2f} ms, "
          f"with its leaves {b * 1e3:.2f} ms")
