"""Logical axis names -> mesh shardings: the one place the rules table of `config.mesh` is applied.

Every parameter names its dimensions with logical axes (`nnx.with_partitioning(init,
("embed", "mlp"))` stores them as the variable's `out_sharding` metadata). Given the mesh and the
rules (`MeshConfig.rules`, e.g. {"embed": ("fsdp",), "mlp": ("tensor",)}), this module turns a tree
of abstract variables into a tree of `NamedSharding`s built on the concrete mesh (not on an
`AbstractMesh`: Orbax cannot restore onto shardings of an abstract mesh).

A dimension keeps only as many of its mesh axes as divide it (a 3-channel conv input is not split 8
ways but replicated), and a mesh axis is used at most once per array; both fallbacks are logged.

Activations are constrained with the same table, through one helper that models call at block
boundaries:

    x = sharding.constrain(x, axes.TOKENS)  # [B, L, D] -> split as the rules say

It does nothing unless the caller traces the model inside `activation_sharding(mesh, rules)`, so
a model called without a mesh (unit tests, `nnx.eval_shape`, single-device tools) computes exactly
what it did before. The train step enters it in its own body (`train_state.make_train_step`), so
every caller that jits the step compiles the same program; the generator enters it around the jit
that traces its sampler.
The context also carries how attention splits its tokens over the mesh's "sequence" axis
(`config.mesh.sequence_parallel`, read by `videogen.parallel.sequence` through `current()`).
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
from typing import Any, Iterator, Mapping, Sequence

import jax
from absl import logging
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from videogen.parallel import axes

Rules = Mapping[str, Sequence[str]]



@dataclasses.dataclass(frozen=True)
class ActivationSharding:
  """What `activation_sharding` holds: the mesh, the rules and the sequence-parallel method."""
  mesh: jax.sharding.Mesh
  rules: Rules
  sequence_parallel: str = "auto"


# What `constrain` applies; None outside `activation_sharding`.
_ACTIVATION_SHARDING: contextvars.ContextVar[ActivationSharding | None] = (
    contextvars.ContextVar("activation_sharding", default=None))


class ShardingRuleError(ValueError):
  """A logical axis name has no rule in `config.mesh.rules`."""


def logical_to_spec(logical_axes: Sequence[str | None], shape: Sequence[int], rules: Rules,
                    mesh: jax.sharding.Mesh, *, name: str = "array") -> PartitionSpec:
  """Maps the logical axis names of one array to a `PartitionSpec` over `mesh`.

  Args:
    logical_axes: one logical name (or None = replicated) per dimension.
    shape: the array's shape, to keep only the mesh axes that divide each dimension.
    rules: logical name -> mesh axes.
    mesh: the mesh; axes of size 1 are left out of the spec.
    name: the array's path, for messages.

  Raises:
    ShardingRuleError: a logical name has no rule, or the names do not match the rank.
  """
  if len(logical_axes) != len(shape):
    raise ShardingRuleError(f"{name}: logical axes {tuple(logical_axes)} do not match its shape "
                            f"{tuple(shape)}; give one name per dimension")
  used: set[str] = set()
  spec: list[Any] = []
  for logical, size in zip(logical_axes, shape):
    if logical is None:
      spec.append(None)
      continue
    if logical not in rules:
      raise ShardingRuleError(
          f"{name}: logical axis {logical!r} has no rule in config.mesh.rules (known: "
          f"{', '.join(sorted(rules))}); add one in the experiment file, e.g. "
          f"config.mesh.rules[{logical!r}] = ('fsdp',) or () to replicate it")
    kept: list[str] = []
    for axis in rules[logical]:
      axis_size = mesh.shape[axis]
      if axis_size == 1:
        continue
      if axis in used or size % (math.prod(mesh.shape[a] for a in kept) * axis_size):
        logging.log_first_n(
            logging.INFO, "%s: dimension %r (%d) is not split over mesh axis %r (size %d): "
            "%s", 20, name, logical, size, axis, axis_size,
            "already used by another dimension" if axis in used else "it does not divide")
        break
      kept.append(axis)
    used.update(kept)
    spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return PartitionSpec(*spec)


def variable_axes(variable: nnx.Variable) -> tuple[str | None, ...] | None:
  """The logical axis names a Variable carries (`nnx.with_partitioning`), or None."""
  names = variable.get_metadata("out_sharding", None)
  if names is None:
    return None
  return tuple(names)


def _path_name(path: Sequence[Any]) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def tree_shardings(tree: Any, mesh: jax.sharding.Mesh, rules: Rules) -> Any:
  """A tree of `NamedSharding`s for `tree` (abstract or concrete arrays, NNX Variables inside).

  Variables with logical axis names are sharded by the rules; every other array (a step counter,
  an RNG key, a Variable without names) is replicated. The result has the structure of `tree`, so
  it can be given to `jax.jit(..., out_shardings=...)` directly.
  """
  def for_leaf(path, leaf):
    if isinstance(leaf, nnx.Variable):
      value = leaf.get_value()
      if not jax.tree.leaves(value):
        return leaf  # no array to place: a masked optimizer's placeholder (optax.MaskedNode)
      logical = variable_axes(leaf)
      if logical is None or not hasattr(value, "shape"):
        spec = PartitionSpec()
      else:
        spec = logical_to_spec(logical, value.shape, rules, mesh, name=_path_name(path))
      return leaf.replace(NamedSharding(mesh, spec))
    return NamedSharding(mesh, PartitionSpec())

  return jax.tree_util.tree_map_with_path(
      for_leaf, tree, is_leaf=lambda x: isinstance(x, nnx.Variable))


def with_shardings(abstract_tree: Any, shardings: Any) -> Any:
  """`abstract_tree` with each leaf a `ShapeDtypeStruct` with its sharding (a restore target)."""
  return jax.tree.map(
      lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
      abstract_tree, shardings)


@contextlib.contextmanager
def activation_sharding(mesh: jax.sharding.Mesh, rules: Rules,
                        sequence_parallel: str = "auto") -> Iterator[None]:
  """Within this context, `constrain` pins activations to `mesh` by `rules`.

  The context is read when a function is traced, not when it runs: enter it around the first call
  (or the `.lower()`) of the jitted step. A function jitted and traced outside it keeps no
  constraints, and its cached compilation is reused even inside the context.

  Args:
    mesh: the concrete mesh the step's in/out shardings live on.
    rules: the logical-axis rules (`MeshConfig.rules`); must name every activation axis the
      models use (`axes.ACT_*`).
    sequence_parallel: how attention splits its tokens when the mesh's "sequence" axis is
      larger than 1 (`MeshConfig.sequence_parallel`: "auto", "ulysses" or "ring").
  """
  token = _ACTIVATION_SHARDING.set(ActivationSharding(mesh, rules, sequence_parallel))
  try:
    yield
  finally:
    _ACTIVATION_SHARDING.reset(token)


def constrain(x: jax.Array, logical_axes: Sequence[str | None]) -> jax.Array:
  """x pinned to the sharding its logical axis names map to; x itself outside a mesh context.

  Args:
    x: an activation, e.g. tokens [B, L, D].
    logical_axes: one activation axis name (`axes.ACT_*`) or None per dimension, e.g.
      `axes.TOKENS`.

  Raises:
    ShardingRuleError: inside `activation_sharding`, a name has no rule or the rank differs.
  """
  context = _ACTIVATION_SHARDING.get()
  if context is None:
    return x
  mesh, rules = context.mesh, context.rules
  spec = logical_to_spec(logical_axes, x.shape, rules, mesh,
                         name=f"activation {tuple(logical_axes)}")
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def current() -> ActivationSharding | None:
  """The innermost `activation_sharding` context being traced in, or None outside one."""
  return _ACTIVATION_SHARDING.get()


def batch_axes(mesh: jax.sharding.Mesh, rules: Rules) -> tuple[str, ...]:
  """The mesh axes the batch dimension is split over (its rule, size-1 axes left out)."""
  if axes.ACT_BATCH not in rules:
    raise ShardingRuleError(f"config.mesh.rules has no {axes.ACT_BATCH!r} rule: add e.g. "
                            f"config.mesh.rules[{axes.ACT_BATCH!r}] = ('data', 'fsdp')")
  return tuple(axis for axis in rules[axes.ACT_BATCH] if mesh.shape[axis] > 1)


def batch_sharding(mesh: jax.sharding.Mesh, rules: Rules) -> NamedSharding:
  """Sharding of a batch array: dimension 0 split over the batch axes, the rest replicated."""
  axes = batch_axes(mesh, rules)
  return NamedSharding(mesh, PartitionSpec(axes if axes else None))


def num_batch_shards(mesh: jax.sharding.Mesh, rules: Rules) -> int:
  """How many ways the batch is split; a global batch size must be a multiple of it."""
  return math.prod(mesh.shape[axis] for axis in batch_axes(mesh, rules))


def bytes_per_device(tree: Any) -> int:
  """Bytes of `tree`'s arrays held by the first local device (the per-device memory of a state)."""
  device = jax.local_devices()[0]
  total = 0
  for leaf in jax.tree.leaves(tree):
    for shard in getattr(leaf, "addressable_shards", ()):
      if shard.device == device:
        total += shard.data.nbytes
  return total
