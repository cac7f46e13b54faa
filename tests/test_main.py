"""videogen/main.py: each mistake on the command line is one line that says what to do; help per
command. The plumbing's pieces are tested alone in tests/test_cli.py."""

import importlib
import os
import re
import subprocess
import sys

import pytest
from absl import flags as absl_flags

from videogen import exit_codes
from videogen import experiment as experiment_lib
from videogen import main

from tests.helpers import command_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = "--config=experiments/shapes.py:tiny"
# An absl log line: "I1202 12:00:00.000000 1234 file.py:12] ...".
LOG_LINE = re.compile(r"^[IWEF]\d{4} ")


def _main(*args, env=None):
  return subprocess.run([sys.executable, "-m", "videogen.main", *args], capture_output=True,
                        text=True, timeout=300, cwd=ROOT, env=env)


def _one_line(stderr):
  """The one line of stderr that is not a log line, checking that there is one and no more."""
  assert "Traceback" not in stderr, stderr[-3000:]
  messages = [line for line in stderr.splitlines() if not LOG_LINE.match(line)]
  assert len(messages) == 1, stderr[-3000:]
  assert messages[0].startswith("error: ")
  # Said once: not again as an error log line.
  assert not any(LOG_LINE.match(line) and line.startswith("E") for line in stderr.splitlines())
  return messages[0]


# Mistakes found before absl parses the flags, checked in this process: (argv, what the line
# says: the mistake and its fix).
BAD_EXPERIMENTS = [
    (["train", TINY, "--config.mesh.fdsp=2"],
     ["unknown config key config.mesh.fdsp", "did you mean config.mesh.fsdp?",
      "config.mesh accepts: data, dcn_data, dcn_fsdp"]),
    (["train", TINY, "--config.mesh.data.x=3"],
     ["config.mesh.data is a value (int), not a section; set it with --config.mesh.data=VALUE"]),
    (["train", "--config=experiments/nope.py:tiny"],
     ["config file experiments/nope.py not found", "experiments/shapes.py"]),
    (["train", "--config=experiments/shapes.py:huge"],
     ["unknown variant 'huge'", "choose one of tiny, long, small"]),
    (["train", "--config={tmp}/no_get_config.py"],
     ["no_get_config.py defines no get_config(arg=None)"]),
    (["train", "--config={tmp}/broken.py:tiny"], ["broken.py, line 1: ", "fix the file"]),
    (["train", "--config={tmp}/no_variants.py:tiny"],
     ["get_config takes no variant; pass --config=", "no_variants.py without ':tiny'"]),
    (["train", "--config=", "--workdir=x"], ["--config is empty"]),
    (["train", "--workdir=x", "--config.mesh.data=3"],
     ["give the experiment with --config=<file>.py:<variant>"]),
]


@pytest.mark.parametrize("args, says", BAD_EXPERIMENTS,
                         ids=[" ".join(args) for args, _ in BAD_EXPERIMENTS])
def test_a_bad_experiment_or_override_gets_one_line(tmp_path, capsys, args, says):
  (tmp_path / "no_get_config.py").write_text("CONFIG = {}\n")
  (tmp_path / "broken.py").write_text("def get_config(arg=None)\n  return None\n")
  (tmp_path / "no_variants.py").write_text("def get_config():\n  return None\n")
  argv = ["videogen.main", *(arg.replace("{tmp}", str(tmp_path)) for arg in args)]
  with pytest.raises(SystemExit) as exit_info:
    main.parse_flags(argv)
  assert exit_info.value.code == 2
  message = _one_line(capsys.readouterr().err)
  for part in says:
    assert part in message


# Mistakes of every other kind, end to end: (command line, what the line says). Exit code 2.
BAD_COMMAND_LINES = [
    (["train", TINY, "--workdir={tmp}", "--config.mesh.fdsp=2"],
     ["unknown config key config.mesh.fdsp", "config.mesh accepts: data, dcn_data"]),
    (["train", TINY, "--workdir={tmp}", "--config.train.dit.num_steps=abc"],
     ["--config.train.dit.num_steps=abc", "config.train.dit.num_steps takes an int, e.g. "
      "--config.train.dit.num_steps=3000"]),
    (["summary", TINY, "--config.mesh.data=0"],
     ["invalid config: config.mesh: mesh.data = 0: give a positive size"]),
    (["train", TINY, "--workdir={tmp}", "--config.mesh.data=3"],
     ["multiply to 3 but there are 8", "change config.mesh"]),
    (["train", TINY, "--workdir={tmp}", "--prompt=a red circle"],
     ["train does not take --prompt", "python -m videogen.main train --help"]),
    (["train", TINY, "--workdir={tmp}", "--coordinator_address=127.0.0.1:1234"],
     ["needs all of --coordinator_address, --num_processes and --process_id",
      "num_processes=None"]),
    (["run", TINY, "--workdir={tmp}", "--coordinator_address=127.0.0.1:1234",
      "--num_processes=2", "--process_id=2"],
     ["--process_id=2 with --num_processes=2", "number the processes 0 to 1"]),
    (["cache_latents", TINY, "--workdir={tmp}", "--num_processes=2", "--process_id=0"],
     ["needs all of --coordinator_address, --num_processes and --process_id"]),
    (["benchmark"], ["benchmark needs --config=experiments/<file>.py:<variant>"]),
    (["train", TINY, "--workdir=gs://bucket/run"],
     ["--workdir=gs://bucket/run: a workdir is a folder of the local file system, not a URL"]),
    (["generate", "--workdir={tmp}", "--frm=3"],
     ["Unknown command line flag 'frm'", "python -m videogen.main generate --help"]),
    (["evaluate", "--workdir={tmp}", "--what=autoencoder", "--scenes_per_group=1"],
     ["--scenes_per_group applies to --what=generation"]),
    (["trian"], ["unknown command 'trian'; choose one of: run, train"]),
    ([], ["give exactly one command"]),
]


