"""The caption tokenizer: a small sentencepiece model trained on the data's own captions.

The procedural world speaks a closed vocabulary of a few dozen words, so a tiny BPE model trained on
its captions (brief and descriptive) tokenizes every caption into whole words. The model is stored
as an asset (the `.model` file) in the workdir and reused on resume; a user-supplied model can be
named with `config.tokenizer.model_path` instead.

    tokenizer = load_or_train(config.tokenizer, f"{workdir}/tokenizer.model",
                              lambda: loader.captions(config.data, seed=0, num=4000))
    ids, mask = tokenizer.encode(["a red circle moving right"])  # int32 [1, L], bool [1, L]
    tokenizer.decode(ids)  # ["a red circle moving right"]

Text is case-folded (NFKC + lower case) before tokenization, so "A Red Circle" is the same prompt
as "a red circle"; characters never seen in training fall back to byte tokens instead of <unk>.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import uuid
from typing import Callable, Iterable, Optional, Sequence

from absl import logging
from etils import epath
import numpy as np
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

# Fixed special ids: padding is 0 so that a zero-initialised id buffer is all padding.
PAD_ID = 0
UNK_ID = 1
EOS_ID = 2
# 256 byte-fallback pieces + <pad>, <unk>, </s>: the vocabulary must leave room for learned pieces.
_RESERVED_PIECES = 256 + 3
_MIN_VOCAB_SIZE = _RESERVED_PIECES + 32
# The pieces `TokenizerConfig.split_punctuation` keeps apart from the words they follow.
PUNCTUATION = (",", ";", ".")


@dataclasses.dataclass(frozen=True)
class TokenizerConfig:
  """The `config.tokenizer` section.

  Attributes:
    vocab_size: target vocabulary size, including 256 byte-fallback pieces and the 3 special
      tokens. A small corpus may yield fewer pieces (no error); `Tokenizer.vocab_size` is the
      real size and the one the text encoder must use.
    max_length: tokens per caption, including the end-of-sentence token; longer captions are
      truncated (and counted in the log). 64 holds every descriptive caption of up to 3 objects
      in 9- and 17-frame clips of the world (at most 53 and 61 tokens in 100,000 captions,
      docs/studies/caption_lengths.py); 33-frame clips mention more bounces and need about 96.
    split_punctuation: make each of `PUNCTUATION` a piece of its own, so that a word has one id
      whatever follows it. Without it BPE learns "right;" and "circle," as pieces apart from the
      "right" and "circle" of a prompt that has no punctuation. Captions get longer: the world's
      9-frame descriptive captions take up to 59 tokens instead of 53, and 17-frame ones up to
      69 instead of 61 (64 no longer holds them all). Off in the presets: at the main job's
      budget it read no better on the generation suite (docs/learning_curve.md).
    model_path: a user-supplied sentencepiece `.model` file; when set, nothing is trained.
    num_train_captions: how many caption strings (brief and descriptive, alternating) train the
      model.
  """
  vocab_size: int = 512
  max_length: int = 64
  split_punctuation: bool = False
  model_path: Optional[str] = None
  num_train_captions: int = 4000

  def __post_init__(self):
    if self.vocab_size < _MIN_VOCAB_SIZE:
      raise ValueError(
          f"vocab_size={self.vocab_size} is too small: it includes {_RESERVED_PIECES} byte and "
          f"special pieces; use at least {_MIN_VOCAB_SIZE} (e.g. 512)")
    if self.max_length < 2:
      raise ValueError(f"max_length={self.max_length} must be at least 2 (a word and </s>)")
    if self.num_train_captions < 1:
      raise ValueError(f"num_train_captions={self.num_train_captions} must be positive")
    if self.split_punctuation and self.model_path:
      raise ValueError("split_punctuation=True sets how a tokenizer is trained, but model_path "
                       f"{self.model_path!r} is used as it is: unset one of them")


class Tokenizer:
  """Encodes captions into fixed-length id arrays and back.

  Picklable (the model travels as its serialized proto), so loader worker processes can use it.
  """

  def __init__(self, model_proto: bytes, max_length: int):
    """Wraps a serialized sentencepiece model.

    Args:
      model_proto: the bytes of a `.model` file.
      max_length: length L of every encoded row.
    """
    self._model_proto = bytes(model_proto)
    self._processor = spm.SentencePieceProcessor(model_proto=self._model_proto)
    self.max_length = max_length
    # How many texts `encode` has cut to `max_length` so far (in this process).
    self.num_truncated = 0
    if self._processor.pad_id() < 0:
      raise ValueError(
          "the sentencepiece model has no <pad> piece: train it with pad_id=0 (train_tokenizer "
          "does), or set config.tokenizer.model_path to a model that has one")

  @classmethod
  def load(cls, path: str, max_length: int) -> Tokenizer:
    """Loads a `.model` file (local path or any path etils.epath can read)."""
    model_path = epath.Path(path)
    if not model_path.exists():
      raise FileNotFoundError(
          f"tokenizer model {path!r} does not exist: fix config.tokenizer.model_path, or leave it "
          f"unset to train one from the data's captions")
    return cls(model_path.read_bytes(), max_length)

  def __getstate__(self):
    return {"model_proto": self._model_proto, "max_length": self.max_length}

  def __setstate__(self, state):
    self.__init__(state["model_proto"], state["max_length"])

  @property
  def split_punctuation(self) -> bool:
    """Whether the model was trained with `PUNCTUATION` as pieces of their own."""
    model = sentencepiece_model_pb2.ModelProto.FromString(self._model_proto)
    return set(PUNCTUATION) <= set(model.trainer_spec.user_defined_symbols)

  @property
  def vocab_size(self) -> int:
    """The number of ids (the real size, which may be below `TokenizerConfig.vocab_size`)."""
    return self._processor.vocab_size()

  @property
  def pad_id(self) -> int:
    return self._processor.pad_id()

  @property
  def eos_id(self) -> int:
    return self._processor.eos_id()

  @property
  def model_proto(self) -> bytes:
    """The serialized model: the bytes of the `.model` file."""
    return self._model_proto

  def save(self, path: str) -> None:
    """Writes the `.model` file atomically (write to a temporary name, then rename)."""
    _write_atomically(epath.Path(path), self._model_proto)

  def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Tokenizes texts into padded rows ending in </s>.

    Args:
      texts: N captions or prompts.

    Returns:
      ids: int32 [N, max_length], `pad_id` after the end of each text.
      mask: bool [N, max_length], True on real tokens (the text and its </s>).

    Raises:
      ValueError: a text is empty or whitespace only.
    """
    if isinstance(texts, (str, bytes)):
      raise TypeError(f"encode takes a list of texts, got a single text {texts!r}: wrap it, "
                      f"encode([text])")
    texts = [_as_text(text) for text in texts]
    for text in texts:
      if not text.strip():
        raise ValueError(f"prompt is empty: {text!r}; pass a caption such as 'a red circle'")
    ids = np.full((len(texts), self.max_length), self.pad_id, dtype=np.int32)
    mask = np.zeros((len(texts), self.max_length), dtype=bool)
    truncated = 0
    for row, pieces in enumerate(self._processor.encode(texts)):
      # Keep room for </s>, which marks the end even of a truncated text.
      if len(pieces) > self.max_length - 1:
        pieces = pieces[:self.max_length - 1]
        truncated += 1
      pieces = list(pieces) + [self.eos_id]
      ids[row, :len(pieces)] = pieces
      mask[row, :len(pieces)] = True
    if truncated:
      self.num_truncated += truncated
      logging.log_every_n_seconds(
          logging.WARNING, "tokenizer: %d text(s) longer than max_length=%d tokens were truncated "
          "(%d so far); raise config.tokenizer.max_length to keep them whole", 60, truncated,
          self.max_length, self.num_truncated)
    return ids, mask

  def decode(self, ids: np.ndarray | Sequence[Sequence[int]]) -> list[str]:
    """Turns id rows back into texts.

    Args:
      ids: int [N, L] (or a single row [L]); padding and </s> are dropped.

    Returns:
      N texts (case-folded, as the tokenizer saw them).
    """
    rows = np.asarray(ids)
    if rows.ndim == 1:
      rows = rows[None]
    if rows.ndim != 2:
      raise ValueError(f"decode takes ids of shape [N, L] or [L], got shape {rows.shape}")
    special = {self.pad_id, self.eos_id}
    return [self._processor.decode([int(i) for i in row if int(i) not in special])
            for row in rows]


