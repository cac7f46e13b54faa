"""The contract between the one shared trainer and the model stages it trains.

A stage (the autoencoder, the diffusion transformer, the stand-in model of the trainer's tests)
says what to build, what to train, and what the loss is; the trainer (`videogen.train.trainer`)
owns everything else: the mesh and shardings, the optimizer, EMA, the jitted step, checkpoints,
metrics, resume and preemption. A stage holds no loop and no checkpoint code.

    class MyStage(Stage):
      name = "autoencoder"
      def create_model(self, rngs): return VideoAutoencoder(config, rngs=rngs)
      def loss(self, model, batch, rng, step): ...; return loss, {"l1": l1}
      def make_iterator(self, *, mesh, seed, workdir): return loader.make_iterator(...)
"""

from __future__ import annotations

import abc
from typing import Any, Protocol

import jax
from flax import nnx


class BatchIterator(Protocol):
  """An iterator of global batches whose position can be saved and restored exactly.

  `next()` returns a dict of `jax.Array`s already sharded over the mesh's batch axes (for
  example `{"video": uint8 [B, T, H, W, 3], "tokens": int32 [B, L], "token_mask": bool [B, L]}`);
  batches may come in a few static shapes (buckets), never a new shape per step. The state is
  JSON-serialisable, and `set_state(get_state())` on a fresh iterator yields exactly the batches
  the original would have yielded next.
  """

  def __iter__(self) -> BatchIterator: ...

  def __next__(self) -> dict[str, jax.Array]: ...

  def get_state(self) -> dict[str, Any]: ...

  def set_state(self, state: dict[str, Any]) -> None: ...


class Stage(abc.ABC):
  """One model stage trained by the shared trainer. See the module docstring."""

  name: str
  # Which of the model's variables the optimizer updates; the others (a frozen autoencoder inside
  # the diffusion stage, a frozen text encoder) are carried unchanged and not EMA'd.
  trainable: nnx.filterlib.Filter = nnx.Param

  @abc.abstractmethod
  def create_model(self, rngs: nnx.Rngs) -> nnx.Module:
    """Builds the stage's module. Called under `nnx.eval_shape` first, so it must be pure."""

  @abc.abstractmethod
  def loss(self, model: nnx.Module, batch: dict[str, jax.Array], rng: jax.Array,
           step: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Returns (scalar loss, scalar metrics). Pure: traced once inside the jitted train step."""

  @abc.abstractmethod
  def make_iterator(self, *, mesh: jax.sharding.Mesh, seed: int, workdir: str) -> BatchIterator:
    """The stage's training data, sharded over `mesh`'s batch axes, deterministic from `seed`."""

  def load_frozen(self, state: nnx.State, workdir: str) -> nnx.State:
    """Fills the frozen (non-trainable) variables, e.g. from another stage's checkpoint.

    `state` holds every variable of the freshly initialised, sharded model; return it with the
    frozen ones replaced (keeping their shardings). The default keeps the initial values.
    """
    del workdir
    return state

  def initial_params(self, params: nnx.State, workdir: str) -> nnx.State:
    """The trainable variables' starting values, e.g. another stage's weights to fine-tune.

    Called once after `load_frozen` on the freshly initialised, sharded trainable state (a
    resume then overwrites them); return it with any variables replaced (keeping their
    shardings). The EMA starts from what this returns. The default keeps the initial values.
    """
    del workdir
    return params

  def evaluate(self, model: nnx.Module, step: int, workdir: str) -> dict[str, float]:
    """Measures the model (with EMA parameters) at an eval step; may write files from process 0.

    Runs outside the jitted step, on every process. Returns scalar metrics to log.
    """
    del model, step, workdir
    return {}

  def evaluation_context(self) -> dict[str, Any]:
    """What the numbers of `evaluate` are about (e.g. the compression, the videos measured).

    JSON-serialisable facts, not metrics: `evaluate --what=<stage>` reports them beside the
    scores; the trainer does not log them. Call after `evaluate`.
    """
    return {}
