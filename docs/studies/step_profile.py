"""Where a train step's time goes on this machine, by kind of XLA operation (docs/tiny_run.md).

    python docs/studies/step_profile.py experiments/shapes.py:tiny WORKDIR [dit.scan_layers=False]

Compiles the dit stage's train step as the trainer does (`step_layouts.compiled_steps`), on the
batch of WORKDIR's loader step 0 (8 video clips in the tiny and long presets; a workdir with a
trained autoencoder and latent cache, e.g. runs/tiny, times the step the dit stage runs: on cached
latents), then records 10 steps with `jax.profiler` and sums each operation's time per step, the
operations grouped by name without their numbers (`copy.12` counts as `copy`). The sums are over
both cores' threads, so they exceed the wall time. KEY=VALUE arguments override the experiment's
config, e.g. `dit.scan_layers=False`.
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

import step_layouts  # beside this file
from videogen import cli
from videogen import experiment as experiment_lib

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
compiled_by_bucket, batches, leaves = step_layouts.compiled_steps(experiment, workdir)
bucket = next(iter(batches))  # loader step 0's
compiled, batch = compiled_by_bucket[bucket], batches[bucket]
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
