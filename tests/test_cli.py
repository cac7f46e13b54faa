"""videogen/cli.py: the command line's pieces, alone: the experiment file's keys, the default
log filter, the compilation cache's folder, the choice of a command from any table."""

import logging
import os

import jax
import pytest

from videogen import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_command_loads_its_function():
  assert cli.Command("videogen.cli:compilation_cache_dir", False).load() is (
      cli.compilation_cache_dir)


def test_an_unknown_command_names_the_commands_of_the_table(capsys):
  commands = {"fit": cli.Command("videogen.cli:fail", False),
              "draw": cli.Command("videogen.cli:fail", False)}
  with pytest.raises(SystemExit) as exit_info:
    cli.chosen_command(["videogen.main", "fti"], commands)
  assert exit_info.value.code == 2
  assert capsys.readouterr().err == (f"error: unknown command 'fti'; choose one of: fit, draw "
                                     f"(e.g. {cli.EXAMPLE})\n")


def test_unknown_key_names_the_keys_there_are():
  config = cli.load_config_file("experiments/shapes.py:tiny")
  assert cli.unknown_key(config, "mesh.fsdp", "x") is None
  assert cli.unknown_key(config, "train.dit.num_steps", "x") is None
  message = cli.unknown_key(config, "mesh.fdsp", "x")
  assert message.startswith("unknown config key config.mesh.fdsp (did you mean config.mesh.fsdp?)")
  assert message.endswith(", ".join(sorted(config.mesh.keys())))
  assert "config accepts: " in cli.unknown_key(config, "nonsense.x", "x")


def _record(pathname, level, message):
  return logging.LogRecord("absl", level, pathname, 1, message, None, None)


def test_the_default_log_keeps_our_lines_and_other_libraries_warnings():
  keep = cli._DefaultLogFilter().filter
  own = os.path.join(ROOT, "videogen", "train", "trainer.py")
  orbax = "/venv/site-packages/orbax/checkpoint/checkpoint_manager.py"
  assert keep(_record(own, logging.INFO, "stage dit: resumed from step 10"))
  assert keep(_record(os.path.join(ROOT, "data_pipelines", "loader.py"), logging.WARNING, "x"))
  assert not keep(_record(orbax, logging.INFO, "Created directory=/tmp/x"))
  assert not keep(_record("/venv/site-packages/jax/_src/xla_bridge.py", logging.INFO, "no tpu"))
  assert keep(_record("/venv/site-packages/jax/_src/xla_bridge.py", logging.WARNING, "no GPU"))
  # Orbax's notice that a manager opened read-only (to restore) is read-only.
  assert not keep(_record(orbax, logging.WARNING, "Given directory is read only=/tmp/x"))
  assert keep(_record(orbax, logging.ERROR, "save failed"))


@pytest.mark.parametrize("environ, expected", [
    ({}, os.path.join(os.path.expanduser("~"), ".cache", "videogen", "jax")),
    ({"XDG_CACHE_HOME": "/xdg"}, "/xdg/videogen/jax"),
    ({"JAX_COMPILATION_CACHE_DIR": "/jax"}, None),  # JAX reads it itself: kept
    ({"VIDEOGEN_COMPILATION_CACHE": "/ours", "JAX_COMPILATION_CACHE_DIR": "/jax"}, "/ours"),
    ({"VIDEOGEN_COMPILATION_CACHE": "off", "XDG_CACHE_HOME": "/xdg"}, None),
])
def test_compilation_cache_folder(environ, expected):
  assert cli.compilation_cache_dir(environ) == expected


def test_an_explicit_jax_cache_folder_is_kept(monkeypatch):
  """conftest.py sets JAX_COMPILATION_CACHE_DIR for the tests; the command line must keep it."""
  before = (jax.config.jax_compilation_cache_dir,
            jax.config.jax_persistent_cache_min_compile_time_secs)
  assert os.environ.get("JAX_COMPILATION_CACHE_DIR")
  monkeypatch.delenv("VIDEOGEN_COMPILATION_CACHE", raising=False)
  try:
    cli.enable_compilation_cache()
    assert jax.config.jax_compilation_cache_dir == before[0]
    assert jax.config.jax_persistent_cache_min_compile_time_secs == before[1]
  finally:
    jax.config.update("jax_compilation_cache_dir", before[0])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])


@pytest.mark.parametrize("workdir, says", [
    ("gs://bucket/runs/tiny", "--workdir=gs://bucket/runs/tiny: a workdir is a folder of the "
                              "local file system, not a URL"),
    ("{tmp}/file.txt", "--workdir={tmp}/file.txt is a file, not a folder"),
])
def test_a_workdir_no_command_can_use_is_refused(tmp_path, capsys, workdir, says):
  (tmp_path / "file.txt").write_text("not a run")
  with pytest.raises(SystemExit) as exit_info:
    cli.check_workdir(workdir.replace("{tmp}", str(tmp_path)))
  assert exit_info.value.code == 2
  error = capsys.readouterr().err
  assert error.count("\n") == 1
  assert error.startswith(f"error: {says.replace('{tmp}', str(tmp_path))}"), error
  cli.check_workdir(str(tmp_path))  # a folder, or none, is left to the command
  cli.check_workdir(str(tmp_path / "new"))
  cli.check_workdir(None)

