"""videogen/parallel/sequence.py: attention with its tokens split over "sequence" equals the
single-device reference (forward and gradients), for Ulysses and the ring, on 8 fake devices;
a DiT train step with config.mesh.sequence = 2, 4, 8 equals the one-device step."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from videogen.generate import pipeline
from videogen.models import attention
from videogen.models.dit import DiT, DiTConfig
from videogen.parallel import mesh as mesh_lib
from videogen.parallel import sequence
from videogen.parallel import sharding
from videogen.train import dit_stage
from videogen.train import train_state as train_state_lib

from tests.train import test_dit_stage

HEADS, HEAD_DIM = 8, 8


def _inputs(length, key_length=None, heads=HEADS, mask=None, seed=0):
  """q [2, length, heads, 8], k and v [2, key_length, heads, 8] and a mask of kind `mask`."""
  key_length = key_length or length
  keys = jax.random.split(jax.random.key(seed), 4)
  q = jax.random.normal(keys[0], (2, length, heads, HEAD_DIM))
  k = jax.random.normal(keys[1], (2, key_length, heads, HEAD_DIM))
  v = jax.random.normal(keys[2], (2, key_length, heads, HEAD_DIM))
  if mask == "keys":  # a padding mask over the keys, with one sample's keys all masked
    mask = jax.random.uniform(keys[3], (2, 1, 1, key_length)) > 0.3
    mask = mask.at[1].set(False)
  elif mask == "dense":  # per head, per query row
    mask = jax.random.uniform(keys[3], (2, heads, length, key_length)) > 0.3
  return q, k, v, mask


def _mesh(size, method):
  config = mesh_lib.MeshConfig(data=8 // size, sequence=size, sequence_parallel=method)
  return mesh_lib.create_mesh(config), config.rules


def _attend_and_grads(q, k, v, mask, context=None):
  """(output, gradients of a fixed weighted sum of it with respect to q, k, v), jitted in
  `context` = (mesh, rules, method) or on one device; the compiled forward's HLO text too."""
  weights = jnp.cos(jnp.arange(q.shape[2] * q.shape[3], dtype=jnp.float32)).reshape(q.shape[2:])

  def forward(q, k, v):
    return attention.dot_product_attention(q, k, v, mask, backend="xla", split_tokens=True)

  def loss(q, k, v):
    return jnp.sum(forward(q, k, v) * weights)

  if context is None:
    return forward(q, k, v), jax.grad(loss, argnums=(0, 1, 2))(q, k, v), ""
  with sharding.activation_sharding(*context):
    compiled = jax.jit(forward).lower(q, k, v).compile()
    grads = jax.jit(jax.grad(loss, argnums=(0, 1, 2)))(q, k, v)
  return compiled(q, k, v), grads, compiled.as_text()


def _assert_close(got, want, atol=1e-5):
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=atol)


# The collective each method is made of; the other method's must be absent.
COLLECTIVE = {"ulysses": "all-to-all", "ring": "collective-permute"}


@pytest.mark.parametrize("method", ["ulysses", "ring"])
@pytest.mark.parametrize("size", [2, 4, 8])
def test_split_attention_equals_the_reference(devices, size, method):
  q, k, v, mask = _inputs(48, mask="keys")
  want, want_grads, _ = _attend_and_grads(q, k, v, mask)
  mesh, rules = _mesh(size, method)
  got, grads, hlo = _attend_and_grads(q, k, v, mask, (mesh, rules, method))
  _assert_close(got, want)
  _assert_close(grads, want_grads)
  assert np.all(np.asarray(got[1]) == 0.0)  # the sample with no key gets zeros, not NaN
  assert np.all(np.isfinite(np.asarray(grads[0])))
  other = COLLECTIVE["ring" if method == "ulysses" else "ulysses"]
  assert COLLECTIVE[method] in hlo and other not in hlo
  assert got.sharding.spec[1] == "sequence"  # the result stays split over the tokens


