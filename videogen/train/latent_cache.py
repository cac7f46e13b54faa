r"""The latent cache: the diffusion stage's training data encoded once by the frozen autoencoder.

    python -m videogen.main cache_latents --config=experiments/shapes.py:tiny --workdir=runs/tiny
    python -m videogen.main train --config=experiments/shapes.py:tiny --workdir=runs/tiny \
        --config.dit_stage.latents=cache

The cache holds the batches of loader steps 0 .. S-1 (S = `config.dit_stage.cache_steps`, by
default the dit stage's `num_steps`) exactly as the loader makes them, with each video replaced by
its posterior mean (and, with `sample_posterior`, log-variance), so a cached run trains on the
same examples in the same order as an encoding run; a run longer than S steps wraps around. The
step reads latents instead of running the encoder, and no pixels are rendered or decoded.

Layout of the cache directory (WORKDIR/latent_cache by default):

  meta.json              version, num_steps, buckets with their latent shapes, the fingerprint
  steps.npy              int64 [S, 2]: (bucket, first row) of each loader step
  bucket<b>_<key>.npy    per bucket b, every row of its steps in step order:
                           latents  [n_b, t, h, w, C] (float32 or float16), the posterior mean
                           logvar   [n_b, t, h, w, C] (only with sample_posterior)
                           tokens   int32 [n_b, L], token_mask bool [n_b, L], index int32 [n_b]

The fingerprint (data config and seed, autoencoder config and checkpoint step, tokenizer bytes,
S, dtype) is checked when a run opens the cache: a cache of another autoencoder or another data
stream is refused with the command that rebuilds it. Arrays are read with memory mapping, each
process reading only its own rows of each global batch, so any number of processes shares one
cache on a shared file system. In a multi-process run the processes build it together, each
encoding its share of the steps on its own devices.

The autoencoder that encodes the cache is the one the dit stage holds frozen: both restore it with
`restore_autoencoder`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import time
from typing import Any, Sequence

import grain
import jax
import numpy as np
import tqdm
from absl import logging
from flax import nnx

from data_pipelines import loader as loader_lib
from data_pipelines import tokenizer as tokenizer_lib
from videogen import config as config_lib
from videogen import exit_codes
from videogen import experiment as experiment_lib
from videogen import pixels
from videogen import workdir as workdir_lib
from videogen.models import autoencoder as autoencoder_lib
from videogen.parallel import axes
from videogen.parallel import mesh as mesh_lib
from videogen.parallel import multihost
from videogen.train import autoencoder_stage
from videogen.train import train_state as train_state_lib

VERSION = 1
META_FILE = "meta.json"
STEPS_FILE = "steps.npy"
TEXT_KEYS = ("tokens", "token_mask", "index")
# DataConfig fields that change how fast batches come, not what they hold.
_DATA_SPEED_SETTINGS = ("num_workers", "num_threads", "prefetch")
# The command that (re)builds a run's cache, for messages.
_BUILD_COMMAND = "python -m videogen.main cache_latents --config=... --workdir="


def cache_steps(experiment: experiment_lib.Experiment) -> int:
  """How many loader steps the cache holds: `cache_steps`, else the dit stage's num_steps."""
  config = experiment.dit_stage
  if config.cache_steps is not None:
    return config.cache_steps
  return experiment.train[workdir_lib.DIT_STAGE].num_steps


def fingerprint(*, data_config: loader_lib.DataConfig, data_seed: int,
                autoencoder_config: autoencoder_lib.AutoencoderConfig, autoencoder_step: int,
                tokenizer: tokenizer_lib.Tokenizer, num_steps: int, dtype: str,
                logvar: bool) -> dict[str, Any]:
  """What a cache's contents depend on; two caches with equal fingerprints hold equal data."""
  data = config_lib.jsonable(data_config)
  for speed_setting in _DATA_SPEED_SETTINGS:
    data.pop(speed_setting, None)
  return config_lib.jsonable({
      "data": data, "data_seed": data_seed,
      "autoencoder": config_lib.jsonable(autoencoder_config), "autoencoder_step": autoencoder_step,
      "tokenizer_md5": hashlib.md5(tokenizer.model_proto).hexdigest(),
      "tokenizer_max_length": tokenizer.max_length, "num_steps": num_steps, "dtype": dtype,
      "logvar": logvar,
  })


