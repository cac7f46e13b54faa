"""videogen/export/stablehlo.py: artifacts that run with JAX alone, at any batch size."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from videogen.export import components as components_lib
from videogen.export import stablehlo

TOLERANCE = 1e-4  # float32 parity with the JAX function, absolute


@pytest.fixture(scope="module")
def written(export_job):
  """stablehlo.write's rows for the perturbed tiny models, and the directory it wrote."""
  directory = os.path.join(export_job.out, "stablehlo")
  return stablehlo.write(export_job, directory)["components"], directory


def _load(directory, name):
  with open(os.path.join(directory, name + stablehlo.SUFFIX), "rb") as file:
    return jax.export.deserialize(bytearray(file.read()))


def _max_error(component, exported, inputs):
  reference = [np.asarray(x) for x in jax.jit(component.function)(*inputs)]
  return components_lib.errors(reference, [np.asarray(x) for x in exported.call(*inputs)])


def test_each_artifact_matches_jax_at_two_batch_sizes(export_job, written):
  rows, directory = written
  assert sorted(os.listdir(directory)) == sorted(n + ".stablehlo" for n in components_lib.NAMES)
  for component in export_job.components:
    exported = _load(directory, component.name)
    assert jax.export.is_symbolic_dim(exported.in_avals[0].shape[0]), component.name
    assert "cpu" in exported.platforms
    for batch in (1, 3):
      measured = _max_error(component, exported, component.example_inputs(batch, seed=7))
      assert measured["max_abs"] <= TOLERANCE, (component.name, batch, measured)
    row = rows[component.name]
    assert row["file"] == f"stablehlo/{component.name}.stablehlo"
    assert row["bytes"] == os.path.getsize(os.path.join(directory, component.name + ".stablehlo"))
    assert row["parity"]["batches"] == [1, 3] and row["parity"]["max_abs"] <= TOLERANCE
    assert "batch" in row["dynamic_axes"][component.inputs[0].name]


def test_frames_and_sizes_stay_symbolic_where_the_models_allow(export_job, written):
  rows, directory = written
  found = {component.name: component for component in export_job.components}
  assert rows["encoder"]["dynamic_axes"] == {"video": ["batch", "frames", "height", "width"]}
  assert rows["dit"]["dynamic_axes"]["latents"] == [
      "batch", "latent_frames", "latent_height", "latent_width"]
  # The decoder's frame count is fixed (jax.export cannot decide its upsampling's shapes); the
  # report says why.
  assert rows["decoder"]["dynamic_axes"] == {"latents": ["batch", "latent_height",
                                                          "latent_width"]}
  assert "inconclusive" in rows["decoder"]["fixed_because"]
  rng = np.random.default_rng(3)
  other_shapes = {  # 5 frames of 16 x 24 pixels = 3 latent frames of 4 x 6 latents
      "encoder": [(2, 5, 16, 24, 3)],
      "dit": [(2, 3, 4, 6, 8), (2, 3), (2, 56, 32), (2, 56), (2, 32)],
      "decoder": [(2, 5, 4, 6, 8)],
  }
  for name, shapes in other_shapes.items():
    component = found[name]
    inputs = [components_lib.random_input(spec, shape, rng)
              for spec, shape in zip(component.inputs, shapes)]
    measured = _max_error(component, _load(directory, name), inputs)
    assert measured["max_abs"] <= TOLERANCE, (name, measured)


def test_artifacts_run_in_a_process_without_videogen(export_job, written, tmp_path):
  _, directory = written
  inputs = {component.name: component.example_inputs(2, seed=11)
            for component in export_job.components}
  np.savez(tmp_path / "inputs.npz", **{f"{name}/{i}": x for name, xs in inputs.items()
                                       for i, x in enumerate(xs)})
  script = f"""
import sys, jax, numpy as np
inputs = np.load({str(tmp_path / "inputs.npz")!r})
outputs = {{}}
for name in {list(components_lib.NAMES)!r}:
  with open({directory!r} + "/" + name + ".stablehlo", "rb") as file:
    exported = jax.export.deserialize(bytearray(file.read()))
  args = [inputs[key] for key in sorted(k for k in inputs.files if k.startswith(name + "/"))]
  for i, out in enumerate(exported.call(*args)):
    outputs[f"{{name}}/{{i}}"] = np.asarray(out)
assert not any(m.startswith("videogen") for m in sys.modules), "videogen was imported"
np.savez({str(tmp_path / "outputs.npz")!r}, **outputs)
"""
  environment = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ""}
  subprocess.run([sys.executable, "-c", script], check=True, env=environment, cwd=tmp_path,
                 timeout=600)
  outputs = np.load(tmp_path / "outputs.npz")
  for component in export_job.components:
    reference = [np.asarray(x) for x in jax.jit(component.function)(*inputs[component.name])]
    got = [outputs[f"{component.name}/{i}"] for i in range(len(reference))]
    assert components_lib.errors(reference, got)["max_abs"] <= TOLERANCE, component.name
