"""Argument, parameter and gradient checks shared by every factory of the library.

Errors are raised by the library, where the object is built (construction) or where the
parameters are first seen (``init``), and name the argument and the offending value:

* ``TypeError`` (:class:`ArgumentTypeError`, also a ``ValueError``) for a value of the wrong kind
  (a string for an optimizer, a float seed, integer parameters);
* ``ValueError`` for a value of the right kind outside its range, or trees that do not match
  (a gradient whose structure or leaf shapes differ from the parameters').

Trees from ``optax.masked`` / ``optax.multi_transform`` hold ``optax.MaskedNode`` where a leaf
belongs to another transformation; :func:`to_none` turns those into ``None`` so that internal
computations treat them as the dense, untouched leaves they are, and :func:`like` restores the
caller's structure on what is returned.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax


class ArgumentTypeError(TypeError, ValueError):
  """A ``TypeError`` for an argument of the wrong kind that is also a ``ValueError``.

  The library raised ``ValueError`` for these before; code that catches it keeps working (the
  pattern of NumPy's ``AxisError``, both a ``ValueError`` and an ``IndexError``).
  """


def is_empty(x: Any) -> bool:
  """``None`` or ``optax.MaskedNode``: a position without an array."""
  return x is None or isinstance(x, optax.MaskedNode)


def to_none(tree: Any) -> Any:
  """``tree`` with every ``optax.MaskedNode`` replaced by ``None``."""
  if tree is None:
    return None
  return jax.tree.map(lambda x: None if isinstance(x, optax.MaskedNode) else x, tree,
                      is_leaf=is_empty)


def like(reference: Any, tree: Any) -> Any:
  """``tree`` (None-normalized) with ``MaskedNode`` put back where ``reference`` has one."""
  if reference is None:
    return tree
  return jax.tree.map(
      lambda r, x: r if isinstance(r, optax.MaskedNode) else x, reference, tree,
      is_leaf=is_empty)


def check_transformation(name: str, value: Any) -> None:
  """``TypeError`` unless ``value`` is an ``optax.GradientTransformation``."""
  if not isinstance(value, optax.GradientTransformation):
    raise ArgumentTypeError(
        f"{name} must be an optax.GradientTransformation (e.g. optax.adam(1e-3)); got "
        f"{value!r}.")


def check_int(name: str, value: Any, low: int | None = None, *, allow_traced: bool = False) -> None:
  """``TypeError`` unless ``value`` is a Python/NumPy int (not a bool); ``ValueError`` below low.

  With ``allow_traced``, a jax array of integer dtype (a traced hyperparameter inside
  ``optax.inject_hyperparams``) is accepted; a concrete one is still range-checked.
  """
  if allow_traced and isinstance(value, jax.Array) and jnp.issubdtype(value.dtype, jnp.integer):
    try:
      value = int(value)
    except Exception:  # noqa: BLE001 - a tracer: nothing to check at construction.
      return
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ArgumentTypeError(f"{name} must be an int; got {value!r}.")
  if low is not None and value < low:
    raise ValueError(f"{name} must be an int >= {low}; got {value!r}.")


def check_float_params(params: Any, name: str = "params") -> None:
  """``TypeError`` naming the leaf when a parameter leaf is not a floating-point array."""
  leaves, _ = jax.tree_util.tree_flatten_with_path(params, is_leaf=is_empty)
  for path, leaf in leaves:
    if is_empty(leaf) or not hasattr(leaf, "dtype"):
      continue
    if not jnp.issubdtype(leaf.dtype, jnp.floating):
      raise ArgumentTypeError(
          f"{name} must be floating-point arrays; the leaf {jax.tree_util.keystr(path)} has "
          f"dtype {leaf.dtype}. Cast it (e.g. jnp.float32) or keep it out of the optimizer.")


def check_grads(grads: Any, params: Any, name: str = "updates") -> None:
  """``ValueError`` when ``grads`` differ from ``params`` in structure or in a leaf's shape.

  Runs at trace time (structures and shapes are static), so it costs nothing per step.
  """
  if params is None:
    return
  g_norm, p_norm = to_none(grads), to_none(params)
  g_def = jax.tree.structure(g_norm, is_leaf=is_empty)
  p_def = jax.tree.structure(p_norm, is_leaf=is_empty)
  if g_def != p_def:
    raise ValueError(
        f"{name} must have the structure of the parameters; got {g_def} for parameters {p_def}.")
  g_l = jax.tree_util.tree_flatten_with_path(g_norm, is_leaf=is_empty)[0]
  p_l = jax.tree.leaves(p_norm, is_leaf=is_empty)
  for (path, g), p in zip(g_l, p_l, strict=True):
    if is_empty(g) or is_empty(p):
      if is_empty(g) != is_empty(p):
        raise ValueError(
            f"{name} has {'no array' if is_empty(g) else 'an array'} at "
            f"{jax.tree_util.keystr(path)} where the parameters have "
            f"{'an array' if is_empty(g) else 'none'}.")
      continue
    if jnp.shape(g) != jnp.shape(p):
      raise ValueError(
          f"{name} must have the parameters' shapes; got {jnp.shape(g)} at "
          f"{jax.tree_util.keystr(path)} for a parameter of shape {jnp.shape(p)}.")


def check_seed(seed: Any) -> None:
  """``TypeError`` unless ``seed`` is an int (or an existing PRNG key array)."""
  if isinstance(seed, jax.Array) and (
      jnp.issubdtype(seed.dtype, jax.dtypes.prng_key)
      or (seed.dtype == jnp.uint32 and seed.shape == (2,))):
    return
  if isinstance(seed, jax.Array) and jnp.issubdtype(seed.dtype, jnp.integer) and seed.ndim == 0:
    return  # a traced seed (optax.inject_hyperparams).
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
    raise ArgumentTypeError(f"seed must be an int; got {seed!r}.")
