"""The library's non-finite policy, in one place (``docs/nonfinite.md``).

Per leaf, per step: a parameter leaf whose gradient (the ``updates`` a transformation receives)
or whose parameter holds a NaN or an infinity is *skipped* for that step. Its update is exactly
0, the state that belongs to it keeps its old value, it takes no part in any computation shared
across leaves (it enters them as a zero gradient), masks do not change on that step, and the
skip is counted in the int32 ``skipped_leaves`` of the state. Step counters advance as usual.

:func:`guard` applies the policy around any optax transformation ``inner`` (used by
``sparse()``, ``ham()``, ``compose()``, ``sr_ste()``, ``sign_in()``, ``pilot()``): ``inner`` sees
the skipped leaves as zero gradients and zero parameters, its update there is replaced by 0 and
every state leaf of ``inner`` that belongs to a skipped parameter leaf (found structurally with
``optax.tree.map_params``, or as a sub-tree shaped like the parameters) is restored.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_sparse import _validation


def finite(x: jax.Array) -> jax.Array:
  """Whether every entry of ``x`` is finite, as a bool scalar.

  One float reduction (``x − x`` is 0 or NaN): cheaper on CPU than a boolean ``all``, and free
  of broadcast constants that XLA CPU would materialize as full-size temporaries.
  """
  if not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
    return jnp.asarray(True)
  x32 = jnp.asarray(x).astype(jnp.float32)
  return jnp.isfinite(jnp.sum(x32 - x32))


def ok_tree(grads: Any, params: Any = None) -> Any:
  """A bool scalar per array leaf of ``grads``: gradient (and parameter) finite.

  ``None`` and ``optax.MaskedNode`` positions are kept as they are.
  """
  if params is None:
    return jax.tree.map(lambda g: g if _validation.is_empty(g) else finite(g), grads,
                        is_leaf=_validation.is_empty)
  return jax.tree.map(
      lambda g, p: g if _validation.is_empty(g) or _validation.is_empty(p)
      else finite(g) & finite(p),
      grads, params, is_leaf=_validation.is_empty)


def n_skipped(ok: Any) -> jax.Array:
  """Number of skipped leaves (False entries of ``ok``), int32."""
  leaves = [x for x in jax.tree.leaves(ok) if x is not None]
  return sum(((~x).astype(jnp.int32) for x in leaves), jnp.zeros([], jnp.int32))


def all_ok(ok: Any) -> jax.Array:
  leaves = jax.tree.leaves(ok)
  out = jnp.asarray(True)
  for x in leaves:
    out = out & x
  return out


def zero_bad(tree: Any, ok: Any) -> Any:
  """``where(ok, x, 0)`` per leaf (a NaN/Inf anywhere in a skipped leaf becomes 0)."""
  return jax.tree.map(
      lambda x, k: x if _validation.is_empty(x) or k is None
      else jnp.where(k, x, jnp.zeros_like(x)),
      tree, ok, is_leaf=_validation.is_empty)


def _flag(x: Any, k: Any) -> Any:
  if _validation.is_empty(x):
    return x
  return True if k is None or isinstance(k, optax.MaskedNode) else k


def _state_flags(inner: Any, state: Any, ok: Any, params: Any) -> Any:
  """A tree like ``state``: ``ok`` of the parameter leaf at per-parameter leaves, True elsewhere."""
  def true(x):
    return jax.tree.map(lambda _: True, x)

  try:
    return optax.tree.map_params(
        inner, _flag, state, ok,
        transform_non_params=true, is_leaf=_validation.is_empty)
  except Exception:  # noqa: BLE001 - init on placeholders failed: structural walk instead.
    pass
  p_def = jax.tree.structure(params, is_leaf=_validation.is_empty)
  p_shapes = [jnp.shape(x) for x in jax.tree.leaves(params)]

  def params_like(x):
    if hasattr(x, "shape"):
      return False
    try:
      same = jax.tree.structure(x, is_leaf=_validation.is_empty) == p_def
    except Exception:  # noqa: BLE001
      return False
    return same and [jnp.shape(v) for v in jax.tree.leaves(x)] == p_shapes

  def visit(x):
    if params_like(x):
      return jax.tree.map(_flag, x, ok, is_leaf=_validation.is_empty)
    return true(x)

  return jax.tree.map(visit, state, is_leaf=params_like)


def keep_state(inner: Any, new_state: Any, old_state: Any, ok: Any, params: Any) -> Any:
  """``new_state`` with the per-parameter leaves of skipped parameter leaves set back to old."""
  flags = _state_flags(inner, new_state, ok, params)
  return jax.tree.map(
      lambda f, n, o: n if f is True else jnp.where(f, n, o), flags, new_state, old_state)


def guard(
    inner: optax.GradientTransformationExtraArgs, grads: Any, state: Any, params: Any,
    ok: Any, **extra_args: Any,
) -> tuple[Any, Any]:
  """``inner.update`` under the policy: skipped leaves see zeros, emit 0, keep their state."""
  safe_grads = zero_bad(grads, ok)
  safe_params = None if params is None else zero_bad(params, ok)
  updates, new_state = inner.update(safe_grads, state, safe_params, **extra_args)
  updates = zero_bad(updates, ok)
  return updates, keep_state(inner, new_state, state, ok, params)


class GuardedState(NamedTuple):
  """State of a transformation built as a chain and guarded by :func:`guarded`.

  Attributes:
    inner_state: the chain's state.
    skipped_leaves: int32 number of (leaf, step) pairs skipped under the non-finite policy.
  """

  inner_state: Any
  skipped_leaves: jax.Array


def guarded(inner: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """``inner`` under the non-finite policy, with the skip counter in a :class:`GuardedState`."""
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    _validation.check_float_params(params)
    return GuardedState(inner.init(params), jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    _validation.check_grads(updates, params)
    ok = ok_tree(updates, params)
    new_updates, inner_state = guard(inner, updates, state.inner_state, params, ok, **extra_args)
    return new_updates, GuardedState(inner_state, state.skipped_leaves + n_skipped(ok))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
