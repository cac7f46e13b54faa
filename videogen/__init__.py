"""videogen: text-to-video diffusion transformers over spacetime patches, in JAX/Flax."""
