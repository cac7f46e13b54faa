"""videogen/models/dit.py: the spacetime diffusion transformer.

Compiles are the cost here, so the tests share one tiny model and a few jitted forward signatures.
Freshly initialised, a DiT outputs zeros (adaLN-Zero, zero final layer); most tests use a copy
with every parameter perturbed, so that each path (gates, cross-attention) is active.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from videogen.diffusion import flow
from videogen.models import attention
from videogen.models import dit
from videogen.models import layers
from videogen.parallel import mesh as mesh_lib
from videogen.parallel import sharding as sharding_lib

from tests.helpers import named_scopes

CONFIG = dit.DiTConfig.tiny(depth=2)
BATCH, FRAMES, SIZE, CONTEXT = 2, 5, 8, 7
LOGICAL_AXES = {"embed", "mlp", "heads", "kv", "vocab", "layers", None}


def _rngs(seed: int = 0) -> nnx.Rngs:
  # The "rbg" generator compiles much faster than threefry on CPU; values are irrelevant here.
  return nnx.Rngs(jax.random.key(seed, impl="rbg"))


def _build(config: dit.DiTConfig) -> dit.DiT:
  with nnx.use_eager_sharding(False):
    return dit.DiT(config, rngs=_rngs())


def _perturbed(state: nnx.State, seed: int = 1, scale: float = 0.05) -> nnx.State:
  # NumPy noise: nothing to compile.
  generator = np.random.default_rng(seed)
  leaves, treedef = jax.tree.flatten(state)
  return jax.tree.unflatten(treedef, [
      jnp.asarray(np.asarray(leaf, np.float32) + scale * generator.normal(size=leaf.shape),
                  leaf.dtype) for leaf in leaves])


@pytest.fixture(autouse=True, scope="module")
def _no_eager_sharding():
  with nnx.use_eager_sharding(False):
    yield


@pytest.fixture(scope="module")
def tiny():
  """(graphdef, fresh state, perturbed state, jitted forward(state, *inputs))."""
  model = nnx.jit(lambda: _build(CONFIG))()
  graphdef, state = nnx.split(model)
  perturbed = _perturbed(state)

  @jax.jit
  def forward(state, latents, timesteps, context, context_mask, pooled, token_mask, segment_ids):
    return nnx.merge(graphdef, state)(latents, timesteps, context, context_mask, pooled,
                                      token_mask=token_mask, segment_ids=segment_ids)

  return graphdef, state, perturbed, forward


def _inputs(frames: int = FRAMES, seed: int = 3) -> dict[str, jax.Array]:
  keys = jax.random.split(jax.random.key(seed), 4)
  tokens = frames * (SIZE // 2) ** 2
  return dict(
      latents=jax.random.normal(keys[0], (BATCH, frames, SIZE, SIZE, CONFIG.in_channels)),
      timesteps=jax.random.uniform(keys[1], (BATCH, frames)),
      context=jax.random.normal(keys[2], (BATCH, CONTEXT, CONFIG.context_dim)),
      context_mask=jnp.arange(CONTEXT)[None, :] < jnp.asarray([[CONTEXT], [3]]),
      pooled=jax.random.normal(keys[3], (BATCH, CONFIG.pooled_dim)),
      token_mask=jnp.ones((BATCH, tokens), bool),
      segment_ids=jnp.zeros((BATCH, tokens), jnp.int32))


def _run(tiny, state=None, **overrides) -> np.ndarray:
  _, _, perturbed, forward = tiny
  inputs = {**_inputs(), **overrides}
  return np.asarray(forward(perturbed if state is None else state, **inputs))


def test_fresh_model_outputs_zeros_and_perturbed_model_does_not(tiny):
  _, fresh, _, _ = tiny
  np.testing.assert_array_equal(_run(tiny, state=fresh), 0.0)  # adaLN-Zero + zero final layer
  out = _run(tiny)
  assert out.shape == (BATCH, FRAMES, SIZE, SIZE, CONFIG.in_channels)
  assert out.dtype == np.float32 and np.all(np.isfinite(out)) and np.abs(out).max() > 1e-3


def test_fresh_block_is_the_identity():
  block = dit.DiTBlock(CONFIG, rngs=_rngs())
  graphdef, state = nnx.split(block)
  x = jax.random.normal(jax.random.key(4), (BATCH, FRAMES * 16, CONFIG.width))
  cond = jax.random.normal(jax.random.key(5), (BATCH, FRAMES, CONFIG.width))
  context = jax.random.normal(jax.random.key(6), (BATCH, CONTEXT, CONFIG.context_dim))

  @jax.jit
  def apply(state, x):
    return nnx.merge(graphdef, state)(
        x, cond, context=context, context_mask=jnp.ones((BATCH, 1, 1, CONTEXT), bool),
        has_context=jnp.ones((BATCH,), bool), self_mask=None, rope=None)

  np.testing.assert_array_equal(apply(state, x), x)
  assert not np.allclose(apply(_perturbed(state), x), x, atol=1e-3)


def test_one_frame_and_many_frames_through_the_same_model(tiny):
  _, _, perturbed, forward = tiny
  assert _run(tiny).shape == (BATCH, FRAMES, SIZE, SIZE, CONFIG.in_channels)
  # One frame, and an aspect ratio unlike `input_size`: RoPE takes the actual coordinates.
  image = dict(_inputs(), latents=jnp.ones((BATCH, 1, 4, 12, CONFIG.in_channels)),
               timesteps=jnp.full((BATCH, 1), 0.5), token_mask=jnp.ones((BATCH, 12), bool),
               segment_ids=jnp.zeros((BATCH, 12), jnp.int32))
  out = forward(perturbed, **image)
  assert out.shape == (BATCH, 1, 4, 12, CONFIG.in_channels)
  assert np.all(np.isfinite(out)) and np.abs(out).max() > 1e-3


def test_each_frame_is_modulated_by_its_own_timestep(tiny):
  # One segment per frame keeps attention inside each frame, so a frame's output can only
  # change with its own timestep if the modulation is per frame.
  per_frame = jnp.repeat(jnp.arange(FRAMES, dtype=jnp.int32), 16)[None].repeat(BATCH, 0)
  timesteps = _inputs()["timesteps"]
  base = _run(tiny, segment_ids=per_frame, timesteps=timesteps)
  moved = _run(tiny, segment_ids=per_frame, timesteps=timesteps.at[:, 2].set(0.0))
  changed = np.abs(moved - base).max(axis=(2, 3, 4)) > 1e-4  # [B, frames]
  np.testing.assert_array_equal(changed, np.tile([False, False, True, False, False], (BATCH, 1)))


def test_timesteps_per_sample_broadcast_over_frames(tiny):
  graphdef, _, perturbed, _ = tiny
  model = nnx.merge(graphdef, perturbed)
  per_sample = jnp.asarray([0.2, 0.9])
  pooled = _inputs()["pooled"]
  broadcast = model._conditioning(per_sample, pooled, BATCH, FRAMES, FRAMES)
  uniform = model._conditioning(per_sample[:, None].repeat(FRAMES, 1), pooled, BATCH, FRAMES,
                                FRAMES)
  np.testing.assert_array_equal(broadcast, uniform)
  assert broadcast.shape == (BATCH, FRAMES, CONFIG.width)
  assert not np.allclose(broadcast[0], broadcast[1])


def test_cross_attention_mask_ignores_padded_text(tiny):
  inputs = _inputs()
  base = _run(tiny)
  noisy_padding = inputs["context"].at[1, 3:].set(50.0)  # sample 1 has 3 valid tokens
  np.testing.assert_allclose(_run(tiny, context=noisy_padding), base, atol=1e-5)
  noisy_valid = inputs["context"].at[1, 0].set(50.0)
  assert np.abs(_run(tiny, context=noisy_valid)[1] - base[1]).max() > 1e-3


def test_fully_masked_context_is_no_context(tiny):
  _, _, perturbed, forward = tiny
  inputs = _inputs()
  dropped = _run(tiny, context_mask=jnp.zeros((BATCH, CONTEXT), bool))
  assert np.all(np.isfinite(dropped))
  no_text = jax.jit(lambda s, latents, timesteps, pooled: forward.__wrapped__(
      s, latents, timesteps, None, None, pooled, None, None))(
          perturbed, inputs["latents"], inputs["timesteps"], inputs["pooled"])
  np.testing.assert_allclose(dropped, no_text, atol=1e-5)
  assert np.abs(dropped - _run(tiny)).max() > 1e-3  # and text does matter when present


def test_padded_video_tokens_do_not_reach_the_others(tiny):
  inputs = _inputs()
  token_mask = jnp.arange(FRAMES * 16)[None].repeat(BATCH, 0) < 4 * 16  # last frame is padding
  base = _run(tiny, token_mask=token_mask)
  changed = _run(tiny, token_mask=token_mask,
                 latents=inputs["latents"].at[:, 4].set(3.0))
  np.testing.assert_allclose(changed[:, :4], base[:, :4], atol=1e-5)


def test_segments_do_not_attend_to_each_other(tiny):
  inputs = _inputs()
  segments = (jnp.arange(FRAMES * 16)[None].repeat(BATCH, 0) >= 2 * 16).astype(jnp.int32)
  base = _run(tiny, segment_ids=segments)
  changed = _run(tiny, segment_ids=segments, latents=inputs["latents"].at[:, 2:].set(-2.0))
  np.testing.assert_allclose(changed[:, :2], base[:, :2], atol=1e-5)
  assert np.abs(_run(tiny)[:, :2] - base[:, :2]).max() > 1e-4  # one segment differs


def test_kept_tokens_are_computed_from_the_kept_tokens_alone(tiny):
  """Masked training's forward: keeping every token is the full forward; a kept subset is
  computed from that subset alone (what the dropped tokens hold does not reach it), at the kept
  tokens' own positions."""
  graphdef, _, perturbed, _ = tiny
  inputs = _inputs()
  per_frame = (SIZE // 2) ** 2

  @jax.jit
  def kept_in(state, latents, keep):
    return nnx.merge(graphdef, state).kept_velocity(
        latents, inputs["timesteps"], inputs["context"], inputs["context_mask"],
        inputs["pooled"], keep=keep)

  def kept(latents, keep):
    return kept_in(perturbed, latents, keep)

  full = layers.patchify(jnp.asarray(_run(tiny)), CONFIG.patch_size)
  every = jnp.broadcast_to(jnp.arange(per_frame), (BATCH, FRAMES, per_frame))
  np.testing.assert_allclose(kept(inputs["latents"], every), full, atol=1e-5)

  keep = flow.kept_tokens(jax.random.key(7), BATCH, FRAMES, per_frame, 0.5)
  flat = (keep + per_frame * jnp.arange(FRAMES)[None, :, None]).reshape(BATCH, -1)
  is_kept = jnp.zeros((BATCH, FRAMES * per_frame), bool).at[
      jnp.arange(BATCH)[:, None], flat].set(True)
  tokens = layers.patchify(inputs["latents"], CONFIG.patch_size)
  dropped_changed = layers.unpatchify(jnp.where(is_kept[..., None], tokens, 3.0),
                                      (FRAMES, SIZE // 2, SIZE // 2), CONFIG.patch_size)
  base = kept(inputs["latents"], keep)
  assert base.shape == (BATCH, FRAMES * per_frame // 2, 4 * CONFIG.in_channels)
  np.testing.assert_allclose(kept(dropped_changed, keep), base, atol=1e-6)
  # The full forward's kept rows differ: there, every token attended to all of them.
  assert np.abs(base - layers.gather_tokens(full, keep)).max() > 1e-4
  # With the dropped tokens masked out as keys, the full forward is the kept one: every kept
  # token sits at its own position, whatever the subset.
  masked_full = layers.patchify(jnp.asarray(_run(tiny, token_mask=is_kept)), CONFIG.patch_size)
  np.testing.assert_allclose(layers.gather_tokens(masked_full, keep), base, atol=1e-5)
  with pytest.raises(ValueError, match="keep must be"):
    kept(inputs["latents"], keep[:, :3])


@pytest.mark.parametrize("backend", [b for b in attention.available_backends() if b != "xla"])
def test_attention_backend_matches_the_reference(backend):
  config = dataclasses.replace(CONFIG, dtype="bfloat16")
  outputs = {}
  for name in ("xla", backend):
    model = _build(dataclasses.replace(config, attention_backend=name))
    graphdef, state = nnx.split(model)
    state = _perturbed(state)
    inputs = _inputs()
    outputs[name] = np.asarray(jax.jit(lambda s: nnx.merge(graphdef, s)(
        inputs["latents"], inputs["timesteps"], inputs["context"], inputs["context_mask"],
        inputs["pooled"]))(state))
  np.testing.assert_allclose(outputs[backend], outputs["xla"], atol=2e-2, rtol=2e-2)


def test_sharded_forward_equals_single_device(tiny, devices):
  graphdef, _, perturbed, forward = tiny
  single = _run(tiny)
  mesh_config = mesh_lib.MeshConfig(data=2, fsdp=2, tensor=2)
  mesh = mesh_lib.create_mesh(mesh_config, devices)
  shardings = sharding_lib.tree_shardings(perturbed, mesh, mesh_config.rules)
  sharded_state = jax.device_put(perturbed, shardings)
  kernel = sharded_state["blocks"]["mlp"]["up"]["kernel"]
  assert kernel.sharding.spec == PartitionSpec(None, "fsdp", "tensor")  # (layers, embed, mlp)
  batch = NamedSharding(mesh, PartitionSpec("data"))
  inputs = {k: jax.device_put(v, batch) for k, v in _inputs().items()}
  sharded = forward(sharded_state, **inputs)
  np.testing.assert_allclose(np.asarray(sharded), single, atol=1e-5)


def test_scanned_blocks_equal_a_python_loop_of_the_same_blocks(tiny):
  graphdef, _, perturbed, _ = tiny
  looped_model = nnx.eval_shape(
      lambda: _build(dataclasses.replace(CONFIG, scan_layers=False, remat="full")))
  looped_graphdef, looped_state = nnx.split(looped_model)
  stacked = nnx.to_pure_dict(perturbed)
  looped = nnx.to_pure_dict(looped_state)
  for key in stacked:
    if key != "blocks":
      looped[key] = stacked[key]
  for index in range(CONFIG.depth):
    looped["blocks"][index] = jax.tree.map(lambda x: x[index], stacked["blocks"])
  nnx.replace_by_pure_dict(looped_state, looped)
  inputs = _inputs()
  inputs.pop("token_mask"), inputs.pop("segment_ids")
  looped_out = jax.jit(lambda s: nnx.merge(looped_graphdef, s)(**inputs))(looped_state)
  np.testing.assert_allclose(looped_out, _run(tiny), atol=1e-5)


def _logical_axes(config):
  model = nnx.eval_shape(lambda: _build(config))
  params = nnx.state(model, nnx.Param)
  found = []
  for path, variable in jax.tree_util.tree_leaves_with_path(
      params, is_leaf=lambda x: isinstance(x, nnx.Variable)):
    axes = variable.get_metadata("out_sharding", None)
    found.append((jax.tree_util.keystr(path), axes, variable.get_value().shape))
  return found


@pytest.mark.parametrize("config", [CONFIG, dit.DiTConfig.small(), dit.DiTConfig.paper("S", 2)],
                         ids=["tiny", "small", "paper_s2"])
def test_every_parameter_has_logical_axis_names(config):
  for path, axes, shape in _logical_axes(config):
    assert axes is not None and len(axes) == len(shape), f"{path}: {axes} for shape {shape}"
    assert set(axes) <= LOGICAL_AXES, f"{path}: unknown logical axes {axes}"
    if path.startswith("['blocks']"):
      assert axes[0] == "layers", f"{path}: the scanned layer axis must come first"


def test_dtypes_are_configurable():
  config = dataclasses.replace(CONFIG, dtype="bfloat16", param_dtype="bfloat16")
  model = nnx.eval_shape(lambda: _build(config))
  dtypes = {leaf.dtype for leaf in jax.tree.leaves(nnx.state(model, nnx.Param))}
  # Parameters are stored in bfloat16, except the float32 modulation and norm layers.
  assert jnp.dtype(jnp.bfloat16) in dtypes
  out = jax.eval_shape(lambda: _build(config)(**_inputs()))
  assert out.dtype == jnp.float32


def test_input_errors_say_what_to_do():
  inputs = _inputs()
  with pytest.raises(ValueError, match="latent width 7 is not divisible by the patch size 2"):
    jax.eval_shape(lambda: _build(CONFIG)(jnp.zeros((1, 1, 8, 7, 8)), jnp.zeros((1,))))
  with pytest.raises(ValueError, match=r"timesteps must be \[batch\] or \[batch, latent frames\]"):
    jax.eval_shape(lambda: _build(CONFIG)(inputs["latents"], jnp.zeros((BATCH, 3))))
  no_cross = dataclasses.replace(CONFIG, context_dim=None)
  with pytest.raises(ValueError, match="context was given but config.dit.context_dim is None"):
    jax.eval_shape(lambda: _build(no_cross)(inputs["latents"], inputs["timesteps"],
                                            inputs["context"]))
  with pytest.raises(ValueError, match="num_heads dividing width"):
    dit.DiTConfig(width=100, num_heads=3)


def test_gradients_reach_every_parameter_through_scan_and_remat(tiny):
  _, _, perturbed, _ = tiny
  config = dataclasses.replace(CONFIG, remat="dots_no_batch")
  graphdef = nnx.split(nnx.eval_shape(lambda: _build(config)))[0]
  inputs = _inputs()
  inputs.pop("token_mask"), inputs.pop("segment_ids")

  @jax.jit
  def gradients(state):
    return jax.grad(lambda s: jnp.mean(nnx.merge(graphdef, s)(**inputs) ** 2))(state)

  grads = gradients(perturbed)
  for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
    assert np.abs(np.asarray(leaf)).max() > 0, f"no gradient reaches {jax.tree_util.keystr(path)}"


def test_named_scopes_label_blocks_attention_and_mlp_for_profiles():
  model = nnx.eval_shape(lambda: _build(CONFIG))
  graphdef, state = nnx.split(model)
  s = jax.ShapeDtypeStruct
  jaxpr = jax.make_jaxpr(lambda state, *inputs: nnx.merge(graphdef, state)(*inputs))(
      state, s((1, FRAMES, SIZE, SIZE, CONFIG.in_channels), jnp.float32), s((1,), jnp.float32),
      s((1, CONTEXT, CONFIG.context_dim), jnp.float32), None,
      s((1, CONFIG.pooled_dim), jnp.float32))
  stacks = named_scopes.name_stacks(jaxpr.jaxpr)
  for scope in ("patch_embed", "conditioning", "dit_block/self_attention",
                "dit_block/cross_attention", "dit_block/mlp", "final_layer"):
    assert any(stack.startswith(scope) for stack in stacks), (scope, sorted(stacks))


def test_a_fresh_step_size_embedding_leaves_the_teacher_unchanged(tiny):
  """The student (`step_size_embedding`) built from the same key holds the teacher's parameters
  plus a step embedding whose zero output layer changes nothing, whatever the step size; once
  that layer is nonzero, the step size matters."""
  _, teacher_state, perturbed, forward = tiny
  student = _build(dataclasses.replace(CONFIG, step_size_embedding=True))
  student_graph, student_state = nnx.split(student)
  student_state = nnx.merge_state(student_state, perturbed)  # the teacher's trained weights
  paths = lambda state: {path for path, _ in nnx.to_flat_state(state)}
  assert paths(student_state) - paths(teacher_state) == {
          ("step_embed", "linear_in", "kernel"), ("step_embed", "linear_in", "bias"),
          ("step_embed", "linear_out", "kernel"), ("step_embed", "linear_out", "bias")}

  @jax.jit
  def student_forward(state, step_sizes, **inputs):
    return nnx.merge(student_graph, state)(**{k: inputs[k] for k in (
        "latents", "timesteps", "context", "context_mask", "pooled")}, step_sizes=step_sizes)

  teacher = _run(tiny)
  inputs = _inputs()
  for sizes in ([1.0, 0.25], [0.5, 0.05]):
    np.testing.assert_array_equal(
        np.asarray(student_forward(student_state, jnp.asarray(sizes), **inputs)), teacher)
  nudged = _perturbed(student_state)  # every parameter moves, the step embedding's output too
  small, large = (np.asarray(student_forward(nudged, jnp.asarray(sizes), **inputs))
                  for sizes in ([0.05, 0.05], [1.0, 1.0]))
  assert np.abs(small - large).max() > 1e-4


def test_step_sizes_are_required_by_a_student_and_refused_by_a_teacher():
  student = _build(dataclasses.replace(CONFIG, step_size_embedding=True, depth=1))
  teacher = _build(dataclasses.replace(CONFIG, depth=1))
  inputs = _inputs()
  args = [inputs[k] for k in ("latents", "timesteps", "context", "context_mask", "pooled")]
  with pytest.raises(ValueError, match="needs step_sizes of shape"):
    student(*args)
  with pytest.raises(ValueError, match="only a distilled student"):
    teacher(*args, step_sizes=jnp.ones((BATCH,)))