class LatentCacheError(ValueError):
  """A cache that this run cannot use as it is; the message says how to rebuild it."""


# ------------------------------------------------------------------------------------------------
# Building.
# ------------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)
def _encode(graphdef: nnx.GraphDef, state: nnx.State,
            video: jax.Array) -> tuple[jax.Array, jax.Array]:
  """uint8 video [B, T, H, W, 3] -> posterior (mean, logvar), each [B, t, h, w, C] float32."""
  autoencoder = nnx.merge(graphdef, state)
  return autoencoder.encode(pixels.to_model_range(video))


def _bucket_file(directory: str, bucket: int, key: str) -> str:
  return os.path.join(directory, f"bucket{bucket}_{key}.npy")


def build(directory: str, *, autoencoder: autoencoder_lib.VideoAutoencoder,
          data_config: loader_lib.DataConfig, tokenizer: tokenizer_lib.Tokenizer, data_seed: int,
          num_steps: int, dtype: str = "float32", logvar: bool = False,
          fingerprint_values: dict[str, Any] | None = None,
          batch_sharding: jax.sharding.Sharding | None = None,
          progress: bool = True) -> dict[str, Any]:
  """Encodes loader steps 0 .. num_steps-1 and writes the cache (replacing one that exists).

  The cache is written into a temporary sibling directory and renamed into place at the end, so
  an interrupted build leaves no half-written cache behind; the next build removes what it left.
  One build at a time writes a cache directory (as Orbax assumes of a checkpoint directory).

  In a multi-process run every process calls it (it is collective), each with the autoencoder on
  its own devices: process p of P encodes the steps p, p + P, p + 2P, ... into the files process
  0 staged, and process 0 renames the cache into place once all are done. `directory` must be on
  a file system every process sees, as for training from the cache.

  Args:
    directory: where the cache goes.
    autoencoder: the frozen autoencoder (its parameters may be sharded over this process's
      devices).
    data_config: the loader settings of the run.
    tokenizer: the run's tokenizer.
    data_seed: the loader's seed (`config.data.seed`, else the experiment's seed).
    num_steps: S, the loader steps to encode.
    dtype: storage dtype of the latents, "float32" or "float16".
    logvar: also store the posterior's log-variance (for `sample_posterior`).
    fingerprint_values: stored in meta.json and checked by `open_cache`.
    batch_sharding: where each video batch goes for encoding (e.g. split over the mesh's batch
      axes); None leaves it to `jax.jit`'s default placement.
    progress: show a progress bar (process 0's, over its own steps).

  Returns:
    The cache's meta data (what meta.json holds).

  Raises:
    multihost.PeerFailedError: another process failed its part (its log says why).
  """
  if num_steps < 1:
    raise ValueError(f"num_steps = {num_steps} must be >= 1")
  step_batches = loader_lib.StepBatches(data_config, tokenizer=tokenizer, seed=data_seed)
  buckets = step_batches.schedule.buckets
  bucket_ids = step_batches.schedule.bucket_ids(np.arange(num_steps))
  counts = np.bincount(bucket_ids, minlength=len(buckets))
  latent_shapes = [autoencoder.latent_shape(*bucket.shape) for bucket in buckets]
  # steps[s] = (bucket, first row); rows of a bucket are laid out in step order.
  steps = np.zeros((num_steps, 2), np.int64)
  next_row = np.zeros(len(buckets), np.int64)
  for step, bucket_id in enumerate(bucket_ids):
    steps[step] = (bucket_id, next_row[bucket_id])
    next_row[bucket_id] += buckets[bucket_id].global_batch
  files = []  # per bucket, key -> (shape, dtype) of its file
  for bucket_id, (bucket, latent_shape) in enumerate(zip(buckets, latent_shapes)):
    rows = int(counts[bucket_id]) * bucket.global_batch
    files.append({"latents": ((rows, *latent_shape), dtype),
                  "tokens": ((rows, tokenizer.max_length), "int32"),
                  "token_mask": ((rows, tokenizer.max_length), "bool"),
                  "index": ((rows,), "int32")})
    if logvar:
      files[-1]["logvar"] = ((rows, *latent_shape), dtype)

  parent = os.path.dirname(os.path.abspath(directory))
  staging_prefix = f".{os.path.basename(directory)}.tmp-"
  staging = os.path.join(parent, staging_prefix + multihost.shared_token())
  primary = multihost.is_primary()

  def stage() -> None:  # process 0: the step table and the empty arrays
    os.makedirs(parent, exist_ok=True)
    workdir_lib.remove_cut_short(parent, staging_prefix, "a latent cache build")
    os.makedirs(staging)
    np.save(os.path.join(staging, STEPS_FILE), steps)
    for bucket_id, bucket_files in enumerate(files):
      for key, (shape, array_dtype) in bucket_files.items():
        np.lib.format.open_memmap(_bucket_file(staging, bucket_id, key), mode="w+",
                                  dtype=np.dtype(array_dtype), shape=shape).flush()

  try:
    multihost.run_together(lambda: stage() if primary else None, "staging the latent cache")
    moments, seconds = multihost.run_together(
        lambda: _encode_steps(staging, steps, files, autoencoder=autoencoder,
                              step_batches=step_batches, dtype=dtype, logvar=logvar,
                              batch_sharding=batch_sharding, progress=progress and primary),
        "encoding its steps of the latent cache")
    moments = multihost.sum_over_processes(moments)
    latent_mean = moments[1] / moments[0]
    latent_std = float(np.sqrt(max(moments[2] / moments[0] - latent_mean ** 2, 0.0)))
    meta = {
        "version": VERSION, "num_steps": num_steps, "dtype": dtype, "logvar": logvar,
        "latent_mean": float(latent_mean), "latent_std": latent_std,
        "buckets": [{"spec": str(bucket), "global_batch": bucket.global_batch,
                     "latent_shape": list(shape), "steps": int(count)}
                    for bucket, shape, count in zip(buckets, latent_shapes, counts)],
        "fingerprint": fingerprint_values or {},
        "seconds": seconds,
    }

    def finish() -> None:  # process 0: meta.json, then the cache into place
      with open(os.path.join(staging, META_FILE), "w") as f:
        json.dump(meta, f, indent=1, sort_keys=True)
      if os.path.exists(directory):
        shutil.rmtree(directory)
      os.replace(staging, directory)

    multihost.run_together(lambda: finish() if primary else None, "writing the latent cache")
  finally:
    if primary and os.path.exists(staging):
      shutil.rmtree(staging)
  logging.info("latent cache: %d steps (%s) written to %s in %.1fs, %.1f MiB", num_steps,
               ", ".join(f"{b['spec']} x{b['steps']}" for b in meta["buckets"]), directory,
               meta["seconds"], workdir_lib.disk_bytes(directory) / 2**20)
  _check_latent_scale(autoencoder.config, meta["latent_mean"], meta["latent_std"])
  return meta


