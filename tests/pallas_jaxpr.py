"""Finding the ``pallas_call`` equations of a jaxpr, shared by the kernel tests."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def pallas_calls(jaxpr: Any) -> Iterator[Any]:
  """The pallas_call equations of a jaxpr, looking inside nested jit calls."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "pallas_call":
      yield eqn
      continue
    for value in eqn.params.values():
      sub = getattr(value, "jaxpr", value)
      if hasattr(sub, "eqns"):
        yield from pallas_calls(sub)
