r"""The one entry point: `python -m videogen.main <command> --config=... --workdir=...`.

Commands:
  run        the main job: train every stage of the experiment, then write a sample gallery.
  train      train the experiment's stages in order (resumes from the workdir's checkpoints).
  cache_latents  encode the data once with the trained autoencoder, for
             `--config.dit_stage.latents=cache`.
  generate   prompt -> video, from a trained workdir.
  evaluate   measure a trained workdir (`--what=`: generation, autoencoder, noise_levels,
             caption_use).
  summary    parameter count and forward-pass cost of the experiment's model.
  benchmark  print speed figures for the experiment (`--what=`: all, train_step, generation,
             loader, autoencoder).
  export     the workdir's models for PyTorch, ONNX and StableHLO, with measured parity.
  detect     whether videos carry the workdir's watermark, and their C2PA manifests.

`python -m videogen.main <command> --help` shows a command's usage and the flags it takes.

Example:
  python -m videogen.main train --config=experiments/shapes.py:tiny --workdir=runs/tiny \
      --config.train.autoencoder.num_steps=100

Any config field can be overridden with `--config.<path>=<value>`; an unknown key or a value of the
wrong type stops the command before anything is built, with a message that says what to change.
Every such mistake is one line on stderr and exit code 2.

Output: progress bars, videogen's own log lines and every library's warnings; `--verbosity=0`
(info) or `--verbosity=1` (debug) shows every library's log lines too. Compiled programs are cached
on disk (`~/.cache/videogen/jax`, under $XDG_CACHE_HOME when set), so a second command in a new
process does not compile again; $VIDEOGEN_COMPILATION_CACHE names another folder ("off": none) and
an explicit $JAX_COMPILATION_CACHE_DIR is kept.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.machinery
import importlib.util
import inspect
import logging as std_logging
import os
import re
import sys
import textwrap
import types
import warnings
from typing import Any, Callable, Mapping, NamedTuple, NoReturn

import jax
import ml_collections
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
_GENERATE_OUT_HELP = ("generate: output .mp4 (a .gif is written beside it); with --prompts_file, "
                      "the output folder.")
_EVALUATE_OUT_HELP = ("evaluate: the folder the reports (eval_<what>.json) and the generation "
                      "suite's videos go to; default: the workdir.")
_EXPORT_OUT_HELP = "export: the folder the torch/, onnx/ and stablehlo/ exports and report go to."
flags.DEFINE_string("out", None, f"{_GENERATE_OUT_HELP} {_EVALUATE_OUT_HELP} {_EXPORT_OUT_HELP}")
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
# Used by every writer of generated videos (generate, run, evaluate) and by `detect`
# (videogen.provenance.writer, videogen.provenance.detect).
flags.DEFINE_bool("watermark", True, "Mark every generated video with the invisible watermark "
                  "keyed by WORKDIR/provenance/watermark.key (or --key); --watermark=false "
                  "writes them unmarked.")
flags.DEFINE_bool("manifest_prompt", True, "Put the prompt in each generated file's signed C2PA "
                  "manifest; --manifest_prompt=false leaves it out.")
flags.DEFINE_string("key", None, "A watermark key file (64 hex digits, owner-only) to use "
                    "instead of WORKDIR/provenance/watermark.key, e.g. when the workdir is "
                    "shared without its keys.")
_DETECT_INPUT_HELP = "detect: a video, an image, or a folder of them to check."
# Used by `evaluate` (videogen.evaluate.command.evaluate) and `benchmark`
# (videogen.evaluate.benchmark.command).
_EVALUATE_WHAT_HELP = (
    "evaluate: what to measure, 'generation' (the default: prompt following, physics, seams, "
    "speed), 'autoencoder' (reconstruction), 'noise_levels' (which noise levels the model fails "
    "to decide) or 'caption_use' (which caption words the model has learned).")
_BENCHMARK_WHAT_HELP = (
    "benchmark: 'all' (the default), 'train_step' (FLOP/s against a matmul, compile time, memory "
    "per device), 'generation' (sampling speed), 'loader' (samples/s of config.data), "
    "'autoencoder' (encode and decode frames/s) or 'watermark' (the watermark's invisibility, "
    "false positives and robustness; not part of 'all').")
flags.DEFINE_string("what", None, f"{_EVALUATE_WHAT_HELP} {_BENCHMARK_WHAT_HELP}")
flags.DEFINE_integer("scenes_per_group", None, "evaluate: the generation suite's size "
                     "(--what=generation), as scenes of training combinations and as many of "
                     "held-out ones (default: the experiment's config.eval_generation, 2). Each "
                     "scene gives 2 prompts (its brief and its descriptive caption) and one case "
                     "per conditioned mode, so N gives 4N text-to-video prompts.")
flags.DEFINE_list("layouts", [], "benchmark: also time the train step on these meshes, "
                  "DEVICES:DATAxFSDPxTENSOR each, e.g. 1:1x1x1,8:8x1x1,8:1x8x1.")
flags.DEFINE_string("stage", None, "benchmark: the stage whose train step is timed (default: "
                    "'dit' when the experiment has it, else its last stage).")
flags.DEFINE_integer("watermark_videos", None, "benchmark --what=watermark: videos per set "
                     "(world clips at each size, and the workdir's generated videos; default 8).")

# Used by `export` (videogen.export.command), with --out, --frames, --height and --width.
flags.DEFINE_list("formats", None, "export: the formats to write, comma-separated, of those in "
                  "videogen.export.command.FORMATS (default: all).")
flags.DEFINE_integer("batch", None, "export: the example batch size parity is measured at (the "
                     "batch axis stays dynamic; default 1).")

# The flags of every command that writes generated videos (videogen.provenance.writer).
_STAMP_FLAGS = ("watermark", "manifest_prompt", "key")
_GENERATE_FLAGS = ("prompt", "negative_prompt", "out", "mode", "frames", "height", "width",
                   "steps", "guidance", "sampler", "seed", "input", "input2", "strength",
                   "bridge_frames", "prompts_file", *_STAMP_FLAGS)
# Flags every command takes, after its own in its help.
_COMMON_FLAGS = ("config", "workdir", "verbosity")
_VERBOSITY_HELP = ("Log level: by default progress bars, videogen's own log lines and every "
                   "library's warnings; 0 (info) or 1 (debug) shows every library's log lines.")


class Command(NamedTuple):
  """A command: its function ("module:function"), whether it needs --config, and its flags.

  The function is called as `function(experiment, workdir, **{flag: value})` with the value of
  each flag named here, and returns an exit code (None: 0). Commands never read absl flags. The
  module's docstring is the command's usage (`<command> --help`); `flag_help` replaces a shared
  flag's help text for this command.
  """
  function: str
  needs_config: bool
  flags: tuple[str, ...] = ()
  flag_help: Mapping[str, str] = types.MappingProxyType({})


COMMANDS: dict[str, Command] = {
    "run": Command("videogen.main_job:run", True, _STAMP_FLAGS),
    "train": Command("videogen.train.command:command", True,
                     ("allow_config_change", "coordinator_address", "num_processes",
                      "process_id")),
    "cache_latents": Command("videogen.train.latent_cache:command", True),
    "generate": Command("videogen.generate.command:command", False, _GENERATE_FLAGS,
                        {"out": _GENERATE_OUT_HELP}),
    "evaluate": Command("videogen.evaluate.command:evaluate", False,
                        ("what", "out", "scenes_per_group", *_STAMP_FLAGS),
                        {"what": _EVALUATE_WHAT_HELP, "out": _EVALUATE_OUT_HELP}),
    "summary": Command("videogen.evaluate.summary:summary", True),
    "benchmark": Command("videogen.evaluate.benchmark:command", True,
                         ("what", "layouts", "stage", "watermark_videos"),
                         {"what": _BENCHMARK_WHAT_HELP}),
    "export": Command("videogen.export.command:command", False,
                      ("out", "formats", "frames", "height", "width", "batch"),
                      {"out": _EXPORT_OUT_HELP}),
    "detect": Command("videogen.provenance.detect:command", False, ("input", "key"),
                      {"input": _DETECT_INPUT_HELP}),
}
# Every command's own flags: a command refuses the others'.
_COMMAND_FLAGS = tuple(dict.fromkeys(name for c in COMMANDS.values() for name in c.flags))
_EXAMPLE = "python -m videogen.main train --config=experiments/shapes.py:tiny --workdir=runs/tiny"


class CommandLineError(Exception):
  """A mistake on the command line; its message says what to change."""


def _fail(message: str) -> NoReturn:
  """Reports a command-line mistake on one line of stderr and exits with code 2."""
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


# ---------------------------------------------------------------------------------------------
# Help: `python -m videogen.main [<command>] --help`.

_HELP_ARGUMENTS = ("--help", "-help", "-h", "--helpshort", "-helpshort", "-?")


def _flag_lines(names: tuple[str, ...], command_name: str | None = None) -> list[str]:
  """Each flag's name and help (as `command_name` reads it, if given), indented."""
  lines = []
  for name in names:
    flag = flags.FLAGS[name]
    help_text = _VERBOSITY_HELP if name == "verbosity" else flag.help
    if command_name is not None:
      help_text = COMMANDS[command_name].flag_help.get(name, help_text)
      # The help of a command's own flag names the command: redundant in its own help.
      help_text = help_text.removeprefix(f"{command_name}: ")
    if flag.default not in (None, []) and name != "verbosity":
      help_text += f" (default: {flag.default_as_str})"
    lines.append(f"  --{name}")
    lines += textwrap.wrap(help_text, 96, initial_indent="      ", subsequent_indent="      ",
                           break_on_hyphens=False)
  return lines