@pytest.mark.parametrize("args, says", BAD_COMMAND_LINES,
                         ids=[" ".join(args) or "no command" for args, _ in BAD_COMMAND_LINES])
def test_a_bad_command_line_gets_one_line_that_says_what_to_do(tmp_path, args, says):
  result = _main(*(arg.replace("{tmp}", str(tmp_path)) for arg in args))
  assert result.returncode == 2, result.stderr[-3000:]
  message = _one_line(result.stderr)
  for part in says:
    assert part in message


def test_a_bug_keeps_its_traceback(tmp_path):
  """Only the mistakes a user fixes are shortened: an experiment file that crashes is a bug."""
  (tmp_path / "crashes.py").write_text("def get_config(arg=None):\n  return {}['missing']\n")
  result = _main("summary", f"--config={tmp_path}/crashes.py")
  assert result.returncode != 0
  assert "Traceback" in result.stderr and "KeyError: 'missing'" in result.stderr


@pytest.mark.parametrize("command, asking, takes, not_takes", [
    ("generate", "--help", ["--prompts_file", "--negative_prompt", "--out"],
     ["--layouts", "--what"]),
    ("evaluate", "-h", ["--what", "--out", "--scenes_per_group", "4N text-to-video prompts",
                        "OUT/eval_<what>.json"], ["--prompt\n", "--layouts"]),
    ("train", "--helpshort", ["--allow_config_change", "--autoencoder_from", "--num_processes"],
     ["--prompt\n", "--what"]),
    ("run", "--helpshort", ["--allow_config_change", "--autoencoder_from", "--watermark",
                            "--num_processes"],
     ["--prompt\n", "--layouts"]),
])
def test_help_of_a_command_is_its_usage_and_its_own_flags(capsys, command, asking, takes,
                                                          not_takes):
  with pytest.raises(SystemExit) as exit_info:
    main.parse_flags(["videogen.main", command, "--config.mesh.fdsp=1", asking])
  assert exit_info.value.code == 0
  out = capsys.readouterr().out
  module = importlib.import_module(main.COMMANDS[command].function.partition(":")[0])
  assert out.startswith(f"usage: python -m videogen.main {command} ")
  assert module.__doc__.strip().splitlines()[0] in out  # the usage is the module's docstring
  for text in [*takes, "--config", "--workdir", "--verbosity"]:
    assert text in out
  for text in not_takes:
    assert text not in out


def test_help_lists_the_commands():
  result = _main("--help")
  assert result.returncode == 0, result.stderr
  for name in main.COMMANDS:
    assert f"\n  {name} " in result.stdout
  assert "<command> --help" in result.stdout


# Loaded only by the commands that use them: the Python API (with the generation pipeline and the
# watermark), scipy, and the command modules.
HEAVY = ("videogen.api", "videogen.generate.pipeline", "videogen.provenance.watermark",
         "videogen.train.trainer", "videogen.export.command", "scipy")


def test_the_entry_point_loads_only_what_a_command_needs():
  """Every command, and every refusal of a flag, starts by importing videogen.main: it loads none
  of HEAVY; the watermark then loads neither scipy.signal nor scipy.stats (about 2 s apart)."""
  script = ("import json, sys\n"
            "import videogen.main\n"
            f"entry = [name for name in {HEAVY!r} if name in sys.modules]\n"
            "import videogen.provenance.watermark\n"
            "watermark = [name for name in ('scipy.signal', 'scipy.stats')\n"
            "             if name in sys.modules]\n"
            "import videogen\n"
            "api = videogen.load.__module__\n"
            "print(json.dumps([entry, watermark, api]))\n")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.splitlines()[-1] == '[[], [], "videogen.api"]'


