"""Tests for data_pipelines/tokenizer.py: training, round trips, padding, truncation, assets."""

from __future__ import annotations

import dataclasses
import pickle

import numpy as np
import pytest

from data_pipelines import tokenizer as tokenizer_lib
from data_pipelines.shapes import world


def _world_captions(seed: int, num_scenes: int, split: str = "train") -> list[str]:
  """Brief and descriptive captions of `num_scenes` scenes of the procedural world."""
  texts = []
  for index in range(num_scenes):
    scene = world.sample_scene(index, seed=seed, split=split)
    texts.append(world.caption(scene))
    texts.append(world.describe(scene, frames=9, height=32, width=32))
  return texts


@pytest.fixture(scope="module")
def config():
  return tokenizer_lib.TokenizerConfig(num_train_captions=800)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, config):
  path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
  return tokenizer_lib.train_tokenizer(_world_captions(0, 400), str(path), config), path


def test_round_trip_on_unseen_world_captions(trained):
  tokenizer, _ = trained
  # Other seeds and splits than the training captions: held-out combinations included.
  texts = _world_captions(7, 60) + _world_captions(3, 30, split="held_out")
  ids, mask = tokenizer.encode(texts)
  assert tokenizer.decode(ids) == texts
  assert tokenizer.num_truncated == 0
  # Whole words, not characters: a closed vocabulary of a few dozen words.
  assert mask.sum(axis=1).max() < 0.3 * max(len(t) for t in texts)


@pytest.fixture(scope="module")
def split(tmp_path_factory, config):
  """A tokenizer trained with split_punctuation, on the same captions as `trained`."""
  path = tmp_path_factory.mktemp("split") / "tokenizer.model"
  split_config = dataclasses.replace(config, split_punctuation=True)
  return tokenizer_lib.train_tokenizer(_world_captions(0, 400), str(path), split_config), path


# The world's captions write "moving right;" and "a red circle, a blue square"; a prompt may
# write "moving right" and "a red circle".
_PUNCTUATED = ["a red circle moving right; on a black background", "a red circle moving right",
               "a red circle, a blue square", "a red circle"]


def _pieces(tokenizer, texts):
  ids, mask = tokenizer.encode(texts)
  return [list(row[m][:-1]) for row, m in zip(ids, mask)], ids  # without </s>


def test_split_punctuation_gives_a_word_one_id_whatever_follows(split):
  tokenizer, _ = split
  rows, ids = _pieces(tokenizer, _PUNCTUATED)
  assert tokenizer.split_punctuation
  assert rows[1] == rows[0][:len(rows[1])]  # "right;" is "right" then ";"
  assert tokenizer.decode([rows[0][len(rows[1])]]) == [";"]
  assert rows[3] == rows[2][:len(rows[3])]
  assert tokenizer.decode([rows[2][len(rows[3])]]) == [","]
  assert tokenizer.decode(ids) == _PUNCTUATED


def test_without_split_punctuation_bpe_joins_it_to_the_word(trained):
  tokenizer, _ = trained
  rows, ids = _pieces(tokenizer, _PUNCTUATED)
  assert not tokenizer.split_punctuation
  assert rows[0][:len(rows[1])] != rows[1]  # "right;" is a piece of its own
  assert tokenizer.decode(ids) == _PUNCTUATED


def test_an_asset_trained_otherwise_is_a_clear_error(trained, split, config, tmp_path):
  for (tokenizer, _), flag in ((trained, True), (split, False)):
    asset = tmp_path / f"{flag}.model"
    tokenizer.save(str(asset))
    other = dataclasses.replace(config, split_punctuation=flag)
    with pytest.raises(ValueError, match="split_punctuation"):
      tokenizer_lib.load_or_train(other, str(asset), lambda: [])
  with pytest.raises(ValueError, match="model_path"):
    tokenizer_lib.TokenizerConfig(split_punctuation=True, model_path="user.model")


