"""The longest caption in tokens, for config.tokenizer.max_length (docs/tiny_run.md).

    python docs/studies/caption_lengths.py BUCKET NUM [split]

e.g. `9x32x32:8 100000 split`. Trains the tokenizer as a run does (4,000 captions of data seed 0;
with `split`, `split_punctuation=True`), then tokenizes NUM captions of another seed (brief and
descriptive, alternating) and prints the longest, `</s>` included.
"""
import itertools
import sys
import tempfile

import numpy as np

from data_pipelines import loader
from data_pipelines import tokenizer as tokenizer_lib

bucket, count = sys.argv[1], int(sys.argv[2])
split = sys.argv[3:] == ["split"]
data = loader.DataConfig(buckets=(bucket,))
with tempfile.TemporaryDirectory() as directory:
  tokenizer = tokenizer_lib.train_tokenizer(
      loader.captions(data, seed=0, num=4000), f"{directory}/tokenizer.model",
      tokenizer_lib.TokenizerConfig(max_length=256, split_punctuation=split))
texts = list(itertools.islice(loader.captions(data, seed=1, num=count), count))
_, mask = tokenizer.encode(texts)
lengths = mask.sum(axis=1)
print(f"{bucket}: {len(texts)} captions, longest {lengths.max()} tokens, 99.99th percentile "
      f"{np.percentile(lengths, 99.99):.0f}")
