"""videogen/export/videogen_torch.py and torch_format.py: the PyTorch export and its parity.

The tiny workdir's weights are barely trained (zero-initialised gates and output layers are still
near zero, so its transformer is nearly the identity and its velocity nearly zero); every parity
check here runs on those weights perturbed by random noise of each layer's scale, so that a wrong
layer shows.
"""

import dataclasses
import filecmp
import json
import os
import shutil
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from videogen import config as config_lib
from videogen import workdir as workdir_lib
from videogen.export import torch_format
from videogen.export import weights
from videogen.generate import pipeline
from videogen.models import autoencoder as autoencoder_lib
from videogen.models import dit as dit_lib
from videogen.train import config_changes

torch = pytest.importorskip("torch")
videogen_torch = pytest.importorskip("videogen.export.videogen_torch")

TOLERANCE = 1e-4
REPOSITORY = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _perturb(module: nnx.Module, seed: int, scale: float = 1.0) -> None:
  """Adds noise of std scale / sqrt(fan-in) to every kernel and scale * 0.1 to vectors."""
  state = nnx.state(module, nnx.Param)
  leaves, tree = jax.tree.flatten(state)
  key = jax.random.key(seed)
  noisy = []
  for index, leaf in enumerate(leaves):
    fan_in = int(np.prod(leaf.shape[:-1])) if leaf.ndim >= 2 else 0
    std = scale / np.sqrt(fan_in) if fan_in else 0.1 * scale
    noise = jax.random.normal(jax.random.fold_in(key, index), leaf.shape, jnp.float32)
    noisy.append((leaf.astype(jnp.float32) + std * noise).astype(leaf.dtype))
  nnx.update(module, jax.tree.unflatten(tree, noisy))


@pytest.fixture(scope="module")
def export(tiny_workdir, tmp_path_factory):
  """(generator, out_dir, entries, experiment): the tiny workdir's perturbed weights exported."""
  experiment = workdir_lib.saved_experiment(tiny_workdir, workdir_lib.DIT_STAGE)
  loaded = pipeline.load(tiny_workdir, experiment, progress=False)
  for seed, module in enumerate((loaded.text_encoder, loaded.dit, loaded.autoencoder)):
    _perturb(module, seed)
  # Fewer steps than the config's (passed on to the torch generate by torch_parity).
  generator = pipeline.Generator(
      autoencoder=loaded.autoencoder, text_encoder=loaded.text_encoder, dit=loaded.dit,
      tokenizer=loaded.tokenizer, flow_config=loaded.flow_config,
      sample_config=dataclasses.replace(loaded.sample_config, num_steps=4), progress=False,
      **pipeline.experiment_defaults(experiment))
  out_dir = str(tmp_path_factory.mktemp("export"))
  entries = torch_format.write_torch(out_dir, generator, experiment, tiny_workdir)
  return generator, out_dir, entries, experiment


@pytest.fixture(scope="module")
def parity(export):
  generator, out_dir, _, _ = export
  # 17 frames take three sampling windows of the 9-frame training clip: the later ones are given
  # the last latents made so far, re-encoded from their pixels, and the last is padded.
  return torch_format.torch_parity(out_dir, generator, batch=2, frames=17, height=32, width=32,
                                   seed=0)


def test_write_torch_layout(export, tiny_workdir):
  _, out_dir, entries, experiment = export
  folder = os.path.join(out_dir, "torch")
  assert sorted(os.listdir(folder)) == sorted(
      [f"{c}.safetensors" for c in weights.COMPONENTS]
      + ["tokenizer.model", "config.json", "videogen_torch.py"])
  for component, entry in entries.items():
    assert entry["file"] == f"torch/{component}.safetensors"
    assert entry["size_bytes"] == os.path.getsize(os.path.join(out_dir, entry["file"])) > 0
  with open(os.path.join(folder, "config.json")) as f:
    assert json.load(f) == config_changes.experiment_json(experiment)
  assert filecmp.cmp(os.path.join(folder, "videogen_torch.py"), videogen_torch.__file__,
                     shallow=False)
  assert filecmp.cmp(os.path.join(folder, "tokenizer.model"),
                     os.path.join(tiny_workdir, "tokenizer.model"), shallow=False)


