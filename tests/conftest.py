"""Every test sees 8 fake CPU devices, so the sharded code paths run on this machine."""

import fcntl
import os
import shutil
import tempfile

# Must be set before jax is imported anywhere in the test process.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
  os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Compiled programs are cached on disk and shared by the xdist workers and the subprocess tests:
# many tests compile the same tiny models, and compilation dominates this suite's time on a CPU.
# Every program is cached, however quick: the thousands of eager ops' programs (0.05 to 0.5 s
# each) cost more to compile again than to read back (tests/export, models/test_caption_clip,
# diffusion/test_flow and models/test_layers: 265 s with a 0.5 s threshold, 103 s with none).
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(tempfile.gettempdir(), "videogen-test-jax-cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")

import jax  # noqa: E402  (after the flags above)
import pytest  # noqa: E402

from experiments import shapes  # noqa: E402
from videogen import experiment as experiment_lib  # noqa: E402
from videogen.train import trainer  # noqa: E402


@pytest.fixture(scope="session")
def devices():
  found = jax.devices()
  assert len(found) == 8, f"expected 8 fake CPU devices, got {found}"
  return found


# ---------------------------------------------------------------------------------------------
# A tiny trained workdir, shared by the tests that need real checkpoints (the notebook, the
# generate and evaluate commands, the main job).


def _tiny_workdir_config():
  """experiments/shapes.py:tiny made as cheap to train as it gets (the `tiny_workdir` config).

  Two steps per stage, checkpoints written synchronously, no evaluation or progress bars; only
  the 9x32x32 video bucket (one compiled step per stage; the autoencoder's 5-frame crops in
  batches of 8); a 300-caption tokenizer; and smaller models of the same shape: the autoencoder
  keeps tiny's 2x4x4 compression and 8 latent channels (a 2x2 pixel fold and one downsampling
  level), so the transformer still sees 5x8x8 latents.
  """
  config = shapes.get_config("tiny")
  config.data.buckets = ("9x32x32:8",)
  config.autoencoder_loss.buckets = ("5x32x32:8",)  # a batch that splits over 8 fake devices
  config.tokenizer.num_train_captions = 300
  config.autoencoder.update(base_channels=8, patch_size=2, channel_multipliers=(1, 2),
                            spatial_downsample=(True,), temporal_downsample=(True,))
  config.dit_stage.cache_steps = None  # the latent cache holds the stage's 2 steps
  config.text_encoder.update(width=32, depth=1, num_heads=2)
  config.dit.update(width=32, depth=1, num_heads=2, frequency_dim=32, context_dim=32,
                    pooled_dim=32)
  for stage in config.stages:
    config.train[stage].update(num_steps=2, warmup_steps=1, log_every=1, checkpoint_every=2,
                               keep_checkpoints=1, eval_every=0, async_checkpoints=False,
                               progress_bar=False)
  return config


@pytest.fixture
def tiny_workdir_config():
  """A fresh copy of the ConfigDict that `tiny_workdir` was trained with."""
  return _tiny_workdir_config()


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory) -> str:
  """The path (str) of a workdir trained with `tiny_workdir_config`: both stages, 2 steps each.

  It holds checkpoints/autoencoder/2/, checkpoints/dit/2/, tokenizer.model, metrics.jsonl,
  tensorboard/ and curves/. Its weights are barely trained: use it for loading, commands, file
  layouts and shapes, not for quality. Built once per run (about 2 minutes on 2 busy cores);
  pytest-xdist workers share it (the first builds it under a file lock, the others wait for it).
  Treat it as read-only, since other tests read it at the same time: copy it (`shutil.copytree`)
  to write.
  """
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the run's directory, shared by all of its workers
  workdir, done = root / "tiny_workdir", root / "tiny_workdir.done"
  with open(root / "tiny_workdir.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      if not done.exists():
        # A worker that died while training leaves a partial workdir: start it over.
        shutil.rmtree(workdir, ignore_errors=True)
        results = trainer.train(experiment_lib.validate(_tiny_workdir_config()), str(workdir))
        unfinished = [r for r in results if r.status != "done"]
        assert not unfinished, f"training the tiny workdir did not finish: {unfinished}"
        done.touch()
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
  return str(workdir)
