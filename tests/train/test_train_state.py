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

from videogen.models import dit as dit_lib
from videogen.parallel import mesh as mesh_lib
from videogen.parallel import sharding as sharding_lib
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
  return _state_and_step(LinearStage(), sequence_parallel="auto", **dict(overrides))


def _state_and_step(stage, *, sequence_parallel, **overrides):
  """The stage's initial state and its jitted train step on one device (a 1-device mesh)."""
  config = TrainConfig(**{"learning_rate": 0.1, "warmup_steps": 0, "ema_decay": 0.5,
                          "num_steps": 10, **overrides})
  tx = train_state_lib.make_optimizer(config)
  state = jax.jit(lambda: train_state_lib.init_train_state(stage, tx, seed=0))()
  mesh = mesh_lib.create_mesh(mesh_lib.MeshConfig(), jax.devices()[:1])
  graphdef, _, _ = train_state_lib.abstract_model(stage)
  step = jax.jit(train_state_lib.make_train_step(stage, graphdef, tx, config, mesh=mesh,
                                                 rules=RULES,
                                                 sequence_parallel=sequence_parallel))
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
  linear = train_state_lib.make_schedule(dataclasses.replace(
      config, schedule="linear", final_learning_rate_fraction=0.0))
  assert float(linear(10)) == pytest.approx(1.0)
  assert float(linear(35)) == pytest.approx(0.75)
  assert float(linear(60)) == pytest.approx(0.5)
  assert float(linear(110)) == 0.0


def test_a_phase_takes_the_last_steps_at_its_own_constant_rate():
  """The schedule before the phase is the schedule of a run that stops where the phase starts."""
  config = TrainConfig(learning_rate=1.0, warmup_steps=10, num_steps=140, phase_steps=30,
                       phase_learning_rate=0.3, final_learning_rate_fraction=0.1)
  schedule = train_state_lib.make_schedule(config)
  alone = train_state_lib.make_schedule(dataclasses.replace(config, num_steps=110,
                                                            phase_steps=0))
  for step in (0, 5, 10, 60, 109):
    assert float(schedule(step)) == float(alone(step))
  assert float(schedule(109)) == pytest.approx(0.1, abs=1e-3)
  for step in (110, 125, 139):
    assert float(schedule(step)) == pytest.approx(0.3)


@pytest.mark.parametrize("fields, match", [
    ({"num_steps": 10, "phase_steps": 10, "phase_learning_rate": 0.1}, "phase_steps = 10"),
    ({"num_steps": 10, "phase_steps": -1}, "phase_steps = -1"),
    ({"num_steps": 10, "phase_steps": 2}, "phase_learning_rate = None must be > 0"),
])
def test_a_phase_that_cannot_run_is_refused(fields, match):
  with pytest.raises(ValueError, match=match):
    TrainConfig(**fields)


def test_weight_decay_skips_vectors():
  config = TrainConfig(learning_rate=1.0, warmup_steps=0, weight_decay=0.5, schedule="constant",
                       clip_grad_norm=0.0)
  tx = train_state_lib.make_optimizer(config)
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -0.5)
  np.testing.assert_allclose(updates["b"], 0.0)


def test_a_learning_rate_scale_scales_only_its_parts_update():
  config = TrainConfig(learning_rate=1e-2, warmup_steps=0, schedule="constant", weight_decay=0.1,
                       learning_rate_scales=("encoder=0.25",))
  params = {"encoder": {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}, "head": {"w": jnp.ones((2, 2))}}
  gradients = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
  plain = train_state_lib.make_optimizer(dataclasses.replace(config, learning_rate_scales=()))
  scaled = train_state_lib.make_optimizer(config)
  expected, _ = plain.update(gradients, plain.init(params), params)
  updates, _ = scaled.update(gradients, scaled.init(params), params)
  for name in ("w", "b"):
    np.testing.assert_allclose(updates["encoder"][name], 0.25 * expected["encoder"][name],
                               rtol=1e-6)
  np.testing.assert_array_equal(updates["head"]["w"], expected["head"]["w"])
  assert float(jnp.abs(updates["head"]["w"]).min()) > 0


def test_a_learning_rate_scale_for_a_part_the_stage_lacks_is_refused():
  config = TrainConfig(learning_rate_scales=("text=0.5",))
  with pytest.raises(train_state_lib.LearningRateScaleError,
                     match=r"config.train.dit.learning_rate_scales names 'text', which the dit "
                           r"stage does not train: name one of \['head'\]"):
    train_state_lib.check_learning_rate_scales(config, {"head": jnp.ones((2, 2))}, "dit")
  tx = train_state_lib.make_optimizer(config)
  with pytest.raises(train_state_lib.LearningRateScaleError,
                     match="names 'text', which this stage does not train"):
    tx.init({"head": jnp.ones((2, 2))})