def command_help(name: str) -> str:
  """The usage of command `name`: its module's docstring and the flags it takes."""
  command = COMMANDS[name]
  module = importlib.import_module(command.function.partition(":")[0])
  config = "--config=experiments/<file>.py:<variant>"
  config = config if command.needs_config else f"[{config}]"
  return "\n".join([f"usage: python -m videogen.main {name} {config} [flags]", "",
                    inspect.getdoc(module) or "", "", "flags:",
                    *_flag_lines((*command.flags, *_COMMON_FLAGS), name)])


def main_help() -> str:
  """The usage of the entry point: the commands and the flags all of them take."""
  return "\n".join([inspect.getdoc(sys.modules[__name__]) or "", "", "flags of every command:",
                    *_flag_lines(_COMMON_FLAGS)])


# ---------------------------------------------------------------------------------------------
# Reading the command line: the experiment file and its overrides are checked here, before absl
# parses the flags (ml_collections reports a misspelt key as a chain of tracebacks), so that each
# mistake gets one line that says what to do. absl's config flag then runs `get_config` again.


def _config_argument(argv: list[str]) -> str | None:
  """The value of --config in argv (the last one, as absl reads it), or None."""
  value = None
  for index, arg in enumerate(argv[1:], 1):
    if arg == "--":
      break
    if arg in ("--config", "-config") and index + 1 < len(argv):
      value = argv[index + 1]
    elif arg.startswith(("--config=", "-config=")):
      value = arg.partition("=")[2]
  return value


