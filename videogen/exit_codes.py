"""The exit codes of every command of `python -m videogen.main`: one convention for all of them.

    0  DONE     the command did what was asked.
    2  REFUSED  a mistake in what was asked: a flag, a config key or value, a config that the
                checkpoint, the devices or the memory cannot take, a file it names that is
                missing, damaged or cannot be written. One line on stderr says what to change;
                fix it and run the same command again. The commands look for these before the
                work they would spoil wherever they can.
    1  FAILED   the work ran and did not finish as asked: a non-finite loss, items of a batch
                that failed (the others are written and the failures listed), another process's
                failure (its log says why), or a bug (with its traceback, as Python exits).

So a script can tell a command line to fix (2) from a run to look into (1). The same mistake
gets the same code in every command (tests/test_main.py holds them side by side).
"""

from __future__ import annotations

import sys

DONE = 0
FAILED = 1
REFUSED = 2


def refuse(message: object) -> int:
  """Prints `error: <message>` on one line of stderr; returns `REFUSED`."""
  print(f"error: {message}", file=sys.stderr)
  return REFUSED


def fail(message: object) -> int:
  """Prints `error: <message>` on one line of stderr; returns `FAILED`."""
  print(f"error: {message}", file=sys.stderr)
  return FAILED