def _encode_steps(staging: str, steps: np.ndarray, files: list[dict[str, Any]], *,
                  autoencoder: autoencoder_lib.VideoAutoencoder,
                  step_batches: loader_lib.StepBatches, dtype: str, logvar: bool,
                  batch_sharding: jax.sharding.Sharding | None,
                  progress: bool) -> tuple[np.ndarray, float]:
  """This process's steps (p, p + P, ...) of the staged cache (`files`: per bucket, each array's
  shape and dtype): renders, encodes and writes them in place. Returns the count, sum and sum of
  squares of its latents, and the seconds taken."""
  process, processes = jax.process_index(), jax.process_count()
  num_steps = len(steps)
  writers = [{key: _RowWriter(_bucket_file(staging, bucket_id, key))
              for key, (shape, _) in bucket_files.items() if shape[0]}
             for bucket_id, bucket_files in enumerate(files)]
  graphdef, state = nnx.split(autoencoder)
  start = time.perf_counter()
  moments = np.zeros(3, np.float64)  # count, sum and sum of squares of the latents
  batches = None
  try:
    # Rendered as the loader renders: in `data_config.num_workers` processes where it has any
    # (one H200 built its cache 12 times slower than its 12 workers rendered, in threads).
    batches = iter(step_batches.dataset(process, num_steps, stride=processes))
    for batch in tqdm.tqdm(batches, total=len(range(process, num_steps, processes)),
                           desc="latent cache", unit="step", disable=not progress,
                           dynamic_ncols=True, mininterval=1.0):
      step = int(batch["step"])
      bucket_id, first = (int(v) for v in steps[step])
      video = batch["video"]
      if batch_sharding is not None:
        video = jax.device_put(video, batch_sharding)
      mean, log_variance = _encode(graphdef, state, video)
      target = writers[bucket_id]
      mean = np.asarray(mean)
      target["latents"].write(first, mean)
      moments += (mean.size, mean.sum(dtype=np.float64), np.square(mean, dtype=np.float64).sum())
      if logvar:
        target["logvar"].write(first, np.asarray(log_variance))
      for key in TEXT_KEYS:
        target[key].write(first, batch[key])
  finally:
    if batches is not None:  # stops the worker processes, also when the build failed
      batches.close()
    for bucket_writers in writers:
      for writer in bucket_writers.values():
        writer.close()
  return moments, time.perf_counter() - start


