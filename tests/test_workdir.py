"""videogen/workdir.py: the words of the tokenizer's training captions, recorded beside it; the
steps a stage has checkpoints of; a tokenizer that the text encoder cannot read."""

import json
import re
import types

import numpy as np
import pytest

from experiments import shapes
from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib
from videogen.train import checkpointing


def test_words_are_the_tokenizers_view_of_a_text():
  assert workdir_lib.words("A Red circle, moving UP-left; ｆｕｌｌ-width!") == [
      "a", "red", "circle", "moving", "up", "left", "full", "width"]


def test_training_the_tokenizer_records_its_captions_words_and_loading_does_not(tmp_path):
  config = shapes.get_config("tiny")
  config.tokenizer.num_train_captions = 40
  experiment = experiment_lib.validate(config)
  workdir = str(tmp_path)
  assert workdir_lib.read_tokenizer_words(workdir, experiment) is None  # nothing trained yet
  workdir_lib.load_or_train_tokenizer(experiment, workdir)
  path = tmp_path / "tokenizer.words.json"
  words = json.loads(path.read_text())["words"]
  assert words == sorted(set(words)) and {"a", "circle", "square", "background"} <= set(words)
  assert workdir_lib.read_tokenizer_words(workdir, experiment) == frozenset(words)
  path.unlink()
  workdir_lib.load_or_train_tokenizer(experiment, workdir)  # loaded: nothing is rewritten
  assert not path.exists()


def test_an_unreadable_words_file_means_unknown(tmp_path):
  (tmp_path / "tokenizer.words.json").write_text("{not json")
  assert workdir_lib.read_tokenizer_words(str(tmp_path)) is None


def test_checkpoint_steps_lists_every_saved_step_oldest_first(tmp_path):
  assert workdir_lib.checkpoint_steps(str(tmp_path), "dit") == []  # no checkpoints/ at all
  checkpointer = checkpointing.Checkpointer(workdir_lib.checkpoint_dir(str(tmp_path), "dit"),
                                            keep=0, async_save=False)
  for step in (10, 20, 30):
    checkpointer.save(step, {"w": np.full((2,), step, np.float32)}, {}, {"seed": 0})
  checkpointer.close()
  assert workdir_lib.checkpoint_steps(str(tmp_path), "dit") == [10, 20, 30]
  assert workdir_lib.checkpoint_steps(str(tmp_path), "autoencoder") == []
  assert workdir_lib.latest_step(str(tmp_path), "dit") == 30


@pytest.mark.parametrize("vocab_size, max_length, says", [
    (600, 56, "has 600 ids but config.text_encoder.vocab_size is 512: set "
              "--config.text_encoder.vocab_size=600"),
    (500, 64, "emits 64 tokens per caption but config.text_encoder.max_length is 56: set "
              "--config.text_encoder.max_length=64"),
])
def test_a_tokenizer_the_text_encoder_cannot_read_says_what_to_set(tmp_path, vocab_size,
                                                                   max_length, says):
  experiment = experiment_lib.validate(shapes.get_config("tiny"))  # vocabulary 512, 56 tokens
  tokenizer = types.SimpleNamespace(vocab_size=vocab_size, max_length=max_length)
  with pytest.raises(workdir_lib.WorkdirMismatchError, match=re.escape(says)):
    workdir_lib.check_tokenizer(tokenizer, experiment, str(tmp_path))
  workdir_lib.check_tokenizer(types.SimpleNamespace(vocab_size=500, max_length=56), experiment,
                              str(tmp_path))  # fewer ids and tokens than it takes: a warning
