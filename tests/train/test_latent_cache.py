"""videogen/train/latent_cache.py: the data encoded once, read back exactly as encoded on the fly.

A tiny 2x2x2 autoencoder (4 latent channels) with random weights, saved as the autoencoder
stage's checkpoint; two buckets (5x16x16 clips and 1x16x16 images); a cache of 4 loader steps.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from data_pipelines import loader
from data_pipelines.loader import DataConfig
from data_pipelines.tokenizer import TokenizerConfig
from videogen import experiment as experiment_lib
from videogen import pixels
from videogen import workdir as workdir_lib
from videogen.config import to_config_dict
from videogen.models.autoencoder import AutoencoderConfig
from videogen.models.dit import DiTConfig
from videogen.models.text_encoder import TextEncoderConfig
from videogen.parallel import mesh as mesh_lib
from videogen.train import config as configs
from videogen.train import dit_stage
from videogen.train import latent_cache
from videogen.train.config import TrainConfig
from tests.helpers import command_line

AUTOENCODER = AutoencoderConfig(
    base_channels=8, channel_multipliers=(1, 1), num_res_blocks=1, spatial_downsample=(True,),
    temporal_downsample=(True,), latent_channels=4, middle_attention=False, attention_heads=1)
CACHE_STEPS = 4
MAX_TOKENS = 24


def make_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "latent_cache_test"
  config.seed = 0
  config.stages = ("autoencoder", "dit")
  config.mesh = to_config_dict(mesh_lib.MeshConfig())
  config.data = to_config_dict(DataConfig(buckets=("5x16x16:8", "1x16x16:8:0.5"),
                                          caption="brief"))
  config.tokenizer = to_config_dict(TokenizerConfig(vocab_size=300, max_length=MAX_TOKENS,
                                                    num_train_captions=300))
  config.autoencoder = to_config_dict(AUTOENCODER)
  config.text_encoder = to_config_dict(TextEncoderConfig(
      vocab_size=300, max_length=MAX_TOKENS, width=16, depth=1, num_heads=2))
  config.dit = to_config_dict(DiTConfig(width=32, depth=1, num_heads=2, in_channels=4,
                                        context_dim=16, pooled_dim=16, frequency_dim=32))
  config.dit_stage = to_config_dict(configs.DiTStageConfig(latents="cache",
                                                             cache_steps=CACHE_STEPS))
  config.train = ml_collections.ConfigDict()
  config.train.autoencoder = to_config_dict(TrainConfig(num_steps=5))
  config.train.dit = to_config_dict(TrainConfig(num_steps=10))
  return config


def make_experiment() -> experiment_lib.Experiment:
  return experiment_lib.validate(make_config())


@pytest.fixture(scope="module")
def built(tmp_path_factory, write_autoencoder_checkpoint):
  """A workdir with an autoencoder checkpoint (step 5) and the cache built from it."""
  experiment = make_experiment()
  workdir = str(tmp_path_factory.mktemp("run"))
  model = write_autoencoder_checkpoint(experiment, workdir, step=5, seed=3)
  tokenizer = workdir_lib.load_or_train_tokenizer(experiment, workdir)
  mesh = mesh_lib.create_mesh(experiment.mesh)
  iterator = latent_cache.open_or_build(experiment, workdir, tokenizer=tokenizer, mesh=mesh,
                                        seed=experiment.seed)
  return {"experiment": experiment, "workdir": workdir, "tokenizer": tokenizer,
          "autoencoder": model.autoencoder, "iterator": iterator, "mesh": mesh}


def test_cached_batches_equal_the_encoded_loader_batches(built, devices):
  """Step by step (wrapping after the cached steps): the posterior mean of the loader's videos,
  its tokens and indices, sharded over all 8 devices."""
  experiment, autoencoder = built["experiment"], built["autoencoder"]
  step_batches = loader.StepBatches(experiment.data, tokenizer=built["tokenizer"], seed=0)
  graphdef, state = nnx.split(autoencoder)

  @jax.jit
  def posterior_mean(state, video):
    return nnx.merge(graphdef, state).encode(pixels.to_model_range(video))[0]

  shapes = set()
  for step in range(CACHE_STEPS + 2):
    batch = built["iterator"].__next__()
    expected = step_batches(step % CACHE_STEPS)
    assert set(batch) == {"latents", "tokens", "token_mask", "index"}
    assert len(batch["latents"].addressable_shards) == len(devices)
    np.testing.assert_allclose(np.asarray(batch["latents"]),
                               posterior_mean(state, expected["video"]), atol=1e-5)
    for key in ("tokens", "token_mask", "index"):
      np.testing.assert_array_equal(np.asarray(batch[key]), expected[key])
    shapes.add(batch["latents"].shape)
  assert shapes == {(8, 3, 8, 8, 4), (8, 1, 8, 8, 4)}  # both buckets were drawn

  resumed = latent_cache.CachedLatentIterator(latent_cache.LatentCache(
      workdir_lib.latent_cache_dir(built["workdir"], experiment)), mesh=built["mesh"])
  resumed.set_state({"step": 3})
  np.testing.assert_array_equal(np.asarray(next(resumed)["index"]), step_batches(3)["index"])
  assert resumed.get_state()["step"] == 4


def test_the_stage_sees_the_same_latents_either_way(built):
  """The loss's clean latents from pixels (encoded in the step) equal those from the cache."""
  experiment = built["experiment"]
  stage = dit_stage.DiTStage(experiment)
  with nnx.use_eager_sharding(False):
    model = stage.create_model(nnx.Rngs(0))
  model.autoencoder = built["autoencoder"]
  cache = latent_cache.LatentCache(workdir_lib.latent_cache_dir(built["workdir"], experiment))
  step = next(s for s in range(CACHE_STEPS) if cache.bucket_id(s) == 0)
  video = loader.StepBatches(experiment.data, tokenizer=built["tokenizer"], seed=0)(step)["video"]
  latents = jax.jit(lambda batch: stage._latents(model, batch, jax.random.key(0)))
  np.testing.assert_allclose(latents({"latents": jnp.asarray(cache.rows(step)["latents"])}),
                             latents({"video": jnp.asarray(video)}), atol=1e-5)


