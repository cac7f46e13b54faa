"""Orbax checkpoints of a stage: the train state, each process's data-iterator state, the config.

    checkpointer = Checkpointer(f"{workdir}/checkpoints/{stage}", keep=3, async_save=True)
    checkpointer.save(step, state, iterator.get_state(), config_json)
    restored = checkpointer.restore_latest(target, iterator)   # None on a fresh workdir

A checkpoint is a step directory with three named items:
  state   the `TrainState` as a tree of (sharded) arrays; restored onto whatever shardings the
          target carries, so a run saved on 1 device resumes sharded over 8 and back.
  data    one JSON file per process with its iterator's `get_state()`.
  config  the experiment config as JSON, to refuse resuming a workdir made by another config.

`restore_latest` walks back from the newest step: a checkpoint that fails to restore (truncated or
corrupt files) is passed over for the one before, then renamed `<step>.corrupt` with a warning that
names it. When no checkpoint restores at all, it renames nothing and raises. A checkpoint whose
arrays do not fit the target's shapes is no damage but another model: it raises at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging as std_logging
import os
import signal
import threading
from typing import Any, Iterator

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
# Not exported: the store of orbax's own jax.Array handler, and the registry's quiet override.
from orbax.checkpoint._src.metadata import array_metadata_store
from orbax.checkpoint._src.serialization import type_handler_registry

from videogen.parallel import multihost
from videogen.train import layer_layout

STATE, DATA, CONFIG = "state", "data", "config"

# Orbax splits the writing of a replicated shard among its replicas, slicing it on the device: one
# small compiled program per array shape. Below this many bytes per slice that costs more than it
# saves (5 saves of a tiny model on 8 fake CPU devices spent 20 s compiling slices).
MIN_REPLICA_SLICE_BYTES = 1 << 20


@functools.cache
def _register_array_handler() -> None:
  """Orbax's `jax.Array` handler, as it registers it, with replica-parallel writes only for slices
  of `MIN_REPLICA_SLICE_BYTES` or more. Orbax reads its handlers from one global registry; this
  replaces its entry once per process, without the warning each override logs."""
  type_handler_registry.GLOBAL_TYPE_HANDLER_REGISTRY.add(
      jax.Array,
      ocp.type_handlers.ArrayHandler(
          array_metadata_store=array_metadata_store.Store(),
          min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES),
      override=True, ignore_warnings=True)


def _keyboard_interrupt(signum, frame) -> None:
  """SIGINT's default behaviour under another name (see `_sigint_left_alone`)."""
  del signum, frame
  raise KeyboardInterrupt


