"""The non-finite guard with the kept state selected where the inner step produces it.

``_nonfinite.guard`` runs ``inner.update`` and then selects ``where(ok, s', s)`` for every
per-parameter state leaf. XLA duplicates the cheap elementwise producer of ``s'`` (e.g. Adam's
``b1·m + (1 − b1)·g``) into both the select that writes the state and the pass that computes the
update, so the old state is read after the new one is written in place; with donated buffers
XLA then copies the old state first (one extra read and write of every moment, plus a
temporary). :func:`guard` gives the identical result when every leaf is finite, without those
copies: it traces ``inner.update`` once and re-evaluates its jaxpr, replacing each state leaf
``s'`` by ``where(ok, s', s)`` at the equation that produces it, so that everything computed
from ``s'`` inside ``inner`` (the update) reads the selected value, which XLA writes in place
and reads back like plain optax does. The policy is the same: a skipped leaf gets the update 0
and keeps its state, the others get ``inner``'s update and state computed with the skipped
leaves zeroed, bit-identical to ``inner.update`` itself (the copy-and-recompute structure of
``_nonfinite.guard`` can differ from it in the last bit, e.g. for Nesterov Adam, where the
duplicated moment is recomputed inside another fused pass). A state leaf that ``inner`` passes
through from an input (or gives as two state leaves) is selected at the output instead, as in
``_nonfinite.guard``. When the jaxpr cannot be built, ``_nonfinite.guard`` is used.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core

from optax_sparse import _nonfinite


def _evaluate(closed: Any, args: list[Any], subst: dict[Any, tuple[Any, Any]]) -> list[Any]:
  jaxpr = closed.jaxpr
  env: dict[Any, Any] = {}

  def read(v):
    return v.val if isinstance(v, jex_core.Literal) else env[v]

  for v, x in zip(jaxpr.constvars, closed.consts, strict=True):
    env[v] = x
  for v, x in zip(jaxpr.invars, args, strict=True):
    env[v] = x
  for eqn in jaxpr.eqns:
    params = eqn.primitive.get_bind_params(eqn.params)
    with eqn.ctx.manager:
      ans = eqn.primitive.bind(*[read(v) for v in eqn.invars], **params)
    outs = ans if eqn.primitive.multiple_results else [ans]
    for v, x in zip(eqn.outvars, outs, strict=True):
      if isinstance(v, jex_core.DropVar):
        continue
      if v in subst:
        flag, old = subst[v]
        x = jnp.where(flag, x, old)
      env[v] = x
  return [read(v) for v in jaxpr.outvars]


def guard(inner: Any, grads: Any, state: Any, params: Any, ok: Any, **extra_args: Any):
  """``_nonfinite.guard(inner, grads, state, params, ok, **extra_args)``, in place (module doc)."""
  safe_grads = _nonfinite.zero_bad(grads, ok)
  safe_params = None if params is None else _nonfinite.zero_bad(params, ok)
  flags = _nonfinite._state_flags(inner, state, ok, params)  # noqa: SLF001 - the same policy.

  def fn(g, s, p):
    return inner.update(g, s, p, **extra_args)

  try:
    closed, out_shape = jax.make_jaxpr(fn, return_shape=True)(safe_grads, state, safe_params)
    s_def = jax.tree.structure(state)
    if jax.tree.structure(out_shape[1]) != s_def:
      raise ValueError("the inner state changes structure")
    flat_flags = s_def.flatten_up_to(flags)
  except Exception:  # noqa: BLE001 - anything unusual: the plain guard, same result.
    return _nonfinite.guard(inner, grads, state, params, ok, **extra_args)
  old = jax.tree.leaves(state)
  n_upd = len(jax.tree.leaves(out_shape[0]))
  outvars = closed.jaxpr.outvars
  state_vars = outvars[n_upd:]
  produced = {v for eqn in closed.jaxpr.eqns for v in eqn.outvars}
  subst = {}
  at_output = []
  for i, (v, f) in enumerate(zip(state_vars, flat_flags, strict=True)):
    if f is True:
      continue
    # A variable that is also an update output may be substituted (the update of a skipped leaf
    # is replaced by 0); one shared by two state leaves is selected at the output.
    if (isinstance(v, jex_core.Literal) or v not in produced or state_vars.count(v) > 1
        or v in subst):
      at_output.append(i)
      continue
    subst[v] = (f, old[i])
  args = jax.tree.leaves((safe_grads, state, safe_params))
  try:
    outs = _evaluate(closed, args, subst)
  except Exception:  # noqa: BLE001 - an equation that cannot be bound again: the plain guard.
    return _nonfinite.guard(inner, grads, state, params, ok, **extra_args)
  new_state = outs[n_upd:]
  for i in at_output:
    new_state[i] = jnp.where(flat_flags[i], new_state[i], old[i])
  updates = jax.tree.unflatten(jax.tree.structure(out_shape[0]), outs[:n_upd])
  return _nonfinite.zero_bad(updates, ok), jax.tree.unflatten(s_def, new_state)
