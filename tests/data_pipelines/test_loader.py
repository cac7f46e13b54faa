"""Tests for data_pipelines/loader.py: config, determinism, resume, sharding, hosts, sources."""

from __future__ import annotations

import dataclasses
import json
import threading

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_pipelines import buckets
from data_pipelines import loader
from data_pipelines import sources
from data_pipelines import tokenizer as tokenizer_lib
from data_pipelines import transforms
from data_pipelines.builders import common
from data_pipelines.builders import shapes_world
from data_pipelines.shapes import world

# Small videos, two buckets (one-frame images mixed into video training), batch 8 = 8 devices.
BUCKETS = ("3x16x16:8", "1x16x16:16:0.5")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  config = loader.DataConfig(buckets=("9x32x32:8",))
  return tokenizer_lib.train_tokenizer(
      loader.captions(config, seed=0, num=600),
      str(tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"),
      tokenizer_lib.TokenizerConfig(num_train_captions=600))


def _mesh(data: int, fsdp: int) -> jax.sharding.Mesh:
  return jax.sharding.Mesh(np.array(jax.devices()).reshape(data, fsdp), ("data", "fsdp"))


def _to_numpy(batch):
  return {key: np.asarray(value) for key, value in batch.items()}


def _assert_batches_equal(expected, actual):
  assert len(expected) == len(actual)
  for step, (want, got) in enumerate(zip(expected, actual)):
    assert set(want) == set(got)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key], err_msg=f"batch {step}, key {key}")


# --- config ---------------------------------------------------------------------------------------


def test_data_config_checks_its_fields():
  with pytest.raises(ValueError, match="buckets is empty"):
    loader.DataConfig(buckets=())
  with pytest.raises(ValueError, match="bad bucket"):
    loader.DataConfig(buckets=("9x32x32:8", "9x32x32"))
  with pytest.raises(ValueError, match="tfds_name"):
    loader.DataConfig(source="tfds")
  with pytest.raises(ValueError, match="tuple"):
    loader.DataConfig(buckets="9x32x32:8")


def test_data_config_round_trips_through_the_experiment_schema():
  from videogen import config as config_lib  # pylint: disable=g-import-not-at-top
  section = config_lib.to_config_dict(loader.DataConfig())
  section.buckets = ("9x32x32:8", "1x32x32:16:0.25")
  section.world.max_objects = 2
  parsed = config_lib.parse(loader.DataConfig, section, "config.data")
  assert parsed.parsed_buckets()[1] == buckets.Bucket(1, 32, 32, 16, 0.25)
  assert parsed.world == world.WorldConfig(max_objects=2)
  section.buckets = ("9x32:8",)
  with pytest.raises(config_lib.ConfigError, match="config.data: bad bucket '9x32:8'"):
    config_lib.parse(loader.DataConfig, section, "config.data")


def test_a_batch_that_does_not_split_over_the_mesh_is_a_clear_error(tokenizer):
  config = loader.DataConfig(buckets=("3x16x16:8", "1x16x16:4"))
  with pytest.raises(loader.BatchSplitError, match="1x16x16:4.*does not split over 8"):
    loader.make_iterator(config, tokenizer=tokenizer, mesh=_mesh(8, 1), seed=0)
  with pytest.raises(ValueError, match="none of the batch axes"):
    loader.make_iterator(config, tokenizer=tokenizer, mesh=_mesh(8, 1), seed=0,
                         batch_axes=("replica",))


# --- batches: shapes, sharding, determinism, resume ----------------------------------------------


