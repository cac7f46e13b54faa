"""videogen/export/weights.py: tensor names, layouts and dtypes of the exported components."""

import dataclasses
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from videogen.export import weights
from videogen.models import autoencoder as autoencoder_lib
from videogen.models import dit as dit_lib
from videogen.models import text_encoder as text_encoder_lib

DIT = dit_lib.DiTConfig(width=32, depth=3, num_heads=2, frequency_dim=32, context_dim=16,
                        pooled_dim=16, attention_backend="xla")
TEXT = text_encoder_lib.TextEncoderConfig(width=16, depth=2, num_heads=2, vocab_size=300,
                                          max_length=8, attention_backend="xla")
AUTOENCODER = dataclasses.replace(autoencoder_lib.AutoencoderConfig.tiny(), base_channels=8)


def _model(dit_config=DIT, text_config=TEXT, autoencoder_config=AUTOENCODER):
  rngs = nnx.Rngs(0)
  with nnx.use_eager_sharding(False):
    return types.SimpleNamespace(
        dit=dit_lib.DiT(dit_config, rngs=rngs),
        text_encoder=text_encoder_lib.TextEncoder(text_config, rngs=rngs),
        autoencoder=autoencoder_lib.VideoAutoencoder(autoencoder_config, rngs=rngs))


def _parameters(module: nnx.Module) -> dict[str, np.ndarray]:
  return {".".join(map(str, path)): np.asarray(variable[...])
          for path, variable in nnx.to_flat_state(nnx.state(module, nnx.Param))}


@pytest.fixture(scope="module")
def model():
  return _model()


def test_names_are_the_same_with_and_without_scanned_layers(model):
  listed = weights.component_tensors(_model(dataclasses.replace(DIT, scan_layers=False)), "dit")
  scanned = weights.component_tensors(model, "dit")
  assert {k: v.shape for k, v in scanned.items()} == {k: v.shape for k, v in listed.items()}
  assert "blocks.2.self_attention.query.kernel" in scanned
  assert scanned["blocks.2.self_attention.query.kernel"].shape == (32, 2, 16)


def test_stacked_layers_are_split_in_order(model):
  tensors = weights.component_tensors(model, "dit")
  stacked = _parameters(model.dit)["blocks.mlp.up.kernel"]  # [depth, width, hidden]
  for layer in range(DIT.depth):
    np.testing.assert_array_equal(tensors[f"blocks.{layer}.mlp.up.kernel"], stacked[layer])


@pytest.mark.parametrize("component", weights.COMPONENTS)
def test_every_parameter_is_exported_once_under_its_path(model, component):
  module = weights.component_module(model, component)
  parameters = _parameters(module)
  tensors = weights.component_tensors(model, component)
  assert sum(t.size for t in tensors.values()) == sum(p.size for p in parameters.values())
  for name, value in parameters.items():
    if component == "dit" and name.startswith("blocks."):
      continue  # split per layer; checked above
    np.testing.assert_array_equal(tensors[name], value)
  assert all(t.dtype == np.float32 and t.flags.c_contiguous for t in tensors.values())


def test_autoencoder_components_hold_their_own_halves(model):
  encoder = weights.component_tensors(model, "encoder")
  decoder = weights.component_tensors(model, "decoder")
  assert "downsamples.0.conv.kernel" in encoder and "upsamples.0.conv.kernel" in decoder
  # Convolution kernels keep the JAX layout [kt, kh, kw, in, out].
  assert encoder["conv_in.kernel"].shape[3] == 3 * AUTOENCODER.patch_size ** 2
  assert decoder["conv_out.kernel"].shape[4] == 3 * AUTOENCODER.patch_size ** 2


def test_bfloat16_parameters_are_widened_to_float32():
  model = _model(dit_config=dataclasses.replace(DIT, param_dtype="bfloat16"))
  tensors = weights.component_tensors(model, "dit")
  stored = _parameters(model.dit)["patch_embed.kernel"]
  assert stored.dtype == jnp.bfloat16
  assert tensors["patch_embed.kernel"].dtype == np.float32
  np.testing.assert_array_equal(tensors["patch_embed.kernel"], stored.astype(np.float32))


def test_unknown_component_and_class_mode_are_refused(model):
  with pytest.raises(ValueError, match="unknown component 'vae'"):
    weights.component_tensors(model, "vae")
  classes = text_encoder_lib.TextEncoderConfig.classes(10, 32)
  with pytest.raises(ValueError, match="only 'text' mode"):
    weights.component_tensors(_model(text_config=classes), "text_encoder")


def test_tensors_are_host_copies(model):
  tensors = weights.component_tensors(model, "text_encoder")
  assert all(isinstance(t, np.ndarray) and not isinstance(t, jax.Array) for t in tensors.values())