class _RowWriter:
  """Writes rows of a staged .npy file at their byte offsets with `os.pwrite`.

  Not through a memory map: its write-back is a whole page, so on a network file system a
  process would write its neighbour's rows of a shared page back as they were when it read them.
  """

  def __init__(self, path: str):
    with open(path, "rb") as f:
      version = np.lib.format.read_magic(f)
      read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                     else np.lib.format.read_array_header_2_0)
      shape, fortran_order, self.dtype = read_header(f)
      self.offset = f.tell()
    if fortran_order:
      raise ValueError(f"{path} is in Fortran order; the cache writes C-order rows")
    self.row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * self.dtype.itemsize
    self._fd = os.open(path, os.O_WRONLY)

  def write(self, first: int, rows: np.ndarray) -> None:
    """Writes `rows` as rows first, first + 1, ... (cast to the file's dtype)."""
    data = memoryview(np.ascontiguousarray(rows, self.dtype).tobytes())
    position, written = self.offset + first * self.row_bytes, 0
    while written < len(data):  # pwrite may write less than it was given
      written += os.pwrite(self._fd, data[written:], position + written)

  def close(self) -> None:
    if self._fd is not None:
      os.fsync(self._fd)
      os.close(self._fd)
      self._fd = None


def _check_latent_scale(config: autoencoder_lib.AutoencoderConfig, mean: float,
                        std: float) -> None:
  """Warns when the normalised latents are far from zero mean and unit variance.

  Far means beyond a factor of 4 in scale: within it, the scale trades detail against noise
  (the shapes experiment trains better at 2 than at 1), beyond it the noise schedule no longer
  fits the data.
  """
  normalised_mean = (mean - config.shift_factor) * config.scale_factor
  normalised_std = std * config.scale_factor
  if abs(normalised_mean) > 1.0 or not 0.25 < normalised_std < 4.0:
    logging.warning(
        "the normalised latents have mean %.3g and standard deviation %.3g, far from the 0 and 1 "
        "the diffusion objective assumes: set config.autoencoder.shift_factor=%.4g and "
        "scale_factor=%.4g", normalised_mean, normalised_std, mean, 1.0 / max(std, 1e-6))


# ------------------------------------------------------------------------------------------------
# Reading.
# ------------------------------------------------------------------------------------------------


