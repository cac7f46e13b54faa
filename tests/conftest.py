"""Every test sees 8 fake CPU devices, so the sharded code paths run on this machine."""

import os

# Must be set before jax is imported anywhere in the test process.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402  (after the flags above)
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def devices():
  found = jax.devices()
  assert len(found) == 8, f"expected 8 fake CPU devices, got {found}"
  return found
