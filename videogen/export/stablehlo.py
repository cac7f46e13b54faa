"""Serialized StableHLO: OUT/stablehlo/<component>.stablehlo, runnable with JAX alone.

    exported = jax.export.deserialize(open("OUT/stablehlo/dit.stablehlo", "rb").read())
    velocity, = exported.call(latents, timesteps, context, context_mask, pooled)

Each file is a `jax.export` artifact of one component's function (`videogen.export.components`)
with the weights embedded as constants, so `call` needs only the inputs and no videogen code.

Shapes. The batch axis is always symbolic. Frames, height and width are symbolic too where the
model's code allows it (`jax.export` must decide every shape comparison for all sizes: the
encoder and the transformer take any valid size, the decoder's upsampling makes a comparison it
cannot decide for a symbolic frame count), else the command line's size; the report lists the
symbolic axes of each input. Platforms: an export traced on CPU uses only portable XLA ops (the
CPU forms of the 3D convolution and of attention), so it is lowered for cpu, cuda and tpu at once;
traced on an accelerator it may use that backend's kernels (cuDNN attention) and is lowered for
that backend only.

Memory: the artifact holds a copy of one component's weights (twice while it is serialised);
components are exported one at a time and each copy is dropped once written and checked.
"""

from __future__ import annotations

import os
import time
from typing import Any, Sequence

import jax

from videogen.export import components as components_lib

SUFFIX = ".stablehlo"
PORTABLE_PLATFORMS: tuple[str, ...] = ("cpu", "cuda", "tpu")
# Which axes may be symbolic, tried in this order: everything, everything but time, batch only.
_DYNAMIC_TRIALS: tuple[tuple[str, ...], ...] = (("*",), ("batch", "height", "width",
                                                         "latent_height", "latent_width"),
                                                 ("batch",))


def platforms() -> tuple[str, ...]:
  """The platforms an export made on this backend is lowered for (see the module docstring)."""
  backend = jax.default_backend()
  return PORTABLE_PLATFORMS if backend == "cpu" else (backend,)


def _specs(component: components_lib.Component,
           dynamic: tuple[str, ...]) -> list[jax.ShapeDtypeStruct]:
  """Input specs whose axes named in `dynamic` ("*": all that have a symbol) are symbolic."""
  scope = jax.export.SymbolicScope()
  specs = []
  for spec in component.inputs:
    dims = ", ".join(
        axis.symbol if axis.symbol and ("*" in dynamic or axis.name in dynamic) else str(axis.size)
        for axis in spec.axes)
    specs.append(jax.ShapeDtypeStruct(jax.export.symbolic_shape(dims, scope=scope), spec.dtype))
  return specs


def export(component: components_lib.Component) -> tuple[jax.export.Exported, dict[str, Any]]:
  """The component exported with as many symbolic axes as its code allows.

  Returns:
    (the Exported, {"dynamic_axes": {input: [axis names]}, "platforms": [...], and
    "fixed_because": why the other axes are fixed, when some are}).
  """
  reasons = []
  for dynamic in _DYNAMIC_TRIALS:
    try:
      exported = jax.export.export(jax.jit(component.function), platforms=platforms())(
          *_specs(component, dynamic))
    except jax.errors.InconclusiveDimensionOperation as error:
      reasons.append(str(error).splitlines()[0])
      continue
    info: dict[str, Any] = {
        "dynamic_axes": {spec.name: [axis.name for axis in spec.axes if axis.symbol and (
            "*" in dynamic or axis.name in dynamic)] for spec in component.inputs},
        "platforms": list(exported.platforms)}
    if reasons:
      info["fixed_because"] = reasons[0]
    return exported, info
  raise ValueError(f"{component.name} cannot be exported with a symbolic batch: {reasons[-1]}")


def parity(exported: jax.export.Exported, component: components_lib.Component,
           batches: Sequence[int]) -> dict[str, Any]:
  """Worst errors of the artifact against the JAX function (`components.parity`)."""
  return components_lib.parity(component, lambda inputs: exported.call(*inputs), batches)


def write(job: components_lib.Job, directory: str) -> dict[str, Any]:
  """Writes DIRECTORY/<component>.stablehlo for each component; returns the report's rows."""
  os.makedirs(directory, exist_ok=True)
  rows = {}
  for component in job.components:
    start = time.perf_counter()
    exported, info = export(component)
    path = os.path.join(directory, component.name + SUFFIX)
    serialized = exported.serialize()
    with open(path, "wb") as file:
      file.write(serialized)
    del exported  # the parity check runs what was written, deserialised
    checked = parity(jax.export.deserialize(serialized), component, job.batches)
    rows[component.name] = {"file": os.path.relpath(path, job.out), "bytes": len(serialized),
                            **info, "parity": checked,
                            "seconds": round(time.perf_counter() - start, 2)}
    del serialized
  return {"components": rows}
