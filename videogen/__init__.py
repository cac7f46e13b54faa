"""videogen: text-to-video diffusion transformers over spacetime patches, in JAX/Flax.

    import videogen
    model = videogen.load("runs/tiny")
    result = model.generate("a red circle moving right")  # result.video: uint8 [T, H, W, 3]

`load` is `videogen.api.load` (see there). The package's own modules import each other as
`videogen.<module>`, never through this file, so importing it here closes no cycle.

The three names are looked up in `videogen.api` on first use: every `videogen.<module>` import
runs this file first, and the API brings the generation pipeline and the watermark with it, which
a command that refuses a flag or trains a model would otherwise load for nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
  from videogen.api import Pipeline
  from videogen.api import Result
  from videogen.api import load

__all__ = ["Pipeline", "Result", "load"]


def __getattr__(name: str) -> Any:
  if name not in __all__:
    raise AttributeError(f"module 'videogen' has no attribute {name!r}")
  value = getattr(importlib.import_module("videogen.api"), name)
  globals()[name] = value  # looked up once
  return value


def __dir__() -> list[str]:
  return sorted({*globals(), *__all__})
