"""Classifier-free guidance: v = v_uncond + w (v_cond - v_uncond).

The unconditional branch is the network run on the null caption (an all-False token mask, which
training produces with `flow.drop_captions`) or on a negative prompt's encoding; either way the
caller hands it in as `negative_conditioning`, a pytree shaped like `conditioning`. Both branches
run in one call of the velocity function, concatenated along the batch axis, so the network sees
one batch of 2B and the accelerator stays busy.

    velocity_fn(x [B, t, h, w, C], timesteps [B, t], conditioning) -> velocity [B, t, h, w, C]

`conditioning` is any pytree whose leaves all have the batch as their leading axis (for example
`{"text": [B, L, D], "text_mask": [B, L]}`); it may be None for an unconditional model.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

VelocityFn = Callable[[jax.Array, jax.Array, Any], jax.Array]


def cfg_combine(v_cond: jax.Array, v_uncond: jax.Array, scale: float | jax.Array) -> jax.Array:
  """v_uncond + scale (v_cond - v_uncond), in float32. scale 1 is the conditional velocity."""
  v_cond = v_cond.astype(jnp.float32)
  v_uncond = v_uncond.astype(jnp.float32)
  return v_uncond + scale * (v_cond - v_uncond)


def concat_branches(conditioning: Any, negative_conditioning: Any) -> Any:
  """Stacks the conditional and the unconditional branch along the batch axis of every leaf.

  Raises:
    ValueError: if the two pytrees differ in structure.
  """
  cond_structure = jax.tree.structure(conditioning)
  negative_structure = jax.tree.structure(negative_conditioning)
  if cond_structure != negative_structure:
    raise ValueError(
        f"negative_conditioning must have the structure of conditioning (same keys, one batch "
        f"axis per leaf); got {negative_structure} vs {cond_structure}")
  return jax.tree.map(lambda c, n: jnp.concatenate([c, n.astype(c.dtype)], axis=0),
                      conditioning, negative_conditioning)


def guided_velocity(velocity_fn: VelocityFn, x: jax.Array, timesteps: jax.Array,
                    conditioning: Any, negative_conditioning: Any,
                    scale: float) -> jax.Array:
  """The guided velocity at (x, timesteps), both branches in one call.

  Args:
    velocity_fn: see the module docstring.
    x: [B, t, h, w, C].
    timesteps: [B, t].
    conditioning: the prompt's conditioning pytree (leaves [B, ...]), or None.
    negative_conditioning: the null caption's or negative prompt's pytree, or None.
    scale: the guidance weight w (a Python float: 1 runs only the conditional branch).

  Returns:
    float32 [B, t, h, w, C].

  Raises:
    ValueError: if guidance is asked for (scale != 1) without a negative branch.
  """
  if scale == 1.0:
    return velocity_fn(x, timesteps, conditioning).astype(jnp.float32)
  if negative_conditioning is None:
    raise ValueError(
        f"guidance_scale = {scale} needs an unconditional branch: pass negative_conditioning "
        f"(the null caption, i.e. an all-False token mask, or a negative prompt), or set "
        f"--config.sample.guidance_scale=1.0 to sample without guidance")
  batch = x.shape[0]
  both = velocity_fn(jnp.concatenate([x, x], axis=0),
                     jnp.concatenate([timesteps, timesteps], axis=0),
                     concat_branches(conditioning, negative_conditioning))
  return cfg_combine(both[:batch], both[batch:], scale)