@pytest.mark.parametrize("method", ["ulysses", "ring"])
def test_a_dense_mask_and_tokens_that_do_not_split_evenly(devices, method):
  # 45 tokens over 4 devices: padded to 48, the padded keys masked, the padded queries dropped.
  q, k, v, mask = _inputs(45, mask="dense", seed=1)
  want, want_grads, _ = _attend_and_grads(q, k, v, mask)
  mesh, rules = _mesh(4, method)
  got, grads, _ = _attend_and_grads(q, k, v, mask, (mesh, rules, method))
  assert got.shape == want.shape
  _assert_close(got, want)
  _assert_close(grads, want_grads)
  # Without a mask too: the padding alone must be masked out.
  q, k, v, _ = _inputs(45, seed=2)
  want, want_grads, _ = _attend_and_grads(q, k, v, None)
  got, grads, _ = _attend_and_grads(q, k, v, None, (mesh, rules, method))
  _assert_close(got, want)
  _assert_close(grads, want_grads)


def test_cross_attention_splits_the_queries_only(devices):
  # 48 video tokens attend to 10 text tokens: no key/value block moves round the devices.
  q, k, v, mask = _inputs(48, key_length=10, mask="keys", seed=3)
  want, want_grads, _ = _attend_and_grads(q, k, v, mask)
  mesh, rules = _mesh(8, "ring")
  got, grads, hlo = _attend_and_grads(q, k, v, mask, (mesh, rules, "ring"))
  _assert_close(got, want)
  _assert_close(grads, want_grads)
  assert "collective-permute" not in hlo and "all-to-all" not in hlo


def test_ulysses_needs_heads_the_sequence_size_divides(devices):
  q, k, v, _ = _inputs(48, heads=2)
  mesh, rules = _mesh(4, "ulysses")
  with pytest.raises(ValueError, match="sequence_parallel='ring'"):
    _attend_and_grads(q, k, v, None, (mesh, rules, "ulysses"))
  # "auto" takes the ring for 2 heads over 4 devices, and Ulysses for 8.
  mesh, rules = _mesh(4, "auto")
  want, _, _ = _attend_and_grads(q, k, v, None)
  got, _, hlo = _attend_and_grads(q, k, v, None, (mesh, rules, "auto"))
  _assert_close(got, want)
  assert "collective-permute" in hlo and "all-to-all" not in hlo
  assert sequence.choose_method("auto", 8, 4) == "ulysses"


def test_sequence_size_one_traces_the_single_device_attention():
  q, k, v, mask = _inputs(16, mask="keys")
  forward = lambda q, k, v, split: attention.dot_product_attention(
      q, k, v, mask, backend="xla", split_tokens=split)
  plain = str(jax.make_jaxpr(lambda *x: forward(*x, False))(q, k, v))
  mesh = mesh_lib.create_mesh(mesh_lib.MeshConfig(data=1), jax.devices()[:1])
  with sharding.activation_sharding(mesh, mesh_lib.DEFAULT_RULES, "ring"):
    split = str(jax.make_jaxpr(lambda *x: forward(*x, True))(q, k, v))
  assert split == plain and "shard_map" not in split


def test_an_unknown_method_is_refused():
  with pytest.raises(ValueError, match="ulysses"):
    mesh_lib.MeshConfig(sequence_parallel="tree")


# ------------------------------------------------------------------------------------------------
# A full train step of a small DiT (the dit stage's loss, text encoder included).