def test_a_cache_of_another_autoencoder_is_refused(built, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(built["workdir"], workdir)
  (workdir / "checkpoints" / "autoencoder" / "9").mkdir()  # the autoencoder trained further
  with pytest.raises(latent_cache.LatentCacheError, match=r"autoencoder_step: 5 -> 9.*python -m "
                                                        r"videogen.main cache_latents"):
    latent_cache.open_cache(built["experiment"], str(workdir), tokenizer=built["tokenizer"],
                            seed=0)


def test_the_command_needs_a_trained_autoencoder(tmp_path, capsys):
  assert latent_cache.command(make_experiment(), str(tmp_path)) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: ") and "train the autoencoder first" in err


def _assert_same_cache(directory: pathlib.Path, reference: pathlib.Path) -> None:
  """The same arrays; latents to 1e-5, since the reference was encoded over 8 devices."""
  arrays = sorted(path.name for path in reference.glob("*.npy"))
  assert len(arrays) >= 8 and arrays == sorted(p.name for p in directory.glob("*.npy"))
  for name in arrays:
    built_here, expected = np.load(directory / name), np.load(reference / name)
    if "latents" in name:
      np.testing.assert_allclose(built_here, expected, atol=1e-5, err_msg=name)
    else:
      np.testing.assert_array_equal(built_here, expected, err_msg=name)


def test_worker_processes_build_the_same_cache(built, tmp_path):
  # With config.data.num_workers the cache is rendered as the loader renders, in processes.
  experiment = built["experiment"]
  with_workers = dataclasses.replace(experiment.data, num_workers=2)
  latent_cache.build(str(tmp_path / "cache"), autoencoder=built["autoencoder"],
                     data_config=with_workers, tokenizer=built["tokenizer"], data_seed=0,
                     num_steps=CACHE_STEPS, progress=False)
  _assert_same_cache(tmp_path / "cache",
                     pathlib.Path(workdir_lib.latent_cache_dir(built["workdir"], experiment)))


def test_a_build_removes_what_an_interrupted_build_left(built, tmp_path):
  """A run killed while encoding leaves its staging directory; the next build removes it and
  leaves other files alone."""
  left = tmp_path / ".cache.tmp-0123abcd"
  left.mkdir()
  np.save(left / "bucket0_latents.npy", np.zeros((4, 3)))
  (tmp_path / ".other.tmp-0123abcd").mkdir()  # another cache's
  (tmp_path / "notes.txt").write_text("kept")
  latent_cache.build(str(tmp_path / "cache"), autoencoder=built["autoencoder"],
                     data_config=built["experiment"].data, tokenizer=built["tokenizer"],
                     data_seed=0, num_steps=CACHE_STEPS, progress=False)
  assert sorted(p.name for p in tmp_path.iterdir()) == [".other.tmp-0123abcd", "cache",
                                                        "notes.txt"]
  _assert_same_cache(tmp_path / "cache",
                     pathlib.Path(workdir_lib.latent_cache_dir(built["workdir"],
                                                               built["experiment"])))


@pytest.mark.slow
def test_two_processes_build_the_same_cache_together(built, tmp_path):
  """`cache_latents` joins a multi-process run: each process encodes its own steps on its own
  devices into the files process 0 staged, and the cache equals the one-process build."""
  workdir = tmp_path / "run"
  shutil.copytree(built["workdir"], workdir,
                  ignore=shutil.ignore_patterns(workdir_lib.LATENT_CACHE_DIR))
  assert not latent_cache.has_cache(built["experiment"], str(workdir))
  config_file = tmp_path / "experiment.py"
  config_file.write_text("from tests.train import test_latent_cache\n\n\n"
                         "def get_config(variant=None):\n"
                         "  return test_latent_cache.make_config()\n")
  first, second = command_line.finish(command_line.start_processes(
      ["-m", "videogen.main", "cache_latents", f"--config={config_file}", f"--workdir={workdir}"],
      devices_per_process=2), timeout=300)
  assert [first.returncode, second.returncode] == [0, 0], command_line.describe(
      [first, second])
  # Gloo's connection lines aside, process 0 alone reports the cache.
  assert first.stdout.splitlines()[-1].startswith(f"latent cache: {CACHE_STEPS} steps in ")
  assert "latent cache" not in second.stdout
  directory = pathlib.Path(workdir_lib.latent_cache_dir(str(workdir), built["experiment"]))
  reference = pathlib.Path(workdir_lib.latent_cache_dir(built["workdir"], built["experiment"]))
  _assert_same_cache(directory, reference)
  meta, expected = (json.loads((d / latent_cache.META_FILE).read_text())
                    for d in (directory, reference))
  assert meta["fingerprint"] == expected["fingerprint"]
  assert meta["buckets"] == expected["buckets"]
  np.testing.assert_allclose(meta["latent_std"], expected["latent_std"], rtol=1e-5)
  assert [p.name for p in workdir.iterdir() if ".tmp-" in p.name] == []  # no staging left
  # Training reads it from every process as a cache of this run.
  latent_cache.open_cache(built["experiment"], str(workdir), tokenizer=built["tokenizer"], seed=0)
