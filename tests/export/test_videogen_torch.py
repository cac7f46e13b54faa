"""videogen/export/videogen_torch.py: the standalone PyTorch modules, loading and generate.

The exported folder is the `torch_export` fixture's (the tiny workdir's weights perturbed to
outputs of order one); the configurations the tiny workdir does not use are built here. Parity
of the exported modules and of `generate` with JAX: tests/export/test_torch_format.py.
"""

import inspect
import json
import os
import shutil
import subprocess
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from videogen import config as config_lib
from videogen.export import components as components_lib
from videogen.export import weights
from videogen.models import autoencoder as autoencoder_lib
from videogen.models import dit as dit_lib

torch = pytest.importorskip("torch")
videogen_torch = pytest.importorskip("videogen.export.videogen_torch")

TOLERANCE = 1e-4
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _folder(torch_export) -> str:
  job, _ = torch_export
  return os.path.join(job.out, "torch")


def test_forward_takes_the_components_inputs_in_order(torch_export):
  """The modules' positional inputs are the ONNX and StableHLO exports' (components.py), in the
  same order; an input a model may lack (the DiT's pooled) comes last, with a default."""
  job, _ = torch_export
  exported = videogen_torch.load(_folder(torch_export))
  for component in job.components:
    module = getattr(exported, component.name)
    parameters = list(inspect.signature(module.forward).parameters.values())
    names = [spec.name for spec in component.inputs]
    assert [p.name for p in parameters[:len(names)]] == names, component.name
    assert all(p.kind == p.POSITIONAL_OR_KEYWORD for p in parameters[:len(names)])
    assert all(p.default is not p.empty for p in parameters[len(names):]), component.name


def test_decoder_returns_the_unclipped_float32_video(torch_export):
  job, _ = torch_export
  decoder = next(c for c in job.components if c.name == "decoder")
  latents = 3 * decoder.example_inputs(2, seed=4)[0]  # far from the data: pixels out of range
  expected, = decoder.function(latents)
  with torch.no_grad():
    video = videogen_torch.load(_folder(torch_export)).decoder(torch.from_numpy(latents))
  assert video.dtype == torch.float32
  assert tuple(video.shape) == decoder.outputs[0].shape(2) == expected.shape
  assert float(np.max(np.abs(np.asarray(expected)))) > 1  # the JAX output is unclipped ...
  assert components_lib.errors([np.asarray(expected)], [video.numpy()])["max_abs"] <= TOLERANCE


