"""Which parameter leaves a geometry, mask or reparameterization acts on.

Library-wide default (see :doc:`/methods/sparse`): leaves with ``ndim >= 2`` (kernels,
embeddings) are eligible; biases, normalization scales and scalars stay dense and untouched. Every
public factory that takes ``where`` accepts:

* ``None``: the default rule ``ndim >= 2``;
* a predicate ``where(path, leaf) -> bool`` called with the leaf's ``jax.tree_util`` key path
  (use ``jax.tree_util.keystr(path)`` to match names) and the leaf, at trace time;
* a static pytree of Python booleans with the structure of the parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax

Where = Callable[[Any, Any], bool] | Any | None


def default_rule(path: Any, leaf: Any) -> bool:
  """The library default: only leaves with at least two dimensions are eligible."""
  del path
  return getattr(leaf, "ndim", 0) >= 2


def check_where(name: str, where: Where) -> None:
  """Rejects at construction a ``where`` that is neither None, a predicate nor a pytree."""
  if where is None or callable(where):
    return
  leaves = jax.tree.leaves(where)
  bad = [v for v in leaves if not isinstance(v, bool)]
  if bad:
    raise ValueError(
        f"{name} must be None, a predicate (path, leaf) -> bool, or a pytree of Python bools; "
        f"got a leaf {bad[0]!r}."
    )


def eligible_tree(where: Where, params: Any, name: str = "where") -> Any:
  """Returns a pytree of Python bools, one per leaf of ``params``.

  Raises:
    ValueError: when a static tree does not match the parameters' structure.
  """
  if where is None:
    where = default_rule
  if callable(where):
    return jax.tree_util.tree_map_with_path(lambda p, x: bool(where(p, x)), params)
  p_def = jax.tree.structure(params)
  w_def = jax.tree.structure(where)
  if p_def != w_def:
    raise ValueError(
        f"{name} must have the structure of the parameters; got {w_def} for parameters {p_def}."
    )
  return where