@pytest.mark.parametrize("entries, match", [
    (("text_encoder",), "must be 'PART=SCALE'"),
    (("text_encoder=0",), "with a finite scale > 0"),
    (("text_encoder=inf",), "with a finite scale > 0"),
    (("text_encoder=nan",), "with a finite scale > 0"),
    (("text_encoder=fast",), "must be 'PART=SCALE'"),
    (("=0.5",), "must be 'PART=SCALE'"),
    (("a=0.5", "a=2"), "names 'a' twice"),
    ("text_encoder=0.3", "must be a tuple of 'PART=SCALE' strings"),
])
def test_a_malformed_learning_rate_scale_is_refused(entries, match):
  with pytest.raises(ValueError, match=match):
    TrainConfig(learning_rate_scales=entries)


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


class RecordingStage(LinearStage):
  """Records the activation-sharding context its loss is traced in."""

  def __init__(self):
    self.seen = []

  def loss(self, model, batch, rng, step):
    self.seen.append(sharding_lib.current())
    return super().loss(model, batch, rng, step)


@pytest.mark.parametrize("enclosing", [None, "ring"])
def test_the_step_traces_its_loss_in_its_own_activation_sharding(devices, enclosing):
  """However a caller jits the step, the models' activation constraints take effect, and a
  context the caller entered around it cannot replace the step's own."""
  del devices  # the fixture checks them; the step runs on the first device
  stage = RecordingStage()
  state, step = _state_and_step(stage, sequence_parallel="ulysses")
  if enclosing is None:
    step.lower(state, _batch())
  else:
    other_mesh = mesh_lib.create_mesh(mesh_lib.MeshConfig(data=2), jax.devices()[:2])
    with sharding_lib.activation_sharding(other_mesh, {}, enclosing):
      step.lower(state, _batch())
  assert stage.seen and all(context is not None for context in stage.seen)
  for context in stage.seen:
    assert context.mesh.devices.size == 1 and context.rules == RULES
    assert context.sequence_parallel == "ulysses"
  assert sharding_lib.current() is None


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


def _named(value, names):
  with nnx.use_eager_sharding(False):
    return nnx.Param(jnp.asarray(value, jnp.float32), out_sharding=names)


def test_muon_orthogonalises_each_layers_hidden_kernel_and_adam_trains_the_rest():
  rng = np.random.default_rng(0)
  params = nnx.State({
      "blocks": {"mlp": {"kernel": _named(rng.normal(size=(2, 4, 3)), ("layers", "embed", "mlp")),
                         "bias": _named(np.zeros((2, 3)), ("layers", "mlp"))},
                 "out": {"kernel": _named(rng.normal(size=(2, 2, 3, 4)),
                                          ("layers", "heads", "kv", "embed"))}},
      "head": {"kernel": _named(rng.normal(size=(4, 5)), ("embed", None))},
      "embedding": {"kernel": _named(rng.normal(size=(6, 4)), ("vocab", "embed"))}})
  dims = train_state_lib.muon_dimensions(params)
  assert dims["blocks"]["mlp"]["kernel"] == optax.contrib.MuonDimensionNumbers((1,), (2,))
  assert dims["blocks"]["out"]["kernel"] == optax.contrib.MuonDimensionNumbers((1, 2), (3,))
  # A bias, a head writing unnamed features, a lookup table: Adam's.
  assert dims["blocks"]["mlp"]["bias"] is None and dims["head"]["kernel"] is None
  assert dims["embedding"]["kernel"] is None

  config = TrainConfig(optimizer="muon", learning_rate=1.0, warmup_steps=0, schedule="constant",
                       weight_decay=0.0, clip_grad_norm=0.0)
  tx = train_state_lib.make_optimizer(config)
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  updates, _ = tx.update(grads, tx.init(params), params)
  for layer in range(2):
    # Each layer's step is the orthogonal polar factor of its own gradient, U V^T (up to the
    # Newton-Schulz iteration's accuracy and one common scale).
    g = np.asarray(grads["blocks"]["mlp"]["kernel"][...][layer])
    u, _, vt = np.linalg.svd(g, full_matrices=False)
    step = -np.asarray(updates["blocks"]["mlp"]["kernel"][...][layer])
    cosine = np.sum(step * (u @ vt)) / (np.linalg.norm(step) * np.linalg.norm(u @ vt))
    assert cosine > 0.95, (layer, cosine)
  # The output projection is one [heads * kv, embed] matrix per layer: its singular values agree.
  out = np.asarray(updates["blocks"]["out"]["kernel"][...]).reshape(2, 6, 4)
  for layer in out:
    singular = np.linalg.svd(layer, compute_uv=False)
    assert singular.max() < 1.6 * singular.min(), singular
  # Adam's first step moves every entry by the same amount, whatever its gradient's size.
  for leaf in (updates["blocks"]["mlp"]["bias"], updates["head"]["kernel"]):
    magnitude = np.abs(np.asarray(leaf[...]))
    np.testing.assert_allclose(magnitude, magnitude.flat[0], rtol=1e-4)