@pytest.mark.parametrize("mesh_shape", [(8, 1), (2, 4), (1, 8)])
def test_sharded_batch_lands_on_all_devices(tokenizer, mesh_shape, devices):
  mesh = _mesh(*mesh_shape)
  config = loader.DataConfig(buckets=BUCKETS)
  batches = loader.make_iterator(config, tokenizer=tokenizer, mesh=mesh, seed=0)
  reference = loader.StepBatches(config, tokenizer=tokenizer, seed=0)
  expected_sharding = NamedSharding(mesh, P(("data", "fsdp")))
  for step in range(3):
    batch = next(batches)
    local = reference(step)
    bucket = batches.bucket_of(step)
    assert set(batch) == {"video", "tokens", "token_mask", "index"}
    assert batch["video"].shape == (bucket.global_batch, *bucket.shape, 3)
    assert batch["video"].dtype == np.uint8 and batch["tokens"].dtype == np.int32
    assert batch["token_mask"].dtype == bool and batch["index"].dtype == np.int32
    for key, array in batch.items():
      assert array.sharding == expected_sharding, key
      assert array.sharding.device_set == set(devices)
      shards = array.addressable_shards
      assert len(shards) == 8 and {s.data.shape[0] for s in shards} == {bucket.global_batch // 8}
      for shard in shards:
        np.testing.assert_array_equal(np.asarray(shard.data), local[key][shard.index])


def test_every_batch_is_homogeneous_and_indices_are_a_dense_stream(tokenizer):
  config = loader.DataConfig(buckets=BUCKETS)
  batches = loader.make_iterator(config, tokenizer=tokenizer, mesh=_mesh(8, 1), seed=5)
  seen_shapes, indices = set(), []
  for step in range(12):
    batch = _to_numpy(next(batches))
    bucket = batches.bucket_of(step)
    assert batch["video"].shape == (bucket.global_batch, *bucket.shape, 3)
    assert batch["tokens"].shape[0] == batch["index"].shape[0] == bucket.global_batch
    seen_shapes.add(batch["video"].shape)
    indices.extend(batch["index"].tolist())
  assert len(seen_shapes) == 2
  # The procedural world never repeats: every example of the run is new, in order.
  assert indices == list(range(len(indices)))
  assert batches.get_state()["step"] == 12


def test_restored_iterator_continues_bitwise_across_bucket_switches(tokenizer):
  config = loader.DataConfig(buckets=BUCKETS)
  mesh = _mesh(2, 4)
  original = loader.make_iterator(config, tokenizer=tokenizer, mesh=mesh, seed=2)
  expected = [_to_numpy(next(original)) for _ in range(8)]
  assert len({b["video"].shape for b in expected[3:]}) == 2, "pick a seed that switches buckets"

  saved = loader.make_iterator(config, tokenizer=tokenizer, mesh=mesh, seed=2)
  for _ in range(3):
    next(saved)
  state = json.loads(json.dumps(saved.get_state()))  # as the trainer's checkpoint stores it
  restored = loader.make_iterator(config, tokenizer=tokenizer, mesh=mesh, seed=2)
  next(restored)  # a fresh iterator that already moved: set_state must rewind it
  restored.set_state(state)
  _assert_batches_equal(expected[3:], [_to_numpy(next(restored)) for _ in range(5)])
  # start_step is the same thing as restoring.
  started = loader.make_iterator(config, tokenizer=tokenizer, mesh=mesh, seed=2, start_step=6)
  _assert_batches_equal(expected[6:], [_to_numpy(next(started)) for _ in range(2)])
  # Another seed is another run.
  other = loader.make_iterator(config, tokenizer=tokenizer, mesh=mesh, seed=3)
  assert not np.array_equal(_to_numpy(next(other))["tokens"], expected[0]["tokens"])
  with pytest.raises(ValueError, match="not a loader state"):
    restored.set_state({})


def test_worker_processes_give_the_same_batches(tokenizer):
  config = loader.DataConfig(buckets=BUCKETS)
  mesh = _mesh(8, 1)
  reference = loader.StepBatches(config, tokenizer=tokenizer, seed=4)
  expected = [{k: v for k, v in reference(step).items() if k != "step"} for step in range(3, 7)]
  batches = loader.make_iterator(dataclasses.replace(config, num_workers=2), tokenizer=tokenizer,
                                 mesh=mesh, seed=4)
  batches.set_state({"step": 3})
  got = []
  # A dead worker would block forever: fail instead.
  thread = threading.Thread(target=lambda: got.extend(_to_numpy(next(batches)) for _ in range(4)),
                            daemon=True)
  thread.start()
  thread.join(timeout=120)
  batches.close()
  assert not thread.is_alive(), "worker processes produced no batch within 120 s"
  _assert_batches_equal(expected, got)
  assert batches.get_state()["step"] == 7


def test_two_hosts_build_disjoint_halves_of_the_global_batch(tokenizer):
  config = loader.DataConfig(buckets=BUCKETS)
  buckets = config.parsed_buckets()
  single = loader.StepBatches(config, tokenizer=tokenizer, seed=1)
  hosts = [loader.StepBatches(config, tokenizer=tokenizer, seed=1,
                              rows=[loader.contiguous_rows(b.global_batch, host, 2)
                                    for b in buckets])
           for host in range(2)]
  for step in range(6):
    whole = single(step)
    halves = [host(step) for host in hosts]
    assert not set(halves[0]["index"]) & set(halves[1]["index"])
    for key in ("video", "tokens", "token_mask", "index"):
      assert halves[0][key].shape[0] == whole[key].shape[0] // 2
      np.testing.assert_array_equal(np.concatenate([h[key] for h in halves]), whole[key])


def test_process_rows_of_a_single_process_are_all_rows():
  sharding = NamedSharding(_mesh(2, 4), P(("data", "fsdp")))
  np.testing.assert_array_equal(loader.process_rows(sharding, 16), np.arange(16))
  np.testing.assert_array_equal(loader.contiguous_rows(16, 1, 4), np.arange(4, 8))


# --- what a batch holds ---------------------------------------------------------------------------


@pytest.mark.parametrize("caption", ["brief", "descriptive", "mixed"])
def test_batches_hold_the_world_examples_they_name(tokenizer, caption):
  config = loader.DataConfig(buckets=("3x16x16:8",), caption=caption)
  batch = loader.StepBatches(config, tokenizer=tokenizer, seed=6)(1)
  texts = tokenizer.decode(batch["tokens"])
  kinds = set()
  for index, video, text in zip(batch["index"], batch["video"], texts):
    sample = world.generate(int(index), seed=6, frames=3, height=16, width=16)
    np.testing.assert_array_equal(video, sample["video"])
    assert text in (sample["caption"], sample["description"])
    kinds.add("brief" if text == sample["caption"] else "descriptive")
  assert kinds == ({"brief", "descriptive"} if caption == "mixed" else {caption})
  again = loader.StepBatches(config, tokenizer=tokenizer, seed=6)(1)
  np.testing.assert_array_equal(again["tokens"], batch["tokens"])


def test_captions_alternate_brief_and_descriptive():
  config = loader.DataConfig(buckets=("9x32x32:8",))
  texts = list(loader.captions(config, seed=0, num=10))
  assert len(texts) == 10 and texts == list(loader.captions(config, seed=0, num=10))
  for index in range(5):
    scene = world.sample_scene(index, seed=0)
    assert texts[2 * index] == world.caption(scene)
    assert texts[2 * index + 1] == world.describe(scene, frames=9, height=32, width=32)


# --- TFDS sources ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shapes_world_dir(tmp_path_factory):
  """12 clips of 5 frames of 24x40 (wide), built by the shapes_world builder."""
  return shapes_world.build(tmp_path_factory.mktemp("tfds"), "5x24x40",
                            num_examples={"train": 12, "test": 0, "held_out": 0})


def test_tfds_source_fits_records_to_buckets_and_shuffles_per_epoch(tokenizer, shapes_world_dir):
  config = loader.DataConfig(source="tfds", tfds_name=str(shapes_world_dir), split="train",
                             buckets=("3x16x16:8", "1x16x16:16:0.5"), caption="descriptive")
  records = sources.open_tfds(str(shapes_world_dir), "train")
  step_batches = loader.StepBatches(config, tokenizer=tokenizer, seed=0)
  indices = []
  for step in range(8):
    batch = step_batches(step)
    bucket = step_batches.schedule.buckets[step_batches.schedule.bucket_id(step)]
    assert batch["video"].shape == (bucket.global_batch, *bucket.shape, 3)
    for index, video, text in zip(batch["index"], batch["video"],
                                  tokenizer.decode(batch["tokens"])):
      record = records[int(index)]
      assert text == record["description"].decode()
      # Some window of the clip, fitted to the bucket.
      assert any(np.array_equal(video, transforms.fit_video(record["video"], bucket, start))
                 for start in range(5 - bucket.frames + 1))
    indices.extend(batch["index"].tolist())
  epochs = [indices[i:i + 12] for i in range(0, len(indices) - 11, 12)]
  assert len(epochs) >= 3
  for epoch in epochs:
    assert sorted(epoch) == list(range(12))  # every record once per epoch
  assert epochs[0] != epochs[1] and epochs[0] != list(range(12))  # a fresh order each epoch

  # The sharded path reads the same records.
  batches = loader.make_iterator(config, tokenizer=tokenizer, mesh=_mesh(2, 4), seed=0)
  _assert_batches_equal([{k: v for k, v in step_batches(0).items() if k != "step"}],
                        [_to_numpy(next(batches))])


class _PerShapeVideos(tfds.core.GeneratorBasedBuilder):
  """A data set with one split per shape bucket, as video_folder writes it."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "video": common.video_feature(),  # any shape, as video_folder stores it
        "caption": tfds.features.Text(),
    }), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"3x16x16": self._generate_examples(3, 5), "1x16x16": self._generate_examples(1, 3)}

  def _generate_examples(self, frames, count):
    for index in range(count):
      yield index, {"video": np.full((frames, 16, 16, 3), 10 * index + frames, np.uint8),
                    "caption": f"clip {index} of {frames} frames"}


def test_a_split_per_bucket_gives_each_bucket_its_own_epochs(tokenizer, tmp_path):
  builder = _PerShapeVideos(data_dir=str(tmp_path), file_format="array_record")
  builder.download_and_prepare()
  config = loader.DataConfig(source="tfds", tfds_name=builder.data_dir, split="{shape}",
                             buckets=("3x16x16:8", "1x16x16:8"), caption="brief")
  step_batches = loader.StepBatches(config, tokenizer=tokenizer, seed=0)
  per_bucket = {0: [], 1: []}
  for step in range(10):
    batch = step_batches(step)
    bucket_id = step_batches.schedule.bucket_id(step)
    frames = (3, 1)[bucket_id]
    np.testing.assert_array_equal(batch["video"][:, 0, 0, 0, 0], 10 * batch["index"] + frames)
    assert tokenizer.decode(batch["tokens"]) == [
        f"clip {i} of {frames} frames" for i in batch["index"]]
    per_bucket[bucket_id].extend(batch["index"].tolist())
  for bucket_id, size in ((0, 5), (1, 3)):
    seen = per_bucket[bucket_id]
    assert len(seen) >= 2 * size
    for start in range(0, len(seen) - size + 1, size):
      assert sorted(seen[start:start + size]) == list(range(size))
  assert sorted(set(loader.captions(config, seed=0, num=100))) == sorted(
      [f"clip {i} of 3 frames" for i in range(5)] + [f"clip {i} of 1 frames" for i in range(3)])