def test_standalone_load_without_jax_or_videogen(torch_export, tmp_path):
  """The folder works on its own: copied elsewhere, loaded by a Python that cannot import jax,
  flax or videogen (the repository is not on its path; the editable install is blocked)."""
  folder = tmp_path / "elsewhere"
  shutil.copytree(_folder(torch_export), folder)
  script = f"REPOSITORY = {REPOSITORY!r}" + """
import json, os, sys
sys.path.insert(0, ".")
for blocked in ("jax", "flax", "videogen"):
  sys.modules[blocked] = None  # any import of them raises
import numpy as np
import videogen_torch
videogen = videogen_torch.load(".")
first = videogen.generate("a red circle", seed=5, steps=2, frames=5, height=16, width=16)
again = videogen.generate("a red circle", seed=5, steps=2, frames=5, height=16, width=16)
other = videogen.generate("a red circle", seed=6, steps=2, frames=5, height=16, width=16)
print(json.dumps({
    "shape": list(first.shape), "dtype": str(first.dtype),
    "same_seed_same_video": bool(np.array_equal(first, again)),
    "other_seed_other_video": not np.array_equal(first, other),
    "loaded": sorted(m for m in sys.modules if m.split(".")[0] in ("jax", "flax", "videogen")
                     and sys.modules[m] is not None),
    "repository_on_path": any(os.path.abspath(p) == REPOSITORY for p in sys.path),
}))
"""
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  result = subprocess.run([sys.executable, "-I", "-c", script], cwd=folder, env=env,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["shape"] == [5, 16, 16, 3] and report["dtype"] == "uint8"
  assert report["same_seed_same_video"] and report["other_seed_other_video"]
  assert report["loaded"] == [] and not report["repository_on_path"]


def test_load_and_generate_errors(torch_export, tmp_path):
  folder = tmp_path / "partial"
  shutil.copytree(_folder(torch_export), folder)
  exported = videogen_torch.load(str(folder))
  with pytest.raises(ValueError, match="prompt is empty"):
    exported.generate("  ")
  with pytest.raises(ValueError, match="does not fit the window"):
    exported.generate("a red circle", noise=np.zeros((1, 3, 8, 8, 8), np.float32), frames=9)
  with pytest.raises(ValueError, match="one per window"):
    exported.generate("a red circle", noise=[np.zeros((1, 5, 8, 8, 8), np.float32)], frames=17)
  os.remove(folder / "dit.safetensors")
  with pytest.raises(FileNotFoundError, match="dit.safetensors is missing"):
    videogen_torch.load(str(folder))


# ------------------------------------------------------------------------------------------------
# Configurations the tiny workdir does not use: temporal patches, sin-cos positions, no text,
# learned sigma; middle attention, two temporal levels, no shortcuts, latent scaling.
# ------------------------------------------------------------------------------------------------

DIT_VARIANTS = {
    "temporal_patch_sincos_unscanned": dit_lib.DiTConfig(
        width=48, depth=2, num_heads=2, frequency_dim=33, patch_size=(2, 2, 2), in_channels=4,
        context_dim=24, pooled_dim=48, pooled_projection=False, position_embedding="rope+sincos",
        learn_sigma=True, qk_norm=False, scan_layers=False, attention_backend="xla"),
    "no_text": dit_lib.DiTConfig(
        width=32, depth=2, num_heads=2, frequency_dim=32, patch_size=(1, 1, 1), in_channels=4,
        context_dim=None, pooled_dim=None, position_embedding="sincos", attention_backend="xla"),
}


@pytest.mark.parametrize("name", sorted(DIT_VARIANTS))
def test_dit_variants(name, perturb):
  config = DIT_VARIANTS[name]
  with nnx.use_eager_sharding(False):
    model = dit_lib.DiT(config, rngs=nnx.Rngs(0))
  perturb(model, 1)
  module = videogen_torch.DiT(config_lib.jsonable(config))
  module.load_state_dict({k: torch.from_numpy(v) for k, v in weights.component_tensors(
      types.SimpleNamespace(dit=model), "dit").items()}, strict=True)
  rng = np.random.default_rng(0)
  latents = rng.standard_normal((2, 4, 4, 6, 4), np.float32)
  timesteps = rng.uniform(size=(2, 4)).astype(np.float32)
  text = None if config.context_dim is None else (
      rng.standard_normal((2, 5, config.context_dim), np.float32),
      np.array([[True] * 3 + [False] * 2, [False] * 5]))
  pooled = None if config.pooled_dim is None else rng.standard_normal(
      (2, config.pooled_dim), np.float32)
  expected = model(jnp.asarray(latents), jnp.asarray(timesteps),
                   *(None, None) if text is None else map(jnp.asarray, text),
                   None if pooled is None else jnp.asarray(pooled))
  as_torch = lambda x: None if x is None else torch.from_numpy(x)
  with torch.no_grad():
    output = module(as_torch(latents), as_torch(timesteps),
                    *(None, None) if text is None else map(as_torch, text), as_torch(pooled))
  measured = components_lib.errors([np.asarray(expected)], [output.numpy()])
  assert output.shape == (2, 4, 4, 6, config.out_channels)
  assert measured["max_abs"] <= TOLERANCE and float(np.max(np.abs(expected))) > 0.5, measured


AUTOENCODER_VARIANTS = {
    "attention_two_temporal_levels": autoencoder_lib.AutoencoderConfig(
        base_channels=8, channel_multipliers=(1, 2, 2), num_res_blocks=1,
        spatial_downsample=(True, True), temporal_downsample=(True, True), latent_channels=4,
        middle_attention=True, attention_heads=2, attention_backend="xla", scale_factor=0.5,
        shift_factor=0.1),
    "no_shortcuts_space_only": autoencoder_lib.AutoencoderConfig(
        base_channels=8, patch_size=2, channel_multipliers=(1, 2), num_res_blocks=2,
        spatial_downsample=(True,), temporal_downsample=(False,), latent_channels=4,
        shortcuts=False, middle_attention=False, scale_factor=2.0),
}


@pytest.mark.parametrize("name", sorted(AUTOENCODER_VARIANTS))
def test_autoencoder_variants(name, perturb):
  config = AUTOENCODER_VARIANTS[name]
  with nnx.use_eager_sharding(False):
    model = autoencoder_lib.VideoAutoencoder(config, rngs=nnx.Rngs(0))
  perturb(model, 2, scale=0.5)
  holder = types.SimpleNamespace(autoencoder=model)
  encoder = videogen_torch.Encoder(config_lib.jsonable(config))
  decoder = videogen_torch.Decoder(config_lib.jsonable(config))
  for module, component in ((encoder, "encoder"), (decoder, "decoder")):
    module.load_state_dict({k: torch.from_numpy(v) for k, v in weights.component_tensors(
        holder, component).items()}, strict=True)
  rng = np.random.default_rng(0)
  video = rng.uniform(-1, 1, size=(2, 9, 16, 16, 3)).astype(np.float32)
  latents = model.normalize_latents(model.encode(jnp.asarray(video))[0])
  decoded = model.decode(model.denormalize_latents(latents))
  with torch.no_grad():
    torch_latents = encoder(torch.from_numpy(video))
    torch_decoded = decoder(torch.from_numpy(np.array(latents)))
  for output, expected in ((torch_latents, latents), (torch_decoded, decoded)):
    measured = components_lib.errors([np.asarray(expected)], [output.numpy()])
    assert measured["max_abs"] <= TOLERANCE and float(np.max(np.abs(expected))) > 0.5, measured
