"""Tests of experiments/colab/evaluate.ipynb: executed headless against the tiny trained workdir."""

from __future__ import annotations

import json
import os
import pathlib
import sys

import nbclient
import nbformat
import pytest

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
  notebook = _with_parameters(_read(), WORKDIR=tiny_workdir, FRAMES=FRAMES, STEPS=STEPS,
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
