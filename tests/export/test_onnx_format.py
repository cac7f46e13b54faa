"""videogen/export/onnx_format.py: ONNX models that onnxruntime runs with the JAX outputs."""

import os

import jax
import numpy as np
import pytest

from videogen.export import components as components_lib
from videogen.export import onnx_format

onnx = pytest.importorskip("onnx", reason="the export extra: pip install -e '.[export]'")
onnxruntime = pytest.importorskip("onnxruntime")
pytest.importorskip("jax2onnx")

TOLERANCE = 1e-4  # float32 parity with the JAX function, absolute


@pytest.fixture(scope="module")
def written(export_job):
  """onnx_format.write's rows for the perturbed tiny models, and the directory it wrote."""
  directory = os.path.join(export_job.out, "onnx")
  return onnx_format.write(export_job, directory)["components"], directory


def test_models_have_named_inputs_a_dynamic_batch_and_opset_17_or_later(export_job, written):
  rows, directory = written
  for component in export_job.components:
    model = onnx.load(os.path.join(directory, component.name + ".onnx"))
    onnx.checker.check_model(model)
    opset = max(entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx"))
    assert opset >= 17
    assert [i.name for i in model.graph.input] == [spec.name for spec in component.inputs]
    assert [o.name for o in model.graph.output] == [spec.name for spec in component.outputs]
    for value, spec in zip(model.graph.input, component.inputs):
      dims = value.type.tensor_type.shape.dim
      assert dims[0].dim_param == "batch", (component.name, spec.name)
      assert [d.dim_value for d in dims[1:]] == list(spec.shape()[1:])
    row = rows[component.name]
    assert row["file"] == f"onnx/{component.name}.onnx" and row["opset"] == opset
    assert row["parity"]["batches"] == [1, 3] and row["parity"]["max_abs"] <= TOLERANCE


def test_onnxruntime_reproduces_jax_at_two_batch_sizes(export_job, written):
  _, directory = written
  for component in export_job.components:
    session = onnx_format.session(os.path.join(directory, component.name + ".onnx"))
    for batch in (1, 3):
      inputs = component.example_inputs(batch, seed=5)
      reference = [np.asarray(x) for x in jax.jit(component.function)(*inputs)]
      got = session.run(None, {spec.name: x for spec, x in zip(component.inputs, inputs)})
      measured = components_lib.errors(reference, got)
      assert measured["max_abs"] <= TOLERANCE, (component.name, batch, measured)
      assert got[0].shape[0] == batch
