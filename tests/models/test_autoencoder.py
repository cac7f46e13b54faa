"""videogen/models/autoencoder.py: shapes, causality, chunking, tiling, KL, gradients, sharding."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from videogen import config as config_lib
from videogen.models import autoencoder as ae
from videogen.parallel import mesh as mesh_lib
from videogen.parallel import sharding as sharding_lib

from tests.helpers import named_scopes

# 4x4x4 compression, attention in the middle: the full feature set at a tiny width.
SMALL = ae.AutoencoderConfig(
    base_channels=8, channel_multipliers=(1, 2, 2), num_res_blocks=1,
    spatial_downsample=(True, True), temporal_downsample=(True, True), latent_channels=4,
    middle_attention=True, attention_heads=2, attention_backend="xla")
# 2x4x4 with a 2x2 patch fold: the tiny preset's layout.
PATCHED = dataclasses.replace(
    SMALL, patch_size=2, channel_multipliers=(1, 2), spatial_downsample=(True,),
    temporal_downsample=(True,))
# No down-sampling and no attention: a small receptive field, so tiles with a margin are exact.
LOCAL = dataclasses.replace(
    SMALL, patch_size=4, channel_multipliers=(1,), spatial_downsample=(), temporal_downsample=(),
    middle_attention=False)


@functools.lru_cache(maxsize=None)
def _model(config: ae.AutoencoderConfig, seed: int = 0) -> ae.VideoAutoencoder:
  with nnx.use_eager_sharding(False):
    return ae.VideoAutoencoder(config, rngs=nnx.Rngs(seed))


@functools.lru_cache(maxsize=None)
def _jitted(config: ae.AutoencoderConfig, method: str, options: tuple = ()):
  graphdef, state = nnx.split(_model(config))
  run = jax.jit(lambda state, x: getattr(nnx.merge(graphdef, state), method)(x, **dict(options)))
  return functools.partial(run, state)


def _jit(model, method, **kwargs):
  """model.method(x) as a jitted function of x, shared by every test (compiled once per shape)."""
  return _jitted(model.config, method, tuple(sorted(kwargs.items())))


def _video(shape, seed=0):
  return jax.random.uniform(jax.random.key(seed), shape, minval=-1.0, maxval=1.0)


@pytest.mark.parametrize("frames,height,width", [
    (1, 16, 16), (5, 8, 24), (9, 24, 8), (17, 12, 20),  # every length, several aspect ratios
])
def test_shapes(frames, height, width):
  model = _model(SMALL)
  # Traced, not compiled: the numerics are checked by the tests below.
  reconstruction, mean, logvar = jax.eval_shape(
      functools.partial(model, sample_posterior=False),
      jax.ShapeDtypeStruct((2, frames, height, width, 3), jnp.float32))
  latent = (2, 1 + (frames - 1) // 4, height // 4, width // 4, 4)
  assert mean.shape == logvar.shape == latent
  assert model.latent_shape(frames, height, width) == latent[1:]
  assert reconstruction.shape == (2, frames, height, width, 3)
  assert mean.dtype == reconstruction.dtype == jnp.float32


def test_patched_shapes_and_compression():
  model = _model(PATCHED)
  assert model.compression == "2x4x4"
  reconstruction, mean, _ = jax.eval_shape(functools.partial(model, sample_posterior=False),
                                           jax.ShapeDtypeStruct((1, 5, 8, 12, 3), jnp.float32))
  assert mean.shape == (1, 3, 2, 3, 4) and reconstruction.shape == (1, 5, 8, 12, 3)


def test_presets():
  assert ae.AutoencoderConfig.tiny().temporal_factor == 2
  assert ae.AutoencoderConfig.tiny().spatial_factor == 4
  assert ae.AutoencoderConfig.tiny().latent_channels == 8
  standard = nnx.eval_shape(lambda: _model.__wrapped__(ae.AutoencoderConfig.standard()))
  assert standard.compression == "4x8x8"
  assert standard.latent_shape(17, 256, 384) == (5, 32, 48, 16)


def test_config_round_trips_through_config_dict():
  config = ae.AutoencoderConfig.tiny()
  parsed = config_lib.parse(ae.AutoencoderConfig, config_lib.to_config_dict(config),
                            "config.autoencoder")
  assert parsed == config


def test_invalid_configs_say_what_to_change():
  with pytest.raises(ValueError, match="one per transition"):
    ae.AutoencoderConfig(channel_multipliers=(1, 2), spatial_downsample=(True, True),
                         temporal_downsample=(True,))
  with pytest.raises(ValueError, match="attention_heads"):
    dataclasses.replace(SMALL, attention_heads=3)
  with pytest.raises(ValueError, match="multiple of latent_channels=3"):
    dataclasses.replace(SMALL, latent_channels=3)
  with pytest.raises(ValueError, match="set shortcuts=False"):  # 8 x 8 folded vs 48 channels
    dataclasses.replace(SMALL, channel_multipliers=(1, 6, 6), attention_heads=1)
  dataclasses.replace(SMALL, channel_multipliers=(1, 6, 6), attention_heads=1, shortcuts=False)


@pytest.mark.parametrize("spatial,temporal,start", [
    (True, True, False), (True, False, True), (False, True, False), (True, True, True)])
@pytest.mark.parametrize("coarse,fine", [(8, 4), (4, 8), (6, 6)])
def test_fold_shortcut_undoes_unfold_shortcut(spatial, temporal, start, coarse, fine):
  """The decoder's shortcut puts each value where the encoder's takes it from.

  Folding an unfolded tensor gives it back exactly, except the first frame at the start of a
  video (the unfold drops one of its two copies, the fold pairs the first frame with itself).
  """
  latents = _video((2, 3, 4, 6, coarse))
  unfolded = ae.unfold_shortcut(latents, fine, spatial=spatial, temporal=temporal,
                                start_of_video=start)
  frames = (1 + 2 * 2 if start else 6) if temporal else 3
  assert unfolded.shape == (2, frames) + ((8, 12) if spatial else (4, 6)) + (fine,)
  folded = ae.fold_shortcut(unfolded, coarse, spatial=spatial, temporal=temporal,
                            start_of_video=start)
  assert folded.shape == latents.shape
  exact = slice(1, None) if start and temporal else slice(None)
  np.testing.assert_allclose(folded[:, exact], latents[:, exact], atol=1e-6)
  # Values move with their block: a change in one latent position stays in its 2x2 block.
  changed = ae.unfold_shortcut(latents.at[:, :, 1, 2].add(1.0), fine, spatial=spatial,
                               temporal=temporal, start_of_video=start)
  rows, cols = np.nonzero(np.any(np.asarray(changed != unfolded), axis=(0, 1, 4)))
  scale = 2 if spatial else 1
  assert set(rows) == set(range(scale, 2 * scale)) and set(cols) == set(range(2 * scale,
                                                                                3 * scale))


@pytest.mark.parametrize("frames,suggestion", [(8, "use 5 or 9 frames"), (2, "use 1 or 5 frames"),
                                               (0, "use 1 or 5 frames")])
def test_wrong_frame_count_names_the_nearest_valid_lengths(frames, suggestion):
  with pytest.raises(ValueError, match=suggestion):
    _model(SMALL).latent_shape(frames, 16, 16)


def test_wrong_frame_size_is_a_clear_error():
  with pytest.raises(ValueError, match="not divisible by the spatial compression 4"):
    _model(SMALL).encode(jnp.zeros((1, 5, 16, 18, 3)))


def test_encoder_is_causal():
  """Changing frame j changes no latent before j's group (frames 4(k-1)+1 .. 4k -> latent k)."""
  encode = _jit(_model(SMALL), "encode")
  video = _video((1, 9, 8, 8, 3))
  mean, logvar = encode(video)
  for frame in range(9):
    group = -(-frame // 4)  # ceil(frame / 4): the latent frame that first sees `frame`
    changed_mean, changed_logvar = encode(video.at[:, frame].set(_video((1, 8, 8, 3), seed=9)))
    np.testing.assert_array_equal(changed_mean[:, :group], mean[:, :group])
    np.testing.assert_array_equal(changed_logvar[:, :group], logvar[:, :group])
    assert np.abs(changed_mean[:, group] - mean[:, group]).max() > 1e-4, frame


def test_decoder_is_causal():
  """Changing latent frame k changes no video frame before its group."""
  decode = _jit(_model(SMALL), "decode")
  latents = _video((1, 3, 2, 2, 4))
  video = decode(latents)
  for latent_frame in range(3):
    first_frame = max(0, 4 * latent_frame - 3)
    changed = decode(latents.at[:, latent_frame].add(1.0))
    np.testing.assert_array_equal(changed[:, :first_frame], video[:, :first_frame])
    assert np.abs(changed[:, first_frame] - video[:, first_frame]).max() > 1e-4


def test_chunked_equals_one_pass():
  """17 frames = 5 latent frames in chunks of 2: a first chunk, a scanned one, a remainder."""
  model, chunk = _model(SMALL), 2
  video = _video((2, 17, 8, 12, 3), seed=1)
  mean, logvar = _jit(model, "encode")(video)
  chunked_mean, chunked_logvar = _jit(model, "encode_chunked", chunk_latent_frames=chunk)(video)
  np.testing.assert_allclose(chunked_mean, mean, atol=1e-5)
  np.testing.assert_allclose(chunked_logvar, logvar, atol=1e-5)
  decoded = _jit(model, "decode")(mean)
  chunked = _jit(model, "decode_chunked", chunk_latent_frames=chunk)(mean)
  assert chunked.shape == decoded.shape == video.shape
  np.testing.assert_allclose(chunked, decoded, atol=1e-5)


def test_spatial_tiles_with_enough_margin_equal_one_pass():
  """The receptive field of LOCAL spans 8 latents (encoder) and 10 (decoder) on each side."""
  model = _model(LOCAL)
  video = _video((1, 1, 12, 112, 3), seed=2)  # a 3 x 28 latent grid: 4 tiles of 8 along width
  mean, _ = _jit(model, "encode")(video)
  tiled, _ = _jit(model, "encode_chunked", chunk_latent_frames=1, tile_latents=8,
                  tile_margin_latents=8)(video)
  np.testing.assert_allclose(tiled, mean, atol=1e-5)
  decoded = _jit(model, "decode")(mean)
  tiled_video = _jit(model, "decode_chunked", chunk_latent_frames=1, tile_latents=8,
                     tile_margin_latents=10)(mean)
  np.testing.assert_allclose(tiled_video, decoded, atol=1e-5)
  # Without a margin the tile borders show: the tiling really tiles.
  seams, _ = _jit(model, "encode_chunked", chunk_latent_frames=1, tile_latents=8,
                  tile_margin_latents=0)(video)
  assert np.abs(seams - mean).max() > 1e-3


def test_kl_matches_numpy_reference():
  rng = np.random.default_rng(0)
  mean = rng.normal(size=(3, 2, 4, 5, 6)).astype(np.float32)
  logvar = rng.uniform(-4, 2, size=(3, 2, 4, 5, 6)).astype(np.float32)
  m, lv = mean.astype(np.float64), logvar.astype(np.float64)
  # KL(N(m, s^2) || N(0, 1)) = log(1 / s) + (s^2 + m^2) / 2 - 1/2, per element.
  expected = (np.log(1.0 / np.exp(0.5 * lv)) + (np.exp(lv) + m ** 2) / 2 - 0.5).mean(
      axis=(1, 2, 3, 4))
  np.testing.assert_allclose(ae.kl_divergence(mean, logvar), expected, rtol=1e-5)
  np.testing.assert_allclose(ae.kl_divergence(np.zeros_like(mean), np.zeros_like(logvar)), 0.0)


def test_posterior_sample_follows_mean_and_logvar():
  model = _model(SMALL)
  mean = jnp.full((4, 3, 8, 8, 4), 2.0)
  logvar = jnp.full((4, 3, 8, 8, 4), np.log(0.25))
  sample = model.sample(mean, logvar, jax.random.key(0))
  assert abs(float(sample.mean()) - 2.0) < 0.05 and abs(float(sample.std()) - 0.5) < 0.05
  with pytest.raises(ValueError, match="needs rng"):
    model(jnp.zeros((1, 1, 8, 8, 3)))


def test_gradients_reach_every_parameter():
  model = _model(SMALL)
  graphdef, params = nnx.split(model, nnx.Param)
  video = _video((1, 5, 8, 8, 3), seed=3)

  @jax.jit
  def loss(params):
    reconstruction, mean, logvar = nnx.merge(graphdef, params)(video, rng=jax.random.key(0))
    return jnp.mean(jnp.abs(reconstruction - video)) + jnp.mean(ae.kl_divergence(mean, logvar))

  grads = jax.grad(loss)(params)
  dead = [jax.tree_util.keystr(path) for path, g in jax.tree_util.tree_leaves_with_path(grads)
          if not np.abs(np.asarray(g)).max() > 0]
  assert not dead, f"no gradient reaches {dead}"


def test_every_parameter_has_logical_axis_names():
  _, params = nnx.split(_model(SMALL), nnx.Param)
  for path, variable in jax.tree_util.tree_leaves_with_path(
      params, is_leaf=lambda x: isinstance(x, nnx.Variable)):
    names = variable.get_metadata("out_sharding", None)
    assert names is not None and len(names) == variable.get_value().ndim, path
    assert set(names) <= {None, "conv_in", "conv_out", "norm", "embed", "heads", "kv"}, path


def test_sharded_forward_equals_single_device(devices):
  model = _model(SMALL)
  graphdef, state = nnx.split(model)
  video = _video((4, 5, 16, 16, 3), seed=4)
  forward = jax.jit(lambda state, video: nnx.merge(graphdef, state)(video,
                                                                   sample_posterior=False))
  expected = forward(state, video)

  mesh_config = mesh_lib.MeshConfig(data=2, fsdp=2, tensor=2)
  mesh, rules = mesh_lib.create_mesh(mesh_config, devices), mesh_config.rules
  shardings = sharding_lib.tree_shardings(state, mesh, rules)
  sharded_state = jax.device_put(state, shardings)
  split_over_devices = [v.sharding.spec for v in jax.tree.leaves(sharded_state)
                        if any(axis is not None for axis in v.sharding.spec)]
  assert split_over_devices, "no parameter was sharded: the test would prove nothing"
  sharded_video = jax.device_put(video, sharding_lib.batch_sharding(mesh, rules))
  got = forward(sharded_state, sharded_video)
  for g, e in zip(got, expected):
    np.testing.assert_allclose(g, e, atol=1e-5)


def test_bfloat16_compute_stays_close_and_returns_float32():
  config = dataclasses.replace(SMALL, dtype="bfloat16")
  reference = _model(SMALL)
  model = _model(config)
  assert jax.tree.leaves(nnx.state(model, nnx.Param))[0].dtype == jnp.float32
  video = _video((1, 5, 8, 8, 3), seed=5)
  mean, _ = _jit(model, "encode")(video)
  expected, _ = _jit(reference, "encode")(video)
  assert mean.dtype == jnp.float32
  assert np.abs(mean - expected).max() < 0.1 * np.abs(expected).max()
  assert np.abs(mean - expected).max() > 0  # bfloat16 really was used


def test_remat_changes_nothing_but_memory():
  def grads(remat):
    with nnx.use_eager_sharding(False):
      block = ae.ResidualBlock(4, 8, epsilon=1e-6, dtype=jnp.float32, param_dtype=jnp.float32,
                               remat=remat, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(block, nnx.Param)
    x = _video((1, 3, 4, 4, 4), seed=6)
    loss = lambda p, x: jnp.mean(jnp.square(nnx.merge(graphdef, p)(x)[0]))
    jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params, x))
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(params, x), jaxpr

  (remat_grads, remat_jaxpr), (grads_, jaxpr) = grads(True), grads(False)
  assert "checkpoint" in remat_jaxpr or "remat" in remat_jaxpr
  assert "checkpoint" not in jaxpr and "remat" not in jaxpr
  for g, e in zip(jax.tree.leaves(remat_grads), jax.tree.leaves(grads_)):
    np.testing.assert_allclose(g, e, atol=1e-6)


def test_latent_normalisation_round_trips():
  model = _model(dataclasses.replace(SMALL, scale_factor=0.5, shift_factor=0.25))
  latents = _video((1, 2, 2, 2, 4))
  np.testing.assert_allclose(model.normalize_latents(latents), (latents - 0.25) * 0.5)
  np.testing.assert_allclose(model.denormalize_latents(model.normalize_latents(latents)),
                             latents, atol=1e-6)


def test_named_scopes_label_levels_and_blocks_for_profiles():
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: ae.VideoAutoencoder(SMALL, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  jaxpr = jax.make_jaxpr(
      lambda state, video: nnx.merge(graphdef, state)(video, sample_posterior=False))(
          state, jax.ShapeDtypeStruct((1, 5, 16, 16, 3), jnp.float32))
  stacks = named_scopes.name_stacks(jaxpr.jaxpr)
  for scope in ("encoder/level0/residual_block", "encoder/level1/downsample",
                "encoder/middle/spatial_attention", "decoder/middle/residual_block",
                "decoder/level1/upsample", "decoder/level2/residual_block"):
    assert any(stack.startswith(scope) for stack in stacks), (scope, sorted(stacks))
