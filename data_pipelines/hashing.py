"""Counter-based randomness: pure, vectorised hashes of integers.

The loader draws everything random (a step's bucket, a clip's window, a caption's kind, an epoch's
order) from these hashes of (seed, salt, stream, position) rather than from a stateful generator,
so that any step can be rebuilt alone, in any process, without replaying the steps before it.

    draws = uniform(seed, SALT_FRAMES, stream, positions)   # float64 [N] in [0, 1)
"""

from __future__ import annotations

import numpy as np

# Salts that keep the hashed random streams apart; all in one place so that none repeats.
SALT_BUCKET = 0x5EED_B0C7
SALT_CAPTION = 0xCA97_1011
SALT_FRAMES = 0xF4A3_E500
SALT_EPOCH = 0xE90C_4000


def splitmix64(values: np.ndarray) -> np.ndarray:
  """The splitmix64 finaliser: a bijective, well-mixed hash of uint64 values."""
  # Wrap-around is the point of the arithmetic: silence NumPy's overflow warning for scalars.
  with np.errstate(over="ignore"):
    z = np.asarray(values, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def hash_ints(*values: int | np.ndarray) -> np.ndarray:
  """Hashes integers (or broadcastable integer arrays) into uint64, of their broadcast shape."""
  state = np.zeros((), dtype=np.uint64)
  for value in values:
    # Wrap negative or large Python ints into uint64 first; arrays are cast elementwise.
    as_uint = (np.asarray(value).astype(np.int64).astype(np.uint64)
               if isinstance(value, np.ndarray) else np.uint64(int(value) % 2**64))
    state = splitmix64(state ^ as_uint)
  return state


def uniform(*values: int | np.ndarray) -> np.ndarray:
  """A float64 in [0, 1) per hashed value (the top 53 bits of `hash_ints`)."""
  return (hash_ints(*values) >> np.uint64(11)).astype(np.float64) * 2.0**-53
