"""A tiny randomly initialised generator shared by the generation tests (built once per session).

Shapes are chosen so that nearly every test samples a window of 5 latent frames at 16x16 pixels
(8x8 latents, 16 tokens per frame): each distinct shape costs a compilation.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from data_pipelines import tokenizer as tokenizer_lib
from videogen.diffusion import flow
from videogen.diffusion import samplers
from videogen.generate import pipeline
from videogen.models import autoencoder as autoencoder_lib
from videogen.models import dit as dit_lib
from videogen.models import text_encoder as text_encoder_lib

TEXT_WIDTH = 16
# 2x temporal, 2x spatial compression, 4 latent channels: the smallest autoencoder with both.
AUTOENCODER = autoencoder_lib.AutoencoderConfig(
    base_channels=8, channel_multipliers=(1, 1), num_res_blocks=1, spatial_downsample=(True,),
    temporal_downsample=(True,), latent_channels=4, middle_attention=False, attention_heads=1)
DIT = dit_lib.DiTConfig(
    width=32, depth=1, num_heads=2, patch_size=(1, 2, 2), in_channels=4, input_size=(5, 8, 8),
    context_dim=TEXT_WIDTH, pooled_dim=TEXT_WIDTH, frequency_dim=32, attention_backend="xla")
MAX_TOKENS = 12
WORDS = ("a", "red", "green", "blue", "circle", "square", "triangle", "moving", "left", "right",
         "up", "down", "small", "large")


def random_module(make, seed: int):
  """Builds `make()` with random parameters drawn in NumPy, without compiling its initialisers.

  (Compiling the autoencoder's initialisers takes longer than all the sampling these tests do.)
  Matrices and kernels get N(0, 1 / fan_in), including the ones the models initialise to zero
  (adaLN-Zero gates, output layers): a fresh DiT is the zero function by design, and the tests
  need one whose output depends on every input (the noise, the prompt, the given frames). Norm
  scales get 1 and biases 0, each plus N(0, 0.2^2) noise.
  """
  with nnx.use_eager_sharding(False):
    graphdef, abstract = nnx.split(nnx.eval_shape(make))
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if "scale" in name or "bias" in name:
      base = 1.0 if "scale" in name else 0.0
      return jnp.asarray(base + 0.2 * rng.normal(size=leaf.shape), leaf.dtype)
    fan_in = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) >= 2 else 1
    return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), leaf.dtype)

  return nnx.merge(graphdef, jax.tree_util.tree_map_with_path(draw, abstract))


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
  rng = np.random.default_rng(0)
  captions = [" ".join(rng.choice(WORDS, 4)) for _ in range(200)]
  path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.model"
  return tokenizer_lib.train_tokenizer(
      captions, str(path), tokenizer_lib.TokenizerConfig(vocab_size=300, max_length=MAX_TOKENS))


def text_encoder_config(tokenizer) -> text_encoder_lib.TextEncoderConfig:
  return text_encoder_lib.TextEncoderConfig(
      vocab_size=tokenizer.vocab_size, max_length=MAX_TOKENS, width=TEXT_WIDTH, depth=1,
      num_heads=2, mlp_ratio=2.0, attention_backend="xla")


def make_models(tokenizer, seed: int = 0):
  """(autoencoder, text encoder, dit), randomly initialised."""
  return (random_module(lambda: autoencoder_lib.VideoAutoencoder(AUTOENCODER, rngs=nnx.Rngs(0)),
                        seed),
          random_module(lambda: text_encoder_lib.TextEncoder(text_encoder_config(tokenizer),
                                                             rngs=nnx.Rngs(0)), seed + 1),
          random_module(lambda: dit_lib.DiT(DIT, rngs=nnx.Rngs(0)), seed + 2))


def _make_generator(tokenizer, models=None, **kwargs) -> pipeline.Generator:
  autoencoder, text_encoder, dit = models or make_models(tokenizer)
  settings = dict(window_frames=9, default_shape=(9, 16, 16), chunk_latent_frames=3, progress=False,
                  sample_config=samplers.SamplerConfig(method="euler", num_steps=2,
                                                       guidance_scale=3.0))
  settings.update(kwargs)
  return pipeline.Generator(autoencoder=autoencoder, text_encoder=text_encoder, dit=dit,
                            tokenizer=tokenizer, flow_config=flow.FlowConfig(), **settings)


@pytest.fixture(scope="session")
def make_generator(tokenizer):
  """Builds a fresh generator: `make_generator(models=None, **Generator settings)`."""
  return lambda **kwargs: _make_generator(tokenizer, **kwargs)


@pytest.fixture(scope="session")
def model_configs(tokenizer):
  """The configs of the models `make_models` builds, by experiment section name."""
  return {"autoencoder": AUTOENCODER, "text_encoder": text_encoder_config(tokenizer), "dit": DIT}


@pytest.fixture(scope="session")
def generator(tokenizer):
  return _make_generator(tokenizer)


@pytest.fixture(scope="session")
def clip():
  """uint8 [9, 16, 16, 3]: a bright square moving right over a dark background."""
  frames = np.full((9, 16, 16, 3), 20, np.uint8)
  for index in range(9):
    frames[index, 5:11, index:index + 6] = (230, 40, 40)
  return frames
