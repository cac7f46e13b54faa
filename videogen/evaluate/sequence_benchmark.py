r"""Per-device memory of attention with its tokens split over the mesh's "sequence" axis.

    XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m videogen.main benchmark \
        --config=experiments/shapes.py:small --what=sequence_parallel

For each method (Ulysses, ring) and each sequence size N in 1, 2, 4, 8 (as many as there are
devices), one self-attention of `tokens` tokens (8192 by default) with the experiment's transformer
heads is compiled on a mesh of N devices (`mesh.sequence` = N, nothing else split), its inputs
split over the tokens, and XLA's compiled memory analysis gives what one device holds: the
arguments (q, k, v: 1/N of them) and the temporaries of the forward pass and of the forward and
backward pass (the logits and softmax weights, which dominate: [B, N_heads, T, T] on one device).
Nothing runs: only compiles, so the sizes may exceed the host's memory. N = 1 is the single-device
attention both methods reduce to.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

from videogen.models import attention
from videogen.parallel import mesh as mesh_lib
from videogen.parallel import sharding

METHODS: tuple[str, ...] = ("ulysses", "ring")
SIZES: tuple[int, ...] = (1, 2, 4, 8)
TOKENS = 8192


def _compiled_bytes(function, args) -> dict[str, int]:
  analysis = jax.jit(function).lower(*args).compile().memory_analysis()
  return {"argument_bytes": int(analysis.argument_size_in_bytes),
          "temp_bytes": int(analysis.temp_size_in_bytes),
          "output_bytes": int(analysis.output_size_in_bytes)}


def attention_memory(*, tokens: int = TOKENS, heads: int = 8, head_dim: int = 64,
                     batch: int = 1, dtype: Any = jnp.float32, sizes: Sequence[int] = SIZES,
                     methods: Sequence[str] = METHODS,
                     devices: Sequence[jax.Device] | None = None) -> list[dict[str, Any]]:
  """One row per (method, sequence size): the compiled per-device bytes of attention.

  Args:
    tokens, heads, head_dim, batch, dtype: the attention's q, k, v [batch, tokens, heads,
      head_dim] in `dtype`.
    sizes: sequence sizes N; those above the device count are left out.
    methods: "ulysses" and/or "ring".
    devices: the devices (default: all).

  Returns:
    Rows {"method", "sequence", "argument_bytes", "temp_bytes", "output_bytes",
    "train_temp_bytes"} (the last: forward and backward), or {"method", "sequence",
    "unavailable": reason} where the method cannot run at that size (Ulysses with heads that N
    does not divide).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = (batch, tokens, heads, head_dim)
  weights = jnp.ones((heads, head_dim), jnp.float32)

  rows = []
  for method in methods:
    for size in sizes:
      # Fresh functions per row: a jitted function's trace is cached by its arguments alone, not
      # by the sharding context it was traced in.
      def forward(q, k, v):
        return attention.dot_product_attention(q, k, v, backend="xla", split_tokens=True)

      def train(q, k, v):
        loss = lambda q, k, v: jnp.sum(forward(q, k, v).astype(jnp.float32) * weights)
        return jax.grad(loss, argnums=(0, 1, 2))(q, k, v)

      if size > len(devices):
        continue
      if method == "ulysses" and heads % size:
        rows.append({"method": method, "sequence": size,
                     "unavailable": f"{heads} heads do not split {size} ways"})
        continue
      config = mesh_lib.MeshConfig(data=1, sequence=size, sequence_parallel=method)
      mesh = mesh_lib.create_mesh(config, devices[:size])
      split = NamedSharding(mesh, PartitionSpec(None, "sequence" if size > 1 else None))
      args = [jax.ShapeDtypeStruct(shape, dtype, sharding=split)] * 3
      with sharding.activation_sharding(mesh, config.rules, method):
        row = {"method": method, "sequence": size, **_compiled_bytes(forward, args)}
        row["train_temp_bytes"] = _compiled_bytes(train, args)["temp_bytes"]
      rows.append(row)
  return rows


def figures(heads: int = 8, head_dim: int = 64, *, tokens: int = TOKENS,
            dtype: Any = jnp.float32, devices: Sequence[jax.Device] | None = None
            ) -> dict[str, Any]:
  """`attention_memory` with its settings, as the benchmark reports it."""
  return {"tokens": tokens, "heads": heads, "head_dim": head_dim, "batch": 1,
          "dtype": jnp.dtype(dtype).name,
          "rows": attention_memory(tokens=tokens, heads=heads, head_dim=head_dim, dtype=dtype,
                                   devices=devices)}


def format_table(result: dict[str, Any]) -> str:
  """The rows of `figures` as a table in MiB per device, with the temporaries against N = 1."""
  lines = [f"sequence-parallel attention: {result['tokens']} tokens, {result['heads']} heads x "
           f"{result['head_dim']}, batch {result['batch']}, {result['dtype']}; compiled memory "
           f"per device (MiB)",
           f"  {'method':8} {'sequence':>8} {'arguments':>10} {'temp fwd':>10} {'vs N=1':>7} "
           f"{'temp fwd+bwd':>13} {'vs N=1':>7}"]
  mib = lambda n: f"{n / 2**20:.1f}"
  for method in METHODS:
    rows = [row for row in result["rows"] if row["method"] == method]
    first = next((row for row in rows if row["sequence"] == 1 and "unavailable" not in row), None)
    for row in rows:
      if "unavailable" in row:
        lines.append(f"  {method:8} {row['sequence']:>8} unavailable: {row['unavailable']}")
        continue
      ratio = lambda key: f"{row[key] / first[key]:.3f}" if first and first[key] else "n/a"
      lines.append(f"  {method:8} {row['sequence']:>8} {mib(row['argument_bytes']):>10} "
                   f"{mib(row['temp_bytes']):>10} {ratio('temp_bytes'):>7} "
                   f"{mib(row['train_temp_bytes']):>13} {ratio('train_temp_bytes'):>7}")
  return "\n".join(lines)
