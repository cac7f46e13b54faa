"""videogen: text-to-video diffusion transformers over spacetime patches, in JAX/Flax.

    import videogen
    model = videogen.load("runs/tiny")
    result = model.generate("a red circle moving right")  # result.video: uint8 [T, H, W, 3]

`load` is `videogen.api.load` (see there). The package's own modules import each other as
`videogen.<module>`, never through this file, so importing it here closes no cycle.
"""

from videogen.api import Pipeline
from videogen.api import Result
from videogen.api import load

__all__ = ["Pipeline", "Result", "load"]
