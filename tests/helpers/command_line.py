"""What tests that run `python -m videogen.main` in subprocesses share: the processes of one
multi-process run on this machine's CPU, and the `tiny_workdir` config as an experiment file."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pathlib
import resource
import signal
import socket
import subprocess
import sys
from typing import Sequence

ROOT = pathlib.Path(__file__).resolve().parents[2]


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_processes(argv: Sequence[str], *, devices_per_process: int,
                    num_processes: int = 2) -> list[subprocess.Popen]:
  """Starts `python ARGV --coordinator_address=127.0.0.1:PORT --num_processes=N --process_id=i`
  for i = 0 .. N-1 from the repository root: the processes of one run, each with its own
  `devices_per_process` CPU devices. `finish` collects them."""
  # Faulthandler on from the start: a process that `finish` stops prints every thread's stack.
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONFAULTHANDLER="1",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}")
  coordinator = [f"--coordinator_address=127.0.0.1:{free_port()}",
                 f"--num_processes={num_processes}"]
  return [subprocess.Popen([sys.executable, *argv, *coordinator, f"--process_id={index}"],
                           env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
          for index in range(num_processes)]


@dataclasses.dataclass(frozen=True)
class Finished:
  returncode: int
  stdout: str
  stderr: str
  timed_out: bool = False


def finish(processes: Sequence[subprocess.Popen], timeout: float = 400) -> list[Finished]:
  """Waits for each process; their outcomes. One that runs past `timeout` seconds is aborted
  (SIGABRT), so that its stderr ends with the Python stack of each of its threads, where it
  hung; one that outlives the abort by 30 seconds is killed."""
  finished = []
  for process in processes:
    timed_out = False
    try:
      stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      timed_out = True
      with contextlib.suppress(ProcessLookupError):  # no core file in the repository
        resource.prlimit(process.pid, resource.RLIMIT_CORE, (0, 0))
      process.send_signal(signal.SIGABRT)
      try:
        stdout, stderr = process.communicate(timeout=30)
      except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
    finished.append(Finished(process.returncode, stdout, stderr, timed_out))
  return finished


def describe(outcomes: Sequence[Finished], tail: int = 4000) -> str:
  """A failed test's message: each process's exit code and the end of its stderr, in full (a
  list of the logs would reach pytest as a repr cut to a few hundred characters)."""
  parts = []
  for index, outcome in enumerate(outcomes):
    stopped = ", aborted after running past the timeout" if outcome.timed_out else ""
    parts.append(f"--- process {index}: exit code {outcome.returncode}{stopped}; its stderr "
                 f"ends:\n{outcome.stderr[-tail:]}")
  return "\n".join(parts)


def tiny_workdir_config_file(directory: pathlib.Path) -> pathlib.Path:
  """Writes DIRECTORY/tiny_workdir.py, an experiment file whose config is the one `tiny_workdir`
  was trained with (`--config=<it>`, run from the repository root); returns its path."""
  path = directory / "tiny_workdir.py"
  path.write_text("from tests import conftest\n\n\ndef get_config(variant=None):\n"
                  "  return conftest._tiny_workdir_config()\n")
  return path
