"""The PyTorch export (OUT/torch/) and its parity with the JAX models.

    entries = torch_format.write_torch(out_dir, model, experiment, workdir)
    parity = torch_format.torch_parity(out_dir, generator, batch=2, frames=9, height=32, width=32,
                                       seed=0)

`write_torch` writes OUT/torch/: `{text_encoder,dit,encoder,decoder}.safetensors` (float32, named
as `videogen.export.weights` documents), `tokenizer.model`, `config.json` (the experiment) and
`videogen_torch.py` (the standalone PyTorch implementation, copied verbatim). `torch_parity`
loads that folder with the copied file and measures each module against the JAX function with
the same inputs (`jax_functions`) on random inputs (`random_inputs`), and `generate` against the
JAX pipeline from the same initial noise.

Errors are measured per output as the max absolute difference and that divided by the largest
absolute reference value (the relative error; elementwise ratios explode where the reference
crosses zero); a component's figures are the largest over its outputs.

torch and safetensors are optional (the `export` extra) and imported where they are used.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import shutil
import types
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from videogen.diffusion import samplers
from videogen.export import weights
from videogen.generate import pipeline
from videogen.generate import windows as windows_lib
from videogen.train import config_changes

TORCH_DIR = "torch"
MODULE_FILE = "videogen_torch.py"
CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"
# The positional inputs and the outputs of each exported function, in order (the JAX functions
# of `jax_functions`, the PyTorch modules' forward, and the names other formats give them).
INPUT_NAMES: dict[str, tuple[str, ...]] = {
    "text_encoder": ("ids", "mask"),
    "dit": ("latents", "timesteps", "context", "context_mask", "pooled"),
    "encoder": ("video",),
    "decoder": ("latents",),
}
OUTPUT_NAMES: dict[str, tuple[str, ...]] = {
    "text_encoder": ("context", "pooled"),
    "dit": ("velocity",),
    "encoder": ("latents",),
    "decoder": ("video",),
}
# What the end-to-end check asks for.
PARITY_PROMPT = "a red circle moving right"
PARITY_TOLERANCE = 1e-4


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


def write_torch(out_dir: str, model: Any, experiment: experiment_lib.Experiment,
                workdir: str) -> dict[str, dict[str, Any]]:
  """Writes OUT/torch/ (see the module docstring), one component's tensors at a time.

  Args:
    out_dir: the export's folder (OUT); torch/ is created in it.
    model: the restored `TextToVideoModel` (or a `Generator`, which holds its modules).
    experiment: the experiment the weights were trained with (written as config.json).
    workdir: the run's directory, for its tokenizer.

  Returns:
    {component: {"file": "torch/<component>.safetensors", "size_bytes": int, "tensors": int}}.

  Raises:
    FileNotFoundError: the run has no tokenizer.
    ImportError: safetensors is not installed.
  """
  safetensors_numpy = _require("safetensors.numpy")
  tokenizer = workdir_lib.tokenizer_path(workdir, experiment)
  if not os.path.exists(tokenizer):
    raise FileNotFoundError(f"tokenizer {tokenizer} is missing: the dit stage writes it when it "
                            f"trains (`{workdir_lib.train_command(workdir)}`)")
  directory = os.path.join(out_dir, TORCH_DIR)
  os.makedirs(directory, exist_ok=True)
  entries = {}
  for component in weights.COMPONENTS:
    path = os.path.join(directory, f"{component}.safetensors")
    tensors = weights.component_tensors(model, component)
    safetensors_numpy.save_file(tensors, path, metadata={"component": component,
                                                         "layout": "videogen-jax"})
    entries[component] = {"file": os.path.join(TORCH_DIR, f"{component}.safetensors"),
                          "size_bytes": os.path.getsize(path), "tensors": len(tensors)}
    del tensors  # the next component's host copy replaces this one
  shutil.copyfile(tokenizer, os.path.join(directory, TOKENIZER_FILE))
  with open(os.path.join(directory, CONFIG_FILE), "w") as f:
    json.dump(config_changes.experiment_json(experiment), f, indent=2)
  shutil.copyfile(os.path.join(os.path.dirname(os.path.abspath(__file__)), MODULE_FILE),
                  os.path.join(directory, MODULE_FILE))
  return entries


def load_exported_module(out_dir: str) -> types.ModuleType:
  """Imports OUT/torch/videogen_torch.py (the exported copy, not the package's)."""
  path = os.path.join(out_dir, TORCH_DIR, MODULE_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} is missing: write the export first (write_torch)")
  _require("torch")
  spec = importlib.util.spec_from_file_location("videogen_torch_export", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


# ------------------------------------------------------------------------------------------------
# The JAX functions the exported modules reproduce, and random inputs for them.
# ------------------------------------------------------------------------------------------------


class JaxFunction(NamedTuple):
  """A component's pure JAX function `fn(state, *inputs) -> outputs` (jitted) and its parameters.

  Calling it runs `fn(state, *inputs)`; `fn` itself (parameters as its first argument, so that
  NNX transforms inside see them traced) is what a serializer such as `jax.export` takes.
  """
  fn: Callable[..., tuple[jax.Array, ...]]
  state: nnx.State

  def __call__(self, *inputs: Any) -> tuple[jax.Array, ...]:
    return self.fn(self.state, *inputs)


def jax_functions(generator: pipeline.Generator) -> dict[str, JaxFunction]:
  """Per component, the JAX function of `INPUT_NAMES` -> a tuple of `OUTPUT_NAMES`.

  They compute what the pipeline's jitted functions compute (pipeline.py `_apply_text_encoder`,
  `_apply_dit`, `_encode_video`, `_decode_chunk`), with two differences: the encoder and decoder
  run the clip in one pass (equal to the pipeline's chunks), and the decoder returns the float32
  video before `pixels.to_uint8`.
  """
  text_graph, text_state = nnx.split(generator.text_encoder)
  dit_graph, dit_state = nnx.split(generator.dit)
  ae_graph, ae_state = nnx.split(generator.autoencoder)

  def text_encoder(state, ids, mask):
    return tuple(nnx.merge(text_graph, state)(ids, mask))

  def dit(state, latents, timesteps, context, context_mask, pooled):
    model = nnx.merge(dit_graph, state)
    pooled = pooled if model.config.pooled_dim is not None else None
    return (model(latents, timesteps, context, context_mask, pooled),)

  def encoder(state, video):
    model = nnx.merge(ae_graph, state)
    mean, _ = model.encode(video)
    return (model.normalize_latents(mean),)

  def decoder(state, latents):
    model = nnx.merge(ae_graph, state)
    return (model.decode(model.denormalize_latents(latents)),)

  return {"text_encoder": JaxFunction(jax.jit(text_encoder), text_state),
          "dit": JaxFunction(jax.jit(dit), dit_state),
          "encoder": JaxFunction(jax.jit(encoder), ae_state),
          "decoder": JaxFunction(jax.jit(decoder), ae_state)}


def _caption_mask(rng: np.random.Generator, batch: int, length: int) -> np.ndarray:
  """Prefix masks of random lengths; the last of several rows is the null caption (all False)."""
  lengths = rng.integers(1, length + 1, size=batch)
  if batch > 1:
    lengths[-1] = 0
  return np.arange(length)[None, :] < lengths[:, None]


def random_inputs(generator: pipeline.Generator, component: str, *, batch: int, frames: int,
                  height: int, width: int, seed: int) -> dict[str, np.ndarray]:
  """Random inputs of one component, by `INPUT_NAMES`, for a frames x height x width clip.

  ids are uniform over the vocabulary, masks prefixes of random lengths (a null caption among
  several rows), latents and context standard normal, timesteps uniform in [0, 1) with one frame
  at 0 (a given frame), the video uniform in [-1, 1].
  """
  rng = np.random.default_rng(seed)
  # latent_shape raises for a clip the autoencoder cannot take, saying what would fit.
  latent = (batch, *generator.autoencoder.latent_shape(frames, height, width))
  text = generator.text_encoder.config
  length = generator.tokenizer.max_length
  if component == "text_encoder":
    return {"ids": rng.integers(0, text.vocab_size, size=(batch, length)).astype(np.int32),
            "mask": _caption_mask(rng, batch, length)}
  if component == "dit":
    timesteps = rng.uniform(0.0, 1.0, size=latent[:2]).astype(np.float32)
    timesteps[0, 0] = 0.0
    pooled_dim = generator.dit.config.pooled_dim or text.width
    return {"latents": rng.standard_normal(latent, np.float32),
            "timesteps": timesteps,
            "context": rng.standard_normal((batch, length, text.width), np.float32),
            "context_mask": _caption_mask(rng, batch, length),
            "pooled": rng.standard_normal((batch, pooled_dim), np.float32)}
  if component == "encoder":
    return {"video": rng.uniform(-1.0, 1.0, size=(batch, frames, height, width, 3)).astype(
        np.float32)}
  if component == "decoder":
    return {"latents": rng.standard_normal(latent, np.float32)}
  raise ValueError(f"unknown component {component!r}; choose one of: "
                   f"{', '.join(weights.COMPONENTS)}")


def errors(outputs: tuple[np.ndarray, ...], references: tuple[np.ndarray, ...]) -> dict[str, float]:
  """{"max_abs_error", "max_rel_error", "max_abs_reference"} over paired outputs (see the module
  docstring); the last is the largest absolute reference value, what the relative error divides
  by (it shows that a tiny absolute error is not a tiny output's)."""
  abs_error = rel_error = reference_scale = 0.0
  for output, reference in zip(outputs, references, strict=True):
    output, reference = np.asarray(output, np.float64), np.asarray(reference, np.float64)
    if output.shape != reference.shape:
      raise ValueError(f"output shape {output.shape} differs from the reference's "
                       f"{reference.shape}")
    difference = float(np.max(np.abs(output - reference))) if output.size else 0.0
    scale = float(np.max(np.abs(reference))) if reference.size else 0.0
    abs_error = max(abs_error, difference)
    rel_error = max(rel_error, difference / scale if scale > 0 else difference)
    reference_scale = max(reference_scale, scale)
  return {"max_abs_error": abs_error, "max_rel_error": rel_error,
          "max_abs_reference": reference_scale}


# ------------------------------------------------------------------------------------------------
# Parity.
# ------------------------------------------------------------------------------------------------


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


def torch_parity(out_dir: str, generator: pipeline.Generator, *, batch: int, frames: int,
                 height: int, width: int, seed: int,
                 prompt: str = PARITY_PROMPT) -> dict[str, dict[str, Any]]:
  """Measures the exported PyTorch modules against the JAX ones (float32, on the CPU).

  Args:
    out_dir: the export's folder, with torch/ written by `write_torch` from the generator's
      weights and experiment.
    generator: the JAX `Generator` of the same weights (`pipeline.load(workdir)`).
    batch, frames, height, width: the components' random inputs (a frames x height x width clip).
    seed: of the random inputs and of the end-to-end noise.
    prompt: of the end-to-end check.

  Returns:
    {component: {"max_abs_error", "max_rel_error", "max_abs_reference", "within_tolerance"},
    "end_to_end":
    {"prompt", "shape", "fraction_within_1", "max_abs_difference"}}: `generate` of the export
    against `generator.generate` from the same initial noise, compared pixel by pixel (uint8),
    both with the generator's sampler settings (steps and guidance passed on; the method, shift
    and negative prompt must be config.json's).

  Raises:
    ValueError: the export's sampler config differs from the generator's in what `generate`
      cannot override.
  """
  torch = _require("torch")
  exported = load_exported_module(out_dir).load(os.path.join(out_dir, TORCH_DIR))
  functions = jax_functions(generator)
  report: dict[str, dict[str, Any]] = {}
  for component in weights.COMPONENTS:
    inputs = random_inputs(generator, component, batch=batch, frames=frames, height=height,
                           width=width, seed=seed)
    references = tuple(np.asarray(x) for x in functions[component](
        *(jnp.asarray(x) for x in inputs.values())))
    with torch.no_grad():
      outputs = getattr(exported, component)(*(torch.from_numpy(x) for x in inputs.values()))
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    measured = errors(tuple(o.numpy() for o in outputs), references)
    report[component] = {**measured,
                         "within_tolerance": measured["max_abs_error"] <= PARITY_TOLERANCE}

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
  report["end_to_end"] = {"prompt": prompt, "shape": list(video.shape),
                          "fraction_within_1": float(np.mean(difference <= 1)),
                          "max_abs_difference": int(difference.max())}
  return report
