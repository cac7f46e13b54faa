"""A trained model's weights as flat, named float32 tensors, one set per exported component.

    for component in weights.COMPONENTS:
      tensors = weights.component_tensors(model, component)   # {"blocks.0.mlp.up.kernel": ...}
      safetensors.numpy.save_file(tensors, f"{component}.safetensors")

Components and the modules they come from (`TextToVideoModel`, or a `Generator`, which holds the
same three attributes):

  text_encoder   model.text_encoder           `TextEncoder` (text mode)
  dit            model.dit                    `DiT`
  encoder        model.autoencoder.encoder    `Encoder` (the latent scaling is in the config)
  decoder        model.autoencoder.decoder    `Decoder`

Tensor names: the Flax NNX path of each parameter inside its component, joined with ".", e.g.
`blocks.0.attention.query.kernel`, `final_norm.scale`, `middle.block1.conv1.kernel`,
`upsamples.0.conv.bias`. Layouts are the JAX ones: a dense kernel is [*in, *out] (a query
projection [width, heads, head_dim], an attention output [heads, head_dim, width]), a 3D
convolution kernel [kt, kh, kw, in, out], a skip projection [in, out]. The transformer's blocks,
which `DiTConfig.scan_layers` stacks along a leading layer axis, are split into one set per
layer, `blocks.{i}.<path>`, so the names are the same with scan_layers on or off. These names are
the `state_dict` keys of the PyTorch modules in `videogen_torch.py`.

Memory: each component's tensors are gathered to the host one at a time and cast to float32
(parameters stored in bfloat16 are widened), so at most one component is held twice (on the
device and on the host) while it is written.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import nnx

COMPONENTS: tuple[str, ...] = ("text_encoder", "dit", "encoder", "decoder")


def component_module(model: Any, component: str) -> nnx.Module:
  """The NNX module of `component` in a `TextToVideoModel` (or a `Generator`)."""
  if component == "text_encoder":
    return model.text_encoder
  if component == "dit":
    return model.dit
  if component == "encoder":
    return model.autoencoder.encoder
  if component == "decoder":
    return model.autoencoder.decoder
  raise ValueError(f"unknown component {component!r}; choose one of: {', '.join(COMPONENTS)}")


def _stacked_layers(component: str, module: nnx.Module) -> int | None:
  """The depth of the stacked blocks of a scanned transformer, else None."""
  config = getattr(module, "config", None)
  if component == "dit" and getattr(config, "scan_layers", False):
    return config.depth
  return None


def component_tensors(model: Any, component: str) -> dict[str, np.ndarray]:
  """The named float32 tensors of one component (see the module docstring for the names).

  Args:
    model: a `TextToVideoModel` or anything with its `text_encoder`, `dit` and `autoencoder`.
    component: one of `COMPONENTS`.

  Returns:
    name -> float32 NumPy array (C-contiguous), in name order.

  Raises:
    ValueError: the component holds a variable that is not a parameter (nothing to export for
      it would be silently wrong), or an unknown component.
  """
  module = component_module(model, component)
  if component == "text_encoder" and getattr(module.config, "mode", "text") != "text":
    raise ValueError(f"the text encoder is in {module.config.mode!r} mode; only 'text' mode "
                     f"exports (class mode exists for parameter counts only)")
  depth = _stacked_layers(component, module)
  tensors: dict[str, np.ndarray] = {}
  for path, variable in nnx.to_flat_state(nnx.state(module)):
    name = ".".join(str(part) for part in path)
    if not isinstance(variable, nnx.Param):
      raise ValueError(f"{component} holds {type(variable).__name__} {name!r}, which is not a "
                       f"parameter: export only knows parameters")
    value = np.array(jax.device_get(variable[...]), np.float32)  # a writable host copy
    if depth is not None and path[0] == "blocks":
      rest = ".".join(str(part) for part in path[1:])
      if value.shape[:1] != (depth,):
        raise ValueError(f"{name} has shape {value.shape}; stacked blocks need a leading layer "
                         f"axis of {depth}")
      for layer in range(depth):
        tensors[f"blocks.{layer}.{rest}"] = np.ascontiguousarray(value[layer])
    else:
      tensors[name] = value
  return dict(sorted(tensors.items()))
