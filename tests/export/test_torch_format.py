"""videogen/export/torch_format.py: OUT/torch's files, and parity of the PyTorch modules with JAX.

Every parity check runs on the tiny workdir's weights perturbed to outputs of order one (the
`torch_export` fixture): barely trained, its transformer is nearly the identity with a velocity
near zero, which any export would match.
"""

import filecmp
import json
import os

import jax
import numpy as np
import pytest

from videogen.export import components as components_lib
from videogen.export import torch_format
from videogen.train import config_changes

torch = pytest.importorskip("torch")
videogen_torch = pytest.importorskip("videogen.export.videogen_torch")

TOLERANCE = 1e-4


def _by_name(job):
  return {component.name: component for component in job.components}


def test_writes_the_folder_and_the_report_rows(torch_export, tiny_workdir):
  job, result = torch_export
  folder = os.path.join(job.out, "torch")
  assert sorted(os.listdir(folder)) == sorted(
      [f"{name}.safetensors" for name in components_lib.NAMES]
      + ["tokenizer.model", "config.json", "videogen_torch.py"])
  assert list(result["components"]) == list(components_lib.NAMES)
  for name, row in result["components"].items():
    assert row["file"] == f"torch/{name}.safetensors"
    assert row["bytes"] == os.path.getsize(os.path.join(job.out, row["file"])) > 0
    assert row["tensors"] > 0 and row["seconds"] > 0
    assert row["parity"]["batches"] == [1, 2]
    first = _by_name(job)[name].inputs[0].name
    assert "batch" in row["dynamic_axes"][first]
  with open(os.path.join(folder, "config.json")) as file:
    assert json.load(file) == config_changes.experiment_json(job.experiment)
  assert filecmp.cmp(os.path.join(folder, "videogen_torch.py"), videogen_torch.__file__,
                     shallow=False)
  assert filecmp.cmp(os.path.join(folder, "tokenizer.model"),
                     os.path.join(tiny_workdir, "tokenizer.model"), shallow=False)


@pytest.mark.parametrize("name", components_lib.NAMES)
def test_every_component_matches_jax(torch_export, name):
  job, result = torch_export
  parity = result["components"][name]["parity"]
  assert parity["max_abs"] <= TOLERANCE, parity
  assert parity["max_rel"] < 1e-5, parity
  # The perturbed weights give outputs of order one: a tiny error is not a tiny output's.
  component = _by_name(job)[name]
  outputs = component.function(*component.example_inputs(1, seed=1))
  assert max(float(np.max(np.abs(x))) for x in outputs) > 0.5


def test_generate_reproduces_the_jax_video(torch_export):
  _, result = torch_export
  end_to_end = result["end_to_end"]
  assert end_to_end["shape"] == [17, 32, 32, 3] and end_to_end["steps"] == 4
  assert end_to_end["fraction_within_1"] >= 0.99, end_to_end


@pytest.fixture(scope="module")
def exported(torch_export):
  job, _ = torch_export
  folder = os.path.join(job.out, "torch")
  return torch_format.load_exported_module(folder).load(folder)


def test_a_caption_without_text_matches_jax(torch_export, exported):
  """Guidance's null caption (an all-False mask), which random inputs never draw."""
  job, _ = torch_export
  dit = _by_name(job)["dit"]
  inputs = dit.example_inputs(2, seed=3)
  names = [spec.name for spec in dit.inputs]
  inputs[names.index("context_mask")][-1] = False
  measured = components_lib.errors([np.asarray(x) for x in jax.jit(dit.function)(*inputs)],
                                    torch_format.run_module(exported.dit, dit, inputs))
  assert measured["max_abs"] <= TOLERANCE, measured


def test_parity_sees_a_wrong_weight(torch_export, exported):
  """The measurement can fail: one changed bias in the torch transformer shows."""
  job, _ = torch_export
  bias = exported.dit.blocks[0].mlp.up.bias
  original = bias.detach().clone()
  with torch.no_grad():
    bias[0] += 0.1
  try:
    assert torch_format.parity(exported.dit, _by_name(job)["dit"], [2])["max_abs"] > TOLERANCE
  finally:
    with torch.no_grad():
      bias.copy_(original)


def test_run_module_refuses_outputs_of_another_dtype(torch_export):
  job, _ = torch_export
  decoder = _by_name(job)["decoder"]
  wrong = lambda latents: torch.zeros(latents.shape, dtype=torch.float64)
  with pytest.raises(ValueError, match=r"returned dtypes \['float64'\].*\['video'\] are "
                                       r"\['float32'\]"):
    torch_format.run_module(wrong, decoder, decoder.example_inputs(1))


def test_jax_noise_is_what_the_pipeline_draws(torch_export):
  job, _ = torch_export
  noises, shape = torch_format.jax_initial_noise(job.generator, frames=16, height=30, width=33,
                                                 seed=3)
  assert shape == (17, 32, 32)  # rounded as the pipeline rounds
  # 9 latents in windows of 5: 5 new, then 2 given + 3 new, then 2 given + 1 new + 2 padding.
  assert [n.shape for n in noises] == [(1, 5, 8, 8, 8)] * 3
  assert not np.allclose(noises[0], noises[1])
