"""The exit codes of every command of `python -m videogen.main`: one convention for all of them.

    0  DONE       the command did what was asked.
    2  REFUSED    a mistake in what was asked: a flag, a config key or value, a config that
                  the checkpoint, the devices or the memory cannot take, a file it names that
                  is missing, damaged or cannot be written. One line on stderr says what to
                  change; fix it and run the same command again. The commands look for these
                  before the work they would spoil wherever they can.
    1  FAILED     the work ran and did not finish as asked: a non-finite loss, items of a batch
                  that failed (the others are written and the failures listed), another
                  process's failure (its log says why), or a bug (with its traceback, as Python
                  exits).
  143  PREEMPTED  training (`train`, `run`) was asked to stop by SIGTERM, saved a checkpoint
                  and stopped before its end: run the same command to resume. 128 + SIGTERM is
                  what a process that SIGTERM ended returns, so a scheduler restarts the job
                  instead of counting it done, and `train ... && evaluate ...` stops there.

So a script can tell a command line to fix (2) from a run to look into (1) and a run to resume
(143). The same mistake gets the same code in every command (tests/test_main.py holds them side
by side).
"""

from __future__ import annotations

import signal
import sys

DONE = 0
FAILED = 1
REFUSED = 2
PREEMPTED = 128 + signal.SIGTERM.value


def refuse(message: object) -> int:
  """Prints `error: <message>` on one line of stderr; returns `REFUSED`."""
  print(f"error: {message}", file=sys.stderr)
  return REFUSED


def fail(message: object) -> int:
  """Prints `error: <message>` on one line of stderr; returns `FAILED`."""
  print(f"error: {message}", file=sys.stderr)
  return FAILED


def preempted(message: object) -> int:
  """Prints `preempted: <message>` on one line of stderr; returns `PREEMPTED`."""
  print(f"preempted: {message}", file=sys.stderr)
  return PREEMPTED
