"""The commands the README, docs/ and videogen's own messages tell users to run: each names a
command of videogen/main.py, only flags that command takes, and only config keys of the experiment
it names. Users copy their commands from these; a renamed flag or key must not leave them one that
fails."""

import pathlib
import re

import pytest

from videogen import cli
from videogen import main

ROOT = pathlib.Path(__file__).resolve().parent.parent
# Every command takes these (absl's, and the config's own).
COMMON_FLAGS = {"config", "workdir", "verbosity", "help", "helpshort"}
# `python -m videogen.main NAME ...` up to the end of its code span, quote or table cell; a
# backslash at a line's end continues the command on the next.
COMMAND = re.compile(r"videogen\.main\s+([a-z_]+)((?:\\\n|[^`\n\"'|])*)")
FLAG = re.compile(r"--([a-z_][a-z_.0-9]*[a-z_0-9])")
CONFIG = re.compile(r"--config=(experiments/[a-z_]+\.py(?::[a-z0-9_]+)?)(?=[\s\\]|$)")
# A config dataclass field that a study patch adds (docs/studies/*.patch, applied before the
# study's commands; tests/test_study_patches.py keeps them applying).
PATCH_FIELD = re.compile(r"^\+  ([a-z_]+): [^=\n]+=", re.MULTILINE)


def _project_sources() -> list[pathlib.Path]:
  return ([ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
          + sorted((ROOT / "videogen").rglob("*.py")))


def _commands(sources: list[pathlib.Path]) -> list[tuple[str, str, str]]:
  """(file name, command, the rest of its line or lines) of every command in `sources`."""
  return [(path.name, match.group(1), match.group(2)) for path in sources
          for match in COMMAND.finditer(path.read_text(encoding="utf-8"))]


def _flag_mistakes(commands: list[tuple[str, str, str]]) -> list[str]:
  mistakes = []
  for source, name, rest in commands:
    if name not in main.COMMANDS:
      mistakes.append(f"{source}: no command {name!r}")
      continue
    taken = COMMON_FLAGS | set(main.COMMANDS[name].flags)
    mistakes += [f"{source}: {name} does not take --{flag}" for flag in FLAG.findall(rest)
                 if flag.split(".")[0] not in taken]
  return mistakes


def _config_mistakes(commands: list[tuple[str, str, str]]) -> tuple[list[str], int]:
  """The config keys that are no field of their command's experiment, and how many were read."""
  patched = {field for patch in (ROOT / "docs" / "studies").glob("*.patch")
             for field in PATCH_FIELD.findall(patch.read_text(encoding="utf-8"))}
  configs, mistakes, checked = {}, [], 0
  for source, name, rest in commands:
    spec = CONFIG.search(rest)
    if spec is None:
      continue
    spec = spec.group(1)
    if spec not in configs:
      configs[spec] = cli.load_config_file(str(ROOT / spec))
    for flag in FLAG.findall(rest):
      if flag.startswith("config.") and flag.rpartition(".")[2] not in patched:
        checked += 1
        why = cli.unknown_key(configs[spec], flag[len("config."):], spec)
        if why is not None:
          mistakes.append(f"{source}: {name} --{flag}: {why}")
  return mistakes, checked


def test_each_command_takes_the_flags_it_is_shown_with():
  commands = _commands(_project_sources())
  assert len(commands) > 100
  assert {name for _, name, _ in commands} >= {"run", "train", "generate", "evaluate", "export"}
  assert _flag_mistakes(commands) == []


def test_each_config_key_is_a_field_of_the_experiment_it_is_shown_with():
  mistakes, checked = _config_mistakes(_commands(_project_sources()))
  assert checked > 20
  assert mistakes == []


@pytest.mark.parametrize("text, mistake", [
    ("python -m videogen.main run --config=experiments/shapes.py:tiny --workdir=r --prompt=x",
     "README.md: run does not take --prompt"),
    ("`python -m videogen.main trian --workdir=r`", "README.md: no command 'trian'"),
    ("python -m videogen.main evaluate --workdir=r \\\n    --what=generation --layouts=1:1x1x1",
     "README.md: evaluate does not take --layouts"),
])
def test_a_stale_flag_is_found(tmp_path, text, mistake):
  (tmp_path / "README.md").write_text(text)
  assert _flag_mistakes(_commands([tmp_path / "README.md"])) == [mistake]


def test_a_stale_config_key_is_found(tmp_path):
  (tmp_path / "README.md").write_text(
      "`python -m videogen.main train --config=experiments/shapes.py:tiny --workdir=r "
      "--config.train.dit.num_step=10 --config.dit.depth=2`")
  mistakes, checked = _config_mistakes(_commands([tmp_path / "README.md"]))
  assert checked == 2
  assert len(mistakes) == 1
  assert mistakes[0].startswith(
      "README.md: train --config.train.dit.num_step: unknown config key "
      "config.train.dit.num_step (did you mean config.train.dit.num_steps?)")
