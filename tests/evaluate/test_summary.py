"""videogen/evaluate/summary.py: parameter counts and forward-pass cost."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from flax import nnx

from videogen import experiment as experiment_lib
from videogen.evaluate import summary
from videogen.models import dit
from videogen.models import text_encoder


def dit_macs(config: dit.DiTConfig, context_length: int) -> int:
  """A closed-form count of the DiT's multiply-adds for one sample, written from the design."""
  t, h, w, channels = config.latent_shape
  pt, ph, pw = config.patch_size
  tokens, token_frames = config.num_tokens, t // pt
  width, hidden = config.width, int(config.width * config.mlp_ratio)
  patch = pt * ph * pw
  macs = tokens * patch * channels * width  # patch embedding
  macs += t * (config.frequency_dim * width + width * width)  # one timestep embedding per frame
  if config.pooled_dim is not None and config.pooled_projection:
    macs += config.pooled_dim * width + width * width
  block = token_frames * width * 6 * width  # adaLN
  block += 4 * tokens * width * width + 2 * tokens * tokens * width  # self-attention
  if config.context_dim is not None:
    block += 2 * tokens * width * width + 2 * context_length * config.context_dim * width
    block += 2 * tokens * context_length * width
  block += 2 * tokens * width * hidden  # MLP
  macs += config.depth * block
  macs += token_frames * width * 2 * width + tokens * width * patch * config.out_channels
  return macs


def text_macs(config: text_encoder.TextEncoderConfig) -> int:
  length, width = config.max_length, config.width
  hidden = int(width * config.mlp_ratio)
  return config.depth * (4 * length * width * width + 2 * length * length * width
                         + 2 * length * width * hidden)


def test_count_macs_of_matmuls_convolutions_and_loops():
  def function(x, w, images, kernel, stack):
    y = x @ w  # 3 * 4 * 5 = 60
    z = jax.lax.conv_general_dilated(images, kernel, (1, 1), "VALID",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    # output 2 * 4 * 4 * 6 values, each 3 * 3 * 2 taps: 192 * 18 = 3456
    carry, _ = jax.lax.scan(lambda c, m: (c @ m, None), y, stack)  # 7 * (3 * 5 * 5) = 525
    return carry, z

  jaxpr = jax.make_jaxpr(function)(
      jnp.ones((3, 4)), jnp.ones((4, 5)), jnp.ones((2, 6, 6, 2)), jnp.ones((3, 3, 2, 6)),
      jnp.ones((7, 5, 5)))
  assert summary.count_macs(jaxpr) == 60 + 3456 + 525


def test_xla_flops_counts_two_per_multiply_add():
  flops = summary.xla_flops(lambda a, b: a @ b, jax.ShapeDtypeStruct((8, 16), jnp.float32),
                            jax.ShapeDtypeStruct((16, 4), jnp.float32))
  assert flops == 2 * 8 * 16 * 4


@pytest.mark.parametrize("dit_config, text_config", [
    (dit.DiTConfig.tiny(), text_encoder.TextEncoderConfig.tiny()),
    (dit.DiTConfig.tiny(patch_size=(2, 2, 2), input_size=(4, 8, 8), position_embedding="sincos"),
     text_encoder.TextEncoderConfig.tiny(max_length=16)),
    (dit.DiTConfig.small(), text_encoder.TextEncoderConfig.small()),
], ids=["tiny", "temporal_patch", "small"])
def test_measured_cost_matches_the_closed_form_and_the_built_model(dit_config, text_config):
  costs = {cost.name: cost for cost in summary.measure(dit_config, text_config)}
  assert costs["dit"].macs == dit_macs(dit_config, text_config.max_length)
  assert costs["text_encoder"].macs == text_macs(text_config)
  for cost in costs.values():
    # XLA's count: two flops per multiply-add plus a little elementwise arithmetic.
    assert 2 * cost.macs <= cost.flops <= 2.2 * cost.macs
  with nnx.use_eager_sharding(False):
    model = nnx.eval_shape(lambda: dit.DiT(dit_config, rngs=nnx.Rngs(0)))
  params = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert costs["dit"].params == params


def _experiment(**sections) -> experiment_lib.Experiment:
  """An experiment whose file sets exactly `sections` (the others keep their defaults)."""
  config = ml_collections.ConfigDict({name: {} for name in sections})
  return experiment_lib.Experiment(name="summary_test", seed=0, stages=("dit",), config=config,
                                   **sections)


def test_summary_prints_a_table_then_the_json_line(capsys):
  dit_config = dit.DiTConfig.tiny(depth=1)
  text_config = text_encoder.TextEncoderConfig.tiny(depth=1)
  experiment = _experiment(dit=dit_config, text_encoder=text_config)
  assert summary.summary(experiment, None) == 0
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[0].split() == ["component", "params", "GMACs", "GFLOPs"]
  assert [line.split()[0] for line in lines[1:4]] == ["text_encoder", "dit", "total"]
  result = json.loads(lines[-1])
  assert set(result) == {"params", "gmacs", "gflops"}
  costs = summary.measure(dit_config, text_config)
  assert result["params"] == sum(cost.params for cost in costs)
  assert result["gmacs"] == pytest.approx(
      (dit_macs(dit_config, text_config.max_length) + text_macs(text_config)) / 1e9, abs=1e-6)
  assert result["gflops"] > 2 * result["gmacs"]


def test_summary_refuses_what_it_cannot_measure(capsys):
  assert summary.summary(_experiment(), None) == 2
  captured = capsys.readouterr()
  assert captured.out == "" and captured.err.startswith("error: summary needs a config.dit section")
  mismatched = _experiment(dit=dit.DiTConfig.tiny(context_dim=64),
                           text_encoder=text_encoder.TextEncoderConfig.tiny())
  assert summary.summary(mismatched, None) == 2
  assert ("config.dit.context_dim (64) must equal config.text_encoder.width (128)"
          in capsys.readouterr().err)
