"""videogen/train/curves.py: one SVG loss chart per stage, drawn from metrics.jsonl."""

import math
import os
import re
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

from videogen.train import curves
from videogen.train import metrics as metrics_lib

_SVG = "{http://www.w3.org/2000/svg}"


def _line(root, gid):
  """[N, 2] page coordinates (x right, y down) of the line drawn in the group with id `gid`."""
  (group,) = [e for e in root.iter(_SVG + "g") if e.get("id") == gid]
  (path,) = group.findall(_SVG + "path")  # the line; a marker lives in <defs> below it
  numbers = [float(v) for v in re.findall(r"-?\d+(?:\.\d+)?", path.get("d"))]
  return np.array(numbers).reshape(-1, 2)


def _texts(root):
  return [e.text for e in root.iter(_SVG + "text")]


def _write(workdir, stage, losses, start=1, **extra):
  writer = metrics_lib.MetricWriter(str(workdir), enabled=True)
  for step, loss in enumerate(losses, start):
    writer.write(stage, step * 10, {"loss": loss, **extra})
  writer.close()


def test_smooth_is_a_debiased_moving_average():
  assert curves.smooth([3.0]) == pytest.approx([3.0])
  np.testing.assert_allclose(curves.smooth([2.0] * 50, 0.9), 2.0)  # no start-up bias
  out = curves.smooth([0.0, 10.0], 0.5)
  assert out[1] == pytest.approx((0.5 * 0.5 * 0.0 + 0.5 * 10.0) / (1 - 0.25))
  assert curves.smooth([1.0, 5.0], 0.0) == [1.0, 5.0]
  with pytest.raises(ValueError, match="smoothing weight"):
    curves.smooth([1.0], 1.0)


def test_one_chart_per_stage_with_every_logged_row(tmp_path):
  losses = [4.0, 2.0, 1.0, 0.5, 0.3, 0.2]
  _write(tmp_path, "autoencoder", [0.1, 0.05, 0.04])
  _write(tmp_path, "dit", losses)
  paths = curves.write_curves(str(tmp_path))
  assert paths == [os.path.join(str(tmp_path), "curves", name)
                   for name in ("autoencoder.svg", "dit.svg")]
  root = ElementTree.parse(paths[1]).getroot()  # well-formed XML
  assert root.tag == _SVG + "svg"
  raw = _line(root, "raw")
  assert len(raw) == len(losses)
  assert np.all(np.diff(raw[:, 0]) > 0)  # steps left to right
  assert np.all(np.diff(raw[:, 1]) > 0)  # a falling loss goes down the page (y grows)
  smoothed = _line(root, "smoothed")
  np.testing.assert_allclose(smoothed[:, 0], raw[:, 0])
  assert np.all(smoothed[1:, 1] < raw[1:, 1])  # the average lags above a falling loss
  # 4 -> 0.2 spans more than 10x: log axis, equal ratios are equal distances.
  assert "loss (log scale)" in _texts(root)
  y = dict(zip(losses, raw[:, 1]))
  halving = y[2.0] - y[4.0]
  assert halving > 10
  assert y[1.0] - y[2.0] == pytest.approx(halving, rel=1e-3)
  assert y[0.5] - y[1.0] == pytest.approx(halving, rel=1e-3)
  assert "dit: loss" in _texts(root)
  assert "autoencoder: loss" in _texts(ElementTree.parse(paths[0]).getroot())


def test_linear_axis_for_a_narrow_range(tmp_path):
  _write(tmp_path, "dit", [1.0, 0.8, 0.7, 0.75, 0.6])
  (path,) = curves.write_curves(str(tmp_path), out_dir=str(tmp_path / "gallery"))
  assert path == str(tmp_path / "gallery" / "dit.svg")
  root = ElementTree.parse(path).getroot()
  assert "loss" in _texts(root) and "loss (log scale)" not in _texts(root)
  raw = _line(root, "raw")
  # Linear: the drop 1.0 -> 0.8 is twice the drop 0.8 -> 0.7 on the page.
  assert (raw[1, 1] - raw[0, 1]) == pytest.approx(2 * (raw[2, 1] - raw[1, 1]), rel=1e-3)
  # The same rows draw the same bytes (no date, fixed ids): charts diff cleanly between runs.
  with open(path, encoding="utf-8") as f:
    first = f.read()
  curves.write_curves(str(tmp_path), out_dir=str(tmp_path / "gallery"))
  with open(path, encoding="utf-8") as f:
    assert f.read() == first


def test_non_numbers_are_skipped_and_a_stage_without_the_metric_gets_no_chart(tmp_path):
  _write(tmp_path, "dit", [1.0, math.nan, 0.5])  # written as the string "nan"
  writer = metrics_lib.MetricWriter(str(tmp_path), enabled=True)
  writer.write("autoencoder", 5, {"eval/psnr": 30.0})
  writer.close()
  paths = curves.write_curves(str(tmp_path))
  assert [os.path.basename(p) for p in paths] == ["dit.svg"]
  assert len(_line(ElementTree.parse(paths[0]).getroot(), "raw")) == 2
  assert curves.write_curves(str(tmp_path), stages=["autoencoder"]) == []
  # Another metric of the same rows draws its own chart.
  (psnr,) = curves.write_curves(str(tmp_path), out_dir=str(tmp_path / "psnr"),
                                metric="eval/psnr")
  assert "autoencoder: eval/psnr" in _texts(ElementTree.parse(psnr).getroot())


def test_a_missing_or_empty_metrics_file_writes_nothing(tmp_path):
  assert curves.write_curves(str(tmp_path / "missing")) == []
  assert not os.path.exists(tmp_path / "missing" / "curves")
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "metrics.jsonl").write_text("")
  assert curves.write_curves(str(tmp_path / "empty")) == []
  assert not os.path.exists(tmp_path / "empty" / "curves")


def test_a_single_row_and_odd_stage_names_still_draw(tmp_path):
  _write(tmp_path, "my stage/<1>", [0.5])
  (path,) = curves.write_curves(str(tmp_path))
  assert os.path.basename(path) == "my_stage_1_.svg"
  root = ElementTree.parse(path).getroot()
  assert "my stage/<1>: loss" in _texts(root)
  assert len(_line(root, "raw")) == 1
  with pytest.raises(ValueError, match="no loss values"):
    curves.render_svg([], title="x")
