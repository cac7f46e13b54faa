"""Multi-host start-up, the process-0-only rules for logs and files, and work done together.

    multihost.initialize(coordinator_address=..., num_processes=2, process_id=0)  # before jax ops
    if multihost.is_primary(): write_the_file()
    multihost.run_together(lambda: stage_files() if multihost.is_primary() else None,
                           "staging the files")  # the others wait; a failure stops them all

`initialize` calls `jax.distributed.initialize` only when the run asks for several processes:
explicit coordinator flags, or a cluster environment that JAX detects by itself (a multi-host TPU
slice or Megascale job, SLURM with more than one task, Open MPI with more than one rank, or a
`JAX_COORDINATOR_ADDRESS`). A single-process run on one machine starts nothing.
"""

from __future__ import annotations

import os
import uuid
from typing import Callable, Mapping, TypeVar

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from videogen import exit_codes

T = TypeVar("T")


class ProcessFlagsError(ValueError):
  """The multi-process flags are incomplete or out of range; the message says which."""


class PeerFailedError(RuntimeError):
  """Another process failed a step that every process does together; its own log says why."""


# What JAX's cluster detection reads (jax._src.clusters): with only part of it set (a shell opened
# on a node of a SLURM allocation, say), `jax.distributed.initialize()` cannot start, so the
# process runs alone.
_SLURM_VARIABLES = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID", "SLURM_LOCALID")
_OPEN_MPI_VARIABLES = ("OMPI_MCA_orte_hnp_uri",)


def cluster_requested(environ: Mapping[str, str] | None = None) -> str | None:
  """Names the multi-process environment found in `environ`, or None for a single process."""
  environ = os.environ if environ is None else environ
  if environ.get("JAX_COORDINATOR_ADDRESS"):
    return "JAX_COORDINATOR_ADDRESS"
  if (int(environ.get("SLURM_NTASKS", "1") or 1) > 1
      and all(name in environ for name in _SLURM_VARIABLES)):
    return "SLURM"
  if (int(environ.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1
      and all(name in environ for name in _OPEN_MPI_VARIABLES)):
    return "Open MPI"
  if environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "TPU multi-slice"
  if "," in environ.get("TPU_WORKER_HOSTNAMES", ""):
    return "TPU pod"
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Joins the processes of a multi-host run; returns whether `jax.distributed` was started.

  Must run before anything touches a JAX backend. With a coordinator address all three arguments
  are needed (a local CPU test: "127.0.0.1:12345", 2, 0/1); `num_processes=1` alone runs this
  process by itself whatever the environment says; without any, the environment decides.

  Raises:
    ProcessFlagsError: the coordinator flags are incomplete or out of range.
  """
  if jax.distributed.is_initialized():
    return True
  explicit = (coordinator_address, num_processes, process_id)
  if num_processes == 1 and coordinator_address is None and process_id in (None, 0):
    return False  # one process, asked for by name: no coordinator to name
  if any(value is not None for value in explicit):
    if any(value is None for value in explicit):
      raise ProcessFlagsError(
          "a multi-process run needs all of --coordinator_address, --num_processes and "
          f"--process_id; got coordinator_address={coordinator_address!r}, "
          f"num_processes={num_processes!r}, process_id={process_id!r}")
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ProcessFlagsError(
          f"--process_id={process_id} with --num_processes={num_processes}: number the "
          f"processes 0 to {max(num_processes, 1) - 1}, one --process_id each")
    if num_processes == 1:
      return False
    logging.info("joining %d processes at %s as process %d", num_processes, coordinator_address,
                 process_id)
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    return True
  found = cluster_requested()
  if found is None:
    return False
  logging.info("multi-process environment detected (%s): joining the other processes (a process "
               "started alone there waits for them; --num_processes=1 runs it by itself)", found)
  jax.distributed.initialize()
  return True


def join_processes(coordinator_address: str | None, num_processes: int | None,
                   process_id: int | None) -> int | None:
  """A command's start: joins a multi-process run as `initialize` does (before any JAX op) and
  keeps the info logs of process 0 alone; returns None, or `exit_codes.REFUSED` after a one-line
  error on incomplete flags."""
  try:
    initialize(coordinator_address, num_processes, process_id)
  except ProcessFlagsError as error:
    return exit_codes.refuse(error)
  quiet_secondary_logging()
  return None


def is_primary() -> bool:
  """True on process 0, the one that writes logs, metrics and single-copy files."""
  return jax.process_index() == 0


def quiet_secondary_logging() -> None:
  """Keeps warnings and errors from processes other than 0, drops their info logs."""
  if not is_primary():
    logging.set_verbosity(logging.WARNING)


def all_true(flag: bool) -> bool:
  """Whether `flag` holds on every process (collective: every process must call it)."""
  if jax.process_count() == 1:
    return bool(flag)
  flags = multihost_utils.process_allgather(np.asarray(flag, dtype=np.int32))
  return bool(np.all(flags))


def sync(name: str) -> None:
  """A barrier across processes (no-op on one process)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def run_together(work: Callable[[], T], what: str) -> T:
  """Runs `work()` on every process, then waits until all have finished it (collective).

  A failure anywhere stops every process: the failing one raises its own error, the others
  `PeerFailedError`, so that none waits at a later barrier for a process that has stopped.

  Args:
    work: this process's part (on process 0 alone, e.g., `lambda: ... if is_primary() else None`).
    what: the step, for the others' message ("building the latent cache").
  """
  try:
    result, error = work(), None
  except Exception as caught:  # re-raised below, on every process
    result, error = None, caught
  if not all_true(error is None):
    if error is not None:
      raise error
    raise PeerFailedError(f"another process failed {what}: its log says why")
  return result


def shared_token() -> str:
  """A random hex token drawn by process 0, the same on every process (collective): a name for
  files the processes write together."""
  token = np.frombuffer(uuid.uuid4().bytes, np.uint8)
  if jax.process_count() > 1:
    token = np.asarray(multihost_utils.broadcast_one_to_all(token))
  return bytes(token.astype(np.uint8)).hex()


def sum_over_processes(values: np.ndarray) -> np.ndarray:
  """The elementwise float64 sum of `values` over every process (collective), exact to float64:
  the values travel as bytes, which JAX does not narrow to float32 as it would float64."""
  values = np.ascontiguousarray(values, np.float64)
  if jax.process_count() == 1:
    return values
  gathered = np.asarray(multihost_utils.process_allgather(values.view(np.uint8)), np.uint8)
  return gathered.reshape(jax.process_count(), -1).view(np.float64).reshape(
      (-1, *values.shape)).sum(axis=0)
