"""videogen/parallel/sharding.py: logical axis names -> shardings, from the config's rules table."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from videogen.models import autoencoder
from videogen.models import dit
from videogen.models import text_encoder
from videogen.parallel import axes
from videogen.parallel import mesh as mesh_lib
from videogen.parallel import sharding as sharding_lib

from tests.standin import model as standin

RULES = standin.RULES
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


# -- activation constraints ---------------------------------------------------------------------


def test_constrain_is_the_identity_outside_a_mesh_context(devices):
  x = jnp.ones((4, 6, 8))
  assert sharding_lib.constrain(x, axes.TOKENS) is x
  # Inside one, a wrong rank or an unknown name is an error that names the fix.
  mesh = _mesh(devices, data=2, fsdp=2, tensor=2)
  with sharding_lib.activation_sharding(mesh, RULES):
    with pytest.raises(sharding_lib.ShardingRuleError, match="do not match its shape"):
      sharding_lib.constrain(x, (axes.ACT_BATCH, axes.ACT_EMBED))
    with pytest.raises(sharding_lib.ShardingRuleError, match="has no rule"):
      sharding_lib.constrain(x, (axes.ACT_BATCH, "activation_lenght", axes.ACT_EMBED))
  assert sharding_lib.constrain(x, axes.TOKENS) is x  # the context is left behind


def _sharded_forward(model, mesh, rules, inputs, under_context: bool):
  """(lowered StableHLO text, compiled output sharding, output) of model(*inputs) under jit."""
  graphdef, state = nnx.split(model)
  state = jax.device_put(state, sharding_lib.tree_shardings(state, mesh, rules))

  # A fresh function per call: jit caches traces by function, and the context is read at trace
  # time (see `activation_sharding`).
  def forward(state, inputs):
    return nnx.merge(graphdef, state)(*inputs)

  jitted = jax.jit(forward)
  if under_context:
    with sharding_lib.activation_sharding(mesh, rules):
      lowered = jitted.lower(state, inputs)
      output = jitted(state, inputs)
  else:
    lowered = jitted.lower(state, inputs)
    output = jitted(state, inputs)
  compiled = lowered.compile()
  return lowered.as_text(), compiled.output_shardings, output


def _constraints(text: str) -> str:
  # Shardy's op; the GSPMD lowering spells it as a custom call.
  return "\n".join(line for line in text.splitlines()
                   if "sharding_constraint" in line or "@Sharding" in line)


def test_dit_activations_follow_the_rules_under_jit(devices):
  config = dit.DiTConfig.tiny(width=32, depth=2, num_heads=2, frequency_dim=32, context_dim=16,
                              pooled_dim=16)
  with nnx.use_eager_sharding(False):
    model = dit.DiT(config, rngs=nnx.Rngs(0))
  # Perturbed, so that the zero-initialised gates and output layer let every path through.
  graphdef, state = nnx.split(model)
  noise = np.random.default_rng(0)
  state = jax.tree.map(lambda p: p + 0.05 * noise.normal(size=p.shape).astype(p.dtype), state)
  model = nnx.merge(graphdef, state)
  rng = np.random.default_rng(1)
  inputs = (jnp.asarray(rng.normal(size=(4, 5, 8, 8, 8)), jnp.float32),
            jnp.asarray(rng.uniform(size=(4,)), jnp.float32),
            jnp.asarray(rng.normal(size=(4, 6, 16)), jnp.float32), None,
            jnp.asarray(rng.normal(size=(4, 16)), jnp.float32))
  mesh = _mesh(devices, data=2, fsdp=2, tensor=2)

  text, sharding, constrained = _sharded_forward(model, mesh, RULES, inputs, under_context=True)
  found = _constraints(text)
  # Tokens [B, N, D]: batch over data x fsdp, the rest whole; heads and MLP units over tensor.
  assert '[{"data", "fsdp"}, {}, {}]' in found
  assert '[{"data", "fsdp"}, {}, {"tensor"}, {}]' in found
  assert '[{"data", "fsdp"}, {}, {"tensor"}]' in found
  # Nothing else pinned the replicated inputs: the batch split reaches the output from the
  # constraints alone.
  assert sharding.spec == P(("data", "fsdp"))
  assert constrained.sharding.spec == P(("data", "fsdp"))

  text, sharding, plain = _sharded_forward(model, mesh, RULES, inputs, under_context=False)
  assert not _constraints(text)
  assert sharding.spec == P()
  np.testing.assert_allclose(np.asarray(constrained), np.asarray(plain), atol=1e-5, rtol=1e-5)
  # And without any mesh the model computes the same numbers.
  np.testing.assert_allclose(np.asarray(model(*inputs)), np.asarray(plain), atol=1e-5,
                             rtol=1e-5)


@pytest.mark.parametrize("name", ["text_encoder", "autoencoder"])
def test_text_encoder_and_autoencoder_activations_follow_the_rules(devices, name):
  rng = np.random.default_rng(0)
  with nnx.use_eager_sharding(False):
    if name == "text_encoder":
      model = text_encoder.TextEncoder(
          text_encoder.TextEncoderConfig.tiny(width=16, depth=1, num_heads=2, vocab_size=32,
                                              max_length=8), rngs=nnx.Rngs(0))
      inputs = (jnp.asarray(rng.integers(0, 32, size=(4, 8)), jnp.int32), jnp.ones((4, 8), bool))
      layout = '[{"data", "fsdp"}, {}, {}]'
    else:
      config = dataclasses.replace(autoencoder.AutoencoderConfig.tiny(), base_channels=8)
      model = autoencoder.VideoAutoencoder(config, rngs=nnx.Rngs(0))
      model = _Decode(model)
      inputs = (jnp.asarray(rng.normal(size=(4, 2, 4, 4, 8)), jnp.float32),)
      layout = '[{"data", "fsdp"}, {}, {}, {}, {}]'
  mesh = _mesh(devices, data=2, fsdp=2, tensor=2)
  text, _, constrained = _sharded_forward(model, mesh, RULES, inputs, under_context=True)
  assert layout in _constraints(text)
  leaf = jax.tree.leaves(constrained)[0]
  assert leaf.sharding.spec[0] == ("data", "fsdp")
  _, _, plain = _sharded_forward(model, mesh, RULES, inputs, under_context=False)
  for a, b in zip(jax.tree.leaves(constrained), jax.tree.leaves(plain)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, rtol=1e-5)


class _Decode(nnx.Module):
  """The autoencoder's decoder as a module call: latents [B, t, h, w, C] -> video."""

  def __init__(self, model: autoencoder.VideoAutoencoder):
    self.model = model

  def __call__(self, latents):
    return self.model.decode(latents)