def _config_overrides(argv: list[str]) -> list[str]:
  """The paths of argv's `--config.<path>=<value>` overrides (`--noconfig.<path>` too)."""
  paths = []
  for arg in argv[1:]:
    if arg == "--":
      break
    match = re.match(r"^--?(?:no)?config\.([^=]+)", arg)
    if match:
      paths.append(match.group(1))
  return paths


def _experiment_files() -> str:
  folder = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "experiments")
  if not os.path.isdir(folder):
    return ""
  names = sorted(n for n in os.listdir(folder) if n.endswith(".py") and not n.startswith("_"))
  return f"; the experiments are {', '.join('experiments/' + n for n in names)}" if names else ""


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Runs an experiment file's `get_config(variant)`, as `--config=PATH[:VARIANT]` does.

  Raises:
    CommandLineError: no such file, a syntax error, a missing import or `get_config`, or a
      variant the file refuses (`get_config` raises ValueError).
  """
  path, has_variant, variant = spec.partition(":")
  usage = (f"pass --config=experiments/<file>.py:<variant>, e.g. "
           f"--config=experiments/shapes.py:tiny{_experiment_files()}")
  if not path:
    raise CommandLineError(f"--config is empty: {usage}")
  if not os.path.isfile(path):
    raise CommandLineError(f"config file {path} not found (from {os.getcwd()}): {usage}")
  # Loaded as ml_collections loads it (any suffix), under a name of its own.
  loader = importlib.machinery.SourceFileLoader("videogen_experiment_file", path)
  module = importlib.util.module_from_spec(importlib.util.spec_from_loader(loader.name, loader))
  sys.modules[loader.name] = module  # dataclasses defined in the file look their module up
  try:
    loader.exec_module(module)
  except SyntaxError as error:
    raise CommandLineError(f"config file {path}, line {error.lineno}: {error.msg}; fix the file")
  except ModuleNotFoundError as error:
    raise CommandLineError(f"config file {path} imports {error.name!r}, which is not found: run "
                           f"from the repository root, or install the package it needs")
  get_config = getattr(module, "get_config", None)
  if not callable(get_config):
    raise CommandLineError(f"config file {path} defines no get_config(arg=None), which an "
                           f"experiment file must (see experiments/shapes.py)")
  arguments = (variant,) if has_variant else ()
  try:
    inspect.signature(get_config).bind(*arguments)
  except TypeError:
    raise CommandLineError(f"config file {path}: get_config takes no variant; pass "
                           f"--config={path} without ':{variant}'")
  try:
    config = get_config(*arguments)
  except ValueError as error:  # how an experiment file refuses a variant
    raise CommandLineError(f"--config={spec}: {error}")
  if not isinstance(config, ml_collections.ConfigDict):
    raise CommandLineError(f"config file {path}: get_config returned a {type(config).__name__}, "
                           f"not an ml_collections.ConfigDict")
  return config


def unknown_key(config: ml_collections.ConfigDict, path: str, spec: str) -> str | None:
  """Why `--config.<path>` names no field of `config` (with the keys there are), or None."""
  node, where = config, "config"
  for key in re.sub(r"\[\d+\]", "", path).split("."):
    if not isinstance(node, ml_collections.ConfigDict):
      return (f"config key config.{path} does not exist: {where} is a value "
              f"({type(node).__name__}), not a section; set it with --{where}=VALUE")
    if key not in node:
      if where == "config" and key in experiment_lib.section_names():
        return (f"config.{key} is not set by {spec} (its defaults apply): add a {key} section "
                f"to the experiment file to override config.{path}")
      close = difflib.get_close_matches(key, list(node.keys()), n=1)
      hint = f" (did you mean {where}.{close[0]}?)" if close else ""
      return (f"unknown config key {where}.{key}{hint}: {where} accepts: "
              f"{', '.join(sorted(node.keys()))}")
    node, where = node[key], f"{where}.{key}"
  return None


def _value_hint(config: ml_collections.ConfigDict | None, message: str) -> str:
  """For a config override's bad value, what the field takes (from the experiment's value)."""
  match = re.match(r"flag --(config\.[\w.]+)=", message)
  if config is None or match is None or "[" in message.partition("=")[0]:
    return ""
  node = config
  for key in match.group(1).split(".")[1:]:
    node = node[key]
  if node is None:
    return ""
  example = str(node) if not isinstance(node, tuple) else f"'{node!r}'"
  kind = type(node).__name__
  article = "an" if kind[0] in "aeiou" else "a"
  return f"; {match.group(1)} takes {article} {kind}, e.g. --{match.group(1)}={example}"


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flags parser for `app.run`: the help, or the parsed flags; a mistake exits with 2."""
  arguments = argv[1:argv.index("--")] if "--" in argv else argv[1:]
  if any(arg in _HELP_ARGUMENTS for arg in arguments):
    names = [arg for arg in arguments if arg in COMMANDS]
    print(command_help(names[0]) if names else main_help())
    sys.exit(0)
  config = None
  spec = _config_argument(argv)
  try:
    if spec is not None:
      config = load_config_file(spec)
      for path in _config_overrides(argv):
        problem = unknown_key(config, path, spec)
        if problem:
          raise CommandLineError(problem)
    elif _config_overrides(argv):
      raise CommandLineError(f"--config.{_config_overrides(argv)[0]} overrides a field of the "
                             f"experiment: give the experiment with --config=<file>.py:<variant>")
  except CommandLineError as error:
    _fail(str(error))
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    message = str(error).splitlines()[0]
    command = next((arg for arg in arguments if arg in COMMANDS), "<command>")
    _fail(f"{message}{_value_hint(config, message)} "
          f"(python -m videogen.main {command} --help lists the flags)")


