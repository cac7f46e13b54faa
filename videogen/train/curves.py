"""Loss curves as SVG files that any browser opens: one chart per stage, from metrics.jsonl.

    paths = curves.write_curves(workdir)            # WORKDIR/curves/<stage>.svg
    curves.write_curves(workdir, out_dir=gallery)   # the same charts beside a gallery

Each chart shows a metric (default "loss") against the step: every logged row (the trainer's rows
are means over `log_every` steps) as a thin line, and an exponential moving average over the rows
(TensorBoard's smoothing, with its start-up bias removed) as a thick one. The y axis is
logarithmic when every value is positive and they span more than a factor of 10 (a loss that falls
from 4 to 0.05 keeps its late part readable). Plain SVG, written by hand: no plotting library to
install.
"""

from __future__ import annotations

import html
import math
import os
import re
from typing import Any, Sequence

from videogen.train import metrics as metrics_lib

CURVES_DIR = "curves"
_WIDTH, _HEIGHT = 640, 320
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 16, 36, 40  # margins around the plot area, in pixels


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


def _nice_step(span: float, target_ticks: int = 5) -> float:
  """1, 2 or 5 times a power of ten, so that `span` holds about `target_ticks` steps."""
  raw = span / max(target_ticks, 1)
  power = 10.0 ** math.floor(math.log10(raw))
  for multiple in (1.0, 2.0, 5.0, 10.0):
    if multiple * power >= raw:
      return multiple * power
  return 10.0 * power


def _linear_ticks(low: float, high: float) -> list[float]:
  step = _nice_step(high - low)
  first = math.ceil(low / step - 1e-9) * step
  count = int(math.floor((high - first) / step + 1e-9)) + 1
  return [first + i * step for i in range(count)]


def _log_ticks(low: float, high: float) -> list[float]:
  """Decades inside [low, high]; with 2x and 5x added when fewer than three decades fit."""
  ticks = []
  for exponent in range(math.floor(math.log10(low)), math.ceil(math.log10(high)) + 1):
    for multiple in (1.0, 2.0, 5.0):
      ticks.append((multiple * 10.0 ** exponent, multiple == 1.0))
  inside = [(t, decade) for t, decade in ticks if low * (1 - 1e-9) <= t <= high * (1 + 1e-9)]
  if sum(decade for _, decade in inside) >= 3:
    return [t for t, decade in inside if decade]
  return [t for t, _ in inside]


def _label(value: float) -> str:
  return f"{value:.4g}" if value != 0 else "0"


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
  """An SVG chart of (step, value) points: the raw line, its moving average and both axes.

  Raises:
    ValueError: no points.
  """
  if not points:
    raise ValueError(f"no {metric} values to plot for {title!r}")
  steps = [float(step) for step, _ in points]
  values = [value for _, value in points]
  smoothed = smooth(values, smoothing)
  log_scale = min(values) > 0 and max(values) / min(values) > 10.0
  x_low, x_high = min(steps), max(steps)
  if x_high == x_low:
    x_low, x_high = x_low - 1.0, x_high + 1.0
  y_low, y_high = min(values), max(values)
  if log_scale:
    transform = math.log10
  else:
    transform = lambda v: v
    if y_high == y_low:
      pad = abs(y_high) * 0.1 or 1.0
      y_low, y_high = y_low - pad, y_high + pad
  t_low, t_high = transform(y_low), transform(y_high)
  plot_w = _WIDTH - _LEFT - _RIGHT
  plot_h = _HEIGHT - _TOP - _BOTTOM
  to_x = lambda s: _LEFT + (s - x_low) / (x_high - x_low) * plot_w
  to_y = lambda v: _TOP + (t_high - transform(v)) / (t_high - t_low) * plot_h

  def polyline(ys: Sequence[float], style: str) -> str:
    coordinates = " ".join(f"{to_x(s):.1f},{to_y(v):.1f}" for s, v in zip(steps, ys))
    return f'<polyline fill="none" {style} points="{coordinates}"/>'

  parts = [
      f'<svg xmlns="http://www.w3.org/2000/svg" width="{_WIDTH}" height="{_HEIGHT}" '
      f'viewBox="0 0 {_WIDTH} {_HEIGHT}" font-family="sans-serif" font-size="11">',
      f'<rect width="{_WIDTH}" height="{_HEIGHT}" fill="white"/>',
      f'<text x="{_LEFT}" y="20" font-size="14">{html.escape(title)}</text>',
  ]
  for tick in _linear_ticks(x_low, x_high):
    x = to_x(tick)
    parts.append(f'<line x1="{x:.1f}" y1="{_TOP}" x2="{x:.1f}" y2="{_TOP + plot_h}" '
                 f'stroke="#eee"/>')
    parts.append(f'<text x="{x:.1f}" y="{_TOP + plot_h + 16}" text-anchor="middle">'
                 f'{_label(tick)}</text>')
  y_ticks = _log_ticks(y_low, y_high) if log_scale else _linear_ticks(y_low, y_high)
  for tick in y_ticks:
    y = to_y(tick)
    parts.append(f'<line x1="{_LEFT}" y1="{y:.1f}" x2="{_LEFT + plot_w}" y2="{y:.1f}" '
                 f'stroke="#eee"/>')
    parts.append(f'<text x="{_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{_label(tick)}</text>')
  parts += [
      f'<rect x="{_LEFT}" y="{_TOP}" width="{plot_w}" height="{plot_h}" fill="none" '
      f'stroke="#888"/>',
      f'<text x="{_LEFT + plot_w / 2:.1f}" y="{_HEIGHT - 6}" text-anchor="middle">step</text>',
      f'<text x="14" y="{_TOP + plot_h / 2:.1f}" text-anchor="middle" '
      f'transform="rotate(-90 14 {_TOP + plot_h / 2:.1f})">'
      f'{html.escape(metric)}{" (log scale)" if log_scale else ""}</text>',
      polyline(values, 'class="raw" stroke="#9ecae1" stroke-width="1"'),
      polyline(smoothed, 'class="smoothed" stroke="#08519c" stroke-width="2"'),
      f'<text x="{_LEFT + plot_w}" y="20" text-anchor="end" fill="#08519c">'
      f'last {_label(values[-1])}, smoothed {_label(smoothed[-1])}</text>',
      "</svg>",
  ]
  return "\n".join(parts) + "\n"


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
