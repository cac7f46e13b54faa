"""videogen/export/command.py: the layout it writes, its report, and its one-line errors."""

import json
import os
import subprocess
import sys

import pytest

from videogen.export import command
from videogen.export import components as components_lib

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def exported(tiny_workdir, tmp_path_factory):
  """(exit code, OUT) of `export` of the tiny workdir in every format."""
  out = str(tmp_path_factory.mktemp("exported"))
  return command.command(None, tiny_workdir, out=out, formats=None), out


def test_writes_every_format_the_tokenizer_and_the_report(exported, tiny_workdir):
  code, out = exported
  assert code == 0
  extra = {"stablehlo": [], "onnx": [],
           "torch": ["config.json", "tokenizer.model", "videogen_torch.py"]}
  for name in command.FORMATS:
    suffix = {"stablehlo": ".stablehlo", "onnx": ".onnx", "torch": ".safetensors"}[name]
    assert sorted(os.listdir(os.path.join(out, name))) == sorted(
        [component + suffix for component in components_lib.NAMES] + extra[name])
  with open(os.path.join(out, "tokenizer.model"), "rb") as copy, open(
      os.path.join(tiny_workdir, "tokenizer.model"), "rb") as original:
    assert copy.read() == original.read()

  with open(os.path.join(out, "export_report.json")) as file:
    report = json.load(file)
  assert {"workdir", "step", "shape", "batch", "compression", "tokenizer", "parity",
          "components", "formats"} <= set(report)
  assert report["step"] == 2 and report["batch"] == 1
  assert report["shape"] == {"frames": 9, "height": 32, "width": 32}
  assert report["tokenizer"]["file"] == "tokenizer.model"
  assert list(report["components"]) == list(components_lib.NAMES)
  assert set(report["formats"]) == set(command.FORMATS) == {"stablehlo", "onnx", "torch"}
  assert all(entry["seconds"] > 0 for entry in report["formats"].values())
  for name, component in report["components"].items():
    assert component["inputs"] and component["outputs"], name
    for spec in component["inputs"] + component["outputs"]:
      assert {"name", "shape", "dtype", "axes"} <= set(spec) and spec["shape"][0] == "batch"
    for format_name, row in component["formats"].items():
      assert os.path.getsize(os.path.join(out, row["file"])) == row["bytes"] > 0
      assert row["parity"]["max_abs"] <= TOLERANCE, (name, format_name, row["parity"])
      assert row["parity"]["batches"] == [1, 2] and "max_rel" in row["parity"]
      assert "batch" in row["dynamic_axes"][component["inputs"][0]["name"]]
    assert set(component["formats"]) == set(command.FORMATS), name
  # The torch generate against the JAX pipeline from the same noise, at the example clip.
  end_to_end = report["formats"]["torch"]["end_to_end"]
  assert end_to_end["shape"] == [9, 32, 32, 3]
  assert end_to_end["fraction_within_1"] >= 0.99, end_to_end
  ids = report["components"]["text_encoder"]["inputs"][0]
  assert ids["dtype"] == "int32" and ids["range"][0] == 0 and ids["range"][1] > 1


@pytest.mark.parametrize("flags, code, message", [
    (dict(formats=["tflite"]), 2, "unknown format 'tflite': choose from stablehlo, onnx, torch"),
    (dict(frames=8), 2, "--frames=8: the models take 1 + 2k frames"),
    (dict(height=30), 2, "--height=30: must be a multiple of 8"),
    (dict(batch=0), 2, "--batch=0 must be at least 1"),
    (dict(out=None), 2, "export needs --out=DIR"),
])
def test_bad_command_lines_get_one_line_and_exit_code_2(tiny_workdir, tmp_path, capsys, flags,
                                                        code, message):
  arguments = {"out": str(tmp_path / "out"), **flags}
  assert command.command(None, tiny_workdir, **arguments) == code
  error = capsys.readouterr().err
  assert error.startswith(f"error: {message}") and error.count("\n") == 1, error
  assert not os.path.exists(tmp_path / "out")  # refused before anything is written


def test_an_out_that_cannot_be_written_is_refused_before_loading(tiny_workdir, tmp_path, capsys,
                                                                  monkeypatch):
  (tmp_path / "file").write_text("a file where a folder goes")

  def load(*args, **kwargs):
    raise AssertionError("loaded the models before checking --out")

  monkeypatch.setattr(command.pipeline, "load", load)
  assert command.command(None, tiny_workdir, out=str(tmp_path / "file" / "out")) == 2
  error = capsys.readouterr().err
  assert error.count("\n") == 1 and f"{tmp_path}/file is a file, not a folder" in error, error


def test_a_format_without_its_packages_names_the_extra(tiny_workdir, tmp_path, capsys,
                                                       monkeypatch):
  monkeypatch.setitem(command.FORMATS, "onnx",
                      command.Format(("videogen_no_such_package",), command.FORMATS["onnx"].write))
  assert command.command(None, tiny_workdir, out=str(tmp_path), formats=["onnx"]) == 2
  assert capsys.readouterr().err == (
      "error: format 'onnx' needs videogen_no_such_package, which is not installed: "
      "pip install -e '.[export]'\n")


def test_a_missing_workdir_or_stage_gets_one_line_and_exit_code_2(tmp_path, capsys):
  assert command.command(None, str(tmp_path / "missing"), out=str(tmp_path / "out")) == 2
  error = capsys.readouterr().err
  assert error.startswith(f"error: workdir {tmp_path / 'missing'} does not exist")
  assert error.count("\n") == 1
  assert command.command(None, str(tmp_path), out=str(tmp_path / "out")) == 2
  error = capsys.readouterr().err
  assert error.startswith("error: no checkpoint of stage 'dit'") and error.count("\n") == 1


def test_the_main_entry_point_runs_export_without_a_traceback(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "videogen.main", "export", f"--workdir={tmp_path}",
       f"--out={tmp_path / 'out'}", "--formats=stablehlo,tflite"],
      capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 2
  assert "Traceback" not in result.stderr
  assert "error: unknown format 'tflite'" in result.stderr
