r"""The stand-in experiment: the trainer's test model and synthetic data (no video, no VAE).

    python -m videogen.main train --config=tests/standin/experiment.py:tiny \
        --workdir=runs/standin --config.train.standin.num_steps=20

Run from the repository root, so that `tests.standin` imports. The stand-in is no part of the
package: importing this file declares its config section and its stage, so that
`experiment_lib.validate` and `stages.make_stage` know them.

Variants (`arg`, comma-separated): a size, "tiny" (default, for tests) or "base" (about 3.2M
parameters, for speed and memory figures), optionally followed by a parallelism layout:
"fsdp" (all devices on the fsdp axis), "tensor" (tensor axis of 2, the rest data parallel).
Any field can still be set on the command line, e.g. `--config.mesh.data=2 --config.mesh.fsdp=4`.
"""

from __future__ import annotations

import ml_collections

from videogen import experiment as experiment_lib
from videogen.config import to_config_dict
from videogen.parallel.mesh import MeshConfig
from videogen.train import stages as stages_lib
from videogen.train.config import TrainConfig

from tests.standin.model import RULES
from tests.standin.model import StandinConfig
from tests.standin.stage import StandinStage

SIZES = {
    "tiny": StandinConfig(features=8, embed=32, mlp=64, heads=2, head_dim=16, depth=2,
                          batch_size=8, lengths=(4, 8), num_batches=64),
    "base": StandinConfig(),
}
# The stand-in is no built-in section or stage: this file declares both.
experiment_lib.register_section("standin", StandinConfig)
stages_lib.register("standin", StandinStage)

LAYOUTS = {
    "dp": MeshConfig(rules=RULES),
    "fsdp": MeshConfig(data=1, fsdp=-1, rules=RULES),
    "tensor": MeshConfig(data=-1, tensor=2, rules=RULES),
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """Returns the stand-in experiment for `arg` ("tiny", "base", "tiny,fsdp", ...)."""
  size, _, layout = (arg or "tiny").partition(",")
  if size not in SIZES or (layout or "dp") not in LAYOUTS:
    raise ValueError(f"unknown variant {arg!r}: give a size from {sorted(SIZES)}, optionally "
                     f"followed by a layout from {sorted(LAYOUTS)}, e.g. 'tiny,fsdp'")
  config = ml_collections.ConfigDict()
  config.name = f"standin_{size}" + (f"_{layout}" if layout else "")
  config.seed = 0
  config.stages = ("standin",)
  config.mesh = to_config_dict(LAYOUTS[layout or "dp"])
  config.standin = to_config_dict(SIZES[size])
  config.train = ml_collections.ConfigDict()
  config.train.standin = to_config_dict(TrainConfig(
      num_steps=200 if size == "tiny" else 1000, learning_rate=3e-3, warmup_steps=10,
      log_every=10, checkpoint_every=100))
  return config
