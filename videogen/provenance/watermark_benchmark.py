"""Measures the watermark: invisibility, false positives, and survival of what videos go through.

    videos = {"64x64": [world.generate(i, seed=0, frames=9, height=64, width=64)["video"]
                        for i in range(200)]}
    results = watermark_benchmark.run(videos, key=os.urandom(32))
    print(watermark_benchmark.format_table(results))

For every video of a set: embed a payload of its own (`PAYLOAD_BYTES` bytes from its index),
measure the PSNR against the original frames, save it as an mp4 (`video_io.write_video`, the
writers' path) and apply each condition of `CONDITIONS` to the saved file, then `detect`. The
originals, saved as mp4 the same way (and any `null_videos` given), give the false positive rate
at the detector's threshold and the fraction of p-values below 0.05 (0.05 when calibrated).
A set given a `Scorer` (the analyzer's accuracies of generated videos against their prompts) is
scored twice, its unmarked and its watermarked mp4s read back, to show the watermark changes no
accuracy.
"""

from __future__ import annotations

import hashlib
import pathlib
import tempfile
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np
from PIL import Image

from data_pipelines import video_io
from videogen.provenance import watermark

# A condition turns the saved mp4 into the frames the detector sees.
Condition = Callable[[pathlib.Path, pathlib.Path], np.ndarray]
# A scorer maps a set's videos (in the set's order) to named accuracies in [0, 1] (None: unscored).
Scorer = Callable[[Sequence[np.ndarray]], Mapping[str, float | None]]


def _read(path: pathlib.Path) -> np.ndarray:
  return video_io.read_video(path)[0]


def _reencode(crf: int) -> Condition:
  def condition(saved: pathlib.Path, scratch: pathlib.Path) -> np.ndarray:
    output = scratch / f"crf{crf}.mp4"
    video_io.reencode_mp4(saved, output, crf=crf)
    return _read(output)
  return condition


def _rescale(frames: np.ndarray, factor: float) -> np.ndarray:
  """Each frame resized by `factor` and back to its size (bicubic both ways)."""
  height, width = frames.shape[1:3]
  small = (max(1, round(width * factor)), max(1, round(height * factor)))
  return np.stack([np.asarray(Image.fromarray(f).resize(small, Image.Resampling.BICUBIC)
                              .resize((width, height), Image.Resampling.BICUBIC))
                   for f in frames])


def _crop(frames: np.ndarray, fraction: float) -> np.ndarray:
  """`fraction` of the height and width cut from each side (at least one pixel)."""
  height, width = frames.shape[1:3]
  top, left = max(1, round(height * fraction)), max(1, round(width * fraction))
  return frames[:, top:height - top, left:width - left]


def _brightness(frames: np.ndarray, gain: float) -> np.ndarray:
  return np.clip(np.rint(frames.astype(np.float32) * gain), 0, 255).astype(np.uint8)


def _gif(saved: pathlib.Path, scratch: pathlib.Path) -> np.ndarray:
  output = scratch / "converted.gif"
  video_io.write_video(output, _read(saved), fps=8)
  return _read(output)


