"""The four exported components: their JAX functions with the weights closed over, and their I/O.

    components = components_lib.build(generator, frames=9, height=32, width=32)
    for component in components:            # text_encoder, dit, encoder, decoder
      outputs = jax.jit(component.function)(*component.example_inputs(batch=2))

Every format (StableHLO, ONNX, PyTorch) exports the same four functions with the same positional
inputs, in this order, and the same outputs:

  text_encoder(ids int32 [B, L] in [0, vocab), mask bool [B, L])
      -> (context float32 [B, L, D], pooled float32 [B, D])
  dit(latents float32 [B, t, h, w, C], timesteps float32 [B, t] in [0, 1],
      context float32 [B, L, D], context_mask bool [B, L], pooled float32 [B, D])
      -> velocity float32 [B, t, h, w, C]     (no `pooled` when config.dit.pooled_dim is None)
  encoder(video float32 [B, T, H, W, 3] in [-1, 1]) -> latents float32 [B, t, h, w, C]
  decoder(latents float32 [B, t, h, w, C]) -> video float32 [B, T, H, W, 3]

They are the computations of the Generator's jitted kernels (`videogen.generate.pipeline`): the
encoder returns the posterior mean normalised for the transformer (`normalize_latents`), the
decoder takes normalised latents and returns the decoder's output in [-1, 1], unclipped (frames
are `pixels.to_uint8` of it: round((clip(v, -1, 1) + 1) * 127.5)). The encoder and the decoder
run in one pass; the pipeline's chunks (`encode_chunked`, the decoder's carried frames) are a
memory schedule whose result equals one pass.

Weights. The functions close over the modules' parameter arrays themselves (no copy is made
here): an exported artifact carries its weights as constants and needs nothing but its inputs.
Each format then holds one component's serialised copy at a time (see `videogen.export.command`).

Shapes. T = 1 + F k frames (F the temporal compression), H and W multiples of the spatial
compression times the transformer's patch; L is the tokenizer's max_length. Each axis carries
the expression that `jax.export` may keep symbolic (`Axis.symbol`); formats that cannot keep an
axis symbolic use the example size given on the command line.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from videogen import experiment as experiment_lib
from videogen.generate import pipeline

NAMES: tuple[str, ...] = ("text_encoder", "dit", "encoder", "decoder")
BATCH = "batch"


@dataclasses.dataclass(frozen=True)
class Axis:
  """One axis of an input or output.

  Attributes:
    name: what it counts: "batch", "frames", "height", "width", "tokens", "channels", ...
    size: the example size (the command line's shape; batch: --batch).
    symbol: the `jax.export` expression when the axis may vary, e.g. "b", "1 + 2*k", "4*h";
      None when it is fixed by the weights (channels, the tokenizer's length).
  """
  name: str
  size: int
  symbol: str | None = None


@dataclasses.dataclass(frozen=True)
class Tensor:
  """An input or output: its name, axes, dtype, and the range its values must lie in.

  Attributes:
    value_range: [low, high) for integer inputs (token ids), [low, high] for float inputs with a
      meaningful range (timesteps, pixels); None otherwise.
  """
  name: str
  axes: tuple[Axis, ...]
  dtype: str
  value_range: tuple[float, float] | None = None
  about: str = ""

  def shape(self, batch: int | None = None) -> tuple[int, ...]:
    """The example shape, with the batch axis set to `batch` when given."""
    return tuple(batch if batch is not None and axis.name == BATCH else axis.size
                 for axis in self.axes)

  def describe(self) -> dict[str, Any]:
    """The report's entry: name, shape ("batch" for the batch axis), dtype, range, meaning."""
    entry: dict[str, Any] = {
        "name": self.name, "dtype": self.dtype,
        "shape": [BATCH if axis.name == BATCH else axis.size for axis in self.axes],
        "axes": [axis.name for axis in self.axes]}
    if self.value_range is not None:
      entry["range"] = list(self.value_range)
    if self.about:
      entry["about"] = self.about
    return entry


@dataclasses.dataclass(frozen=True)
class Component:
  """One exported function: `function(*inputs) -> tuple of outputs`, weights closed over."""
  name: str
  function: Callable[..., tuple[jax.Array, ...]]
  inputs: tuple[Tensor, ...]
  outputs: tuple[Tensor, ...]
  about: str

  def example_inputs(self, batch: int, seed: int = 0) -> list[np.ndarray]:
    """Random inputs of batch size `batch` inside each input's range (see `random_input`)."""
    rng = np.random.default_rng(seed)
    return [random_input(spec, spec.shape(batch), rng) for spec in self.inputs]

  def describe(self) -> dict[str, Any]:
    return {"about": self.about, "inputs": [spec.describe() for spec in self.inputs],
            "outputs": [spec.describe() for spec in self.outputs]}


@dataclasses.dataclass(frozen=True)
class Job:
  """One export run, as the formats' writers see it (`writer(job, directory) -> report rows`).

  Attributes:
    generator: the trained models and the tokenizer (`pipeline.load`).
    experiment: the experiment they were trained with.
    workdir: the run's directory.
    components: `build(generator, ...)`, in `NAMES` order.
    out: the output root; the report names files relative to it.
    batches: the batch sizes at which parity is measured (two, so a fixed batch would show).
  """
  generator: pipeline.Generator
  experiment: experiment_lib.Experiment
  workdir: str
  components: tuple[Component, ...]
  out: str
  batches: tuple[int, ...]


def random_input(spec: Tensor, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
  """Random values a caller could give: ids in range, a mask of valid prefixes (as the tokenizer
  makes; at least one token), uniform values in a float range, standard normal otherwise."""
  if spec.dtype == "bool":
    lengths = rng.integers(1, shape[-1] + 1, size=shape[:-1])
    return np.arange(shape[-1]) < lengths[..., None]
  if np.issubdtype(np.dtype(spec.dtype), np.integer):
    low, high = spec.value_range
    return rng.integers(low, high, size=shape).astype(spec.dtype)
  if spec.value_range is not None:
    return rng.uniform(*spec.value_range, size=shape).astype(spec.dtype)
  return rng.standard_normal(shape).astype(spec.dtype)


# ------------------------------------------------------------------------------------------------
# Shapes.
# ------------------------------------------------------------------------------------------------


def default_shape(experiment: experiment_lib.Experiment) -> tuple[int, int, int]:
  """(frames, height, width) of the experiment's longest training clip (the Generator's default)."""
  return pipeline.experiment_defaults(experiment).get("default_shape", (9, 32, 32))


def check_shape(experiment: experiment_lib.Experiment, frames: int | None, height: int | None,
                width: int | None) -> tuple[int, int, int]:
  """The (frames, height, width) to export at: the given ones, else the training clip's.

  Raises:
    ValueError: a size the models cannot take, saying which sizes they can.
  """
  default = default_shape(experiment)
  frames, height, width = (default[i] if value is None else value
                           for i, value in enumerate((frames, height, width)))
  temporal = experiment.autoencoder.temporal_factor
  patch_t, patch_h, patch_w = experiment.dit.patch_size

  def takes(count: int) -> bool:
    return count >= 1 and not (count - 1) % temporal and not (1 + (count - 1) // temporal) % patch_t

  if not takes(frames):
    below = next((n for n in range(frames, 0, -1) if takes(n)), None)
    above = next(n for n in range(max(frames, 1), frames + 2 * temporal * patch_t + 2) if takes(n))
    patch = (f", the transformer's temporal patch {patch_t} dividing 1 + k" if patch_t > 1
             else "")
    raise ValueError(f"--frames={frames}: the models take 1 + {temporal}k frames (temporal "
                     f"compression {temporal}{patch}): use {above}"
                     + (f" or {below}" if below else ""))
  for name, size, patch in (("height", height, patch_h), ("width", width, patch_w)):
    multiple = experiment.autoencoder.spatial_factor * patch
    if size < multiple or size % multiple:
      below, above = size // multiple * multiple, (size // multiple + 1) * multiple
      raise ValueError(f"--{name}={size}: must be a multiple of {multiple} (spatial compression "
                       f"{experiment.autoencoder.spatial_factor} x patch {patch}): use {above}"
                       + (f" or {below}" if below else ""))
  return frames, height, width


# ------------------------------------------------------------------------------------------------
# The components.
# ------------------------------------------------------------------------------------------------


def _closed_over(module: nnx.Module,
                 body: Callable[..., Any]) -> Callable[..., tuple[jax.Array, ...]]:
  """`body(module, *inputs)` as a function of the inputs alone, the module's arrays closed over.

  The module is rebuilt from its flattened arrays inside each trace: nnx transforms (the DiT's
  scan over blocks) refuse variables created outside the trace they run in.
  """
  graphdef, state = nnx.split(module)
  leaves, treedef = jax.tree.flatten(state)

  def function(*inputs: jax.Array) -> tuple[jax.Array, ...]:
    outputs = body(nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves)), *inputs)
    return tuple(outputs) if isinstance(outputs, (tuple, list)) else (outputs,)

  return function


def _text_encoder(model, ids, mask):
  return model(ids, mask)


def _dit(model, latents, timesteps, context, context_mask, pooled=None):
  return model(latents, timesteps, context, context_mask, pooled)


def _encoder(model, video):
  mean, _ = model.encode(video)
  return model.normalize_latents(mean)


def _decoder(model, latents):
  latents = model.denormalize_latents(latents).astype(jnp.dtype(model.config.dtype))
  video, _ = model.decoder(latents)
  return video.astype(jnp.float32)


def build(generator: pipeline.Generator, *, frames: int, height: int, width: int,
          batch: int = 1) -> list[Component]:
  """The four components of a generator, at an example shape (checked by `check_shape`).

  Args:
    generator: the trained models (`pipeline.load`).
    frames, height, width: the example video shape; also the fixed shape of formats whose
      frames, height and width cannot vary.
    batch: the example batch size.
  """
  autoencoder, text_encoder, dit = generator.autoencoder, generator.text_encoder, generator.dit
  ae_config, text_config, dit_config = autoencoder.config, text_encoder.config, dit.config
  temporal, spatial = ae_config.temporal_factor, ae_config.spatial_factor
  patch_t, patch_h, patch_w = dit_config.patch_size
  latent_t, latent_h, latent_w, channels = autoencoder.latent_shape(frames, height, width)
  length = generator.tokenizer.max_length
  width_text = text_config.width

  # Symbols count what may vary freely (k groups of frames, h x w latents or patches), so that
  # every size a model needs divisible is a multiple by construction.
  b = Axis(BATCH, batch, "b")
  video_axes = (b, Axis("frames", frames, f"1 + {temporal}*k"),
                Axis("height", height, f"{spatial}*h"), Axis("width", width, f"{spatial}*w"),
                Axis("channels", 3))
  latent_axes = (b, Axis("latent_frames", latent_t, "t"), Axis("latent_height", latent_h, "h"),
                 Axis("latent_width", latent_w, "w"), Axis("channels", channels))
  dit_axes = (b, Axis("latent_frames", latent_t, f"{patch_t}*t"),
              Axis("latent_height", latent_h, f"{patch_h}*h"),
              Axis("latent_width", latent_w, f"{patch_w}*w"), Axis("channels", channels))
  tokens = Axis("tokens", length)
  vocab = text_config.vocab_size

  text_inputs = (
      Tensor("ids", (b, tokens), "int32", (0, vocab),
             "sentencepiece ids (tokenizer.model), padded with pad_id to max_length"),
      Tensor("mask", (b, tokens), "bool", about="True at the caption's tokens, False at padding"),
  )
  text_outputs = (
      Tensor("context", (b, tokens, Axis("embed", width_text)), "float32",
             about="token embeddings, zero at padding"),
      Tensor("pooled", (b, Axis("embed", width_text)), "float32",
             about="mean of the valid tokens' embeddings"),
  )
  dit_inputs = [
      Tensor("latents", dit_axes, "float32",
             about="noisy normalised latents x_t = (1 - t) x0 + t noise"),
      Tensor("timesteps", dit_axes[:2], "float32", (0.0, 1.0),
             "per latent frame: 1 is pure noise, 0 a clean (given) frame"),
      Tensor("context", text_outputs[0].axes, "float32", about="text_encoder's context"),
      Tensor("context_mask", (b, tokens), "bool", about="text_encoder's mask input"),
  ]
  if dit_config.pooled_dim is not None:
    dit_inputs.append(Tensor("pooled", text_outputs[1].axes, "float32",
                             about="text_encoder's pooled"))
  return [
      Component("text_encoder", _closed_over(text_encoder, _text_encoder), text_inputs,
                text_outputs, "caption tokens -> the transformer's conditioning"),
      Component("dit", _closed_over(dit, _dit), tuple(dit_inputs),
                (Tensor("velocity", dit_axes, "float32",
                        about="d x_t / d t = noise - x0 (flow matching)"),),
                "the flow velocity at noisy latents; an Euler step is x -= dt * velocity"),
      Component("encoder", _closed_over(autoencoder, _encoder),
                (Tensor("video", video_axes, "float32", (-1.0, 1.0),
                        "frames as uint8 / 127.5 - 1"),),
                (Tensor("latents", latent_axes, "float32", about="normalised posterior mean"),),
                "video -> normalised latents (the VAE encoder's mean)"),
      Component("decoder", _closed_over(autoencoder, _decoder),
                (Tensor("latents", latent_axes, "float32", about="normalised latents"),),
                (Tensor("video", video_axes, "float32", (-1.0, 1.0),
                        "unclipped; uint8 = round((clip(v, -1, 1) + 1) * 127.5)"),),
                "normalised latents -> video"),
  ]


# ------------------------------------------------------------------------------------------------
# Parity.
# ------------------------------------------------------------------------------------------------


def errors(reference: list[Any], outputs: list[Any]) -> dict[str, float]:
  """Worst errors of `outputs` against `reference` (lists of arrays, in the same order).

  max_abs is max |output - reference|; max_rel is max_abs over max |reference| of that output (an
  error relative to the output's scale, not per element, so values near zero do not inflate it).
  """
  if len(reference) != len(outputs):
    raise ValueError(f"{len(outputs)} outputs, expected {len(reference)}")
  max_abs = max_rel = 0.0
  for want, got in zip(reference, outputs):
    want, got = np.asarray(want, np.float64), np.asarray(got, np.float64)
    if want.shape != got.shape:
      raise ValueError(f"an output has shape {got.shape}, expected {want.shape}")
    error = float(np.max(np.abs(want - got))) if want.size else 0.0
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    max_abs = max(max_abs, error)
    max_rel = max(max_rel, error / max(scale, np.finfo(np.float32).tiny))
  return {"max_abs": max_abs, "max_rel": max_rel}


def parity(component: Component, run: Callable[[list[np.ndarray]], Sequence[Any]],
           batches: Sequence[int]) -> dict[str, Any]:
  """Worst `errors` of an exported `run(inputs) -> outputs` against the JAX function, on the
  component's random inputs at each batch size (the same inputs for every format)."""
  reference = jax.jit(component.function)
  worst = {"max_abs": 0.0, "max_rel": 0.0}
  for batch in batches:
    inputs = component.example_inputs(batch, seed=batch)
    measured = errors([np.asarray(x) for x in reference(*inputs)],
                      [np.asarray(x) for x in run(inputs)])
    worst = {key: max(worst[key], measured[key]) for key in worst}
  return {**worst, "batches": list(batches)}
