"""The transformer's blocks stacked or one set per block: a checkpoint of either layout read into
the other.

`DiTConfig.scan_layers` keeps the transformer's blocks stacked along a leading layer axis
(`dit/blocks/<path>`, shape [depth, ...]), which `nnx.scan` runs as one compiled block, or as one
set per block (`dit/blocks/<i>/<path>`), which runs unrolled. Both compute the same function; only
the layout of the weights, of their EMA and of the optimizer state that mirrors them differs. So
a checkpoint is read in the layout it was written in and converted to the one asked for:

    source = layer_layout.source_tree(target, saved_config)   # the checkpoint's config
    state = restored_from(source)
    if source is not target:
      state = layer_layout.into_target(state, target)

Every subtree reached by the key `dit` whose child is `blocks` is a transformer's block stack
(the dit stage's model and the distill stage's student, in the parameters, the EMA and each
optimizer state); the text encoder's blocks are never stacked and are left as they are.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
import optax

Path = tuple[Any, ...]

TRANSFORMER, BLOCKS = "dit", "blocks"
# The `DiTConfig` fields that say how the blocks are laid out and run, not what they compute: a
# run may change them between a checkpoint and its restore.
LAYOUT_SETTINGS = ("scan_layers", "scan_unroll")


def key_name(entry: Any) -> Any:
  """The name of one step of a jax key path: a dict key, a sequence index or an attribute."""
  for attribute in ("key", "idx", "name"):
    if hasattr(entry, attribute):
      return getattr(entry, attribute)
  raise TypeError(f"unknown key path entry {entry!r}")


def _empty(node: Any) -> bool:
  """A place in an optimizer state that holds nothing (a weight another optimizer trains), which
  orbax writes down as such: kept as a leaf, so that each block keeps it."""
  return node is None or isinstance(node, optax.MaskedNode)


def _flat(tree: Any) -> dict[Path, Any]:
  return {tuple(key_name(entry) for entry in path): leaf
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree, is_leaf=_empty)[0]}


def _blocks_at(path: Path) -> Optional[int]:
  """The position of `blocks` in `path` where it is a transformer's block stack, else None."""
  for position in range(1, len(path)):
    if path[position] == BLOCKS and path[position - 1] == TRANSFORMER:
      return position
  return None


def is_stacked(tree: Any) -> Optional[bool]:
  """Whether `tree` holds a transformer's blocks stacked (True) or one set per block (False);
  None when it holds no transformer blocks."""
  for path in _flat(tree):
    position = _blocks_at(path)
    if position is not None:
      return not (position + 1 < len(path) and isinstance(path[position + 1], int))
  return None


def _spec(sharding: Any) -> Optional[jax.sharding.PartitionSpec]:
  return sharding.spec if isinstance(sharding, jax.sharding.NamedSharding) else None


def _with_spec(sharding: Any, spec: tuple[Any, ...]) -> Any:
  if isinstance(sharding, jax.sharding.NamedSharding):
    return jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(*spec))
  return sharding


def _stacked(leaf: jax.ShapeDtypeStruct, depth: int) -> jax.ShapeDtypeStruct:
  """One block's array as a stack of `depth` of them, sharded alike along the other axes."""
  spec = _spec(leaf.sharding)
  sharding = leaf.sharding if spec is None else _with_spec(leaf.sharding, (None, *spec))
  return jax.ShapeDtypeStruct((depth, *leaf.shape), leaf.dtype, sharding=sharding)


