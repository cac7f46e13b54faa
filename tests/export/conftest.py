"""Fixtures of the export tests: the tiny workdir's models, with weights that compute something."""

import jax
import pytest
from flax import nnx

from videogen.export import command
from videogen.export import components as components_lib
from videogen import workdir as workdir_lib
from videogen.generate import pipeline

# The example shape of the tiny workdir (its training clip) and the batch sizes parity runs at.
SHAPE = (9, 32, 32)
BATCHES = (1, 3)


def _perturbed(module: nnx.Module, seed: int) -> None:
  """Adds noise to every parameter in place: two training steps leave the transformer's
  zero-initialised layers (adaLN-Zero, the output layer) near zero, so its outputs would be too,
  and any export would match them."""
  state = nnx.state(module, nnx.Param)
  leaves, treedef = jax.tree.flatten(state)
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  noisy = [leaf + 0.05 * jax.random.normal(key, leaf.shape, leaf.dtype)
           for leaf, key in zip(leaves, keys)]
  nnx.update(module, jax.tree.unflatten(treedef, noisy))


@pytest.fixture(scope="session")
def export_generator(tiny_workdir) -> pipeline.Generator:
  """The tiny workdir's models on one device, every parameter perturbed (see `_perturbed`)."""
  loaded = pipeline.load(tiny_workdir, mesh=command.one_device_mesh(), progress=False)
  for seed, module in enumerate((loaded.text_encoder, loaded.dit, loaded.autoencoder)):
    _perturbed(module, seed)
  # A new Generator splits the perturbed modules again (the loaded one holds the old split).
  return pipeline.Generator(
      autoencoder=loaded.autoencoder, text_encoder=loaded.text_encoder, dit=loaded.dit,
      tokenizer=loaded.tokenizer, flow_config=loaded.flow_config,
      sample_config=loaded.sample_config, default_shape=loaded.default_shape, progress=False)


@pytest.fixture(scope="session")
def export_job(export_generator, tiny_workdir, tmp_path_factory) -> components_lib.Job:
  """The four components of `export_generator` at SHAPE, exporting under a fresh directory."""
  frames, height, width = SHAPE
  components = components_lib.build(export_generator, frames=frames, height=height, width=width)
  experiment = workdir_lib.saved_experiment(tiny_workdir, workdir_lib.DIT_STAGE)
  return components_lib.Job(generator=export_generator, experiment=experiment,
                            workdir=tiny_workdir,
                            components=tuple(components),
                            out=str(tmp_path_factory.mktemp("export")), batches=BATCHES)

