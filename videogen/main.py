r"""The one entry point: `python -m videogen.main <command> --config=... --workdir=...`.

Commands:
  run        the main job: train every stage of the experiment, then write a sample gallery.
  train      train the experiment's stages in order (resumes from the workdir's checkpoints).
  generate   prompt -> video, from a trained workdir.
  evaluate   measure a trained workdir (`--what=autoencoder|generation`).
  summary    parameter count and forward-pass cost of the experiment's model.
  export     write checkpoints for other frameworks.
  benchmark  print speed figures for the experiment.

Example:
  python -m videogen.main train --config=experiments/shapes.py:tiny --workdir=runs/tiny \
      --config.train.autoencoder.num_steps=100

Any config field can be overridden with `--config.<path>=<value>`; an unknown key or a value of the
wrong type stops the command before anything is built, with a message that says what to change.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from videogen import config as config_lib
from videogen import experiment as experiment_lib

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment file and variant, e.g. experiments/shapes.py:tiny.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and samples.")

# command -> ("module:function", needs a config). Each function takes (experiment, workdir) and
# returns an exit code or None. An entry of None is a command that is not built yet.
COMMANDS: dict[str, tuple[str, bool] | None] = {
    "run": None,
    "train": None,
    "generate": None,
    "evaluate": None,
    "summary": None,
    "export": None,
    "benchmark": None,
}


def _resolve(command: str) -> tuple[Callable[..., int | None], bool]:
  if command not in COMMANDS:
    raise app.UsageError(
        f"unknown command {command!r}; choose one of: {', '.join(COMMANDS)} "
        f"(python -m videogen.main <command> --config=experiments/shapes.py:tiny --workdir=DIR)")
  entry = COMMANDS[command]
  if entry is None:
    raise app.UsageError(
        f"command {command!r} is not built yet in this version of videogen; "
        f"the commands available now are: {', '.join(k for k, v in COMMANDS.items() if v)}")
  spec, needs_config = entry
  module_name, _, function_name = spec.partition(":")
  return getattr(importlib.import_module(module_name), function_name), needs_config


def main(argv: list[str]) -> int | None:
  if len(argv) != 2:
    raise app.UsageError(
        f"give exactly one command, e.g. `python -m videogen.main train "
        f"--config=experiments/shapes.py:tiny --workdir=runs/tiny`; got {argv[1:]}")
  function, needs_config = _resolve(argv[1])
  experiment = None
  if needs_config or _CONFIG.value is not None:
    if _CONFIG.value is None:
      raise app.UsageError(f"{argv[1]} needs --config=experiments/<file>.py:<variant>")
    try:
      experiment = experiment_lib.validate(_CONFIG.value)
    except config_lib.ConfigError as error:
      logging.error("invalid config: %s", error)
      print(f"invalid config: {error}", file=sys.stderr)
      return 2
  return function(experiment, _WORKDIR.value)


def run() -> None:
  app.run(main)


if __name__ == "__main__":
  run()