@pytest.mark.parametrize("args, says", [
    (["evaluate", "--what=autoencoder", "--config.autoencoder.base_channels=16"],
     "the checkpoint {workdir}/checkpoints/autoencoder/2 was trained with other model settings "
     "than the config given (config.autoencoder.base_channels: 8 -> 16)"),
    # The blocks' layout is no difference that stops a restore (videogen/train/layer_layout.py).
    (["generate", "--prompt=a red circle", "--out={tmp}/red.mp4", "--config.dit.width=64",
      "--config.dit.scan_layers=True"],
     "the checkpoint {workdir}/checkpoints/dit/2 was trained with other model settings than the "
     "config given (config.dit.width: 32 -> 64)"),
], ids=["evaluate", "generate"])
def test_a_config_that_does_not_fit_the_checkpoint_names_the_settings(tiny_workdir, tmp_path,
                                                                      args, says):
  """One line, not orbax's error about `strict=False`, nor asyncio's log of each failed read;
  exit code 2 in either command."""
  config_file = command_line.tiny_workdir_config_file(tmp_path)
  command, *rest = args
  result = _main(command, f"--workdir={tiny_workdir}", f"--config={config_file}",
                 *(arg.replace("{tmp}", str(tmp_path)) for arg in rest))
  assert result.returncode == exit_codes.REFUSED, result.stderr[-3000:]
  assert says.replace("{workdir}", tiny_workdir) in _one_line(result.stderr)


# The same mistake in each command that can make it: (command, its flags, what the line says).
# {tmp} is an empty workdir; each command is called in this process, as videogen.main calls it.
# (export looks for the checkpoint before its --out: tests/export/test_command.py.)
SAME_MISTAKES = [
    ("no checkpoint", "generate", {"prompt": "a red circle", "out": "{tmp}/out/red.mp4"},
     "no checkpoint of stage 'dit' in {tmp}"),
    ("no checkpoint", "evaluate", {"what": "generation"}, "no checkpoint of stage 'dit' in {tmp}"),
    ("no checkpoint", "evaluate", {"what": "autoencoder"},
     "no checkpoint of stage 'autoencoder' in {tmp}"),
    ("no checkpoint", "export", {"out": "{tmp}/out"}, "no checkpoint of stage 'dit' in {tmp}"),
    ("no checkpoint", "cache_latents", {}, "no checkpoint of stage 'autoencoder' in {tmp}"),
    ("a missing key file", "run", {"key": "{tmp}/missing.key"}, "missing.key does not exist"),
    ("a missing key file", "generate",
     {"prompt": "a red circle", "out": "{tmp}/out/red.mp4", "key": "{tmp}/missing.key"},
     "missing.key does not exist"),
    ("a missing key file", "detect", {"input": "{tmp}", "key": "{tmp}/missing.key"},
     "missing.key does not exist"),
    ("an input that cannot be read", "generate",
     {"prompt": "a red circle", "mode": "extend", "input": "{tmp}/broken.mp4",
      "out": "{tmp}/out/red.mp4"}, "--input={tmp}/broken.mp4: FFmpeg cannot open it"),
    ("an input that cannot be read", "detect", {"input": "{tmp}/broken.mp4", "key": "{tmp}/k"},
     "{tmp}/broken.mp4: FFmpeg cannot open it"),
    ("an output that is a file", "run", {}, "{tmp}/gallery is a file"),
    ("an output that is a file", "generate",
     {"prompt": "a red circle", "out": "{tmp}/gallery/red.mp4"}, "{tmp}/gallery is a file"),
    ("an output that is a file", "evaluate", {"what": "generation", "out": "{tmp}/gallery"},
     "{tmp}/gallery is a file"),
]


@pytest.mark.parametrize("mistake, name, flags, says", SAME_MISTAKES,
                         ids=[f"{m}: {n}" for m, n, _, _ in SAME_MISTAKES])
def test_the_same_mistake_gets_exit_code_2_in_every_command(tmp_path, capsys, tiny_workdir_config,
                                                            mistake, name, flags, says):
  """`videogen.exit_codes`: a mistake in what was asked is one line and exit code 2 whichever
  command meets it, before any work (nothing is created but the folders of the outputs)."""
  (tmp_path / "gallery").write_text("a file where a folder goes")
  (tmp_path / "broken.mp4").write_text("not a video")
  (tmp_path / "k").write_text("00" * 32)  # a valid watermark key, private
  (tmp_path / "k").chmod(0o600)
  command = main.COMMANDS[name]
  values = {flag: absl_flags.FLAGS[flag].default for flag in command.flags}
  values.update({flag: value.replace("{tmp}", str(tmp_path)) for flag, value in flags.items()})
  experiment = experiment_lib.validate(tiny_workdir_config)  # as --config gives it
  assert command.load()(experiment, str(tmp_path), **values) == exit_codes.REFUSED
  error = capsys.readouterr().err.strip()
  assert error.count("\n") == 0 and error.startswith("error: "), error
  assert says.replace("{tmp}", str(tmp_path)) in error
  assert sorted(os.listdir(tmp_path)) in (["broken.mp4", "gallery", "k"],
                                          ["broken.mp4", "gallery", "k", "out"])
