"""Model FLOPs of one transformer train step per bucket of a preset, counted without compiling
or running it (docs/accelerator.md).

    python docs/studies/step_flops.py experiments/shapes.py:gpu

XLA's cost analysis of the dit stage's whole global step on cached latents (forward, backward,
optimizer and EMA update), traced on abstract
parameters and batches, with the layer stack unrolled (a scanned stack counts its body once) and
XLA attention (a cuDNN call counts no FLOPs).
"""
import sys

import jax
import jax.numpy as jnp

from videogen import cli
from videogen import experiment as experiment_lib
from videogen.evaluate import benchmark

config = cli.load_config_file(sys.argv[1])
for section in ("dit", "text_encoder", "autoencoder"):
  config[section].attention_backend = "xla"
config.dit_stage.latents = "cache"
experiment = experiment_lib.validate(config)
autoencoder, tokens = experiment.autoencoder, experiment.tokenizer.max_length
for bucket in experiment.data.parsed_buckets():
  (frames, height, width), b = bucket.shape, bucket.global_batch
  latents = (b, 1 + (frames - 1) // autoencoder.temporal_factor,
             height // autoencoder.spatial_factor, width // autoencoder.spatial_factor,
             autoencoder.latent_channels)
  batch = {"latents": jax.ShapeDtypeStruct(latents, jnp.float32),
           "tokens": jax.ShapeDtypeStruct((b, tokens), jnp.int32),
           "token_mask": jax.ShapeDtypeStruct((b, tokens), jnp.bool_),
           "index": jax.ShapeDtypeStruct((b,), jnp.int32)}
  flops = benchmark.traced_step_flops(experiment, "dit", batch)
  print(f"dit {bucket}: {flops:.3g} FLOPs per step")
