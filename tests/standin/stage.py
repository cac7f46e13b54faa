"""The stand-in stage: `StandinModel` regressing a fixed random function, for the trainer's tests.

Data: batch `i` of the synthetic set holds `inputs` x ~ N(0, 1) [B, L, F] and `targets`
tanh(x A) + mean_L(x) B [B, L, F], for fixed random matrices A, B; each batch has one of the
configured lengths (buckets). Every row is drawn from its own generator seeded by (seed, batch,
row), so a process builds only its own rows and the global batch is the same for any number of
processes or devices. A Grain pipeline shuffles the batch indices per epoch and prefetches.
"""

from __future__ import annotations

from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from videogen import experiment as experiment_lib
from videogen.parallel import sharding as sharding_lib
from videogen.train import stage as stage_lib

from tests.standin import model as standin


def teacher_weights(features: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """The fixed matrices A, B [F, F] of the regression target."""
  rng = np.random.default_rng([seed, 7919])
  scale = features ** -0.5
  return (rng.normal(size=(features, features)) * scale * 2.0,
          rng.normal(size=(features, features)) * scale)


def make_rows(batch_index: int, rows: range, length: int, features: int, seed: int,
              weights: tuple[np.ndarray, np.ndarray]) -> dict[str, np.ndarray]:
  """Rows `rows` of synthetic batch `batch_index`: inputs, targets float32 [len(rows), L, F]."""
  inputs = np.stack([
      np.random.default_rng([seed, batch_index, row]).normal(size=(length, features))
      for row in rows]).astype(np.float32)
  a, b = weights
  targets = np.tanh(inputs @ a) + inputs.mean(axis=1, keepdims=True) @ b
  return {"inputs": inputs, "targets": targets.astype(np.float32)}


def batch_length(batch_index: int, lengths: tuple[int, ...], seed: int) -> int:
  """The bucket length of batch `batch_index`."""
  return int(lengths[np.random.default_rng([seed, batch_index, 104729]).integers(len(lengths))])


def process_rows(sharding: jax.sharding.Sharding, batch_size: int) -> range:
  """The contiguous rows of a global batch that this process's devices hold."""
  indices = sharding.addressable_devices_indices_map((batch_size,))
  starts = [index[0].indices(batch_size) for index in indices.values()]
  held = sorted({row for start, stop, _ in starts for row in range(start, stop)})
  if held != list(range(held[0], held[-1] + 1)):
    raise ValueError(f"process {jax.process_index()} holds non-contiguous batch rows {held}; "
                     f"order the mesh so that each process's devices are adjacent on the batch "
                     f"axes")
  return range(held[0], held[-1] + 1)


class StandinIterator:
  """A `BatchIterator` over the synthetic set: global batches sharded over the batch axes."""

  def __init__(self, config: standin.StandinConfig, *, mesh: jax.sharding.Mesh,
               rules: sharding_lib.Rules, seed: int):
    shards = sharding_lib.num_batch_shards(mesh, rules)
    if config.batch_size % shards:
      raise ValueError(f"standin.batch_size = {config.batch_size} is not divisible by the "
                       f"{shards} batch shards of the mesh; change config.standin.batch_size or "
                       f"config.mesh")
    self._sharding = sharding_lib.batch_sharding(mesh, rules)
    self._config = config
    rows = process_rows(self._sharding, config.batch_size)
    weights = teacher_weights(config.features, seed)

    def make_local_batch(batch_index: int) -> dict[str, np.ndarray]:
      length = batch_length(int(batch_index), config.lengths, seed)
      return make_rows(int(batch_index), rows, length, config.features, seed, weights)

    dataset = (grain.MapDataset.range(config.num_batches)
               .shuffle(seed=seed)
               .repeat(None)
               .map(make_local_batch))
    self._iterator = iter(dataset.to_iter_dataset(
        grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))

  def __iter__(self) -> StandinIterator:
    return self

  def __next__(self) -> dict[str, jax.Array]:
    local = next(self._iterator)
    return {name: jax.make_array_from_process_local_data(
        self._sharding, value, (self._config.batch_size, *value.shape[1:]))
            for name, value in local.items()}

  def get_state(self) -> dict[str, Any]:
    return self._iterator.get_state()

  def set_state(self, state: dict[str, Any]) -> None:
    self._iterator.set_state(state)


class StandinStage(stage_lib.Stage):
  """Trains `StandinModel` with a mean-squared error."""

  name = "standin"

  def __init__(self, experiment: experiment_lib.Experiment):
    self.config = experiment.section("standin")
    self.rules = experiment.mesh.rules

  def create_model(self, rngs: nnx.Rngs) -> nnx.Module:
    return standin.StandinModel(self.config, rngs=rngs)

  def loss(self, model: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array,
           step: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    del rng, step
    predictions = model(batch["inputs"]).astype(jnp.float32)
    errors = predictions - batch["targets"]
    return jnp.mean(jnp.square(errors)), {"mae": jnp.mean(jnp.abs(errors))}

  def make_iterator(self, *, mesh: jax.sharding.Mesh, seed: int,
                    workdir: str) -> StandinIterator:
    del workdir
    return StandinIterator(self.config, mesh=mesh, rules=self.rules, seed=seed)
