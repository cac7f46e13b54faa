"""Does a compiled program fit in memory? Checked before it runs, where running is what fails.

On accelerators XLA itself refuses a program that does not fit (RESOURCE_EXHAUSTED, with the
sizes). On CPU devices, memory is the host's, and an oversized step is killed by the kernel's OOM
killer: no Python error, no message, the process is gone. `check_fits` turns that into an error
that says how much the step needs, how much the host has, and what to change:

    compiled = jax.jit(step).lower(state, batch).compile()
    memory.check_fits(compiled, what="the dit train step for video[16, 17, 128, 128, 3]",
                      remedy="use smaller batches (config.data.buckets)")

A step needs, beyond the arguments already in memory, its temporaries and the outputs that do not
reuse a donated argument's buffer, on every device; CPU devices (e.g. the 8 of
`--xla_force_host_platform_device_count=8`) all take it from the one host. That is XLA's buffer
assignment, a lower bound: the CPU runtime's own scratch (convolution workspaces) and loader
worker processes come on top. Measured: the small shapes variant's transformer step at its preset
batch (16 clips of 17x128x128, encoded in the step) needs 16.6 GiB by this count, with 19.1 GiB
available; the process peaked at 24.3 GiB and, with 4 loader workers beside it, was killed. So a
step above WARN_FRACTION of the available memory is warned about, and one above all of it refused.
"""

from __future__ import annotations

from typing import Any, Optional

import jax
from absl import logging

MEMINFO = "/proc/meminfo"
# Above this fraction of the available host memory a step is warned about (see the docstring).
WARN_FRACTION = 0.75


class StepMemoryError(MemoryError):
  """A compiled step needs more memory than its devices have free."""


def host_available_bytes(meminfo: str = MEMINFO) -> Optional[int]:
  """The host's available memory (Linux MemAvailable), or None where it cannot be read."""
  try:
    with open(meminfo) as f:
      for line in f:
        if line.startswith("MemAvailable:"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    return None
  return None


def local_devices(mesh: jax.sharding.Mesh) -> list[jax.Device]:
  """The devices of `mesh` that this process drives (whose memory this host provides)."""
  return [d for d in mesh.devices.flat if d.process_index == jax.process_index()]


def required_bytes(compiled: Any) -> Optional[int]:
  """Bytes one device allocates while running `compiled`, beyond its arguments; None if unknown."""
  analysis = compiled.memory_analysis()
  if analysis is None:
    return None
  new_outputs = max(0, analysis.output_size_in_bytes - analysis.alias_size_in_bytes)
  return int(analysis.temp_size_in_bytes + new_outputs)


def check_fits(compiled: Any, *, what: str, remedy: str,
               devices: Optional[list[jax.Device]] = None,
               available: Optional[int] = None) -> None:
  """Raises StepMemoryError when `compiled` cannot run on the host's free memory (CPU devices).

  Warns (absl logging) when it needs more than WARN_FRACTION of that memory.

  Args:
    compiled: a compiled program (`jax.jit(f).lower(...).compile()`).
    what: names the program in the error, e.g. "the dit train step for video[16, 17, 128, 128, 3]".
    remedy: what the user can change, appended to the error.
    devices: the devices it runs on (default: this process's devices). Only CPU devices are
      checked; accelerators report their own out-of-memory errors.
    available: free bytes of the host (default: MemAvailable); for tests.
  """
  devices = jax.local_devices() if devices is None else devices
  cpu_devices = [d for d in devices if d.platform == "cpu"]
  if not cpu_devices:
    return
  per_device = required_bytes(compiled)
  available = host_available_bytes() if available is None else available
  if per_device is None or available is None:
    return
  needed = per_device * len(cpu_devices)
  gib = lambda n: f"{n / 2**30:.1f} GiB"
  if needed <= WARN_FRACTION * available:
    return
  if needed <= available:
    logging.warning("%s needs %s of host memory beyond its inputs, %.0f%% of the %s available; "
                    "with the runtime's own scratch and loader workers on top the kernel may kill "
                    "the process. %s", what, gib(needed), 100 * needed / available,
                    gib(available), remedy)
    return
  raise StepMemoryError(
      f"{what} needs {gib(needed)} of host memory beyond its inputs ({gib(per_device)} on each of "
      f"{len(cpu_devices)} CPU device(s)) but the host has {gib(available)} available: running it "
      f"would get the process killed by the kernel. {remedy}")


def devices_memory_bytes(devices: Optional[list[jax.Device]] = None) -> Optional[int]:
  """The memory `devices` (default: this process's) have together, or None where unknown.

  CPU devices share the host: its available memory (MemAvailable), counted once. Accelerators
  report their own limit (`memory_stats()["bytes_limit"]`), summed over the devices.
  """
  devices = jax.local_devices() if devices is None else devices
  if all(d.platform == "cpu" for d in devices):
    return host_available_bytes()
  total = 0
  for device in devices:
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if not stats or "bytes_limit" not in stats:
      return None
    total += int(stats["bytes_limit"])
  return total
