"""PyTorch: OUT/torch/, the standalone PyTorch modules with the weights, checked against JAX.

    exported = videogen_torch.load("OUT/torch")                   # no jax, no videogen
    velocity = exported.dit(latents, timesteps, context, context_mask, pooled)
    video = exported.generate("a red circle moving right", seed=0)   # uint8 [T, H, W, 3]

`write(job, directory)`, the `export` command's writer, writes the folder:
`{text_encoder,dit,encoder,decoder}.safetensors` (float32, named as `videogen.export.weights`
documents), `tokenizer.model`, `config.json` (the experiment) and `videogen_torch.py` (the
standalone implementation, copied verbatim). It then loads the folder with the copied file and
measures, as the other formats do, each module against its component's JAX function
(`videogen.export.components`: the same positional inputs, in the same order) on random inputs at
each batch size, and `generate` against the JAX pipeline from the same initial noise (the
end-to-end check: the fraction of pixels within 1 uint8 level).

Shapes: the modules take any batch, frames, height and width the models can take.

torch, safetensors and sentencepiece are optional (the `export` extra) and imported where they
are used.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import time
import types
from typing import Any, Sequence

import jax
import numpy as np

from videogen import workdir as workdir_lib
from videogen.diffusion import samplers
from videogen.export import components as components_lib
from videogen.export import weights
from videogen.generate import pipeline
from videogen.generate import windows as windows_lib
from videogen.train import config_changes

PACKAGES: tuple[str, ...] = ("torch", "safetensors", "sentencepiece")
MODULE_FILE = "videogen_torch.py"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"
SUFFIX = ".safetensors"
# What the end-to-end check asks for.
PARITY_PROMPT = "a red circle moving right"
PARITY_SEED = 0


def _require(module: str) -> types.ModuleType:
  """Imports an optional export dependency, or says which extra installs it."""
  try:
    return importlib.import_module(module)
  except ImportError as error:
    raise ImportError(f"the torch export needs {module.split('.')[0]}: pip install -e "
                      f"'.[export]'") from error


# ------------------------------------------------------------------------------------------------
# Writing OUT/torch.
# ------------------------------------------------------------------------------------------------


def write_files(job: components_lib.Job, directory: str) -> dict[str, dict[str, Any]]:
  """Writes the folder (see the module docstring), one component's host copy at a time.

  Returns:
    {component: {"file": relative to job.out, "bytes": int, "tensors": int}}.
  """
  safetensors_numpy = _require("safetensors.numpy")
  os.makedirs(directory, exist_ok=True)
  rows = {}
  for component in weights.COMPONENTS:
    path = os.path.join(directory, component + SUFFIX)
    tensors = weights.component_tensors(job.generator, component)
    safetensors_numpy.save_file(tensors, path, metadata={"component": component,
                                                         "layout": "videogen-jax"})
    rows[component] = {"file": os.path.relpath(path, job.out), "bytes": os.path.getsize(path),
                       "tensors": len(tensors)}
    del tensors  # the next component's host copy replaces this one
  # pipeline.load has checked that the tokenizer exists.
  shutil.copyfile(workdir_lib.tokenizer_path(job.workdir, job.experiment),
                  os.path.join(directory, TOKENIZER_FILE))
  with open(os.path.join(directory, CONFIG_FILE), "w") as file:
    json.dump(config_changes.experiment_json(job.experiment), file, indent=2)
  shutil.copyfile(os.path.join(os.path.dirname(os.path.abspath(__file__)), MODULE_FILE),
                  os.path.join(directory, MODULE_FILE))
  return rows


def load_exported_module(directory: str) -> types.ModuleType:
  """Imports DIRECTORY/videogen_torch.py (the exported copy, not the package's)."""
  path = os.path.join(directory, MODULE_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: write the export first (torch_format.write)")
  _require("torch")
  spec = importlib.util.spec_from_file_location("videogen_torch_export", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# ------------------------------------------------------------------------------------------------
# Parity: each module against its component's JAX function, generate against the pipeline.
# ------------------------------------------------------------------------------------------------


def run_module(module: Any, component: components_lib.Component,
               inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
  """The module's outputs at the component's positional inputs, as numpy arrays.

  Raises:
    ValueError: the outputs differ from the component's in number or dtype.
  """
  torch = _require("torch")
  with torch.no_grad():
    outputs = module(*(torch.from_numpy(np.ascontiguousarray(x)) for x in inputs))
  outputs = [x.numpy() for x in (outputs if isinstance(outputs, tuple) else (outputs,))]
  got = [str(x.dtype) for x in outputs]
  want = [spec.dtype for spec in component.outputs]
  if got != want:
    raise ValueError(f"the torch {component.name} returned dtypes {got}, the component's outputs "
                     f"{[spec.name for spec in component.outputs]} are {want}")
  return outputs


def parity(module: Any, component: components_lib.Component,
           batches: Sequence[int]) -> dict[str, Any]:
  """Worst errors of the torch module against the JAX function (`components.parity`)."""
  return components_lib.parity(component, lambda inputs: run_module(module, component, inputs),
                               batches)


def jax_initial_noise(generator: pipeline.Generator, *, frames: int, height: int, width: int,
                      seed: int) -> tuple[list[np.ndarray], tuple[int, int, int]]:
  """The initial noise of each sampling window that `generator.generate(seed=seed)` draws for a
  text-to-video clip, and the (frames, height, width) it rounds the request to."""
  factor = generator.temporal_factor
  frames = windows_lib.round_frames(frames, factor, continuing=False)
  height, width = generator.fit_size(height, width)
  plan = windows_lib.plan_windows(generator.latent_frames(frames),
                                  window=generator.window_latents, overlap=generator.overlap,
                                  history=0, suffix=0)
  key = jax.random.fold_in(jax.random.key(seed), 0)  # the generator's stream 0
  spatial = generator.autoencoder.config.spatial_factor
  noises = [np.asarray(samplers.initial_noise(
      jax.random.fold_in(key, index),
      (1, window.total, height // spatial, width // spatial,
       generator.autoencoder.config.latent_channels)))
            for index, window in enumerate(plan)]
  return noises, (frames, height, width)


def end_to_end(exported: Any, generator: pipeline.Generator, *, frames: int, height: int,
               width: int, seed: int = PARITY_SEED, prompt: str = PARITY_PROMPT) -> dict[str, Any]:
  """The exported `generate` against `generator.generate` from the same initial noise.

  Both sample with the generator's settings (steps and guidance are passed on; the method, shift
  and negative prompt must be the export's config.json's) and are compared pixel by pixel.

  Args:
    exported: `videogen_torch.load` of the export.
    generator: the JAX `Generator` of the same weights.
    frames, height, width: the clip (longer than the training clip: several sampling windows).

  Returns:
    {"prompt", "seed", "steps", "shape", "fraction_within_1", "max_abs_difference"}.

  Raises:
    ValueError: the export's sampler config differs from the generator's in what `generate`
      cannot override, or the videos differ in shape.
  """
  sampler = generator.sample_config
  saved = exported.sample_config
  for field, value in (("method", sampler.method), ("shift", sampler.shift),
                       ("negative_prompt", sampler.negative_prompt)):
    if saved.get(field) != value:
      raise ValueError(f"the export's config.json samples with {field} = {saved.get(field)!r} but "
                       f"the generator with {value!r}: export the experiment the generator uses")
  noises, shape = jax_initial_noise(generator, frames=frames, height=height, width=width,
                                    seed=seed)
  expected = generator.generate(prompt, frames=shape[0], height=shape[1], width=shape[2],
                                seed=seed)
  video = exported.generate(prompt, noise=noises, steps=sampler.num_steps,
                            guidance=sampler.guidance_scale, frames=shape[0], height=shape[1],
                            width=shape[2])
  if video.shape != expected.shape:
    raise ValueError(f"the exported generate made {video.shape}, the JAX pipeline "
                     f"{expected.shape}")
  difference = np.abs(video.astype(np.int16) - expected.astype(np.int16))
  return {"prompt": prompt, "seed": seed, "steps": sampler.num_steps, "shape": list(video.shape),
          "fraction_within_1": float(np.mean(difference <= 1)),
          "max_abs_difference": int(difference.max())}


def write(job: components_lib.Job, directory: str) -> dict[str, Any]:
  """Writes DIRECTORY (OUT/torch) and checks it; returns the report's rows.

  Returns:
    {"components": {name: {"file", "bytes", "tensors", "dynamic_axes", "parity", "seconds"}},
    "end_to_end": `end_to_end` at the example clip (the components' frames, height, width)}.
  """
  start = time.perf_counter()
  files = write_files(job, directory)
  exported = load_exported_module(directory).load(directory)
  seconds = time.perf_counter() - start  # writing and loading, shared by the components
  rows = {}
  for component in job.components:
    start = time.perf_counter()
    checked = parity(getattr(exported, component.name), component, job.batches)
    rows[component.name] = {
        **files[component.name],
        # The modules take any size the models can: every axis that has a symbol may vary.
        "dynamic_axes": {spec.name: [axis.name for axis in spec.axes if axis.symbol]
                         for spec in component.inputs},
        "parity": checked,
        "seconds": round(time.perf_counter() - start + seconds / len(job.components), 2)}
  encoder = next(component for component in job.components if component.name == "encoder")
  frames, height, width = encoder.inputs[0].shape()[1:4]
  return {"components": rows,
          "end_to_end": end_to_end(exported, job.generator, frames=frames, height=height,
                                   width=width)}