def test_encode_pads_after_eos(trained, config):
  tokenizer, _ = trained
  ids, mask = tokenizer.encode(["a red circle", "a large blue square and a small white triangle"])
  assert ids.dtype == np.int32 and mask.dtype == bool
  assert ids.shape == mask.shape == (2, config.max_length)
  lengths = mask.sum(axis=1)
  assert lengths[0] < lengths[1]
  for row, length in enumerate(lengths):
    assert mask[row, :length].all() and not mask[row, length:].any()  # a prefix
    assert ids[row, length - 1] == tokenizer.eos_id
    assert (ids[row, length:] == tokenizer.pad_id).all()
  assert tokenizer.pad_id == 0 and not (ids[mask] == tokenizer.pad_id).any()


def test_training_is_deterministic(trained, config, tmp_path):
  tokenizer, _ = trained
  again = tokenizer_lib.train_tokenizer(_world_captions(0, 400), str(tmp_path / "b.model"), config)
  assert again.model_proto == tokenizer.model_proto
  assert (tmp_path / "b.model").read_bytes() == tokenizer.model_proto


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_prompt_is_a_clear_error(trained, text):
  tokenizer, _ = trained
  with pytest.raises(ValueError, match="prompt is empty"):
    tokenizer.encode(["a red circle", text])


def test_a_single_string_is_rejected(trained):
  tokenizer, _ = trained
  with pytest.raises(TypeError, match=r"encode\(\[text\]\)"):
    tokenizer.encode("a red circle")


def test_long_text_is_truncated_and_counted(trained, config):
  tokenizer = tokenizer_lib.Tokenizer(trained[0].model_proto, max_length=6)
  long_text = "a large red circle moving up-left that bounces off the left edge"
  ids, mask = tokenizer.encode([long_text, "a red circle"])
  assert mask[0].all() and ids[0, -1] == tokenizer.eos_id
  assert tokenizer.num_truncated == 1
  # The kept prefix decodes to the text's first words.
  assert long_text.startswith(tokenizer.decode(ids[:1])[0])
  assert tokenizer.decode(ids[1]) == ["a red circle"]


def test_case_folded_and_unknown_characters_survive(trained):
  tokenizer, _ = trained
  upper, _ = tokenizer.encode(["A Red CIRCLE"])
  lower, _ = tokenizer.encode(["a red circle"])
  np.testing.assert_array_equal(upper, lower)
  # Byte fallback: characters never seen in training still round-trip (no <unk>).
  assert tokenizer.decode(tokenizer.encode(["a red circle \u00fc\u00df"])[0]) == [
      "a red circle \u00fc\u00df"]


def test_pickles_with_its_model(trained):
  tokenizer, _ = trained
  copy = pickle.loads(pickle.dumps(tokenizer))
  texts = ["a small magenta triangle moving down; on a gray background"]
  np.testing.assert_array_equal(copy.encode(texts)[0], tokenizer.encode(texts)[0])
  assert copy.vocab_size == tokenizer.vocab_size > 259


def test_load_or_train_reuses_the_asset(trained, config, tmp_path):
  calls = []

  def captions():
    calls.append(1)
    return _world_captions(0, 400)

  asset = str(tmp_path / "assets" / "tokenizer.model")
  first = tokenizer_lib.load_or_train(config, asset, captions)
  second = tokenizer_lib.load_or_train(config, asset, captions)
  assert len(calls) == 1
  assert first.model_proto == second.model_proto == trained[0].model_proto


def test_model_path_wins_and_a_missing_one_is_a_clear_error(trained, config, tmp_path):
  _, path = trained
  user = tokenizer_lib.TokenizerConfig(model_path=str(path), max_length=12)
  loaded = tokenizer_lib.load_or_train(user, str(tmp_path / "unused.model"), lambda: [])
  assert loaded.max_length == 12 and loaded.model_proto == trained[0].model_proto
  assert not (tmp_path / "unused.model").exists()
  missing = tokenizer_lib.TokenizerConfig(model_path=str(tmp_path / "nope.model"))
  with pytest.raises(FileNotFoundError, match="model_path"):
    tokenizer_lib.load_or_train(missing, str(tmp_path / "unused.model"), lambda: [])


def test_config_rejects_a_vocabulary_without_room_for_words():
  with pytest.raises(ValueError, match="vocab_size"):
    tokenizer_lib.TokenizerConfig(vocab_size=200)
  with pytest.raises(ValueError, match="no captions"):
    tokenizer_lib.train_tokenizer(["", "  "], "/nonexistent/x.model",
                                  tokenizer_lib.TokenizerConfig())