@pytest.mark.parametrize("component", weights.COMPONENTS)
def test_component_parity(parity, component):
  measured = parity[component]
  assert measured["max_abs_error"] <= TOLERANCE, measured
  assert measured["within_tolerance"]
  # The perturbed weights give outputs of order one: a tiny error is not a tiny output's.
  assert measured["max_abs_reference"] > 0.5, measured
  assert measured["max_rel_error"] < 1e-5, measured


def test_generate_reproduces_the_jax_video(parity):
  end_to_end = parity["end_to_end"]
  assert end_to_end["shape"] == [17, 32, 32, 3]
  assert end_to_end["fraction_within_1"] >= 0.99, end_to_end


def test_parity_sees_a_wrong_weight(export):
  """The measurement can fail: one changed bias in the torch transformer shows."""
  generator, out_dir, _, _ = export
  exported = torch_format.load_exported_module(out_dir).load(os.path.join(out_dir, "torch"))
  inputs = torch_format.random_inputs(generator, "dit", batch=2, frames=9, height=32, width=32,
                                      seed=1)
  reference = torch_format.jax_functions(generator)["dit"](*map(jnp.asarray, inputs.values()))
  with torch.no_grad():
    exported.dit.blocks[0].mlp.up.bias[0] += 0.1
    output = exported.dit(*map(torch.from_numpy, inputs.values()))
  assert torch_format.errors((output.numpy(),), tuple(map(np.asarray, reference)))[
      "max_abs_error"] > TOLERANCE


def test_jax_noise_is_what_the_pipeline_draws(export):
  generator, _, _, _ = export
  noises, shape = torch_format.jax_initial_noise(generator, frames=16, height=30, width=33,
                                                 seed=3)
  assert shape == (17, 32, 32)  # rounded as the pipeline rounds
  # 9 latents in windows of 5: 5 new, then 2 given + 3 new, then 2 given + 1 new + 2 padding.
  assert [n.shape for n in noises] == [(1, 5, 8, 8, 8)] * 3
  assert not np.allclose(noises[0], noises[1])


def test_standalone_load_without_jax_or_videogen(export, tmp_path):
  """The folder works on its own: copied elsewhere, loaded by a Python that cannot import jax,
  flax or videogen (the repository is not on its path; the editable install is blocked)."""
  _, out_dir, _, _ = export
  folder = tmp_path / "elsewhere"
  shutil.copytree(os.path.join(out_dir, "torch"), folder)
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


def test_load_and_generate_errors(export, tmp_path):
  _, out_dir, _, _ = export
  folder = tmp_path / "partial"
  shutil.copytree(os.path.join(out_dir, "torch"), folder)
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
def test_dit_variants(name):
  config = DIT_VARIANTS[name]
  with nnx.use_eager_sharding(False):
    model = dit_lib.DiT(config, rngs=nnx.Rngs(0))
  _perturb(model, 1)
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
  measured = torch_format.errors((output.numpy(),), (np.asarray(expected),))
  assert output.shape == (2, 4, 4, 6, config.out_channels)
  assert measured["max_abs_error"] <= TOLERANCE and measured["max_abs_reference"] > 0.5, measured


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
def test_autoencoder_variants(name):
  config = AUTOENCODER_VARIANTS[name]
  with nnx.use_eager_sharding(False):
    model = autoencoder_lib.VideoAutoencoder(config, rngs=nnx.Rngs(0))
  _perturb(model, 2, scale=0.5)
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
    measured = torch_format.errors((output.numpy(),), (np.asarray(expected),))
    assert measured["max_abs_error"] <= TOLERANCE and measured["max_abs_reference"] > 0.5, measured
