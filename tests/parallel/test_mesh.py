"""videogen/parallel/mesh.py: mesh sizes from the config, -1 filling, ICI/DCN split, axis types."""

from __future__ import annotations

import jax
import pytest

from videogen import config as config_lib
from videogen.parallel import mesh as mesh_lib


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
  with pytest.raises(ValueError, match=message):
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
  with pytest.raises(ValueError, match="slice"):
    mesh_lib.mesh_shape(config, num_devices=16, num_slices=4)


def test_dcn_on_one_process_is_a_clear_error(devices):
  with pytest.raises(ValueError, match=r"slice \(DCN\)"):
    mesh_lib.create_mesh(mesh_lib.MeshConfig(dcn_data=2), devices)


def test_describe_names_every_axis(devices):
  mesh = mesh_lib.create_mesh(mesh_lib.MeshConfig(data=2, fsdp=4), devices)
  assert mesh_lib.describe(mesh) == "data=2 fsdp=4 sequence=1 tensor=1 (8 devices, 1 process)"