class LatentCache:
  """A cache opened for reading: meta data and memory-mapped arrays.

  `rows(step, rows)` returns the batch of loader step `step` (wrapped modulo num_steps),
  restricted to the given global-batch rows, as NumPy arrays.
  """

  def __init__(self, directory: str):
    meta_path = os.path.join(directory, META_FILE)
    if not os.path.exists(meta_path):
      raise FileNotFoundError(
          f"no latent cache in {directory} (no {META_FILE}): build it with "
          f"`{_BUILD_COMMAND}...`")
    with open(meta_path) as f:
      self.meta = json.load(f)
    if self.meta.get("version") != VERSION:
      raise LatentCacheError(
          f"the latent cache {directory} has version {self.meta.get('version')}, this code "
          f"reads version {VERSION}: rebuild it with `{_BUILD_COMMAND}...`")
    self.directory = directory
    self.num_steps = int(self.meta["num_steps"])
    self.global_batches = [int(b["global_batch"]) for b in self.meta["buckets"]]
    self.keys = ("latents",) + (("logvar",) if self.meta["logvar"] else ()) + TEXT_KEYS
    self._steps = np.load(os.path.join(directory, STEPS_FILE))
    self._arrays = [{key: np.load(_bucket_file(directory, bucket_id, key), mmap_mode="r")
                     for key in self.keys} for bucket_id in range(len(self.global_batches))]

  def bucket_id(self, step: int) -> int:
    return int(self._steps[step % self.num_steps, 0])

  def global_batch(self, step: int) -> int:
    return self.global_batches[self.bucket_id(step)]

  def rows(self, step: int, rows: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The cached batch of loader step `step` (rows of the global batch; None = all)."""
    bucket_id, first = (int(v) for v in self._steps[step % self.num_steps])
    if rows is None:
      rows = np.arange(self.global_batches[bucket_id])
    indices = first + np.asarray(rows, np.int64)
    batch = {key: np.asarray(self._arrays[bucket_id][key][indices]) for key in self.keys}
    batch["latents"] = batch["latents"].astype(np.float32)
    if "logvar" in batch:
      batch["logvar"] = batch["logvar"].astype(np.float32)
    return batch


class _ReadStep:
  """Grain map transform: step -> this process's rows of the cached batch, plus the step."""

  def __init__(self, cache: LatentCache, rows: Sequence[np.ndarray]):
    self._cache = cache
    self._rows = rows

  def __call__(self, step: int) -> dict[str, np.ndarray]:
    step = int(step)
    batch = self._cache.rows(step, self._rows[self._cache.bucket_id(step)])
    batch["step"] = np.int64(step)
    return batch


class CachedLatentIterator:
  """Cached global batches sharded over a mesh's batch axes (a `BatchIterator`).

  The state is {"step": next step}: a resumed run continues with exactly the next batch.
  """

  def __init__(self, cache: LatentCache, *, mesh: jax.sharding.Mesh,
               batch_axes: Sequence[str] = ("data", "fsdp"), start_step: int = 0):
    self.cache = cache
    self._sharding = loader_lib.batch_sharding(mesh, tuple(batch_axes))
    process_count = jax.process_count()
    for global_batch in cache.global_batches:
      if global_batch % process_count:
        raise ValueError(f"the cached global batch {global_batch} does not split over "
                         f"{process_count} processes")
    self._rows = [loader_lib.process_rows(self._sharding, b) for b in cache.global_batches]
    self._step = start_step
    self._iterator = None

  @property
  def step(self) -> int:
    return self._step

  def __iter__(self) -> CachedLatentIterator:
    return self

  def __next__(self) -> dict[str, jax.Array]:
    if self._iterator is None:
      dataset = grain.MapDataset.range(self._step, self._step + 2**40).map(
          _ReadStep(self.cache, self._rows))
      self._iterator = iter(dataset.to_iter_dataset(
          grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))
    local = next(self._iterator)
    produced = int(local.pop("step"))
    if produced != self._step:
      raise RuntimeError(f"the latent cache produced step {produced} where {self._step} was due")
    self._step += 1
    global_batch = self.cache.global_batch(produced)
    return {key: jax.make_array_from_process_local_data(
        self._sharding, value, (global_batch, *value.shape[1:])) for key, value in local.items()}

  def get_state(self) -> dict[str, Any]:
    return {"version": VERSION, "step": self._step, "cache_steps": self.cache.num_steps}

  def set_state(self, state: dict[str, Any]) -> None:
    if "step" not in state:
      raise ValueError(f"not a latent-cache iterator state (no 'step'): {state!r}")
    self.close()
    self._step = int(state["step"])

  def close(self) -> None:
    if self._iterator is not None:
      self._iterator.close()
      self._iterator = None


# ------------------------------------------------------------------------------------------------
# The run's cache: open (checking the fingerprint) or build.
# ------------------------------------------------------------------------------------------------


def restore_autoencoder(experiment: experiment_lib.Experiment, workdir: str, *,
                        mesh: jax.sharding.Mesh) -> tuple[autoencoder_lib.VideoAutoencoder, int]:
  """The autoencoder stage's EMA autoencoder on `mesh`: what the cache is encoded with, and what
  the dit stage holds frozen.

  Returns:
    (the autoencoder, the step of its checkpoint).

  Raises:
    FileNotFoundError: the autoencoder stage has not been trained in `workdir`.
    ValueError: its checkpoint does not fit `config.autoencoder` (see
      `workdir.restore_autoencoder`).
  """
  abstract_model = train_state_lib.abstract_model(autoencoder_stage.AutoencoderStage(experiment))
  return workdir_lib.restore_autoencoder(workdir, experiment, abstract_model, mesh=mesh)


def expected_fingerprint(experiment: experiment_lib.Experiment, workdir: str, *,
                         tokenizer: tokenizer_lib.Tokenizer, seed: int) -> dict[str, Any]:
  """The fingerprint a cache for this run and workdir must carry."""
  stage_config = experiment.dit_stage
  data_config = experiment.data
  return fingerprint(
      data_config=data_config, data_seed=seed if data_config.seed is None else data_config.seed,
      autoencoder_config=experiment.autoencoder,
      autoencoder_step=workdir_lib.autoencoder_checkpoint_step(workdir), tokenizer=tokenizer,
      num_steps=cache_steps(experiment), dtype=stage_config.cache_dtype,
      logvar=stage_config.sample_posterior)


def build_for_run(experiment: experiment_lib.Experiment, workdir: str, *,
                  tokenizer: tokenizer_lib.Tokenizer, mesh: jax.sharding.Mesh, seed: int,
                  progress: bool = True) -> dict[str, Any]:
  """Builds the run's cache with the autoencoder stage's EMA parameters (replacing any).

  Collective in a multi-process run: each process restores the autoencoder onto its own devices
  (not `mesh`) and encodes its share of the steps (`build`)."""
  stage_config = experiment.dit_stage
  data_config = experiment.data
  rules = experiment.mesh.rules
  if jax.process_count() > 1:
    mesh = mesh_lib.process_local_mesh(experiment.mesh)
  autoencoder, _ = restore_autoencoder(experiment, workdir, mesh=mesh)
  batch_sharding = loader_lib.batch_sharding(mesh, tuple(rules[axes.ACT_BATCH]))
  shards = int(np.prod([mesh.shape[axis] for axis in batch_sharding.spec[0]]))
  if any(bucket.global_batch % shards for bucket in data_config.parsed_buckets()):
    batch_sharding = None
  return build(
      workdir_lib.latent_cache_dir(workdir, experiment), autoencoder=autoencoder,
      data_config=data_config, tokenizer=tokenizer,
      data_seed=seed if data_config.seed is None else data_config.seed,
      num_steps=cache_steps(experiment), dtype=stage_config.cache_dtype,
      logvar=stage_config.sample_posterior,
      fingerprint_values=expected_fingerprint(experiment, workdir, tokenizer=tokenizer, seed=seed),
      batch_sharding=batch_sharding, progress=progress)


def fingerprint_differences(cache: LatentCache, experiment: experiment_lib.Experiment,
                            workdir: str, *, tokenizer: tokenizer_lib.Tokenizer,
                            seed: int) -> list[str]:
  """How `cache` differs from what this run and workdir need ("data_seed: 0 -> 2"); empty when
  it can serve them."""
  return config_lib.differences(
      cache.meta.get("fingerprint", {}),
      expected_fingerprint(experiment, workdir, tokenizer=tokenizer, seed=seed), prefix="")


def open_cache(experiment: experiment_lib.Experiment, workdir: str, *,
               tokenizer: tokenizer_lib.Tokenizer, seed: int) -> LatentCache:
  """Opens the run's cache, refusing one built for other data, autoencoder or tokenizer."""
  directory = workdir_lib.latent_cache_dir(workdir, experiment)
  cache = LatentCache(directory)
  differences = fingerprint_differences(cache, experiment, workdir, tokenizer=tokenizer,
                                        seed=seed)
  if differences:
    listed = config_lib.listed(differences, 8)
    raise LatentCacheError(
        f"the latent cache {directory} was built for another run ({listed}): rebuild it with "
        f"`{_BUILD_COMMAND}{workdir}`, or set "
        f"--config.dit_stage.latents=encode")
  return cache


def has_cache(experiment: experiment_lib.Experiment, workdir: str) -> bool:
  """Whether the run's cache directory holds a (complete) cache."""
  return os.path.exists(os.path.join(workdir_lib.latent_cache_dir(workdir, experiment), META_FILE))


def open_or_build(experiment: experiment_lib.Experiment, workdir: str, *,
                  tokenizer: tokenizer_lib.Tokenizer, mesh: jax.sharding.Mesh,
                  seed: int) -> CachedLatentIterator:
  """The dit stage's cached batches (which the text stage reads too); builds the cache first when
  it does not exist yet."""
  # Decided together: the build is collective, so the processes must agree that it is needed.
  if not multihost.all_true(has_cache(experiment, workdir)):
    logging.info("no latent cache yet in %s; building it",
                 workdir_lib.latent_cache_dir(workdir, experiment))
    build_for_run(experiment, workdir, tokenizer=tokenizer, mesh=mesh, seed=seed)
  cache = open_cache(experiment, workdir, tokenizer=tokenizer, seed=seed)
  rules = experiment.mesh.rules
  run_steps = experiment.train[workdir_lib.DIT_STAGE].num_steps
  if run_steps > cache.num_steps:
    logging.warning("the latent cache holds %d steps and the dit stage trains %d: it is read "
                    "%.1f times over", cache.num_steps, run_steps, run_steps / cache.num_steps)
  return CachedLatentIterator(cache, mesh=mesh, batch_axes=tuple(rules[axes.ACT_BATCH]))


def command(experiment: experiment_lib.Experiment, workdir: str | None, *,
            coordinator_address: str | None = None, num_processes: int | None = None,
            process_id: int | None = None) -> int:
  """`python -m videogen.main cache_latents`: builds (or rebuilds) WORKDIR's latent cache from its
  trained autoencoder, joining a multi-process run as `train` does (the processes build it
  together). Exit codes (`videogen.exit_codes`): 0 built; 2 a one-line error to fix first (no
  --workdir, no trained autoencoder, a mesh that does not fit the devices, incomplete
  multi-process flags); 1 another process failed (its log says why)."""
  if not workdir:
    return exit_codes.refuse("the latent cache needs --workdir=DIR, a run whose autoencoder "
                             "stage has trained")
  failed = multihost.join_processes(coordinator_address, num_processes, process_id)
  if failed is not None:
    return failed
  seed = experiment.seed
  try:
    workdir_lib.autoencoder_checkpoint_step(workdir)  # before a tokenizer is trained for nothing
    mesh = mesh_lib.create_mesh(experiment.mesh)
    tokenizer = workdir_lib.load_or_train_tokenizer(experiment, workdir)
    meta = build_for_run(experiment, workdir, tokenizer=tokenizer, mesh=mesh, seed=seed)
  except (FileNotFoundError, mesh_lib.MeshShapeError, LatentCacheError,
          workdir_lib.WorkdirMismatchError) as error:
    return exit_codes.refuse(error)
  except multihost.PeerFailedError as error:
    return exit_codes.fail(error)
  if multihost.is_primary():
    directory = workdir_lib.latent_cache_dir(workdir, experiment)
    print(f"latent cache: {meta['num_steps']} steps in {directory} "
          f"({workdir_lib.disk_bytes(directory) / 2**20:.1f} MiB, {meta['seconds']:.1f}s)")
  return exit_codes.DONE