def test_muon_treats_each_block_alike_whether_the_blocks_are_stacked_or_not():
  """`DiTConfig.scan_layers` changes the layout, not the optimizer: a stacked kernel's layer axis
  is a batch of the same matrices that the unrolled blocks hold one by one."""
  def dimensions(scan_layers):
    config = dit_lib.DiTConfig.tiny(depth=2, scan_layers=scan_layers)
    with nnx.use_eager_sharding(False):
      model = nnx.eval_shape(lambda: dit_lib.DiT(config, rngs=nnx.Rngs(0)))
    dims = train_state_lib.muon_dimensions(nnx.state(model, nnx.Param))
    return {jax.tree_util.keystr(path): dim for path, dim in jax.tree_util.tree_leaves_with_path(
        dims, is_leaf=lambda x: isinstance(x, optax.contrib.MuonDimensionNumbers))}

  stacked, unrolled = dimensions(True), dimensions(False)
  block_kernels = 0
  for path, dim in unrolled.items():
    if path.startswith("['blocks']["):
      block = path.split("]")[1] + "]"  # "[0]" or "[1]"
      shifted = stacked[path.replace(block, "", 1)]
      assert dim == optax.contrib.MuonDimensionNumbers(
          tuple(a - 1 for a in shifted.reduction_axis),
          tuple(a - 1 for a in shifted.output_axis)), path
      block_kernels += 1
    else:
      assert dim == stacked[path], path
  assert block_kernels == 2 * sum(path.startswith("['blocks']") for path in stacked) > 0


class Wide(nnx.Module):
  """Weights drawn as the models draw theirs (normal, truncated normal), large enough to shard."""

  def __init__(self, rngs: nnx.Rngs):
    self.w = nnx.Param(nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "mlp"))(
        rngs.params(), (64, 48)))
    self.v = nnx.Param(nnx.with_partitioning(nnx.initializers.truncated_normal(0.02),
                                             ("embed", "mlp"))(rngs.params(), (64, 48)))

  def __call__(self, x):
    return x @ self.w[...] @ self.v[...].T


class WideStage(LinearStage):
  name = "wide"

  def create_model(self, rngs):
    return Wide(rngs)


def test_the_sharded_init_is_the_same_on_every_mesh_and_close_to_an_optimised_compile(devices):
  """The init is compiled with `INIT_COMPILER_OPTIONS` (unoptimised on a CPU): every mesh draws the
  same weights bit for bit, and they are the optimised compile's to an ulp or so."""
  stage = WideStage()
  tx = train_state_lib.make_optimizer(TrainConfig(learning_rate=0.1, num_steps=10))
  one = mesh_lib.create_mesh(mesh_lib.MeshConfig(), devices[:1])
  eight = mesh_lib.create_mesh(mesh_lib.MeshConfig(data=1, fsdp=4, tensor=2), devices)
  state_one, _ = train_state_lib.init_sharded_train_state(stage, tx, 3, one, RULES, salt=7)
  state_eight, _ = train_state_lib.init_sharded_train_state(stage, tx, 3, eight, RULES, salt=7)
  assert state_eight.params["w"][...].sharding.spec == jax.sharding.PartitionSpec("fsdp",
                                                                                  "tensor")
  for a, b in zip(jax.tree.leaves(state_one), jax.tree.leaves(state_eight), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  optimised = jax.jit(lambda: train_state_lib.init_train_state(stage, tx, 3, salt=7))()
  for name in ("w", "v"):
    np.testing.assert_allclose(state_one.params[name][...], optimised.params[name][...],
                               rtol=1e-6, atol=1e-9)
    assert np.std(np.asarray(state_one.params[name][...])) > 0


def test_the_init_is_compiled_with_the_platforms_options(devices, monkeypatch):
  stage = WideStage()
  tx = train_state_lib.make_optimizer(TrainConfig(learning_rate=0.1, num_steps=10))
  mesh = mesh_lib.create_mesh(mesh_lib.MeshConfig(), devices[:1])
  monkeypatch.setitem(train_state_lib.INIT_COMPILER_OPTIONS, "cpu", {"xla_no_such_option": 1})
  with pytest.raises(Exception, match="xla_no_such_option"):
    train_state_lib.init_sharded_train_state(stage, tx, 3, mesh, RULES)