def train_tokenizer(captions: Iterable[str], out_path: str, config: TokenizerConfig) -> Tokenizer:
  """Trains a BPE sentencepiece model on captions and saves it as `out_path`.

  Deterministic: the same captions give the same model bytes (one training thread, no input
  shuffling, a fixed random seed).

  Args:
    captions: caption strings (brief and descriptive); the first `config.num_train_captions`
      non-empty ones are used.
    out_path: where the `.model` file is written (its folder is created).
    config: the tokenizer settings.

  Returns:
    The trained tokenizer.
  """
  corpus = [text for text in (_as_text(c).strip() for c in captions) if text]
  corpus = list(itertools.islice(corpus, config.num_train_captions))
  if not corpus:
    raise ValueError("no captions to train the tokenizer on: the data source yielded none; check "
                     "config.data (source, tfds_name, split)")
  spm.set_random_generator_seed(0)
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(corpus),
      model_writer=model,
      # BPE learns whole words of a small closed vocabulary; unigram fragments them.
      model_type="bpe",
      vocab_size=config.vocab_size,
      # A small corpus has fewer distinct pieces than vocab_size: accept that instead of failing.
      hard_vocab_limit=False,
      character_coverage=1.0,
      byte_fallback=True,
      normalization_rule_name="nmt_nfkc_cf",
      split_digits=True,
      # Let "down-left" (and, unless split_punctuation, "edge;") become single pieces.
      split_by_unicode_script=False,
      user_defined_symbols=list(PUNCTUATION) if config.split_punctuation else [],
      pad_id=PAD_ID, unk_id=UNK_ID, eos_id=EOS_ID, bos_id=-1,
      num_threads=1,
      shuffle_input_sentence=False,
      minloglevel=2,
  )
  tokenizer = Tokenizer(model.getvalue(), config.max_length)
  tokenizer.save(out_path)
  logging.info("trained a %d-piece tokenizer on %d captions -> %s", tokenizer.vocab_size,
               len(corpus), out_path)
  return tokenizer


