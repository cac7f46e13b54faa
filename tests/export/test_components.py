"""videogen/export/components.py: the exported functions are the Generator's computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from videogen import pixels
from videogen import workdir as workdir_lib
from videogen.export import components as components_lib


def _by_name(job):
  return {component.name: component for component in job.components}


def test_components_compute_what_the_generator_computes(export_job):
  generator, found = export_job.generator, _by_name(export_job)
  assert tuple(found) == components_lib.NAMES

  ids, mask = generator.tokenizer.encode(["a red circle moving right"])
  context, pooled = found["text_encoder"].function(jnp.asarray(ids), jnp.asarray(mask))
  cond = generator.encode_prompt("a red circle moving right")
  np.testing.assert_allclose(context, cond["context"], atol=1e-6)
  np.testing.assert_allclose(pooled, cond["pooled"], atol=1e-6)

  latents, timesteps = found["dit"].example_inputs(batch=1)[:2]
  velocity, = found["dit"].function(latents, timesteps, cond["context"], cond["context_mask"],
                                    cond["pooled"])
  expected = generator.velocity(jnp.asarray(latents), jnp.asarray(timesteps), cond)
  assert float(jnp.max(jnp.abs(expected))) > 1e-2  # the perturbed transformer computes something
  np.testing.assert_allclose(velocity, expected, atol=1e-5)

  # The pipeline encodes in chunks of latent frames and decodes with carried frames: one pass
  # must give the same latents and frames.
  frames = np.random.default_rng(0).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8)
  encoded, = found["encoder"].function(jnp.asarray(pixels.to_model_range(frames))[None])
  np.testing.assert_allclose(encoded, generator.encode(frames), atol=1e-5)
  decoded, = found["decoder"].function(encoded)
  video = pixels.to_uint8(np.asarray(decoded[0]))
  difference = np.abs(video.astype(int) - generator.decode(encoded).astype(int))
  assert difference.max() <= 1 and np.mean(difference == 0) > 0.999


def test_inputs_and_outputs_describe_shapes_dtypes_and_ranges(export_job):
  found = _by_name(export_job)
  vocab = export_job.generator.text_encoder.config.vocab_size
  ids = found["text_encoder"].inputs[0].describe()
  assert ids == {"name": "ids", "dtype": "int32", "shape": ["batch", 56], "axes": [
      "batch", "tokens"], "range": [0, vocab], "about": ids["about"]}
  assert [spec.name for spec in found["dit"].inputs] == [
      "latents", "timesteps", "context", "context_mask", "pooled"]
  assert found["dit"].inputs[0].describe()["shape"] == ["batch", 5, 8, 8, 8]
  assert found["dit"].inputs[1].value_range == (0.0, 1.0)
  assert found["encoder"].inputs[0].describe()["shape"] == ["batch", 9, 32, 32, 3]
  assert found["decoder"].outputs[0].describe()["shape"] == ["batch", 9, 32, 32, 3]
  # Random inputs respect the ranges: ids inside the table, masks with a valid first token.
  ids, mask = found["text_encoder"].example_inputs(batch=4)
  assert ids.shape == (4, 56) and 0 <= ids.min() and ids.max() < vocab
  assert mask.dtype == bool and mask[:, 0].all()
  video, = found["encoder"].example_inputs(batch=2)
  assert video.shape == (2, 9, 32, 32, 3) and -1 <= video.min() and video.max() <= 1


def test_check_shape_takes_the_training_clip_and_refuses_what_the_models_cannot_take(
    tiny_workdir):
  experiment = workdir_lib.saved_experiment(tiny_workdir, workdir_lib.DIT_STAGE)
  assert components_lib.check_shape(experiment, None, None, None) == (9, 32, 32)
  assert components_lib.check_shape(experiment, 5, 16, 48) == (5, 16, 48)
  with pytest.raises(ValueError, match=r"--frames=8: .* 1 \+ 2k frames .*: use 9 or 7$"):
    components_lib.check_shape(experiment, 8, None, None)
  # The autoencoder compresses 4x, the transformer's patch is 2: sizes are multiples of 8.
  with pytest.raises(ValueError, match=r"--height=28: must be a multiple of 8 .*: use 32 or 24$"):
    components_lib.check_shape(experiment, None, 28, None)
  with pytest.raises(ValueError, match=r"--width=4: must be a multiple of 8 .*: use 8$"):
    components_lib.check_shape(experiment, None, None, 4)


def test_errors_are_absolute_and_relative_to_the_output_scale():
  reference = [np.array([0.0, 2.0, -4.0]), np.array([[1.0]])]
  measured = components_lib.errors(reference, [np.array([0.0, 2.0, -4.01]), np.array([[1.0]])])
  assert measured["max_abs"] == pytest.approx(0.01)
  assert measured["max_rel"] == pytest.approx(0.01 / 4)
  with pytest.raises(ValueError, match=r"shape \(2,\), expected \(3,\)"):
    components_lib.errors(reference[:1], [np.zeros(2)])


def test_functions_close_over_the_weights_without_copying(export_job):
  dit = _by_name(export_job)["dit"]
  closure = {id(cell.cell_contents) for cell in dit.function.__closure__
             if isinstance(cell.cell_contents, list)}
  assert closure, "the function closes over the module's leaves"
  leaves = next(cell.cell_contents for cell in dit.function.__closure__
                if isinstance(cell.cell_contents, list))
  params = jax.tree.leaves(export_job.generator.dit)
  # The very arrays the module holds: an export adds one copy of its own, not two.
  assert {id(leaf) for leaf in leaves} >= {id(leaf) for leaf in params if hasattr(leaf, "shape")}
