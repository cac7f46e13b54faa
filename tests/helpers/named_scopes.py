"""What `jax.named_scope` labels a traced model carries, for the tests that check profiles read by
block."""

from __future__ import annotations

import jax.extend as jex


def name_stacks(jaxpr: jex.core.Jaxpr) -> set[str]:
  """The `jax.named_scope` paths of every operation of a jaxpr, nested programs included."""
  stacks = set()
  for eqn in jaxpr.eqns:
    stacks.add(str(eqn.source_info.name_stack))
    for value in eqn.params.values():
      for item in value if isinstance(value, (tuple, list)) else (value,):
        if isinstance(item, (jex.core.Jaxpr, jex.core.ClosedJaxpr)):
          stacks |= name_stacks(getattr(item, "jaxpr", item))
  return stacks
