"""Loss curves as SVG files that any browser opens: one chart per stage, from metrics.jsonl.

    paths = curves.write_curves(workdir)            # WORKDIR/curves/<stage>.svg
    curves.write_curves(workdir, out_dir=gallery)   # the same charts beside a gallery

Each chart shows a metric (default "loss") against the step: every logged row (the trainer's rows
are means over `log_every` steps) as a thin line, and an exponential moving average over the rows
(TensorBoard's smoothing, with its start-up bias removed) as a thick one. The y axis is
logarithmic when every value is positive and they span more than a factor of 10 (a loss that falls
from 4 to 0.05 keeps its late part readable). Drawn by matplotlib's object API (a `Figure` and
its SVG canvas, never pyplot), so no display, GUI backend or global state is involved.
"""

from __future__ import annotations

import io
import math
import os
import re
from typing import Any, Sequence

import matplotlib
from matplotlib import figure

from videogen.train import metrics as metrics_lib

CURVES_DIR = "curves"
_SIZE_INCHES = (6.4, 3.2)
# Text as <text> elements (searchable, small), fixed ids and no date: the same rows give the same
# bytes.
_SVG_STYLE = {"svg.fonttype": "none", "svg.hashsalt": "videogen", "font.size": 9}


def smooth(values: Sequence[float], weight: float = 0.6) -> list[float]:
  """Debiased exponential moving average: out[i] = EMA of values[:i + 1], weight per row.

  Debiased as in Adam: the EMA started at 0 is divided by 1 - weight^(i + 1), so the first point
  is the first value itself rather than a fraction of it.
  """
  if not 0.0 <= weight < 1.0:
    raise ValueError(f"smoothing weight must be in [0, 1), got {weight}")
  average, out = 0.0, []
  for i, value in enumerate(values):
    average = weight * average + (1.0 - weight) * value
    out.append(average / (1.0 - weight ** (i + 1)))
  return out


def _numeric_points(rows: Sequence[dict[str, Any]], key: str) -> list[tuple[int, float]]:
  """(step, value) of the rows whose `key` is a finite number, sorted by step."""
  points = []
  for row in rows:
    value = row.get(key)
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
      points.append((int(row["step"]), float(value)))
  return sorted(points)


def render_svg(points: Sequence[tuple[int, float]], *, title: str, metric: str = "loss",
               smoothing: float = 0.6) -> str:
  """An SVG chart of (step, value) points: the raw line (SVG group id "raw"), its moving average
  (id "smoothed") and both axes.

  Raises:
    ValueError: no points.
  """
  if not points:
    raise ValueError(f"no {metric} values to plot for {title!r}")
  steps = [step for step, _ in points]
  values = [value for _, value in points]
  smoothed = smooth(values, smoothing)
  log_scale = min(values) > 0 and max(values) / min(values) > 10.0
  with matplotlib.rc_context(_SVG_STYLE):
    fig = figure.Figure(figsize=_SIZE_INCHES, layout="constrained")
    axes = fig.add_subplot()
    axes.plot(steps, values, color="#9ecae1", linewidth=1, marker="." if len(points) == 1 else "",
              gid="raw", label="logged")
    axes.plot(steps, smoothed, color="#08519c", linewidth=2, gid="smoothed",
              label=f"smoothed (last {values[-1]:.4g}, smoothed {smoothed[-1]:.4g})")
    if log_scale:
      axes.set_yscale("log")
    axes.set_title(title, loc="left")
    axes.set_xlabel("step")
    axes.set_ylabel(f"{metric} (log scale)" if log_scale else metric)
    axes.grid(True, which="major", color="#eee")
    axes.legend(loc="upper right", frameon=False)
    out = io.StringIO()
    fig.savefig(out, format="svg", metadata={"Date": None})
  return out.getvalue()


def _file_name(stage: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", stage) + ".svg"


def write_curves(workdir: str, *, out_dir: str | None = None, stages: Sequence[str] | None = None,
                 metric: str = "loss", smoothing: float = 0.6) -> list[str]:
  """Writes one `<stage>.svg` per stage of WORKDIR/metrics.jsonl that logged `metric`.

  Args:
    workdir: the run's directory.
    out_dir: where the charts go (default WORKDIR/curves).
    stages: only these stages (default: every stage in metrics.jsonl).
    metric: the metrics.jsonl key to plot.
    smoothing: the moving average's weight per row, in [0, 1).

  Returns:
    The paths written, in the order the stages first appear in metrics.jsonl (empty when no row
    has `metric`).
  """
  rows = metrics_lib.read_metrics(workdir)
  logged = list(dict.fromkeys(row["stage"] for row in rows if "stage" in row))
  stages = logged if stages is None else [stage for stage in logged if stage in stages]
  out_dir = os.path.join(workdir, CURVES_DIR) if out_dir is None else out_dir
  paths = []
  for stage in stages:
    points = _numeric_points([row for row in rows if row.get("stage") == stage], metric)
    if not points:
      continue
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, _file_name(stage))
    with open(path, "w", encoding="utf-8") as f:
      f.write(render_svg(points, title=f"{stage}: {metric}", metric=metric, smoothing=smoothing))
    paths.append(path)
  return paths