def load_or_train(config: TokenizerConfig, asset_path: str,
                  captions: Callable[[], Iterable[str]]) -> Tokenizer:
  """Returns the tokenizer of a run: the user's model, the saved asset, or a freshly trained one.

  Args:
    config: the tokenizer settings; `config.model_path`, when set, wins.
    asset_path: the run's `.model` asset (e.g. `{workdir}/tokenizer.model`); reused if it exists,
      written otherwise. Training is deterministic, so every host training its own copy gets the
      same model.
    captions: called only when training is needed; returns the training captions.
  """
  if config.model_path:
    return Tokenizer.load(config.model_path, config.max_length)
  if epath.Path(asset_path).exists():
    tokenizer = Tokenizer.load(asset_path, config.max_length)
    if tokenizer.split_punctuation != config.split_punctuation:
      raise ValueError(
          f"{asset_path} was trained with split_punctuation={tokenizer.split_punctuation}, but "
          f"config.tokenizer.split_punctuation={config.split_punctuation}: set it back, or start "
          f"a fresh workdir")
    return tokenizer
  return train_tokenizer(captions(), asset_path, config)


def _as_text(text: str | bytes) -> str:
  if isinstance(text, bytes):
    return text.decode("utf-8")
  if isinstance(text, np.ndarray) and text.ndim == 0:
    return _as_text(text.item())
  if not isinstance(text, str):
    raise TypeError(f"expected a caption string, got {type(text).__name__}: {text!r}")
  return text


def _write_atomically(path: epath.Path, data: bytes) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  # Several hosts may write the same (deterministic) file; each renames its own temporary copy.
  temporary = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
  temporary.write_bytes(data)
  temporary.replace(path)  # overwrites, like os.replace
