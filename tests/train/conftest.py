"""Fixtures shared by the training-stage tests."""

import jax.numpy as jnp
import pytest
from flax import nnx

from videogen.train import checkpointing
from videogen.train import stages as stages_lib


def _write_autoencoder_checkpoint(experiment, workdir: str, *, step: int = 5, seed: int = 7,
                                  config: dict | None = None) -> nnx.Module:
  """Saves an autoencoder-stage checkpoint of random parameters (params and EMA alike) into
  WORKDIR/checkpoints/autoencoder/<step>/ and returns the stage's model. `config` is the saved
  experiment dict (empty by default)."""
  stage = stages_lib.make_stage("autoencoder", experiment)
  with nnx.use_eager_sharding(False):
    model = stage.create_model(nnx.Rngs(seed))
  params = nnx.state(model, nnx.Param)
  checkpointer = checkpointing.Checkpointer(f"{workdir}/checkpoints/autoencoder",
                                            async_save=False)
  checkpointer.save(step, {"step": jnp.int32(step), "params": params, "ema_params": params},
                    {"step": step}, config or {})
  checkpointer.close()
  return model


@pytest.fixture(scope="session")
def write_autoencoder_checkpoint():
  """`write(experiment, workdir, *, step=5, seed=7, config=None) -> model`: a trained-looking
  autoencoder stage for the stages that depend on it (the dit stage, the latent cache)."""
  return _write_autoencoder_checkpoint
