"""A workdir's watermark key pinned for a test, so that what detection reads is the same each run.

A workdir's own key is random (`keys.watermark_key` creates it on first use). Under that key an
unmarked video's p-value is uniform, so a test that asserts it stays high would fail once in a
hundred runs at 0.01. Tests that read unmarked videos pin the key instead.
"""

from __future__ import annotations

import hashlib
import os

from videogen.provenance import keys


def pin_watermark_key(workdir: str | os.PathLike, name: str) -> bytes:
  """Writes WORKDIR/provenance/watermark.key, derived from `name`, as the workdir would keep it.

  Args:
    workdir: a workdir that has no watermark key yet.
    name: what the key is derived from: another name, another key.

  Returns:
    The 32-byte key.
  """
  key = hashlib.sha256(f"videogen test watermark key: {name}".encode()).digest()
  folder = keys.provenance_dir(workdir)
  folder.mkdir(mode=0o700, parents=True, exist_ok=True)
  fd = os.open(folder / keys.WATERMARK_KEY_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
  with os.fdopen(fd, "w") as file:
    file.write(key.hex() + "\n")
  return key
