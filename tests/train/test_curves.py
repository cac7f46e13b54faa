"""videogen/train/curves.py: one SVG loss chart per stage, drawn from metrics.jsonl."""

import math
import os
import xml.etree.ElementTree as ElementTree

import numpy as np
import pytest

from videogen.train import curves
from videogen.train import metrics as metrics_lib

_SVG = "{http://www.w3.org/2000/svg}"


def _points(root, css_class):
  (line,) = [e for e in root.iter(_SVG + "polyline") if e.get("class") == css_class]
  return np.array([[float(v) for v in pair.split(",")] for pair in line.get("points").split()])


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
  raw = _points(root, "raw")
  assert len(raw) == len(losses)
  assert np.all(np.diff(raw[:, 0]) > 0)  # steps left to right
  assert np.all(np.diff(raw[:, 1]) > 0)  # a falling loss goes down the page (y grows)
  smoothed = _points(root, "smoothed")
  np.testing.assert_allclose(smoothed[:, 0], raw[:, 0])
  # 4 -> 0.2 spans more than 10x: log axis, equal ratios are equal distances.
  assert any("log scale" in (text or "") for text in _texts(root))
  y = dict(zip(losses, raw[:, 1]))
  halving = y[2.0] - y[4.0]
  assert halving > 10
  assert y[1.0] - y[2.0] == pytest.approx(halving, abs=0.2)
  assert y[0.5] - y[1.0] == pytest.approx(halving, abs=0.2)
  assert "dit: loss" in _texts(root)


def test_linear_axis_and_ticks_cover_the_values(tmp_path):
  _write(tmp_path, "dit", [1.0, 0.8, 0.7, 0.75, 0.6])
  (path,) = curves.write_curves(str(tmp_path), out_dir=str(tmp_path / "gallery"))
  assert path == str(tmp_path / "gallery" / "dit.svg")
  root = ElementTree.parse(path).getroot()
  assert not any("log scale" in (text or "") for text in _texts(root))
  y_labels = [float(e.text) for e in root.iter(_SVG + "text")
              if e.get("text-anchor") == "end" and e.text.replace(".", "", 1).isdigit()]
  assert y_labels == pytest.approx([0.6, 0.7, 0.8, 0.9, 1.0])
  raw = _points(root, "raw")
  # Linear: the drop 1.0 -> 0.8 is twice the drop 0.8 -> 0.7 on the page.
  assert (raw[1, 1] - raw[0, 1]) == pytest.approx(2 * (raw[2, 1] - raw[1, 1]), rel=1e-2)


def test_ticks_are_round_numbers_inside_the_range():
  assert curves._linear_ticks(0.0, 1.0) == pytest.approx([0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
  assert curves._linear_ticks(13.0, 970.0) == pytest.approx([200.0, 400.0, 600.0, 800.0])
  assert curves._log_ticks(0.01, 100.0) == pytest.approx([0.01, 0.1, 1.0, 10.0, 100.0])
  assert curves._log_ticks(0.3, 4.0) == pytest.approx([0.5, 1.0, 2.0])
  for low, high in ((0.37, 5.2), (1e-4, 3e-2), (150.0, 151.0)):
    ticks = curves._log_ticks(low, high) if high / low > 10 else curves._linear_ticks(low, high)
    assert ticks and all(low <= t <= high for t in ticks)


def test_non_numbers_are_skipped_and_a_stage_without_the_metric_gets_no_chart(tmp_path):
  _write(tmp_path, "dit", [1.0, math.nan, 0.5])  # written as the string "nan"
  writer = metrics_lib.MetricWriter(str(tmp_path), enabled=True)
  writer.write("autoencoder", 5, {"eval/psnr": 30.0})
  writer.close()
  paths = curves.write_curves(str(tmp_path))
  assert [os.path.basename(p) for p in paths] == ["dit.svg"]
  assert len(_points(ElementTree.parse(paths[0]).getroot(), "raw")) == 2
  assert curves.write_curves(str(tmp_path), stages=["autoencoder"]) == []
  assert curves.write_curves(str(tmp_path / "empty")) == []
  assert not os.path.exists(tmp_path / "empty" / "curves")


def test_a_single_row_and_odd_stage_names_still_draw(tmp_path):
  _write(tmp_path, "my stage/<1>", [0.5])
  (path,) = curves.write_curves(str(tmp_path))
  assert os.path.basename(path) == "my_stage_1_.svg"
  root = ElementTree.parse(path).getroot()
  assert "my stage/<1>: loss" in _texts(root)
  assert len(_points(root, "raw")) == 1
  with pytest.raises(ValueError, match="no loss values"):
    curves.render_svg([], title="x")
