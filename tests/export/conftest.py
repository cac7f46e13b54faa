"""Fixtures of the export tests: the tiny workdir's models, with weights that compute something."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from videogen.export import command
from videogen.export import components as components_lib
from videogen.export import torch_format
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



def perturb_by_fan_in(module: nnx.Module, seed: int, scale: float = 1.0) -> None:
  """Adds noise of std scale / sqrt(fan-in) to every kernel and scale * 0.1 to vectors, in place:
  outputs of order one, so that a wrong layer shows in an absolute error."""
  state = nnx.state(module, nnx.Param)
  leaves, tree = jax.tree.flatten(state)
  key = jax.random.key(seed)
  noisy = []
  for index, leaf in enumerate(leaves):
    fan_in = int(np.prod(leaf.shape[:-1])) if leaf.ndim >= 2 else 0
    std = scale / np.sqrt(fan_in) if fan_in else 0.1 * scale
    noise = jax.random.normal(jax.random.fold_in(key, index), leaf.shape, jnp.float32)
    noisy.append((leaf.astype(jnp.float32) + std * noise).astype(leaf.dtype))
  nnx.update(module, jax.tree.unflatten(tree, noisy))


# 17 frames take three sampling windows of the 9-frame training clip: the later ones are given the
# last latents made so far, re-encoded from their pixels, and the last is padded.
TORCH_SHAPE = (17, 32, 32)
TORCH_BATCHES = (1, 2)
TORCH_STEPS = 4


@pytest.fixture(scope="session")
def torch_export(tiny_workdir, tmp_path_factory) -> tuple[components_lib.Job, dict]:
  """(job, result): `torch_format.write(job, job.out/torch)` of the tiny workdir's weights
  perturbed by `perturb_by_fan_in`, at TORCH_SHAPE, sampling with TORCH_STEPS steps."""
  experiment = workdir_lib.saved_experiment(tiny_workdir, workdir_lib.DIT_STAGE)
  loaded = pipeline.load(tiny_workdir, experiment, mesh=command.one_device_mesh(),
                         progress=False)
  for seed, module in enumerate((loaded.text_encoder, loaded.dit, loaded.autoencoder)):
    perturb_by_fan_in(module, seed)
  # Fewer steps than the config's (the end-to-end check passes them on to the torch generate).
  generator = pipeline.Generator(
      autoencoder=loaded.autoencoder, text_encoder=loaded.text_encoder, dit=loaded.dit,
      tokenizer=loaded.tokenizer, flow_config=loaded.flow_config,
      sample_config=dataclasses.replace(loaded.sample_config, num_steps=TORCH_STEPS),
      progress=False, **pipeline.experiment_defaults(experiment))
  frames, height, width = TORCH_SHAPE
  job = components_lib.Job(
      generator=generator, experiment=experiment, workdir=tiny_workdir,
      components=tuple(components_lib.build(generator, frames=frames, height=height,
                                            width=width)),
      out=str(tmp_path_factory.mktemp("torch_export")), batches=TORCH_BATCHES)
  return job, torch_format.write(job, os.path.join(job.out, "torch"))


@pytest.fixture(scope="session")
def perturb():
  """`perturb_by_fan_in`, for tests that build models of their own."""
  return perturb_by_fan_in