# ---------------------------------------------------------------------------------------------
# The process: what it prints, where compiled programs go.

# Where videogen's own log lines come from (absl logs every library through one logger).
_OWN_CODE = tuple(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                               package, "") for package in ("videogen", "data_pipelines"))
# Orbax's notices that it adjusted the options of a manager opened read-only, which restoring does
# on purpose.
_READ_ONLY_NOTICES = ("CheckpointManagerOptions.read_only=True", "Given directory is read only")


class _DefaultLogFilter(std_logging.Filter):
  """Without --verbosity: videogen's own log lines, and other libraries' warnings and errors."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    if record.pathname.startswith(_OWN_CODE):
      return True
    if record.levelno >= std_logging.WARNING:
      return not str(record.msg).startswith(_READ_ONLY_NOTICES)
    return False


def set_up_logging() -> None:
  """Keeps the default output to what a user needs (see the module docstring)."""
  # JAX warns on every fork since its threads cannot follow one; a subprocess's child (ffmpeg,
  # started with a preexec_fn by imageio_ffmpeg) execs at once and never runs JAX, so its fork is
  # safe. Other forks still warn.
  warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning,
                          module="subprocess")
  if not flags.FLAGS["verbosity"].present:
    logging.get_absl_handler().addFilter(_DefaultLogFilter())


def compilation_cache_dir(environ: Mapping[str, str]) -> str | None:
  """The folder of JAX's persistent compilation cache for a command; None: leave JAX's setting.

  $VIDEOGEN_COMPILATION_CACHE first ("off" or empty: no cache), then an explicit
  $JAX_COMPILATION_CACHE_DIR (JAX reads it itself), else a per-user folder.
  """
  if "VIDEOGEN_COMPILATION_CACHE" in environ:
    directory = environ["VIDEOGEN_COMPILATION_CACHE"]
    return None if directory.lower() in ("", "off", "none") else directory
  if environ.get("JAX_COMPILATION_CACHE_DIR"):
    return None
  cache_home = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(cache_home, "videogen", "jax")


def enable_compilation_cache() -> None:
  """Caches compiled programs on disk, so that the next command in a new process skips compiling
  (e.g. a second `generate`); call before anything compiles."""
  directory = compilation_cache_dir(os.environ)
  if directory is not None:
    jax.config.update("jax_compilation_cache_dir", directory)
  if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
    # JAX's default (1 s) skips most of the sampler's programs on an accelerator.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


# ---------------------------------------------------------------------------------------------
# The command.


def main(argv: list[str]) -> int | None:
  if len(argv) != 2:
    _fail(f"give exactly one command, e.g. `{_EXAMPLE}`; got {argv[1:]} "
          f"(python -m videogen.main --help lists the commands)")
  name = argv[1]
  if name not in COMMANDS:
    _fail(f"unknown command {name!r}; choose one of: {', '.join(COMMANDS)} (e.g. {_EXAMPLE})")
  command = COMMANDS[name]
  foreign = [flag for flag in _COMMAND_FLAGS
             if flags.FLAGS[flag].present and flag not in command.flags]
  if foreign:
    _fail(f"{name} does not take {', '.join('--' + flag for flag in foreign)}; its flags: "
          f"{', '.join('--' + flag for flag in (*command.flags, *_COMMON_FLAGS))} "
          f"(python -m videogen.main {name} --help)")
  set_up_logging()
  enable_compilation_cache()
  module_name, _, function_name = command.function.partition(":")
  function: Callable[..., int | None] = getattr(importlib.import_module(module_name),
                                                function_name)
  experiment = None
  if command.needs_config or _CONFIG.value is not None:
    if _CONFIG.value is None:
      _fail(f"{name} needs --config=experiments/<file>.py:<variant>, e.g. "
            f"--config=experiments/shapes.py:tiny")
    try:
      experiment = experiment_lib.validate(_CONFIG.value)
    except config_lib.ConfigError as error:
      _fail(f"invalid config: {error}")
  values: dict[str, Any] = {flag: flags.FLAGS[flag].value for flag in command.flags}
  return function(experiment, _WORKDIR.value, **values)


def run() -> None:
  app.run(main, flags_parser=parse_flags)


if __name__ == "__main__":
  run()