def _one_block(leaf: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
  """One block's array of a stack, sharded as the stack is along the other axes."""
  spec = _spec(leaf.sharding)
  sharding = leaf.sharding if spec is None else _with_spec(leaf.sharding, tuple(spec)[1:])
  return jax.ShapeDtypeStruct(leaf.shape[1:], leaf.dtype, sharding=sharding)


def _nested(flat: dict[Path, Any]) -> dict[Any, Any]:
  """Nested dicts from {path: leaf}."""
  root: dict[Any, Any] = {}
  for path, leaf in flat.items():
    node = root
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = leaf
  return root


def _holds_transformer(node: Any) -> bool:
  return isinstance(node, Mapping) and TRANSFORMER in node and isinstance(
      node[TRANSFORMER], Mapping) and BLOCKS in node[TRANSFORMER]


def _with_blocks(tree: Any, blocks: Callable[[Any], dict[Any, Any]]) -> Any:
  """`tree` with each transformer's block stack replaced by `blocks(stack)`; the mappings that
  hold one become plain dicts (orbax reads a mapping by its key names), the rest is unchanged."""
  def replace(node: Any) -> Any:
    if not _holds_transformer(node):
      return node
    transformer = {**node[TRANSFORMER], BLOCKS: blocks(node[TRANSFORMER][BLOCKS])}
    return {**node, TRANSFORMER: transformer}
  return jax.tree.map(replace, tree, is_leaf=_holds_transformer)


def _saved_layout(saved_config: Mapping[str, Any]) -> Optional[tuple[bool, int]]:
  """(stacked, depth) of the transformer a checkpoint's config describes; None without one."""
  transformer = saved_config.get(TRANSFORMER) if isinstance(saved_config, Mapping) else None
  if not isinstance(transformer, Mapping) or "scan_layers" not in transformer:
    return None
  return bool(transformer["scan_layers"]), int(transformer["depth"])


def source_tree(target: Any, saved_config: Mapping[str, Any]) -> Any:
  """What to restore a checkpoint into, for `target`: `target` in the checkpoint's layout.

  Args:
    target: the restore target in the layout asked for: a tree of `jax.ShapeDtypeStruct`s (with
      their shardings).
    saved_config: the config saved with the checkpoint (its `dit.scan_layers` and `dit.depth`
      say how it holds the blocks).

  Returns:
    `target` itself where its layout is the checkpoint's; else `target` with each block stack in
    the checkpoint's layout (nested dicts of `ShapeDtypeStruct`s under the same key names), each
    block's arrays sharded as the target shards them.
  """
  layout = _saved_layout(saved_config)
  if layout is None or is_stacked(target) in (None, layout[0]):
    return target
  stacked, depth = layout

  def blocks(stack: Any) -> dict[Any, Any]:
    source: dict[Path, Any] = {}
    for path, leaf in _flat(stack).items():
      if stacked:  # the target's block i, at index i of the checkpoint's stack
        source[path[1:]] = leaf if _empty(leaf) else _stacked(leaf, depth)
      else:  # the target's stack, from the checkpoint's blocks one by one
        for block in range(depth):
          source[(block, *path)] = leaf if _empty(leaf) else _one_block(leaf)
    return _nested(source)

  return _with_blocks(target, blocks)


def into_target(restored: Any, target: Any) -> Any:
  """`restored`, read into a `source_tree(target, ...)` that is not `target` itself, in
  `target`'s layout and tree structure, the converted arrays on the target's shardings."""
  source, wanted = _flat(restored), _flat(target)
  blocks = [path for path, leaf in wanted.items()
            if _blocks_at(path) is not None and not _empty(leaf)]
  inputs = [path for path, leaf in source.items()
            if _blocks_at(path) is not None and not _empty(leaf)]

  def convert(arrays: list[jax.Array]) -> list[jax.Array]:
    read = dict(zip(inputs, arrays))
    converted = []
    for path in blocks:
      position = _blocks_at(path)
      if isinstance(path[position + 1], int):  # block i of the checkpoint's stack
        converted.append(read[path[:position + 1] + path[position + 2:]][path[position + 1]])
      else:  # the checkpoint's blocks, stacked
        converted.append(jnp.stack([read[path[:position + 1] + (i,) + path[position + 1:]]
                                    for i in range(wanted[path].shape[0])]))
    return converted

  # One program for every block array; the other arrays are passed on as they were read, and the
  # empty places are the target's own.
  converted = dict(zip(blocks, jax.jit(convert, out_shardings=[
      getattr(wanted[path], "sharding", None) for path in blocks])([source[p] for p in inputs])))
  leaves = [leaf if _empty(leaf) else converted.get(path, source.get(path))
            for path, leaf in wanted.items()]
  return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(target, is_leaf=_empty),
                                      leaves)
