"""ONNX: OUT/onnx/<component>.onnx, converted from the JAX functions by jax2onnx, checked in
onnxruntime.

    import onnxruntime
    session = onnxruntime.InferenceSession("OUT/onnx/dit.onnx")
    velocity, = session.run(None, {"latents": x, "timesteps": t, "context": context,
                                   "context_mask": mask, "pooled": pooled})

Inputs and outputs carry the names of `videogen.export.components` (the same positional order as
the StableHLO and PyTorch exports); the weights are initializers inside the file (a model past
ONNX's 2 GB protobuf limit has them in a `<component>.onnx.data` file beside it, which the report
lists).

Shapes. The batch axis is dynamic ("batch"). Frames, height and width are fixed at the command
line's sizes: jax2onnx 0.17.1 converts a symbolic axis only when it is a plain symbol, and these
models need sizes that are multiples (a frame count 1 + F k, a height S h), which it rejects
(the transformer: `unsupported operand type(s) for *: '_DynamicDimSentinel'`; the encoder: `No
symbolic dim origin registered`; the decoder with a plain symbolic frame count: a broadcast of
(b, 0, h, w, C) against (b, t, h, w, C)). Export again with --frames/--height/--width for
another size.

Opset 18: jax2onnx 0.17.1 writes ReduceMean with its axes as an input (opset 18's form) even when
asked for opset 17, which onnxruntime then rejects as an invalid model.
"""

from __future__ import annotations

import glob
import os
import time
from typing import Any, Sequence

import jax

from videogen.export import components as components_lib

OPSET = 18
SUFFIX = ".onnx"
PACKAGES: tuple[str, ...] = ("onnx", "onnxruntime", "jax2onnx")
FIXED_BECAUSE = ("jax2onnx 0.17.1 converts only plain symbolic axes, and frames, height and width "
                 "must be multiples (1 + F k, S h): exported at the command line's sizes")


def _specs(component: components_lib.Component) -> list[jax.ShapeDtypeStruct]:
  """Input specs with the batch axis named "batch" (jax2onnx makes it a dynamic ONNX axis)."""
  return [jax.ShapeDtypeStruct(
      tuple(components_lib.BATCH if axis.name == components_lib.BATCH else axis.size
            for axis in spec.axes), spec.dtype) for spec in component.inputs]


def convert(component: components_lib.Component, path: str) -> None:
  """Writes the component as an ONNX model at `path`."""
  import jax2onnx  # optional dependency (the export extra)
  jax2onnx.to_onnx(component.function, _specs(component), model_name=component.name,
                   opset=OPSET, return_mode="file", output_path=path,
                   input_names=[spec.name for spec in component.inputs],
                   output_names=[spec.name for spec in component.outputs])


def session(path: str) -> Any:
  """An onnxruntime CPU session of the model at `path`."""
  import onnxruntime  # optional dependency (the export extra)
  options = onnxruntime.SessionOptions()
  options.log_severity_level = 3  # not the warnings about initializers jax2onnx left unused
  return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def parity(model: Any, component: components_lib.Component,
           batches: Sequence[int]) -> dict[str, Any]:
  """Worst errors of an onnxruntime session against the JAX function (`components.parity`)."""
  return components_lib.parity(
      component, lambda inputs: model.run(
          [spec.name for spec in component.outputs],
          {spec.name: value for spec, value in zip(component.inputs, inputs)}), batches)


def write(job: components_lib.Job, directory: str) -> dict[str, Any]:
  """Writes DIRECTORY/<component>.onnx for each component; returns the report's rows."""
  os.makedirs(directory, exist_ok=True)
  rows = {}
  for component in job.components:
    start = time.perf_counter()
    path = os.path.join(directory, component.name + SUFFIX)
    convert(component, path)
    checked = parity(session(path), component, job.batches)
    files = [path, *sorted(glob.glob(path + ".data*"))]
    rows[component.name] = {
        "file": os.path.relpath(path, job.out),
        "bytes": sum(os.path.getsize(file) for file in files),
        "opset": OPSET,
        "dynamic_axes": {spec.name: [components_lib.BATCH] for spec in component.inputs},
        "fixed_because": FIXED_BECAUSE,
        "parity": checked,
        "seconds": round(time.perf_counter() - start, 2)}
    if len(files) > 1:
      rows[component.name]["data_files"] = [os.path.relpath(file, job.out) for file in files[1:]]
  return {"components": rows}
