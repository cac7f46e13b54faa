"""The dit stage's train step with the transformer's blocks scanned and unrolled, timed in turns
in one process (docs/tiny_run.md, "The transformer's blocks unrolled, not scanned").

    python docs/studies/step_layouts.py experiments/shapes.py:tiny WORKDIR

Both programs are the trainer's, compiled for each bucket on WORKDIR's batches (a workdir with a
trained autoencoder and latent cache, e.g. runs/tiny: the steps the dit stage runs on cached
latents). Six rounds; in each, every layout runs 30 steps of each bucket after 3 untimed ones,
so that a machine whose speed drifts slows both alike. Prints the wall and CPU (both cores')
milliseconds a step.
"""
import dataclasses
import sys
import time

import jax

from videogen import cli
from videogen import experiment as experiment_lib
from videogen.parallel import mesh as mesh_lib
from videogen.train import stages as stages_lib
from videogen.train import train_state as train_state_lib
from videogen.train import trainer

ROUNDS, STEPS, WARMUP = 6, 30, 3


def compiled_steps(experiment: experiment_lib.Experiment, workdir: str):
  """The dit stage's train step compiled as the trainer compiles it, for each bucket, on
  WORKDIR's first batch of that bucket: ({bucket: program}, {bucket: batch}, the state's leaves).
  """
  mesh = mesh_lib.create_mesh(experiment.mesh)
  stage = stages_lib.make_stage("dit", experiment)
  config = experiment.train["dit"]
  tx = train_state_lib.make_optimizer(config)
  state, shardings = train_state_lib.init_sharded_train_state(
      stage, tx, experiment.seed, mesh, experiment.mesh.rules, salt=trainer.stage_salt("dit"))
  graphdef, _, _ = train_state_lib.abstract_model(stage)
  iterator = stage.make_iterator(mesh=mesh, seed=experiment.seed, workdir=workdir)
  batches = {}
  while len(batches) < len(experiment.data.buckets):
    batch = next(iterator)
    batches.setdefault(trainer.describe_batch(batch), batch)
  step = train_state_lib.make_train_step(
      stage, graphdef, tx, config, mesh=mesh, rules=experiment.mesh.rules,
      sequence_parallel=experiment.mesh.sequence_parallel)
  compiler = trainer.StepCompiler(step, state, shardings, mesh, "dit")
  leaves = compiler.flatten(state)
  compiled = {name: compiler.lower(leaves, batch).compile() for name, batch in batches.items()}
  return compiled, batches, leaves


def main() -> None:
  base = experiment_lib.validate(cli.load_config_file(sys.argv[1]))
  layouts = {}
  for scan_layers in (True, False):
    experiment = dataclasses.replace(base, dit=dataclasses.replace(base.dit,
                                                                   scan_layers=scan_layers))
    start = time.perf_counter()
    layout = list(compiled_steps(experiment, sys.argv[2]))
    name = "scanned" if scan_layers else "unrolled"
    print(f"{name}: compiled {len(layout[0])} steps in {time.perf_counter() - start:.1f} s")
    layouts[name] = layout

  for round_ in range(ROUNDS):
    for name, layout in layouts.items():
      compiled, batches, leaves = layout
      timings = []
      for bucket, batch in batches.items():
        for _ in range(WARMUP):
          leaves, _ = compiled[bucket](leaves, batch)
        jax.block_until_ready(leaves)
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in range(STEPS):
          leaves, _ = compiled[bucket](leaves, batch)
        jax.block_until_ready(leaves)
        timings.append(f"{bucket}: {(time.perf_counter() - wall) / STEPS * 1e3:.1f} ms "
                       f"({(time.process_time() - cpu) / STEPS * 1e3:.1f} CPU ms)")
      layout[2] = leaves
      print(f"round {round_} {name:8s} " + "; ".join(timings), flush=True)


if __name__ == "__main__":
  main()