def _dit_experiment(size, method):
  # A frozen text encoder: a smaller step to compile (its attention still runs split).
  experiment = test_dit_stage.make_experiment(learning_rate=1e-3, warmup_steps=0,
                                              text_frozen=True)
  # 8 heads of 12 (3D rotary needs 12): Ulysses splits them up to 8 ways. The text encoder's 2
  # heads take the ring under "auto".
  dit = dataclasses.replace(experiment.dit, width=96, num_heads=8)
  mesh = mesh_lib.MeshConfig(data=8 // size, sequence=size, sequence_parallel=method)
  return dataclasses.replace(experiment, dit=dit, mesh=mesh)


def _batch(experiment):
  keys = jax.random.split(jax.random.key(7), 3)
  shape = (8, *experiment.dit.input_size, test_dit_stage.AUTOENCODER.latent_channels)
  return {"latents": 1.0 + 0.5 * jax.random.normal(keys[0], shape),
          "tokens": jax.random.randint(keys[1], (8, test_dit_stage.MAX_TOKENS), 3, 200),
          "token_mask": jnp.arange(test_dit_stage.MAX_TOKENS)[None] < jax.random.randint(
              keys[2], (8, 1), 4, test_dit_stage.MAX_TOKENS)}


def _train_step(experiment, mesh, initial):
  stage = dit_stage.DiTStage(experiment)
  config = experiment.train["dit"]
  tx = train_state_lib.make_optimizer(config)
  graphdef, _, _ = train_state_lib.abstract_model(stage)
  rules = experiment.mesh.rules
  init = lambda: train_state_lib.init_train_state(stage, tx, seed=0)
  if initial is None:
    initial = jax.jit(init)()
  # The one-device step's initial state, placed as the trainer places it on `mesh`.
  state = jax.device_put(initial, sharding.tree_shardings(jax.eval_shape(init), mesh, rules))
  batch = {name: jax.device_put(value, sharding.batch_sharding(mesh, rules))
           for name, value in _batch(experiment).items()}
  step = jax.jit(train_state_lib.make_train_step(
      stage, graphdef, tx, config, mesh=mesh, rules=rules,
      sequence_parallel=experiment.mesh.sequence_parallel))
  compiled = step.lower(state, batch).compile()
  new_state, metrics = compiled(state, batch)
  return initial, new_state, metrics, compiled.as_text()


@pytest.fixture(scope="module")
def reference_step():
  experiment = _dit_experiment(1, "auto")
  mesh = mesh_lib.create_mesh(dataclasses.replace(experiment.mesh, data=1), jax.devices()[:1])
  return _train_step(experiment, mesh, None)


# 2 devices with the ring forced; 4 and 8 with "auto": Ulysses for the transformer's 8 heads, the
# ring for the text encoder's 2 heads, which do not split 4 or 8 ways.
@pytest.mark.parametrize("size, method", [(2, "ring"), (4, "auto"), (8, "auto")])
def test_a_dit_train_step_equals_the_one_device_step(devices, reference_step, size, method):
  initial, want_state, want_metrics, _ = reference_step
  experiment = _dit_experiment(size, method)
  _, state, metrics, hlo = _train_step(experiment, mesh_lib.create_mesh(experiment.mesh),
                                       initial)
  assert "collective-permute" in hlo  # the ring ran
  assert ("all-to-all" in hlo) == (method == "auto")  # and Ulysses, where chosen
  np.testing.assert_allclose(float(metrics["loss"]), float(want_metrics["loss"]), rtol=1e-5)
  np.testing.assert_allclose(float(metrics["grad_norm"]), float(want_metrics["grad_norm"]),
                             rtol=1e-5)
  _assert_close(state.params, want_state.params, atol=1e-5)


# ------------------------------------------------------------------------------------------------
# Sampling: the generator's transformer kernel, traced for a mesh with "sequence" = 4.


def test_the_generators_transformer_pass_equals_the_one_device_pass(devices):
  config = DiTConfig(width=96, depth=1, num_heads=8, in_channels=4, input_size=(3, 8, 8),
                     context_dim=16, pooled_dim=16, frequency_dim=32, attention_backend="xla")
  with nnx.use_eager_sharding(False):
    graphdef, state = nnx.split(DiT(config, rngs=nnx.Rngs(0)))
  # Zero-initialised outputs (cross-attention, the final layer) would hide any difference.
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  state = jax.tree.unflatten(treedef, [
      leaf + 0.1 * jax.random.normal(key, leaf.shape) for leaf, key in zip(leaves, keys)])
  inputs = jax.random.split(jax.random.key(2), 4)
  x = jax.random.normal(inputs[0], (2, 3, 8, 8, 4))
  t = jax.random.uniform(inputs[1], (2, 3))
  # 10 text tokens (4 does not split them): the queries split, the text whole.
  cond = {"context": jax.random.normal(inputs[2], (2, 10, 16)),
          "context_mask": jnp.arange(10)[None] < jnp.array([[6], [10]]),
          "pooled": jax.random.normal(inputs[3], (2, 16))}
  want = pipeline._apply_dit(graphdef, state, x, t, cond)
  for method in ("ulysses", "ring"):
    mesh, rules = _mesh(4, method)
    key = (mesh, tuple(sorted((name, tuple(value)) for name, value in rules.items())), method)
    compiled = pipeline._apply_dit.lower(graphdef, state, x, t, cond, sharding=key).compile()
    assert COLLECTIVE[method] in compiled.as_text()  # the kernel attends split, by `method`
    got = pipeline._apply_dit(graphdef, state, x, t, cond, sharding=key)
    _assert_close(got, want)
    assert float(jnp.max(jnp.abs(want))) > 0.1  # a pass that computes something
