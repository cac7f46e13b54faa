"""What tests that run `python -m videogen.main` in subprocesses share: the processes of one
multi-process run on this machine's CPU, and the `tiny_workdir` config as an experiment file."""

from __future__ import annotations

import dataclasses
import os
import pathlib
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
  env = dict(os.environ, JAX_PLATFORMS="cpu",
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


def finish(processes: Sequence[subprocess.Popen], timeout: float = 400) -> list[Finished]:
  """Waits for each process (killing one that runs past `timeout` seconds); their outcomes."""
  finished = []
  for process in processes:
    try:
      stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      process.kill()
      stdout, stderr = process.communicate()
    finished.append(Finished(process.returncode, stdout, stderr))
  return finished


def tiny_workdir_config_file(directory: pathlib.Path) -> pathlib.Path:
  """Writes DIRECTORY/tiny_workdir.py, an experiment file whose config is the one `tiny_workdir`
  was trained with (`--config=<it>`, run from the repository root); returns its path."""
  path = directory / "tiny_workdir.py"
  path.write_text("from tests import conftest\n\n\ndef get_config(variant=None):\n"
                  "  return conftest._tiny_workdir_config()\n")
  return path
