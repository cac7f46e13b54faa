"""What tests that run `python -m videogen.main` in subprocesses share: a free port for a
multi-process run's coordinator, and the `tiny_workdir` config as an experiment file."""

from __future__ import annotations

import pathlib
import socket


def free_port() -> int:
  """A TCP port on 127.0.0.1 that nothing listens on now."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def tiny_workdir_config_file(directory: pathlib.Path) -> pathlib.Path:
  """Writes DIRECTORY/tiny_workdir.py, an experiment file whose config is the one `tiny_workdir`
  was trained with (`--config=<it>`, run from the repository root); returns its path."""
  path = directory / "tiny_workdir.py"
  path.write_text("from tests import conftest\n\n\ndef get_config(variant=None):\n"
                  "  return conftest._tiny_workdir_config()\n")
  return path
