"""videogen/parallel/sharding.py: logical axis names -> shardings, from the config's rules table."""

from __future__ import annotations

import jax
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from videogen.parallel import mesh as mesh_lib
from videogen.parallel import sharding as sharding_lib

from tests.standin import model as standin

RULES = mesh_lib.DEFAULT_RULES
TINY = standin.StandinConfig(features=8, embed=32, mlp=64, heads=2, head_dim=16, depth=1)


def _mesh(devices, **sizes):
  return mesh_lib.create_mesh(mesh_lib.MeshConfig(**sizes), devices)


def test_names_map_to_mesh_axes_and_size_one_axes_drop_out(devices):
  mesh = _mesh(devices, data=2, fsdp=2, tensor=2)
  assert sharding_lib.logical_to_spec(("embed", "mlp"), (32, 64), RULES, mesh) == P("fsdp",
                                                                                    "tensor")
  assert sharding_lib.logical_to_spec(("embed", "heads", "kv"), (32, 2, 16), RULES,
                                      mesh) == P("fsdp", "tensor", None)
  # On a data-parallel mesh nothing is split.
  mesh = _mesh(devices)
  assert sharding_lib.logical_to_spec(("embed", "mlp"), (32, 64), RULES, mesh) == P(None, None)


def test_a_dimension_keeps_only_the_axes_that_divide_it(devices):
  mesh = _mesh(devices, data=1, fsdp=8)
  assert sharding_lib.logical_to_spec(("embed",), (12,), RULES, mesh) == P(None)
  rules = {"x": ("fsdp", "tensor")}
  mesh = _mesh(devices, data=1, fsdp=4, tensor=2)
  assert sharding_lib.logical_to_spec(("x",), (8,), rules, mesh) == P(("fsdp", "tensor"))
  assert sharding_lib.logical_to_spec(("x",), (4,), rules, mesh) == P("fsdp")


def test_a_mesh_axis_is_used_once_per_array(devices):
  mesh = _mesh(devices, data=1, fsdp=8)
  rules = {"a": ("fsdp",), "b": ("fsdp",)}
  assert sharding_lib.logical_to_spec(("a", "b"), (8, 8), rules, mesh) == P("fsdp", None)


def test_unknown_names_and_wrong_rank_are_clear_errors(devices):
  mesh = _mesh(devices)
  with pytest.raises(sharding_lib.ShardingRuleError, match=r"'embd' has no rule.*config.mesh"):
    sharding_lib.logical_to_spec(("embd",), (8,), RULES, mesh, name="w")
  with pytest.raises(sharding_lib.ShardingRuleError, match="do not match its shape"):
    sharding_lib.logical_to_spec(("embed",), (8, 8), RULES, mesh)


def _abstract_state():
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: standin.StandinModel(TINY, rngs=nnx.Rngs(0)))
  return nnx.state(model)


def test_tree_shardings_follow_the_parameters_names(devices):
  mesh = _mesh(devices, data=2, fsdp=2, tensor=2)
  state = _abstract_state()
  shardings = sharding_lib.tree_shardings({"params": state, "step": jax.ShapeDtypeStruct((), int)},
                                          mesh, RULES)
  block = shardings["params"]["blocks"][0]
  assert block["mlp_in"].get_value().spec == P("fsdp", "tensor")
  assert block["mlp_out"].get_value().spec == P("tensor", "fsdp")
  assert block["query"].get_value().spec == P("fsdp", "tensor", None)
  assert shardings["step"].spec == P()


def test_changing_parallelism_is_a_rules_edit(devices):
  mesh = _mesh(devices, data=1, fsdp=4, tensor=2)
  state = _abstract_state()
  rules = dict(RULES, mlp=(), embed=("tensor",))
  block = sharding_lib.tree_shardings(state, mesh, rules)["blocks"][0]
  assert block["mlp_in"].get_value().spec == P("tensor", None)


def test_init_into_fsdp_shardings_divides_the_bytes_per_device(devices):
  def init():
    with nnx.use_eager_sharding(False):
      return nnx.state(standin.StandinModel(TINY, rngs=nnx.Rngs(0)))

  abstract = jax.eval_shape(init)
  whole = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(abstract))
  mesh = _mesh(devices, data=1, fsdp=8)
  state = jax.jit(init, out_shardings=sharding_lib.tree_shardings(abstract, mesh, RULES))()
  # Everything but the small norm scales (replicated by their "norm" rule) is split 8 ways.
  assert sharding_lib.bytes_per_device(state) < whole / 6
  assert state["blocks"][0]["mlp_in"].get_value().sharding.spec == P("fsdp", None)


def test_batch_sharding_uses_the_batch_rule(devices):
  mesh = _mesh(devices, data=2, fsdp=2, tensor=2)
  assert sharding_lib.batch_sharding(mesh, RULES).spec == P(("data", "fsdp"))
  assert sharding_lib.num_batch_shards(mesh, RULES) == 4
  assert sharding_lib.batch_sharding(_mesh(devices[:1]), RULES).spec == P(None)