@contextlib.contextmanager
def _sigint_left_alone() -> Iterator[None]:
  """Keeps asyncio from formatting every array that orbax restores into a string.

  Orbax runs each save and restore with `asyncio.run`. On the main thread, with SIGINT at Python's
  default handler, asyncio wraps SIGINT around the call; on the way out, Python before 3.13 looks
  the handler up through `signal.getsignal`, which formats the finished task, its result included,
  into an error message that it throws away. For an `nnx.State` that is the repr of every restored
  array: on an accelerator, each is copied to the host (and the copy kept while the array lives).
  With an equivalent handler of our own in place for the call, asyncio leaves SIGINT alone.
  """
  if (threading.current_thread() is not threading.main_thread()
      or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
    yield
    return
  signal.signal(signal.SIGINT, _keyboard_interrupt)
  try:
    yield
  finally:
    if signal.getsignal(signal.SIGINT) is _keyboard_interrupt:  # unless the call replaced it
      signal.signal(signal.SIGINT, signal.default_int_handler)


@contextlib.contextmanager
def _failed_reads_unlogged() -> Iterator[None]:
  """Keeps asyncio's logger quiet during a restore: when one array does not fit its target,
  orbax's other read tasks are cancelled and asyncio logs each with its traceback (thousands of
  lines), before the restore raises the one error that its caller reports."""
  asyncio_logger = std_logging.getLogger("asyncio")
  level = asyncio_logger.level
  asyncio_logger.setLevel(std_logging.CRITICAL)
  try:
    yield
  finally:
    asyncio_logger.setLevel(level)


class IteratorStateHandler(ocp.CheckpointHandler):
  """Writes each process's iterator state to `process_<i>-of-<n>.json` in the item directory.

  A run resumed with another number of processes (a pod restarted on another slice) reads the
  saved states when they are all equal: the project's iterators keep their place in the global
  stream (a step), not in a process's share of it. States that differ between processes are
  refused (`CheckpointRestoreError`), with the process count to resume with."""

  def save(self, directory: epath.Path, args: IteratorStateSave) -> None:
    path = epath.Path(directory) / _process_file()
    path.write_text(json.dumps(args.state, indent=1, sort_keys=True))

  def restore(self, directory: epath.Path, args: IteratorStateRestore | None = None) -> Any:
    del args
    path = epath.Path(directory) / _process_file()
    if path.exists():
      return json.loads(path.read_text())
    saved = sorted(epath.Path(directory).glob("process_*-of-*.json"))
    if not saved:
      raise FileNotFoundError(f"{directory} holds no data-iterator state ({_process_file()} or "
                              f"another process count's)")
    states = [json.loads(p.read_text()) for p in saved]
    if any(state != states[0] for state in states[1:]):
      # Not damage (every step of the run holds such states): refused, not set aside.
      raise CheckpointRestoreError(
          f"{directory} holds the data-iterator states of {len(saved)} processes, and they "
          f"differ, so a run of {jax.process_count()} cannot resume it: resume with "
          f"{len(saved)} processes, or start a new --workdir")
    logging.info("data-iterator state written by %d process(es), read by %d", len(saved),
                 jax.process_count())
    return states[0]

  def metadata(self, directory: epath.Path) -> None:
    del directory
    return None


def _process_file() -> str:
  return f"process_{jax.process_index()}-of-{jax.process_count()}.json"


@ocp.args.register_with_handler(IteratorStateHandler, for_save=True)
@dataclasses.dataclass
class IteratorStateSave(ocp.args.CheckpointArgs):
  state: dict[str, Any]


@ocp.args.register_with_handler(IteratorStateHandler, for_restore=True)
@dataclasses.dataclass
class IteratorStateRestore(ocp.args.CheckpointArgs):
  pass


@dataclasses.dataclass
class Restored:
  """What `restore_latest` found: the state tree, the iterator state, the config and the step."""
  step: int
  state: Any
  data: dict[str, Any]
  config: dict[str, Any]


# Errors a damaged checkpoint raises on restore: missing or truncated files (OSError,
# FileNotFoundError), bad JSON or tensorstore/OCDBT read failures (ValueError, including
# json.JSONDecodeError), and tree-structure mismatches from a partial write (KeyError, TypeError).
RESTORE_ERRORS = (OSError, ValueError, KeyError, TypeError)


def _describe(error: Exception) -> str:
  """"ValueError: ..." on one line, for warnings and error messages."""
  return f"{type(error).__name__}: {' '.join(str(error).split())}"


class CheckpointRestoreError(RuntimeError):
  """A stage has checkpoints, but none of them can be restored."""


class CheckpointMismatchError(ValueError):
  """A restore target's arrays do not fit those saved: the checkpoint holds another model."""


def _key(path: tuple[Any, ...]) -> tuple[str, ...]:
  """A jax key path as names ("params", "w"), whichever kind of key each step is."""
  return tuple(str(layer_layout.key_name(entry)) for entry in path)


def _check_shapes(directory: epath.Path, source: Any) -> None:
  """Refuses a restore whose arrays do not fit those saved in `directory` before any is read.

  Orbax would find the misfit while reading, cancel its other reads and close their event loop,
  and a read finishing after that prints a stray traceback beside the one error the caller
  reports. Arrays the checkpoint does not hold, and target leaves without a shape, are left to
  orbax's own error.

  Raises:
    CheckpointMismatchError: names the first array whose saved shape is not `source`'s.
  """
  saved = ocp.PyTreeCheckpointHandler().metadata(directory).tree
  shapes = {_key(path): tuple(leaf.shape)
            for path, leaf in jax.tree_util.tree_leaves_with_path(saved)
            if getattr(leaf, "shape", None) is not None}
  for path, leaf in jax.tree_util.tree_leaves_with_path(source):
    key, shape = _key(path), getattr(leaf, "shape", None)
    if key in shapes and shape is not None and shapes[key] != tuple(shape):
      raise CheckpointMismatchError(f"{'/'.join(key)} is saved with shape {shapes[key]}, and the "
                                    f"model's is {tuple(shape)}")


class Checkpointer:
  """One stage's `orbax.checkpoint.CheckpointManager`, with corrupt-checkpoint fallback."""

  def __init__(self, directory: str, *, keep: int = 3, async_save: bool = True,
               read_only: bool = False):
    """Opens (and unless `read_only`, creates) the checkpoint directory of one stage.

    Args:
      directory: WORKDIR/checkpoints/<stage>.
      keep: how many of the newest checkpoints to keep; <= 0 keeps all.
      async_save: write checkpoints in a background thread.
      read_only: only read (for sampling and evaluation): creates, cleans and deletes nothing.
    """
    self.directory = epath.Path(os.path.abspath(directory))
    _register_array_handler()
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep if keep > 0 else None, create=not read_only,
        cleanup_tmp_directories=not read_only, read_only=read_only,
        enable_async_checkpointing=async_save and not read_only)
    self._manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=(STATE, DATA, CONFIG),
        item_handlers={STATE: ocp.StandardCheckpointHandler(),
                       DATA: IteratorStateHandler(),
                       CONFIG: ocp.JsonCheckpointHandler()})

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    steps = self.all_steps()
    return steps[-1] if steps else None

  def save(self, step: int, state: Any, data: dict[str, Any], config: dict[str, Any]) -> None:
    """Starts saving (async: returns once the arrays are copied off the devices)."""
    with _sigint_left_alone():
      self._manager.save(step, args=ocp.args.Composite(**{
          STATE: ocp.args.StandardSave(state),
          DATA: IteratorStateSave(data),
          CONFIG: ocp.args.JsonSave(config),
      }), force=True)

  def read_config(self, step: int) -> dict[str, Any]:
    """The config saved with checkpoint `step`."""
    with _sigint_left_alone():
      restored = self._manager.restore(step, args=ocp.args.Composite(**{
          CONFIG: ocp.args.JsonRestore()}))
    return restored[CONFIG]

  def restore(self, step: int, target: Any, config: dict[str, Any] | None = None) -> Restored:
    """Restores checkpoint `step` onto `target` (a tree of `ShapeDtypeStruct`s with shardings),
    in `target`'s layout of the transformer's blocks whichever the checkpoint holds
    (`layer_layout`). `config`: the checkpoint's saved config, where it was read already."""
    config = self.read_config(step) if config is None else config
    source = layer_layout.source_tree(target, config)
    _check_shapes(self.directory / str(step) / STATE, source)
    with _sigint_left_alone(), _failed_reads_unlogged():
      restored = self._manager.restore(step, args=ocp.args.Composite(**{
          STATE: ocp.args.StandardRestore(source),
          DATA: IteratorStateRestore(),
      }))
    state = restored[STATE] if source is target else layer_layout.into_target(restored[STATE],
                                                                              target)
    return Restored(step=step, state=state, data=restored[DATA], config=config)

  def restore_subtrees(self, step: int, targets: dict[str, Any]) -> dict[str, Any]:
    """Restores only the named parts of `state` (e.g. {"ema_params": ..., "frozen": ...}).

    Reads just those parts of checkpoint `step`, onto the shardings the targets carry (a model
    for sampling needs no optimizer state), in the targets' layout of the transformer's blocks.
    """
    try:
      config = self.read_config(step)
    except RESTORE_ERRORS:  # the state may still read back, in the layout it was written in
      config = {}
    source = layer_layout.source_tree(targets, config)
    _check_shapes(self.directory / str(step) / STATE, source)
    handler = ocp.PyTreeCheckpointHandler()
    restore_args = ocp.checkpoint_utils.construct_restore_args(source)
    with (ocp.Checkpointer(handler) as checkpointer, _sigint_left_alone(),
          _failed_reads_unlogged()):
      restored = checkpointer.restore(
          self.directory / str(step) / STATE,
          args=ocp.args.PyTreeRestore(item=source, restore_args=restore_args,
                                      partial_restore=True))
    return restored if source is targets else layer_layout.into_target(restored, targets)

  def restore_subtree(self, step: int, key: str, target: Any) -> Any:
    """Restores only `state[key]` (e.g. "ema_params") of checkpoint `step` onto `target`."""
    return self.restore_subtrees(step, {key: target})[key]

  def restore_latest(self, target: Any, check_config=None) -> Restored | None:
    """Restores the newest checkpoint that reads back whole; None when there is none.

    Newer checkpoints that fail to read are set aside (renamed `<step>.corrupt`) with a warning
    once an older one has restored. If none restores, nothing is renamed and an error is raised:
    every checkpoint failing at once means an incompatible format more likely than damage. A
    checkpoint whose arrays have other shapes than the target's is not damaged but made by another
    model: that raises at once, and nothing is renamed.

    Args:
      target: the abstract state tree with the shardings to restore onto.
      check_config: called with each candidate's saved config before its state is read; raises
        to refuse the workdir (that error is not treated as damage).

    Raises:
      CheckpointRestoreError: there are checkpoints but none could be restored, or the newest
        readable one holds arrays of other shapes than the target's.
    """
    failures: list[tuple[int, str]] = []
    for step in reversed(self.all_steps()):
      restored, problem = None, "another process failed to read it"
      try:
        config = self.read_config(step)
      except RESTORE_ERRORS as error:
        config, problem = None, _describe(error)
      if config is not None:
        if check_config is not None:
          check_config(config)
        try:
          restored = self.restore(step, target, config)
        except CheckpointMismatchError as error:
          raise CheckpointRestoreError(
              f"the checkpoint {self.directory / str(step)} does not fit this config's model "
              f"({error}): it was saved under other model settings or by another version of the "
              f"code; nothing was renamed. Set the settings back, or use a new --workdir"
          ) from error
        except RESTORE_ERRORS as error:
          problem = _describe(error)
      if multihost.all_true(restored is not None):
        for failed_step, failed_problem in failures:
          self._quarantine(failed_step, failed_problem, step)
        return restored
      failures.append((step, problem))
    if failures:
      listed = "; ".join(f"step {step}: {problem[:300]}" for step, problem in failures)
      raise CheckpointRestoreError(
          f"none of the checkpoints in {self.directory} could be restored ({listed}). They were "
          f"written by an incompatible version of the code or are all damaged; nothing was "
          f"renamed. Use a new --workdir, or move the checkpoints away to start over")
    return None

  def _quarantine(self, step: int, problem: str, restored_step: int) -> None:
    path = self.directory / str(step)
    logging.warning("checkpoint %s (step %d) is damaged and cannot be restored (%s); renamed it "
                    "to %s.corrupt and resumed from the checkpoint at step %d instead", path, step,
                    problem, path.name, restored_step)
    multihost.sync(f"quarantine_{step}_start")
    if multihost.is_primary() and path.exists():
      quarantined = self.directory / f"{step}.corrupt"
      if quarantined.exists():
        quarantined.rmtree()
      path.rename(quarantined)
    multihost.sync(f"quarantine_{step}_done")
    self._manager.reload()

  def wait(self) -> None:
    """Blocks until every pending async save is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
