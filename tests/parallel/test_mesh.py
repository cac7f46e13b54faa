"""videogen/parallel/mesh.py: mesh sizes from the config, -1 filling, ICI/DCN split, axis types."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from videogen import config as config_lib
from videogen.models import autoencoder
from videogen.models import discriminator
from videogen.models import dit
from videogen.models import text_encoder
from videogen.parallel import mesh as mesh_lib
from videogen.parallel import sharding as sharding_lib


@pytest.mark.parametrize("sizes, expected", [
    ({}, {"data": 8, "fsdp": 1, "sequence": 1, "tensor": 1}),
    ({"data": 2, "fsdp": 4}, {"data": 2, "fsdp": 4, "sequence": 1, "tensor": 1}),
    ({"data": 2, "fsdp": 2, "tensor": 2}, {"data": 2, "fsdp": 2, "sequence": 1, "tensor": 2}),
    ({"data": 1, "fsdp": -1}, {"data": 1, "fsdp": 8, "sequence": 1, "tensor": 1}),
    ({"data": 2, "tensor": -1}, {"data": 2, "fsdp": 1, "sequence": 1, "tensor": 4}),
])
def test_axis_sizes_fill_the_devices(devices, sizes, expected):
  mesh = mesh_lib.create_mesh(mesh_lib.MeshConfig(**sizes), devices)
  assert dict(mesh.shape) == expected
  assert mesh.axis_names == mesh_lib.AXES
  assert sorted(d.id for d in mesh.devices.flat) == sorted(d.id for d in devices)


def test_axes_are_auto_so_classic_jit_shardings_work(devices):
  mesh = mesh_lib.create_mesh(mesh_lib.MeshConfig(data=2, fsdp=4), devices)
  assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


def test_mesh_over_a_subset_of_devices(devices):
  mesh = mesh_lib.create_mesh(mesh_lib.MeshConfig(), devices[:1])
  assert mesh.devices.size == 1 and mesh.shape["data"] == 1


@pytest.mark.parametrize("sizes, message", [
    ({"data": 3}, r"multiply to 3 but there are 8"),
    ({"data": -1, "fsdp": 3}, r"8 is not divisible by 3"),
])
def test_sizes_that_do_not_fit_say_what_to_change(devices, sizes, message):
  with pytest.raises(mesh_lib.MeshShapeError, match=message):
    mesh_lib.create_mesh(mesh_lib.MeshConfig(**sizes), devices)


def test_config_errors_are_caught_at_parse_time():
  section = config_lib.to_config_dict(mesh_lib.MeshConfig())
  section.fsdp = -1  # data is -1 too
  with pytest.raises(config_lib.ConfigError, match="at most one of"):
    config_lib.parse(mesh_lib.MeshConfig, section, "config.mesh")
  section = config_lib.to_config_dict(mesh_lib.MeshConfig())
  section.rules.embed = ("fdsp",)
  with pytest.raises(config_lib.ConfigError, match=r"unknown mesh axes \['fdsp'\]"):
    config_lib.parse(mesh_lib.MeshConfig, section, "config.mesh")


def test_rules_round_trip_through_the_config():
  section = config_lib.to_config_dict(mesh_lib.MeshConfig())
  section.rules.mlp = ("fsdp", "tensor")
  parsed = config_lib.parse(mesh_lib.MeshConfig, section, "config.mesh")
  assert parsed.rules["mlp"] == ("fsdp", "tensor")
  assert parsed.rules["embed"] == mesh_lib.DEFAULT_RULES["embed"]


def test_dcn_sizes_split_devices_into_slices():
  config = mesh_lib.MeshConfig(data=-1, fsdp=2, dcn_data=2)
  ici, dcn = mesh_lib.mesh_shape(config, num_devices=16, num_slices=2)
  assert ici == (4, 2, 1, 1) and dcn == (2, 1, 1, 1)
  with pytest.raises(mesh_lib.MeshShapeError, match="slice"):
    mesh_lib.mesh_shape(config, num_devices=16, num_slices=4)


def test_dcn_on_one_process_is_a_clear_error(devices):
  with pytest.raises(mesh_lib.MeshShapeError, match=r"slice \(DCN\)"):
    mesh_lib.create_mesh(mesh_lib.MeshConfig(dcn_data=2), devices)


def test_describe_names_every_axis(devices):
  mesh = mesh_lib.create_mesh(mesh_lib.MeshConfig(data=2, fsdp=4), devices)
  assert mesh_lib.describe(mesh) == "data=2 fsdp=4 sequence=1 tensor=1 (8 devices, 1 process)"


# -- the rules table holds exactly the names the models use ---------------------------------------

_S = jax.ShapeDtypeStruct
_TEXT = text_encoder.TextEncoderConfig.tiny(width=16, depth=1, num_heads=2, max_length=8)
# Every model kind with each of its optional parts switched on (middle attention, cross-attention,
# the pooled projection, the scanned blocks), with the inputs of one forward pass.
_MODELS: dict[str, tuple[Callable[[], nnx.Module], Callable[[nnx.Module], Any], tuple]] = {
    "dit": (lambda: dit.DiT(dit.DiTConfig.tiny(width=32, num_heads=2, context_dim=16,
                                               pooled_dim=16), rngs=nnx.Rngs(0)),
            lambda model, *inputs: model(*inputs),
            (_S((2, 5, 8, 8, 8), jnp.float32), _S((2,), jnp.float32),
             _S((2, 8, 16), jnp.float32), _S((2, 8), jnp.bool_), _S((2, 16), jnp.float32))),
    "dit_unscanned": (lambda: dit.DiT(dit.DiTConfig.tiny(scan_layers=False), rngs=nnx.Rngs(0)),
                      None, ()),
    "text_encoder": (lambda: text_encoder.TextEncoder(_TEXT, rngs=nnx.Rngs(0)),
                     lambda model, *inputs: model(*inputs),
                     (_S((2, 8), jnp.int32), _S((2, 8), jnp.bool_))),
    "label_encoder": (lambda: text_encoder.TextEncoder(
        text_encoder.TextEncoderConfig.classes(10, 16), rngs=nnx.Rngs(0)), None, ()),
    "autoencoder": (
        lambda: autoencoder.VideoAutoencoder(autoencoder.AutoencoderConfig(
            base_channels=8, channel_multipliers=(1, 2), spatial_downsample=(True,),
            temporal_downsample=(True,), latent_channels=4, attention_heads=2),
            rngs=nnx.Rngs(0)),
        lambda model, video: model(video, sample_posterior=False),
        (_S((2, 5, 8, 8, 3), jnp.float32),)),
    "discriminator": (lambda: discriminator.PatchDiscriminator3D(channels=8, num_layers=2,
                                                                rngs=nnx.Rngs(0)),
                      lambda model, video: model(video), (_S((2, 5, 8, 8, 3), jnp.float32),)),
}


def _parameter_names(model: nnx.Module) -> set[str]:
  names = set()
  for variable in jax.tree.leaves(nnx.state(model),
                                  is_leaf=lambda x: isinstance(x, nnx.Variable)):
    names.update(n for n in variable.get_metadata("out_sharding", None) or () if n is not None)
  return names


class _RecordingRules(dict):
  """Rules that replicate every name and remember which names were asked for."""

  def __init__(self):
    super().__init__()
    self.asked: set[str] = set()

  def __contains__(self, name):
    self.asked.add(name)
    return True

  def __getitem__(self, name):
    self.asked.add(name)
    return ()


def _activation_names(model: nnx.Module, forward, inputs, mesh) -> set[str]:
  rules = _RecordingRules()
  graphdef, state = nnx.split(model)
  with sharding_lib.activation_sharding(mesh, rules):
    # Traced only (abstract inputs); a fresh lambda, so no cached trace skips the constraints.
    jax.eval_shape(lambda state, *args: forward(nnx.merge(graphdef, state), *args), state,
                   *inputs)
  return rules.asked


def test_the_default_rules_name_exactly_the_axes_the_models_use(devices):
  mesh = mesh_lib.create_mesh(mesh_lib.MeshConfig(), devices[:1])
  parameters, activations = set(), set()
  for build, forward, inputs in _MODELS.values():
    with nnx.use_eager_sharding(False):
      model = nnx.eval_shape(build)
    parameters |= _parameter_names(model)
    if forward is not None:
      activations |= _activation_names(model, forward, inputs, mesh)
  assert {"embed", "mlp", "heads", "layers", "conv_out"} <= parameters  # the walk found them
  assert {"batch", "activation_length", "activation_channels"} <= activations
  used = parameters | activations
  rules = set(mesh_lib.DEFAULT_RULES)
  assert not rules - used, f"rules for names no model uses: {sorted(rules - used)}"
  assert not used - rules, f"names without a rule: {sorted(used - rules)}"
