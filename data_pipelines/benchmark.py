r"""Loader throughput: samples/s and batches/s of `make_iterator` on the procedural world.

    python -m data_pipelines.benchmark
    python -m data_pipelines.benchmark --buckets=9x32x32:8,17x64x64:8 --workers=0,2 --batches=20

For each bucket and worker count it builds a fresh iterator (over all local devices), pulls
`--warmup` batches (worker start-up, first compilations of nothing: the loader is NumPy) and then
times `--batches` batches, each waited for on its devices. The numbers include rendering,
tokenization and the host-to-device copy, i.e. what the trainer sees.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

from data_pipelines import loader
from data_pipelines import tokenizer as tokenizer_lib

_BUCKETS = flags.DEFINE_list("buckets", ["9x32x32:8", "17x64x64:8"],
                             "Buckets FRAMESxHEIGHTxWIDTH:GLOBAL_BATCH to measure, one at a time.")
_WORKERS = flags.DEFINE_list("workers", ["0", "2"], "Worker process counts to measure.")
_THREADS = flags.DEFINE_integer("threads", 1, "Threads per process (DataConfig.num_threads).")
_PREFETCH = flags.DEFINE_integer("prefetch", 2, "Batches buffered (DataConfig.prefetch).")
_WARMUP = flags.DEFINE_integer("warmup", 3, "Batches pulled before timing.")
_BATCHES = flags.DEFINE_integer("batches", 50, "Batches timed.")


def measure(config: loader.DataConfig, tokenizer: tokenizer_lib.Tokenizer, *, warmup: int,
            batches: int) -> dict[str, float]:
  """Times `batches` batches after `warmup`; returns samples/s, batches/s and start-up seconds."""
  mesh = jax.sharding.Mesh(np.array(jax.devices()).reshape(-1, 1), ("data", "fsdp"))
  iterator = loader.make_iterator(config, tokenizer=tokenizer, mesh=mesh, seed=0)
  try:
    start = time.perf_counter()
    for _ in range(warmup):
      jax.block_until_ready(next(iterator))
    started = time.perf_counter()
    samples = 0
    for _ in range(batches):
      batch = jax.block_until_ready(next(iterator))
      samples += batch["video"].shape[0]
    elapsed = time.perf_counter() - started
  finally:
    iterator.close()
  return {"samples_per_s": samples / elapsed, "batches_per_s": batches / elapsed,
          "warmup_s": started - start}


def main(argv: list[str]) -> None:
  del argv
  with tempfile.TemporaryDirectory() as workdir:
    tokenizer = tokenizer_lib.load_or_train(
        tokenizer_lib.TokenizerConfig(), os.path.join(workdir, "tokenizer.model"),
        lambda: loader.captions(loader.DataConfig(), seed=0, num=4000))
  print(f"devices: {jax.device_count()} x {jax.devices()[0].platform}, "
        f"CPUs: {os.cpu_count()}, threads per process: {_THREADS.value}, "
        f"warm-up {_WARMUP.value} batches, timed {_BATCHES.value}")
  print(f"{'bucket':>14} {'workers':>7} {'samples/s':>10} {'batches/s':>10} {'warm-up s':>10}")
  for spec in _BUCKETS.value:
    for workers in (int(w) for w in _WORKERS.value):
      config = dataclasses.replace(
          loader.DataConfig(buckets=(spec,)), num_workers=workers, num_threads=_THREADS.value,
          prefetch=_PREFETCH.value)
      result = measure(config, tokenizer, warmup=_WARMUP.value, batches=_BATCHES.value)
      print(f"{spec:>14} {workers:>7} {result['samples_per_s']:>10.1f} "
            f"{result['batches_per_s']:>10.2f} {result['warmup_s']:>10.2f}", flush=True)


if __name__ == "__main__":
  app.run(main)
