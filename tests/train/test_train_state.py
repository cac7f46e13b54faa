"""videogen/train/train_state.py: optimizer, schedule, EMA, the pure step and its guards."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from videogen.parallel import mesh as mesh_lib
from videogen.train import stage as stage_lib
from videogen.train import train_state as train_state_lib
from videogen.train.config import TrainConfig

RULES = mesh_lib.DEFAULT_RULES


class Frozen(nnx.Variable):
  """A variable the optimizer must not touch."""


class Linear(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.w = nnx.Param(nnx.with_partitioning(nnx.initializers.normal(1.0), ("embed", "mlp"))(
        rngs.params(), (4, 2)))
    self.b = nnx.Param(nnx.with_partitioning(nnx.initializers.zeros_init(), ("mlp",))(
        rngs.params(), (2,)))
    self.scale = Frozen(jnp.full((), 2.0))

  def __call__(self, x):
    return (x @ self.w[...] + self.b[...]) * self.scale[...]


class LinearStage(stage_lib.Stage):
  name = "linear"

  def create_model(self, rngs):
    return Linear(rngs)

  def loss(self, model, batch, rng, step):
    error = model(batch["x"]) - batch["y"]
    loss = jnp.mean(jnp.square(error)) * batch["poison"][0]
    return loss, {"noise": jax.random.uniform(rng)}

  def make_iterator(self, *, mesh, seed, workdir):
    raise NotImplementedError


def _batch(poison=1.0, size=8):
  rng = np.random.default_rng(0)
  return {"x": jnp.asarray(rng.normal(size=(size, 4)), jnp.float32),
          "y": jnp.asarray(rng.normal(size=(size, 2)), jnp.float32),
          "poison": jnp.full((size,), poison, jnp.float32)}


def _setup(devices, **overrides):
  del devices  # the fixture checks them; the step runs on the first device
  return _compiled_setup(tuple(sorted(overrides.items())))


@functools.lru_cache(maxsize=None)
def _compiled_setup(overrides):
  devices = jax.devices()
  overrides = dict(overrides)
  config = TrainConfig(**{"learning_rate": 0.1, "warmup_steps": 0, "ema_decay": 0.5,
                          "num_steps": 10, **overrides})
  stage = LinearStage()
  tx = train_state_lib.make_optimizer(config)
  state = jax.jit(lambda: train_state_lib.init_train_state(stage, tx, seed=0))()
  mesh = mesh_lib.create_mesh(mesh_lib.MeshConfig(), devices[:1])
  graphdef, _, _ = train_state_lib.abstract_model(stage)
  step = jax.jit(train_state_lib.make_train_step(stage, graphdef, tx, config, mesh=mesh,
                                                 rules=RULES))
  return state, step


def test_schedule_warms_up_then_decays_to_the_final_fraction():
  config = TrainConfig(learning_rate=1.0, warmup_steps=10, num_steps=110,
                       final_learning_rate_fraction=0.1)
  schedule = train_state_lib.make_schedule(config)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.5)
  assert float(schedule(10)) == pytest.approx(1.0)
  assert float(schedule(60)) == pytest.approx(0.55, abs=1e-6)
  assert float(schedule(110)) == pytest.approx(0.1)
  constant = train_state_lib.make_schedule(dataclasses.replace(config, schedule="constant"))
  assert float(constant(100)) == pytest.approx(1.0)


def test_weight_decay_skips_vectors():
  config = TrainConfig(learning_rate=1.0, warmup_steps=0, weight_decay=0.5, schedule="constant",
                       clip_grad_norm=0.0)
  tx = train_state_lib.make_optimizer(config)
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.5)
  np.testing.assert_allclose(updates["b"], 0.0)


def test_a_step_updates_params_ema_and_step_but_not_frozen(devices):
  state, step = _setup(devices)
  new, metrics = step(state, _batch())
  assert int(new.step) == 1
  assert not np.allclose(new.params["w"][...], state.params["w"][...])
  np.testing.assert_allclose(new.ema_params["w"][...],
                             0.5 * state.params["w"][...] + 0.5 * new.params["w"][...], rtol=1e-6)
  np.testing.assert_array_equal(new.frozen["scale"][...], 2.0)
  assert set(new.frozen.keys()) == {"scale"} and "scale" not in new.params
  assert set(metrics) == {"loss", "grad_norm", "learning_rate", "noise"}
  # Frozen variables get no optimizer state: every moment has the params' structure.
  moments = [leaf for leaf in jax.tree.leaves(new.opt_state) if leaf.ndim > 0]
  assert len(moments) == 2 * len(jax.tree.leaves(new.params))


def test_step_randomness_is_fold_in_of_the_step(devices):
  state, step = _setup(devices)
  first, metrics_0 = step(state, _batch())
  _, metrics_1 = step(first, _batch())
  _, again = step(state, _batch())
  assert float(metrics_0["noise"]) == float(again["noise"])
  assert float(metrics_0["noise"]) != float(metrics_1["noise"])


def test_a_non_finite_loss_leaves_the_state_unchanged(devices):
  state, step = _setup(devices)
  new, metrics = step(state, _batch(poison=float("nan")))
  assert np.isnan(float(metrics["loss"]))
  assert int(new.step) == 0
  for old_leaf, new_leaf in zip(jax.tree.leaves(state), jax.tree.leaves(new)):
    np.testing.assert_array_equal(old_leaf, new_leaf)


def test_gradient_accumulation_matches_the_full_batch(devices):
  state, step = _setup(devices)
  _, accumulated_step = _setup(devices, grad_accum_steps=4)
  full, full_metrics = step(state, _batch())
  accumulated, accumulated_metrics = accumulated_step(state, _batch())
  assert float(accumulated_metrics["loss"]) == pytest.approx(float(full_metrics["loss"]),
                                                             rel=1e-6)
  np.testing.assert_allclose(accumulated.params["w"][...], full.params["w"][...], rtol=1e-5,
                             atol=1e-6)


def test_microbatches_are_strided_rows(devices):
  mesh = mesh_lib.create_mesh(mesh_lib.MeshConfig(), devices)
  batch = {"x": jnp.arange(16.0)}
  micro = jax.jit(lambda b: train_state_lib._microbatches(b, 4, mesh, ("data",)))(batch)
  np.testing.assert_array_equal(micro["x"][1], [1.0, 5.0, 9.0, 13.0])


def test_clipping_bounds_the_update(devices):
  state, step = _setup(devices, clip_grad_norm=1e-6, optimizer="adafactor")
  new, metrics = step(state, _batch())
  assert float(metrics["grad_norm"]) > 1e-3  # reported before clipping
  assert int(new.step) == 1
  assert optax.tree.norm(jax.tree.map(lambda a, b: a - b, new.params, state.params)) > 0
