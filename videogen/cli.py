"""The command line's plumbing, for the entry point `videogen.main`.

`videogen.main` defines the flags and the table of commands (`Command`s) and hands them here:
the help (`main_help`, `command_help`); the flags parser that checks the experiment file and its
`--config.<path>` overrides before absl parses them (`parse_flags`); the choice of the command
(`chosen_command`) and its experiment (`validated_experiment`), each mistake one line on stderr
and exit code 2; the default log filter and the compilation cache of the process.
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
from typing import Callable, Mapping, NamedTuple, NoReturn

import jax
import ml_collections
from absl import flags
from absl import logging

from videogen import config as config_lib
from videogen import exit_codes
from videogen import experiment as experiment_lib

# Flags every command takes (--config and --workdir from videogen.main, absl's --verbosity), after
# its own in its help.
COMMON_FLAGS = ("config", "workdir", "verbosity")
VERBOSITY_HELP = ("Log level: by default progress bars, videogen's own log lines and every "
                  "library's warnings; 0 (info) or 1 (debug) shows every library's log lines.")
EXAMPLE = "python -m videogen.main train --config=experiments/shapes.py:tiny --workdir=runs/tiny"
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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

  def load(self) -> Callable[..., int | None]:
    """Imports the command's module and returns its function."""
    module_name, _, function_name = self.function.partition(":")
    return getattr(importlib.import_module(module_name), function_name)


class CommandLineError(Exception):
  """A mistake on the command line; its message says what to change."""


def fail(message: str) -> NoReturn:
  """Reports a command-line mistake on one line of stderr and exits (`exit_codes.REFUSED`)."""
  sys.exit(exit_codes.refuse(message))


# ---------------------------------------------------------------------------------------------
# Help: `python -m videogen.main [<command>] --help`.

_HELP_ARGUMENTS = ("--help", "-help", "-h", "--helpshort", "-helpshort", "-?")


def _flag_lines(names: tuple[str, ...], command_name: str | None = None,
                flag_help: Mapping[str, str] = types.MappingProxyType({})) -> list[str]:
  """Each flag's name and help (as `command_name` reads it, if given), indented."""
  lines = []
  for name in names:
    flag = flags.FLAGS[name]
    help_text = VERBOSITY_HELP if name == "verbosity" else flag.help
    if command_name is not None:
      help_text = flag_help.get(name, help_text)
      # The help of a command's own flag names the command: redundant in its own help.
      help_text = help_text.removeprefix(f"{command_name}: ")
    if flag.default not in (None, []) and name != "verbosity":
      help_text += f" (default: {flag.default_as_str})"
    lines.append(f"  --{name}")
    lines += textwrap.wrap(help_text, 96, initial_indent="      ", subsequent_indent="      ",
                           break_on_hyphens=False)
  return lines


def command_help(name: str, commands: Mapping[str, Command]) -> str:
  """The usage of command `name`: its module's docstring and the flags it takes."""
  command = commands[name]
  module = importlib.import_module(command.function.partition(":")[0])
  config = "--config=experiments/<file>.py:<variant>"
  config = config if command.needs_config else f"[{config}]"
  return "\n".join([f"usage: python -m videogen.main {name} {config} [flags]", "",
                    inspect.getdoc(module) or "", "", "flags:",
                    *_flag_lines((*command.flags, *COMMON_FLAGS), name, command.flag_help)])


def main_help(usage: str | None) -> str:
  """The usage of the entry point (`usage`: its docstring) and the flags every command takes."""
  return "\n".join([inspect.cleandoc(usage) if usage else "", "", "flags of every command:",
                    *_flag_lines(COMMON_FLAGS)])


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
  folder = os.path.join(_ROOT, "experiments")
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


def parse_flags(argv: list[str], commands: Mapping[str, Command], usage: str | None) -> list[str]:
  """absl's flags parser for `app.run`: the help, or the parsed flags; a mistake exits with 2.

  `usage` is the entry point's docstring, the help without a command.
  """
  arguments = argv[1:argv.index("--")] if "--" in argv else argv[1:]
  if any(arg in _HELP_ARGUMENTS for arg in arguments):
    names = [arg for arg in arguments if arg in commands]
    print(command_help(names[0], commands) if names else main_help(usage))
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
    fail(str(error))
  try:
    return flags.FLAGS(argv)
  except flags.Error as error:
    message = str(error).splitlines()[0]
    command = next((arg for arg in arguments if arg in commands), "<command>")
    fail(f"{message}{_value_hint(config, message)} "
         f"(python -m videogen.main {command} --help lists the flags)")


# ---------------------------------------------------------------------------------------------
# Choosing the command, after absl parsed the flags.


def chosen_command(argv: list[str], commands: Mapping[str, Command]) -> str:
  """The name of the command argv (absl's remaining arguments) names; exits with 2 on no command,
  an unknown one, or a flag of another command."""
  if len(argv) != 2:
    fail(f"give exactly one command, e.g. `{EXAMPLE}`; got {argv[1:]} "
         f"(python -m videogen.main --help lists the commands)")
  name = argv[1]
  if name not in commands:
    fail(f"unknown command {name!r}; choose one of: {', '.join(commands)} (e.g. {EXAMPLE})")
  command = commands[name]
  # Every command's own flags: a command refuses the others'.
  command_flags = tuple(dict.fromkeys(flag for c in commands.values() for flag in c.flags))
  foreign = [flag for flag in command_flags
             if flags.FLAGS[flag].present and flag not in command.flags]
  if foreign:
    fail(f"{name} does not take {', '.join('--' + flag for flag in foreign)}; its flags: "
         f"{', '.join('--' + flag for flag in (*command.flags, *COMMON_FLAGS))} "
         f"(python -m videogen.main {name} --help)")
  return name


def check_workdir(workdir: str | None) -> None:
  """Exits with 2 on a --workdir no command can use: a URL (gs://, s3://: a workdir is written
  with local file operations) or a file. A missing folder is each command's to judge."""
  if workdir is None:
    return
  if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", workdir):
    fail(f"--workdir={workdir}: a workdir is a folder of the local file system, not a URL: on a "
         f"pod give every process one shared folder (NFS, Filestore, or the bucket mounted with "
         f"gcsfuse)")
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    fail(f"--workdir={workdir} is a file, not a folder: give a run's folder (a new one is "
         f"created by train)")


def validated_experiment(name: str,
                         config: ml_collections.ConfigDict | None) -> experiment_lib.Experiment:
  """The experiment of --config (`config`) for command `name`; exits with 2 on none or a bad one."""
  if config is None:
    fail(f"{name} needs --config=experiments/<file>.py:<variant>, e.g. "
         f"--config=experiments/shapes.py:tiny")
  try:
    return experiment_lib.validate(config)
  except config_lib.ConfigError as error:
    fail(f"invalid config: {error}")


# ---------------------------------------------------------------------------------------------
# The process: what it prints, where compiled programs go.

# Where videogen's own log lines come from (absl logs every library through one logger).
_OWN_CODE = tuple(os.path.join(_ROOT, package, "") for package in ("videogen", "data_pipelines"))
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
  """Keeps the default output to what a user needs (see videogen.main's docstring)."""
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
