r"""Parameter count and forward-pass cost of an experiment's model.

    python -m videogen.main summary --config=experiments/dit_paper.py:xl2

prints a table (text encoder, diffusion transformer, total) and, as its last line, one JSON object
`{"params": int, "gmacs": float, "gflops": float}` for one forward pass of one sample at the
latent size the `dit` section names (`input_size` x `in_channels`) and the text encoder's
`max_length` tokens.

How the cost is counted, and why:
- gmacs: multiply-accumulates of every matrix product and convolution in the traced forward
  program (its jaxpr, with each `scan` body counted once per iteration). Counted from the program
  rather than from a formula, so it cannot drift from the model code. This is the convention of
  the DiT paper's "Gflops" column (fvcore counts one fused multiply-add as one flop): DiT-XL/2
  comes to 118.62 here against the paper's 118.64, the paper's counter also charging a little for
  the LayerNorms and not for the patch embedding.
- gflops: XLA's own cost model (`jax.jit(...).lower(...).cost_analysis()["flops"]`) of the same
  forward with the layer scan unrolled (XLA counts a loop body once, whatever its trip count):
  two per multiply-add plus the elementwise arithmetic of norms, softmax and activations.
Nothing is allocated: models are built with `nnx.eval_shape`, so XL sizes summarise on a laptop.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Callable

import jax
import jax.extend as jex
import jax.numpy as jnp
import numpy as np
from flax import nnx

from videogen import exit_codes
from videogen import experiment as experiment_lib
from videogen.models import dit as dit_lib
from videogen.models import text_encoder as text_encoder_lib


@dataclasses.dataclass(frozen=True)
class Cost:
  """One component's size and forward cost for one sample."""
  name: str
  params: int
  macs: int
  flops: float


def count_params(state: Any) -> int:
  """Number of parameter values (nnx.Param) in a module or state, abstract or concrete."""
  if isinstance(state, nnx.Module):
    state = nnx.state(state, nnx.Param)
  return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(state)))


def _subjaxprs(params: dict[str, Any]) -> list[tuple[str, jex.core.Jaxpr]]:
  found = []
  for name, value in params.items():
    values = value if isinstance(value, (tuple, list)) else (value,)
    for item in values:
      if isinstance(item, jex.core.ClosedJaxpr):
        found.append((name, item.jaxpr))
      elif isinstance(item, jex.core.Jaxpr):
        found.append((name, item))
  return found


def count_macs(jaxpr: jex.core.Jaxpr | jex.core.ClosedJaxpr) -> int:
  """Multiply-accumulates of the dot_general and convolution operations of a jaxpr.

  A scan body counts `length` times, a cond the most expensive branch, a while loop body once
  (its trip count is unknown to the program), any other nested program (jit, remat, custom
  derivatives) once.
  """
  if isinstance(jaxpr, jex.core.ClosedJaxpr):
    jaxpr = jaxpr.jaxpr
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == "dot_general":
      (lhs_contracting, _), _ = eqn.params["dimension_numbers"]
      lhs_shape = eqn.invars[0].aval.shape
      contracted = math.prod(lhs_shape[i] for i in lhs_contracting)
      total += math.prod(eqn.outvars[0].aval.shape) * contracted
    elif name == "conv_general_dilated":
      rhs_shape = eqn.invars[1].aval.shape
      out_features_dim = eqn.params["dimension_numbers"].rhs_spec[0]
      per_output = math.prod(rhs_shape) // rhs_shape[out_features_dim]
      total += math.prod(eqn.outvars[0].aval.shape) * per_output
    else:
      inner = _subjaxprs(eqn.params)
      if name == "scan":
        total += eqn.params["length"] * sum(count_macs(j) for _, j in inner)
      elif name == "cond":
        total += max((count_macs(j) for _, j in inner), default=0)
      else:
        total += sum(count_macs(j) for _, j in inner)
  return total


def xla_flops(function: Callable[..., Any], *args: Any) -> float:
  """XLA's flop estimate of `function(*args)` (args may be `jax.ShapeDtypeStruct`s)."""
  analysis = jax.jit(function).lower(*args).cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older JAX: one dict per computation
    analysis = analysis[0] if analysis else {}
  return float((analysis or {}).get("flops", float("nan")))


def _measure(name: str, build: Callable[[], nnx.Module], inputs: tuple[Any, ...],
             with_flops: bool) -> Cost:
  """Params, MACs and XLA flops of `build()(*inputs)`, all from abstract values."""
  # No mesh here: keep the logical axis names as metadata instead of sharding eagerly.
  with nnx.use_eager_sharding(False):
    module = nnx.eval_shape(build)
  params = count_params(module)
  graphdef, state = nnx.split(module)

  def forward(state, *inputs):
    return nnx.merge(graphdef, state)(*inputs)

  macs = count_macs(jax.make_jaxpr(forward)(state, *inputs))
  flops = xla_flops(forward, state, *inputs) if with_flops else float("nan")
  return Cost(name, params, macs, flops)


