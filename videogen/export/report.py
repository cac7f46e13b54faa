"""OUT/export_report.json: what was exported, how to feed it, and the parity each format showed.

    {
      "workdir": "runs/tiny", "step": 3000, "shape": {"frames": 9, "height": 32, "width": 32},
      "batch": 1, "compression": "2x4x4",
      "tokenizer": {"file": "tokenizer.model", "vocab_size": 512, "max_length": 56, "pad_id": 0},
      "parity": "max_abs = max |format - JAX| ...",
      "components": {
        "dit": {
          "about": "...",
          "inputs": [{"name": "latents", "shape": ["batch", 5, 8, 8, 8], "axes": [...],
                      "dtype": "float32", "about": "..."}, ...],
          "outputs": [...],
          "formats": {"onnx": {"file": "onnx/dit.onnx", "bytes": 274359, "opset": 18,
                               "dynamic_axes": {"latents": ["batch"], ...},
                               "parity": {"max_abs": 1e-7, "max_rel": 2e-7, "batches": [1, 2]},
                               "seconds": 8.4}, "stablehlo": {...}}},
        ...},
      "formats": {"onnx": {"seconds": 45.7}, "stablehlo": {"seconds": 32.1}}
    }

Integer inputs give "range" [low, high) (token ids); float inputs with a meaningful range give
[low, high] (timesteps, pixels). A format's writer may add keys of its own to "formats"
(e.g. an end-to-end check).
"""

from __future__ import annotations

import json
import os
from typing import Any

from videogen.export import components as components_lib

FILE = "export_report.json"
PARITY = ("each format's outputs against the JAX function's on random inputs inside the inputs' "
          "ranges, at the batch sizes listed: max_abs = max |format - JAX| over every output "
          "element; max_rel = max_abs / max |JAX output| (relative to the output's scale)")


def build(job: components_lib.Job, *, step: int, shape: tuple[int, int, int], batch: int,
          tokenizer_file: str, results: dict[str, dict[str, Any]],
          seconds: dict[str, float]) -> dict[str, Any]:
  """The report (see the module docstring).

  Args:
    job: what was exported.
    step: the checkpoint's step.
    shape: (frames, height, width) of the example inputs.
    batch: the example batch size.
    tokenizer_file: the tokenizer's copy, relative to OUT.
    results: format -> its writer's result, {"components": {name: row}, **extras}.
    seconds: format -> its export time.
  """
  generator = job.generator
  tokenizer = generator.tokenizer
  report: dict[str, Any] = {
      "workdir": os.path.abspath(job.workdir), "step": step,
      "shape": dict(zip(("frames", "height", "width"), shape)), "batch": batch,
      "compression": generator.autoencoder.compression,
      "tokenizer": {"file": tokenizer_file, "max_length": tokenizer.max_length,
                    "vocab_size": getattr(tokenizer, "vocab_size", None),
                    "pad_id": getattr(tokenizer, "pad_id", None)},
      "parity": PARITY,
      "components": {component.name: {**component.describe(), "formats": {}}
                     for component in job.components},
      "formats": {},
  }
  for name, result in results.items():
    for component, row in result.get("components", {}).items():
      report["components"][component]["formats"][name] = row
    extras = {key: value for key, value in result.items() if key != "components"}
    report["formats"][name] = {"seconds": round(seconds[name], 2), **extras}
  return report


def write(report: dict[str, Any], out: str) -> str:
  """Writes OUT/export_report.json; returns its path."""
  path = os.path.join(out, FILE)
  with open(path, "w") as file:
    json.dump(report, file, indent=2)
    file.write("\n")
  return path
