"""videogen/workdir.py: the words of the tokenizer's training captions, recorded beside it."""

import json

from experiments import shapes
from videogen import experiment as experiment_lib
from videogen import workdir as workdir_lib


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