def check_compatible(dit_config: dit_lib.DiTConfig,
                     text_config: text_encoder_lib.TextEncoderConfig | None) -> None:
  """Raises ValueError when the DiT cannot take the text encoder's outputs."""
  if text_config is None:
    return
  if dit_config.context_dim is not None and dit_config.context_dim != text_config.width:
    raise ValueError(f"config.dit.context_dim ({dit_config.context_dim}) must equal "
                     f"config.text_encoder.width ({text_config.width})")
  if dit_config.pooled_dim is not None and dit_config.pooled_dim != text_config.width:
    raise ValueError(f"config.dit.pooled_dim ({dit_config.pooled_dim}) must equal "
                     f"config.text_encoder.width ({text_config.width})")


def measure(dit_config: dit_lib.DiTConfig,
            text_config: text_encoder_lib.TextEncoderConfig | None = None, *,
            with_flops: bool = True) -> list[Cost]:
  """Costs of the text encoder (when given) and the DiT for one sample; see the module docstring.

  Without a text encoder config, a DiT with cross-attention is measured against one context
  token of width `context_dim`.
  """
  check_compatible(dit_config, text_config)
  costs = []
  context_length, context_width = 1, dit_config.context_dim
  if text_config is not None:
    text_config = dataclasses.replace(text_config, attention_backend="xla")
    if text_config.mode == "text":
      inputs = (jax.ShapeDtypeStruct((1, text_config.max_length), jnp.int32),
                jax.ShapeDtypeStruct((1, text_config.max_length), jnp.bool_))
    else:
      inputs = (jax.ShapeDtypeStruct((1,), jnp.int32),)
    costs.append(_measure("text_encoder",
                          lambda: text_encoder_lib.TextEncoder(text_config, rngs=nnx.Rngs(0)),
                          inputs, with_flops))
    context_length, context_width = text_config.context_length, text_config.width

  # The XLA reference attention is made of dot_generals that the MAC count sees; unrolling the
  # layer scan lets XLA's cost model see every layer.
  measured_config = dataclasses.replace(dit_config, attention_backend="xla", remat="none",
                                        scan_unroll=dit_config.depth)
  t, h, w, channels = dit_config.latent_shape
  context = context_mask = pooled = None
  if dit_config.context_dim is not None:
    context = jax.ShapeDtypeStruct((1, context_length, context_width), jnp.float32)
    context_mask = jax.ShapeDtypeStruct((1, context_length), jnp.bool_)
  if dit_config.pooled_dim is not None:
    pooled = jax.ShapeDtypeStruct((1, dit_config.pooled_dim), jnp.float32)
  inputs = (jax.ShapeDtypeStruct((1, t, h, w, channels), jnp.float32),
            jax.ShapeDtypeStruct((1,), jnp.float32), context, context_mask, pooled)
  costs.append(_measure("dit", lambda: dit_lib.DiT(measured_config, rngs=nnx.Rngs(0)), inputs,
                        with_flops))
  return costs


def totals(costs: list[Cost]) -> dict[str, Any]:
  """The summary's JSON object: {"params": int, "gmacs": float, "gflops": float}."""
  return {"params": int(sum(c.params for c in costs)),
          "gmacs": round(sum(c.macs for c in costs) / 1e9, 6),
          "gflops": round(float(np.sum([c.flops for c in costs])) / 1e9, 6)}


def format_table(costs: list[Cost], dit_config: dit_lib.DiTConfig) -> str:
  """A readable table of the costs, with the input it was measured at."""
  rows = [f"{'component':<14}{'params':>16}{'GMACs':>14}{'GFLOPs':>14}"]
  for cost in costs:
    rows.append(f"{cost.name:<14}{cost.params:>16,}{cost.macs / 1e9:>14.4f}"
                f"{cost.flops / 1e9:>14.4f}")
  total = totals(costs)
  rows.append(f"{'total':<14}{total['params']:>16,}{total['gmacs']:>14.4f}"
              f"{total['gflops']:>14.4f}")
  t, h, w, c = dit_config.latent_shape
  rows.append(f"one sample: latent {t}x{h}x{w}x{c} (t x h x w x C), patch "
              f"{'x'.join(map(str, dit_config.patch_size))}, {dit_config.num_tokens} tokens; "
              f"MACs counted from the traced program, FLOPs from XLA's cost model")
  return "\n".join(rows)


def summary(experiment: experiment_lib.Experiment, workdir: str | None) -> int:
  """The `summary` command: prints the table, then the JSON object as the last line; exit code 2
  (`videogen.exit_codes`) with one line on stderr for an experiment it cannot measure."""
  del workdir  # the summary reads only the config.
  if not experiment.has("dit"):
    return exit_codes.refuse(
        f"summary needs a config.dit section (the diffusion transformer to measure); this "
        f"experiment has: {', '.join(sorted(experiment.sections())) or 'no sections'}")
  dit_config = experiment.dit
  text_config = experiment.text_encoder if experiment.has("text_encoder") else None
  try:
    costs = measure(dit_config, text_config)
  except ValueError as error:
    return exit_codes.refuse(f"cannot summarise this experiment: {error}")
  print(format_table(costs, dit_config))
  print(json.dumps(totals(costs)))
  return exit_codes.DONE
