"""Where a train step's time goes on this machine, by kind of XLA operation (docs/tiny_run.md).

    python docs/studies/step_profile.py experiments/shapes.py:tiny WORKDIR [dit.scan_layers=False]

Compiles the dit stage's train step as the trainer does, on WORKDIR's first batch (a workdir with
a trained autoencoder and latent cache, e.g. runs/tiny, times the step the dit stage runs: on
cached latents), then records 10 steps with `jax.profiler` and sums each operation's time per
step, the operations grouped by name without their numbers (`copy.12` counts as `copy`). The
sums are over both cores' threads, so they exceed the wall time. KEY=VALUE arguments override the
experiment's config, e.g. `dit.scan_layers=False`.
"""
import collections
import glob
import gzip
import json
import re
import sys
import tempfile
import time

import jax

from videogen import cli
from videogen import experiment as experiment_lib
from videogen.parallel import mesh as mesh_lib
from videogen.train import stages as stages_lib
from videogen.train import train_state as train_state_lib
from videogen.train import trainer

STEPS = 10
config = cli.load_config_file(sys.argv[1])
workdir = sys.argv[2]
for override in sys.argv[3:]:
  key, value = override.split("=", 1)
  *parents, name = key.split(".")
  section = config
  for parent in parents:
    section = section[parent]
  section[name] = value if isinstance(section[name], str) else type(section[name])(eval(value))
experiment = experiment_lib.validate(config)
mesh = mesh_lib.create_mesh(experiment.mesh)
stage = stages_lib.make_stage("dit", experiment)
train_config = experiment.train["dit"]
tx = train_state_lib.make_optimizer(train_config)
state, shardings = train_state_lib.init_sharded_train_state(
    stage, tx, experiment.seed, mesh, experiment.mesh.rules, salt=trainer.stage_salt("dit"))
graphdef, _, _ = train_state_lib.abstract_model(stage)
batch = next(stage.make_iterator(mesh=mesh, seed=experiment.seed, workdir=workdir))
step = train_state_lib.make_train_step(stage, graphdef, tx, train_config, mesh=mesh,
                                       rules=experiment.mesh.rules,
                                       sequence_parallel=experiment.mesh.sequence_parallel)
compiler = trainer.StepCompiler(step, state, shardings, mesh, "dit")
leaves = compiler.flatten(state)
compiled = compiler.lower(leaves, batch).compile()
for _ in range(5):
  leaves, _ = compiled(leaves, batch)
jax.block_until_ready(leaves)
start, cpu = time.perf_counter(), time.process_time()
for _ in range(30):
  leaves, _ = compiled(leaves, batch)
jax.block_until_ready(leaves)
print(f"batch {', '.join(f'{k} {list(v.shape)}' for k, v in sorted(batch.items()))}")
print(f"{(time.perf_counter() - start) / 30 * 1e3:.1f} ms a step, "
      f"{(time.process_time() - cpu) / 30 * 1e3:.1f} CPU ms")

trace_dir = tempfile.mkdtemp()
with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
  for _ in range(STEPS):
    leaves, _ = compiled(leaves, batch)
  jax.block_until_ready(leaves)
[trace] = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
with gzip.open(trace) as file:
  events = [e for e in json.load(file)["traceEvents"] if e.get("ph") == "X"]
# The runtime's own spans (the executor, its waits) and Python's enclose the operations.
enclosing = re.compile(r"^\$|^ThunkExecutor|^PjitFunction|Pjrt|^SlinkyThreadPool|^Handle inputs")
kinds = collections.Counter()
for event in events:
  if not enclosing.search(event["name"]):
    kinds[re.sub(r"\.\d+$", "", event["name"])] += event["dur"] / 1e3 / STEPS
print(f"operations: {sum(kinds.values()):.1f} ms a step (both cores' threads)")
for kind, milliseconds in kinds.most_common(15):
  print(f"  {milliseconds:7.2f} ms  {kind}")
