"""Tests of experiments/colab/evaluate.ipynb: executed headless against the tiny trained workdir,
and trained from scratch where no workdir is given; its install cell run with the commands it
would run recorded instead."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys

import ml_collections
import nbclient
import nbformat
import pytest

from experiments import shapes

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
NOTEBOOK = REPO_ROOT / "experiments" / "colab" / "evaluate.ipynb"
KERNEL_NAME = "videogen-test-python"
# The settings a headless run overrides: tiny clips (5 frames, 2 sampler steps), so the run takes
# seconds after compilation.
FRAMES = 5
STEPS = 2
DISPLAY_HEIGHT = 64


def _read() -> nbformat.NotebookNode:
  return nbformat.read(NOTEBOOK, as_version=4)


def _parameters_cells(notebook: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
  return [cell for cell in notebook.cells
          if cell.cell_type == "code" and "parameters" in cell.metadata.get("tags", [])]


def _install_cell(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
  (cell,) = [cell for cell in notebook.cells
             if cell.cell_type == "code" and '"pip", "install"' in cell.source]
  return cell


def _flat(config: ml_collections.ConfigDict, prefix: str = "") -> dict:
  """A ConfigDict as {"section.field": value}."""
  flat = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      flat.update(_flat(value, f"{prefix}{key}."))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _with_parameters(notebook: nbformat.NotebookNode, **values) -> nbformat.NotebookNode:
  """Appends `NAME = value` lines to the parameters cell (papermill's injection, in place)."""
  (cell,) = _parameters_cells(notebook)
  cell.source += "\n# Injected by the test.\n" + "".join(
      f"{name} = {value!r}\n" for name, value in values.items())
  return notebook


@pytest.fixture
def kernel_name(tmp_path, monkeypatch) -> str:
  """A kernelspec that runs this interpreter (the venv's), found through a temporary JUPYTER_PATH.

  The kernel inherits this process's environment, so it sees the same 8 fake CPU devices and
  compilation cache; its Jupyter and IPython state goes to temporary directories.
  """
  spec_dir = tmp_path / "jupyter" / "kernels" / KERNEL_NAME
  spec_dir.mkdir(parents=True)
  python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
  (spec_dir / "kernel.json").write_text(json.dumps({
      "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
      "display_name": "videogen test kernel", "language": "python",
      "env": {"PYTHONPATH": python_path}}))
  monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
  monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
  monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
  return KERNEL_NAME


def test_committed_notebook_is_clean_and_parameterised():
  notebook = _read()
  nbformat.validate(notebook)
  for index, cell in enumerate(notebook.cells):
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, (
          f"cell {index} of {NOTEBOOK.name} holds outputs: clear them before committing "
          f"(Jupyter: Edit > Clear All Outputs)")
  (parameters,) = _parameters_cells(notebook)
  assert notebook.cells.index(parameters) < 3, "the parameters cell must come first"
  defined = {line.split("=")[0].strip() for line in parameters.source.splitlines()
             if "=" in line and not line.startswith("#")}
  assert {"WORKDIR", "FRAMES", "STEPS", "INSTALL"} <= defined
  # The Colab install must be guarded, so that a headless run never pip-installs.
  install_cells = [cell for cell in notebook.cells
                   if cell.cell_type == "code" and '"pip", "install"' in cell.source]
  assert install_cells and all("if INSTALL" in cell.source for cell in install_cells)


def test_notebook_runs_headless_and_shows_videos(tiny_workdir, kernel_name, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(tiny_workdir, workdir)  # the shared workdir is read-only: `save` makes keys
  notebook = _with_parameters(_read(), WORKDIR=workdir, FRAMES=FRAMES, STEPS=STEPS,
                              DISPLAY_HEIGHT=DISPLAY_HEIGHT, INSTALL=False)
  client = nbclient.NotebookClient(notebook, kernel_name=kernel_name, timeout=300,
                                   resources={"metadata": {"path": str(tmp_path)}})
  client.execute()  # raises CellExecutionError, naming the cell, if any cell fails

  code_cells = [cell for cell in notebook.cells if cell.cell_type == "code"]
  assert all(cell.execution_count is not None for cell in code_cells)
  assert not [out for cell in code_cells for out in cell.outputs if out.output_type == "error"]
  html = [out.data["text/html"] for cell in code_cells for out in cell.outputs
          if out.output_type == "display_data" and "text/html" in out.data]
  stdout = "".join(out.text for cell in code_cells for out in cell.outputs
                   if out.output_type == "stream" and out.name == "stdout")
  # Two text-to-video prompts, then the world's clip, its image-to-video and its extension.
  videos = sum(chunk.count("<video") for chunk in html)
  assert videos == 5, f"expected 5 inline videos, found {videos}"
  assert any("<img" in chunk for chunk in html), "the text-to-image cell showed no image"
  # Every mode ran and reported its cost; the extension kept the clip's 9 frames and added 4.
  for mode in ("t2v", "t2i", "i2v", "extend"):
    assert f"{mode}: " in stdout, f"no {mode} summary in the notebook's output"
  assert "extend: 4 new frames" in stdout and "of 13 in" in stdout
  # The analyzer reads the world's own clip (scene 3: 'a large orange triangle') correctly.
  assert "world clip 'a large orange triangle': background gray" in stdout
  assert "large orange triangle, static" in stdout


def _execute(notebook: nbformat.NotebookNode, kernel_name: str, cwd: pathlib.Path) -> str:
  """Runs every cell (raising, naming the cell, if one fails); returns the printed text."""
  client = nbclient.NotebookClient(notebook, kernel_name=kernel_name, timeout=600,
                                   resources={"metadata": {"path": str(cwd)}})
  client.execute()
  return "".join(out.text for cell in notebook.cells if cell.cell_type == "code"
                 for out in cell.outputs if out.output_type == "stream" and out.name == "stdout")


@pytest.mark.slow  # trains both stages in the notebook's kernel: about a minute on 2 CPU cores
def test_notebook_trains_the_preset_when_no_workdir_is_given(tiny_workdir_config, kernel_name,
                                                              tmp_path):
  # The preset with the tiny workdir's changes (2 steps a stage, smaller models): the notebook's
  # own training path, end to end, in seconds.
  preset, cheap = _flat(shapes.get_config("tiny")), _flat(tiny_workdir_config)
  overrides = {key: value for key, value in cheap.items() if preset.get(key, ...) != value}
  assert "train.dit.num_steps" in overrides
  notebook = _with_parameters(_read(), WORKDIR="", TRAIN_OVERRIDES=overrides, FRAMES=FRAMES,
                              STEPS=STEPS, PROMPTS=["a red circle"], INSTALL=False)
  stdout = _execute(notebook, kernel_name, tmp_path)

  workdir = tmp_path / "runs" / "tiny"
  assert f"training experiments/shapes.py:tiny into {workdir}" in stdout
  assert "stage autoencoder: done at step 2" in stdout and "stage dit: done at step 2" in stdout
  assert (workdir / "checkpoints" / "dit" / "2").is_dir()
  assert "t2v: " in stdout and "extend: 4 new frames" in stdout
  assert (tmp_path / "generated" / "first_prompt.mp4").stat().st_size > 0


class _Recorder:
  """Stands in for subprocess.run: records each command; nvidia-smi prints `nvidia_smi`."""

  def __init__(self, nvidia_smi: str | None = None):
    self.commands: list[list[str]] = []
    self.nvidia_smi = nvidia_smi

  def __call__(self, command, **kwargs):
    del kwargs
    self.commands.append([str(part) for part in command])
    return subprocess.CompletedProcess(command, 0, stdout=self.nvidia_smi or "", stderr="")


@pytest.fixture
def run_install_cell(monkeypatch):
  """Runs the notebook's install cell with INSTALL = True in a folder, on a CPU runtime unless
  told otherwise, with subprocess.run recorded; returns (the cell's globals, the commands)."""
  for name in ("COLAB_TPU_ADDR", "TPU_NAME"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(sys, "path", list(sys.path))
  monkeypatch.setattr("glob.glob", lambda pattern: [])  # no /dev/accel* TPU chips

  def run(cwd: pathlib.Path, *, repo_url: str = "", nvidia_smi: str | None = None):
    recorder = _Recorder(nvidia_smi)
    monkeypatch.setattr(subprocess, "run", recorder)
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}" if nvidia_smi else None)
    monkeypatch.chdir(cwd)
    scope = {"INSTALL": True, "REPO_URL": repo_url}
    exec(_install_cell(_read()).source, scope)  # noqa: S102  (the notebook's own cell)
    return scope, recorder.commands

  return run


def test_install_cell_installs_the_checkout_it_lives_in(run_install_cell):
  scope, commands = run_install_cell(NOTEBOOK.parent)
  assert scope["CHECKOUT"] == REPO_ROOT and scope["EXTRA"] is None
  assert commands == [[sys.executable, "-m", "pip", "install", "-q", str(REPO_ROOT), "mediapy"]]


@pytest.mark.parametrize("nvidia_smi, extra", [
    ("| NVIDIA-SMI 550.54   Driver Version: 550.54   CUDA Version: 12.4 |", "cuda12"),
    ("| NVIDIA-SMI 580.65   Driver Version: 580.65   CUDA Version: 13.0 |", "cuda13"),
])
def test_install_cell_picks_the_gpu_extra(run_install_cell, nvidia_smi, extra):
  _, commands = run_install_cell(REPO_ROOT, nvidia_smi=nvidia_smi)
  assert commands[-1][-2:] == [f"{REPO_ROOT}[{extra}]", "mediapy"]


def test_install_cell_picks_the_tpu_extra(run_install_cell, monkeypatch):
  monkeypatch.setenv("COLAB_TPU_ADDR", "10.0.0.2:8470")
  _, commands = run_install_cell(REPO_ROOT)
  assert commands == [[sys.executable, "-m", "pip", "install", "-q", f"{REPO_ROOT}[tpu]",
                       "mediapy"]]


def test_install_cell_clones_repo_url_outside_a_checkout(run_install_cell, tmp_path):
  url = "https://example.com/videogen.git"
  scope, commands = run_install_cell(tmp_path, repo_url=f"git+{url}")
  clone = tmp_path / "videogen"
  assert commands == [["git", "clone", "--depth", "1", url, str(clone)],
                      [sys.executable, "-m", "pip", "install", "-q", str(clone), "mediapy"]]
  assert scope["CHECKOUT"] == clone


def test_install_cell_without_checkout_or_url_stops_with_an_instruction(run_install_cell,
                                                                         tmp_path):
  with pytest.raises(RuntimeError, match=r"no videogen checkout here and REPO_URL is empty: set "
                                         r"REPO_URL in the first cell"):
    run_install_cell(tmp_path)
  # Nothing ran: no clone, no pip.
  assert subprocess.run.commands == []