CONDITIONS: dict[str, Condition] = {
    "mp4": lambda saved, scratch: _read(saved),
    "h264_crf23": _reencode(23),
    "h264_crf28": _reencode(28),
    "rescale_0.5x": lambda saved, scratch: _rescale(_read(saved), 0.5),
    "crop_10%": lambda saved, scratch: _crop(_read(saved), 0.1),
    "brightness+20%": lambda saved, scratch: _brightness(_read(saved), 1.2),
    "brightness-20%": lambda saved, scratch: _brightness(_read(saved), 0.8),
    "first_half": lambda saved, scratch: (lambda f: f[:max(1, len(f) // 2)])(_read(saved)),
    "gif": _gif,
}


def payload_for(index: int) -> bytes:
  """The benchmark's payload of video `index`: PAYLOAD_BYTES pseudo-random bytes."""
  return hashlib.sha256(f"payload {index}".encode()).digest()[:watermark.PAYLOAD_BYTES]


def _bits(payload: bytes) -> np.ndarray:
  return np.unpackbits(np.frombuffer(payload, np.uint8))


def _measure_set(videos: Sequence[np.ndarray], null_videos: Sequence[np.ndarray], key: bytes,
                 conditions: Mapping[str, Condition], fps: float, scratch: pathlib.Path,
                 target_psnr: float, scorer: Scorer | None,
                 embed_options: Mapping[str, Any]) -> dict[str, Any]:
  started = time.perf_counter()
  psnrs = []
  saved_marked, saved_unmarked = [], []  # the mp4s read back, for the scorer
  found = {name: {"detected": 0, "bits": 0.0, "payloads": 0} for name in conditions}
  wrong_payloads = 0  # payloads reported (CRC held) that are not the embedded one
  for index, video in enumerate(videos):
    payload = payload_for(index)
    marked = watermark.embed(video, key, payload, target_psnr=target_psnr, **embed_options)
    psnrs.append(watermark.psnr(video, marked))
    saved = scratch / "saved.mp4"
    video_io.write_video(saved, marked, fps=fps)
    if scorer is not None:
      saved_marked.append(_read(saved))
    for name, condition in conditions.items():
      detection = watermark.detect(condition(saved, scratch), key)
      found[name]["detected"] += detection.watermarked
      found[name]["bits"] += float(np.mean(np.asarray(detection.bits) == _bits(payload)))
      found[name]["payloads"] += detection.payload == payload
      wrong_payloads += detection.payload not in (None, payload)
  p_values = []
  for index, video in enumerate([*videos, *null_videos]):
    saved = scratch / "unmarked.mp4"
    video_io.write_video(saved, video, fps=fps)
    frames = _read(saved)
    if scorer is not None and index < len(videos):
      saved_unmarked.append(frames)
    p_values.append(watermark.detect(frames, key).p_value)
  p_values = np.asarray(p_values)
  count = max(len(videos), 1)
  accuracies = None
  if scorer is not None:
    unmarked, marked = scorer(saved_unmarked), scorer(saved_marked)
    accuracies = {name: {"unmarked": unmarked[name], "marked": marked.get(name)}
                  for name in unmarked if unmarked[name] is not None}
  return {
      "videos": len(videos),
      "psnr_min": float(np.min(psnrs)) if psnrs else float("nan"),
      "psnr_mean": float(np.mean(psnrs)) if psnrs else float("nan"),
      "null_videos": len(p_values),
      "false_positive_rate": float(np.mean(p_values < watermark.P_THRESHOLD)),
      "null_below_0.05": float(np.mean(p_values < 0.05)),
      "conditions": {name: {"detection_rate": value["detected"] / count,
                            "bit_accuracy": value["bits"] / count,
                            "payload_rate": value["payloads"] / count}
                     for name, value in found.items()},
      "wrong_payloads": wrong_payloads,
      "accuracies": accuracies,
      "seconds": time.perf_counter() - started,
  }


def run(videos_by_size: Mapping[str, Sequence[np.ndarray]], key: bytes, *,
        null_videos_by_size: Mapping[str, Sequence[np.ndarray]] | None = None,
        conditions: Mapping[str, Condition] | None = None, fps: float = 8.0,
        target_psnr: float = watermark.DEFAULT_PSNR,
        scorers_by_size: Mapping[str, Scorer] | None = None,
        embed_options: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
  """Measures the watermark on sets of videos.

  Args:
    videos_by_size: set name (e.g. "64x64") -> unwatermarked videos, each uint8 [T, H, W, 3].
      Each is watermarked, saved and distorted; its original is also a null video.
    key: the watermark key (e.g. os.urandom(32)).
    null_videos_by_size: set name -> more unwatermarked videos for the false positive rate.
    conditions: name -> condition; `CONDITIONS` when None.
    fps: frame rate of the saved files.
    target_psnr: passed to `watermark.embed`.
    scorers_by_size: set name -> its `Scorer` (e.g. the analyzer's accuracies against the
      videos' prompts); sets without one get "accuracies": None.
    embed_options: more keyword arguments of `watermark.embed` (e.g. {"informed_steps": 0}
      measures the plain pattern), for comparing embedders.

  Returns:
    set name -> {"videos", "psnr_min", "psnr_mean", "null_videos", "false_positive_rate",
    "null_below_0.05", "conditions": {name: {"detection_rate", "bit_accuracy",
    "payload_rate"}}, "wrong_payloads" (reported payloads, CRC held, that are not the embedded
    one, over all conditions), "accuracies": {name: {"unmarked", "marked"}} or None, "seconds"}.
  """
  conditions = CONDITIONS if conditions is None else conditions
  null_videos_by_size = null_videos_by_size or {}
  scorers_by_size = scorers_by_size or {}
  results = {}
  with tempfile.TemporaryDirectory(prefix="watermark-benchmark-") as scratch:
    for name, videos in videos_by_size.items():
      results[name] = _measure_set(videos, null_videos_by_size.get(name, ()), key, conditions,
                                   fps, pathlib.Path(scratch), target_psnr,
                                   scorers_by_size.get(name), embed_options or {})
  return results


def largest_accuracy_change(result: Mapping[str, Any]) -> float:
  """The largest |watermarked - unmarked| accuracy of a set's results, in points (0-100)."""
  changes = [abs(v["marked"] - v["unmarked"]) for v in (result.get("accuracies") or {}).values()
             if v["marked"] is not None]
  return 100.0 * max(changes, default=0.0)


def format_table(results: Mapping[str, Mapping[str, Any]]) -> str:
  """The results of `run` as a text table: one column per set, one row per measurement.

  Condition rows read "detection rate / bit accuracy / payload rate"; accuracy rows (sets with
  a scorer) read "unmarked / watermarked" accuracy, and a last row the largest change in points.
  """
  names = list(results)
  rows = [("videos (watermarked / null)",
           [f"{r['videos']} / {r['null_videos']}" for r in results.values()]),
          ("PSNR dB (min / mean)",
           [f"{r['psnr_min']:.1f} / {r['psnr_mean']:.1f}" for r in results.values()]),
          (f"false positives (p < {watermark.P_THRESHOLD:g})",
           [f"{r['false_positive_rate']:.4f}" for r in results.values()]),
          ("null p < 0.05 (0.05 if calibrated)",
           [f"{r['null_below_0.05']:.3f}" for r in results.values()])]
  conditions = list(next(iter(results.values()))["conditions"]) if results else []
  for condition in conditions:
    rows.append((f"{condition}: detect / bits / payload", [
        "{detection_rate:.3f} / {bit_accuracy:.3f} / {payload_rate:.3f}".format(
            **r["conditions"][condition]) for r in results.values()]))
  if conditions:
    rows.append(("wrong payloads (all conditions)",
                 [f"{r['wrong_payloads']} of {r['videos'] * len(conditions)}"
                  for r in results.values()]))
  accuracy_names = list(dict.fromkeys(
      name for r in results.values() for name in (r.get("accuracies") or {})))

  def accuracy_cell(result: Mapping[str, Any], name: str) -> str:
    value = (result.get("accuracies") or {}).get(name)
    if value is None or value["marked"] is None:
      return "-"
    return f"{value['unmarked']:.3f} / {value['marked']:.3f}"

  for name in accuracy_names:
    rows.append((f"analyzer {name} (unmarked / marked)",
                 [accuracy_cell(r, name) for r in results.values()]))
  if accuracy_names:
    rows.append(("analyzer: largest change (points)",
                 [f"{largest_accuracy_change(r):.1f}" if r.get("accuracies") else "-"
                  for r in results.values()]))
  rows.append(("seconds", [f"{r['seconds']:.0f}" for r in results.values()]))
  label_width = max(len(label) for label, _ in rows)
  widths = [max(len(name), *(len(cells[i]) for _, cells in rows)) for i, name in enumerate(names)]
  lines = [" | ".join([" " * label_width] + [n.rjust(w) for n, w in zip(names, widths)])]
  lines.append("-+-".join(["-" * label_width] + ["-" * w for w in widths]))
  for label, cells in rows:
    lines.append(" | ".join([label.ljust(label_width)]
                            + [c.rjust(w) for c, w in zip(cells, widths)]))
  return "\n".join(lines)
