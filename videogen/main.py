r"""The one entry point: `python -m videogen.main <command> --config=... --workdir=...`.

Commands:
  run        the main job: train every stage of the experiment, then write a sample gallery.
  train      train the experiment's stages in order (resumes from the workdir's checkpoints).
  cache_latents  encode the data once with the trained autoencoder, for
             `--config.dit_stage.latents=cache` (`videogen.train.latent_cache`).
  generate   prompt -> video, from a trained workdir.
  evaluate   measure a trained workdir (`--what=`: generation, autoencoder, noise_levels,
             caption_use).
  summary    parameter count and forward-pass cost of the experiment's model.
  benchmark  print speed figures for the experiment (`--what=`: all, train_step, generation,
             loader, autoencoder).

Example:
  python -m videogen.main train --config=experiments/shapes.py:tiny --workdir=runs/tiny \
      --config.train.autoencoder.num_steps=100

Any config field can be overridden with `--config.<path>=<value>`; an unknown key or a value of the
wrong type stops the command before anything is built, with a message that says what to change.
"""

from __future__ import annotations

import importlib
import sys
from typing import Callable, NamedTuple

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
# Used by `train` (videogen.train.command).
flags.DEFINE_bool("allow_config_change", False,
                  "Resume a workdir whose checkpoints were made with a different config.")
flags.DEFINE_string("coordinator_address", None,
                    "host:port of process 0 for a multi-process run (with --num_processes and "
                    "--process_id); TPU pods and SLURM are detected without it.")
flags.DEFINE_integer("num_processes", None, "Number of processes of a multi-process run.")
flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")
# Used by `generate` (videogen.generate.command); a prompts file's lines default to these.
flags.DEFINE_string("prompt", None, "generate: what the video shows, e.g. 'a red circle'.")
flags.DEFINE_string("negative_prompt", None, "generate: the unconditional branch's prompt.")
flags.DEFINE_string("out", None, "generate: output .mp4 (a .gif is written beside it); with "
                    "--prompts_file, the output folder.")
flags.DEFINE_string("mode", "t2v", "generate: t2v, t2i, i2v, extend, extend_backward, loop, "
                    "connect or edit.")
flags.DEFINE_integer("frames", None, "generate: frames to make: the video's length (t2v, i2v, "
                     "edit, loop's clip) or the new frames (extend, connect); default: the "
                     "training clip's length.")
flags.DEFINE_integer("height", None, "generate: frame height (default: the input's or training's).")
flags.DEFINE_integer("width", None, "generate: frame width (default: the input's or training's).")
flags.DEFINE_integer("steps", None, "generate: sampling steps (default: config.sample).")
flags.DEFINE_float("guidance", None, "generate: classifier-free guidance scale.")
flags.DEFINE_string("sampler", None, "generate: 'euler' or 'heun'.")
flags.DEFINE_integer("seed", None, "generate: noise seed (the same seed gives the same video).")
flags.DEFINE_string("input", None, "generate: the video or image a mode starts from.")
flags.DEFINE_string("input2", None, "generate: the second clip of --mode=connect.")
flags.DEFINE_float("strength", 0.6, "generate: edit strength in (0, 1] (--mode=edit).")
flags.DEFINE_integer("bridge_frames", None, "generate: the closing bridge of --mode=loop.")
flags.DEFINE_string("prompts_file", None, "generate: a JSONL file of requests, one per line.")
# Used by `evaluate` (videogen.evaluate.command.evaluate) and `benchmark`
# (videogen.evaluate.benchmark.command).
flags.DEFINE_string("what", None, "evaluate: what to measure, 'generation' (the default: prompt "
                    "following, physics, seams, speed), 'autoencoder' (reconstruction), "
                    "'noise_levels' (which noise levels the model fails to decide) or "
                    "'caption_use' (which caption words the model has learned). benchmark: "
                    "'all' (the default), 'train_step' (FLOP/s against a matmul, compile time, "
                    "memory per device), 'generation' (sampling speed), 'loader' (samples/s of "
                    "config.data) or 'autoencoder' (encode and decode frames/s).")
flags.DEFINE_list("layouts", [], "benchmark: also time the train step on these meshes, "
                  "DEVICES:DATAxFSDPxTENSOR each, e.g. 1:1x1x1,8:8x1x1,8:1x8x1.")
flags.DEFINE_string("stage", None, "benchmark: the stage whose train step is timed (default: "
                    "'dit' when the experiment has it, else its last stage).")

# Used by `export` (videogen.export.command), with --out, --frames, --height and --width.
flags.DEFINE_list("formats", None, "export: the formats to write, comma-separated, of those in "
                  "videogen.export.command.FORMATS (default: all).")
flags.DEFINE_integer("batch", None, "export: the example batch size parity is measured at (the "
                     "batch axis stays dynamic; default 1).")

_GENERATE_FLAGS = ("prompt", "negative_prompt", "out", "mode", "frames", "height", "width",
                   "steps", "guidance", "sampler", "seed", "input", "input2", "strength",
                   "bridge_frames", "prompts_file")


class Command(NamedTuple):
  """A command: its function ("module:function"), whether it needs --config, and its flags.

  The function is called as `function(experiment, workdir, **{flag: value})` with the value of
  each flag named here, and returns an exit code (None: 0). Commands never read absl flags.
  """
  function: str
  needs_config: bool
  flags: tuple[str, ...] = ()


COMMANDS: dict[str, Command] = {
    "run": Command("videogen.main_job:run", True),
    "train": Command("videogen.train.command:command", True,
                     ("allow_config_change", "coordinator_address", "num_processes",
                      "process_id")),
    "cache_latents": Command("videogen.train.latent_cache:command", True),
    "generate": Command("videogen.generate.command:command", False, _GENERATE_FLAGS),
    "evaluate": Command("videogen.evaluate.command:evaluate", False, ("what",)),
    "summary": Command("videogen.evaluate.summary:summary", True),
    "benchmark": Command("videogen.evaluate.benchmark:command", True,
                         ("what", "layouts", "stage")),
    "export": Command("videogen.export.command:command", False,
                      ("out", "formats", "frames", "height", "width", "batch")),
}


def _resolve(name: str) -> tuple[Callable[..., int | None], Command]:
  if name not in COMMANDS:
    raise app.UsageError(
        f"unknown command {name!r}; choose one of: {', '.join(COMMANDS)} "
        f"(python -m videogen.main <command> --config=experiments/shapes.py:tiny --workdir=DIR)")
  command = COMMANDS[name]
  module_name, _, function_name = command.function.partition(":")
  return getattr(importlib.import_module(module_name), function_name), command


def main(argv: list[str]) -> int | None:
  if len(argv) != 2:
    raise app.UsageError(
        f"give exactly one command, e.g. `python -m videogen.main train "
        f"--config=experiments/shapes.py:tiny --workdir=runs/tiny`; got {argv[1:]}")
  function, command = _resolve(argv[1])
  experiment = None
  if command.needs_config or _CONFIG.value is not None:
    if _CONFIG.value is None:
      raise app.UsageError(f"{argv[1]} needs --config=experiments/<file>.py:<variant>")
    try:
      experiment = experiment_lib.validate(_CONFIG.value)
    except config_lib.ConfigError as error:
      logging.error("invalid config: %s", error)
      print(f"invalid config: {error}", file=sys.stderr)
      return 2
  return function(experiment, _WORKDIR.value,
                  **{name: flags.FLAGS[name].value for name in command.flags})


def run() -> None:
  app.run(main)


if __name__ == "__main__":
  run()
