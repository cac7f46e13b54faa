r"""Loader throughput: samples/s and batches/s of `make_iterator`.

    python -m videogen.main benchmark --config=experiments/shapes.py:tiny --what=loader \
        --config.data.buckets='("17x64x64:8",)' --config.data.num_workers=2

`measure` builds a fresh iterator (over all local devices), pulls `warmup` batches (worker
start-up, first compilations of nothing: the loader is NumPy) and then times `batches` batches,
each waited for on its devices. The numbers include rendering, tokenization and the
host-to-device copy, i.e. what the trainer sees.
"""

from __future__ import annotations

import time

import jax
import numpy as np

from data_pipelines import loader
from data_pipelines import tokenizer as tokenizer_lib



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
