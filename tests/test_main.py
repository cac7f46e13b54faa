"""videogen/main.py: the entry point's errors say what to do."""

import subprocess
import sys


def _main(*args):
  return subprocess.run([sys.executable, "-m", "videogen.main", *args], capture_output=True,
                        text=True, timeout=120)


def test_unknown_command_lists_the_commands():
  result = _main("trian")
  assert result.returncode != 0
  assert "unknown command 'trian'; choose one of: run, train" in result.stderr


def test_no_command_is_a_usage_error():
  result = _main()
  assert result.returncode != 0
  assert "give exactly one command" in result.stderr
