"""The m⊙w reparameterization shared by Sign-In and PILoT (see the Sign-In and PILoT method pages).

Each eligible leaf is written ``theta = m * w`` with factors kept in float32 in the optimizer
state. A base optimizer acts on the factor tree ``(M, W)``: for an eligible leaf ``M`` holds
``m`` and ``W`` holds ``w``; for any other leaf ``M`` holds the parameter itself (trained
directly) and ``W`` holds ``None``. Factor gradients are ``g_m = w g + lam m`` and
``g_w = m g + lam w`` (``lam``: per-factor decay rate, ``dm/dt = ... - lam m``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from optax_sparse import _nonfinite


def split(theta: jax.Array, gamma: jax.Array | float) -> tuple[jax.Array, jax.Array]:
  """Returns ``(m, w)`` with ``m * w = theta`` and ``m**2 - w**2 = gamma`` (``m > 0``).

  ``m = sqrt((gamma + sqrt(gamma**2 + 4 theta**2)) / 2)``, ``w = theta / m``; ``w`` carries the
  sign and a zero ``theta`` gives ``m = sqrt(gamma)``, ``w = 0``.
  """
  theta = jnp.asarray(theta, jnp.float32)
  gamma = jnp.asarray(gamma, jnp.float32)
  m = jnp.sqrt(0.5 * (gamma + jnp.sqrt(gamma * gamma + 4.0 * theta * theta)))
  w = jnp.where(m > 0, theta / jnp.where(m > 0, m, 1.0), 0.0)
  return m, w


def _none(x: Any) -> bool:
  return x is None


def init_factors(params: Any, flags: Any, gamma: Any) -> tuple[Any, Any]:
  """Splits every eligible leaf; other leaves get ``None`` in both factor trees."""
  def first(p, f):
    return None if p is None or not f else split(p, gamma)[0]

  def second(p, f):
    return None if p is None or not f else split(p, gamma)[1]

  return (jax.tree.map(first, params, flags, is_leaf=_none),
          jax.tree.map(second, params, flags, is_leaf=_none))


def base_tree(params: Any, m: Any, w: Any) -> tuple[Any, Any]:
  """The tree the base optimizer sees: ``(m or theta, w or None)`` per leaf."""
  first = jax.tree.map(lambda p, mi: p if mi is None else mi, params, m, is_leaf=_none)
  return first, w


def factor_step(
    grads: Any,
    params: Any,
    m: Any,
    w: Any,
    base: optax.GradientTransformationExtraArgs,
    base_state: Any,
    lam: jax.Array | float,
    gamma: jax.Array | float,
    masks: Any = None,
    extra_args: dict[str, Any] | None = None,
) -> tuple[Any, Any, Any, Any, Any]:
  """One base step on the factors; returns ``(updates, m', w', base_state', skipped)``.

  Eligible leaves emit ``u = m' w' - theta`` (emit-to-land). Masked-out entries (``masks`` leaf
  False) get a zero gradient, a zero update and factors ``split(0; gamma)``. Non-finite policy
  (``docs/nonfinite.md``): a leaf whose gradient or parameter is not finite gives the base zero
  factor gradients, keeps its factors and its base state, emits zero and is counted in
  ``skipped`` (int32); a leaf whose new factors (or update) are not finite keeps its factors and
  emits zero.
  """
  extra_args = extra_args or {}
  treedef = jax.tree.structure(params, is_leaf=_none)
  g_l = treedef.flatten_up_to(grads)
  p_l = treedef.flatten_up_to(params)
  m_l = treedef.flatten_up_to(m)
  w_l = treedef.flatten_up_to(w)
  k_l = [None] * len(p_l) if masks is None else treedef.flatten_up_to(masks)
  ok_l = [None if g is None or p is None else _nonfinite.finite(g) & _nonfinite.finite(p)
          for g, p in zip(g_l, p_l, strict=True)]

  gm_l, gw_l = [], []
  for g, p, mi, wi, k, ok in zip(g_l, p_l, m_l, w_l, k_l, ok_l, strict=True):
    if g is None or p is None:
      gm_l.append(None)
      gw_l.append(None)
      continue
    g = jnp.where(ok, g, jnp.zeros_like(g))
    if k is not None:
      g = jnp.where(k, g, jnp.zeros_like(g))
    if mi is None:
      # A leaf trained directly keeps its dtype, as the base state was built on it.
      gm_l.append(g)
      gw_l.append(None)
    else:
      g = g.astype(jnp.float32)
      gm_l.append(wi * g + lam * mi)
      gw_l.append(mi * g + lam * wi)
  base_grads = (treedef.unflatten(gm_l), treedef.unflatten(gw_l))
  base_params = base_tree(params, m, w)
  base_params = jax.tree.map(lambda x, ok: x if ok is None else jnp.where(ok, x, 0.0).astype(
      x.dtype), base_params, (treedef.unflatten(ok_l), treedef.unflatten(
          [None if wi is None else ok for wi, ok in zip(w_l, ok_l, strict=True)])),
      is_leaf=_none)
  old_base_state = base_state
  (dm, dw), base_state = base.update(base_grads, base_state, base_params, **extra_args)
  ok_tree = (treedef.unflatten(ok_l),
             treedef.unflatten([None if wi is None else ok for wi, ok in zip(w_l, ok_l,
                                                                               strict=True)]))
  base_state = _nonfinite.keep_state(base, base_state, old_base_state, ok_tree, base_params)
  dm_l = treedef.flatten_up_to(dm)
  dw_l = treedef.flatten_up_to(dw)

  u_l, new_m, new_w = [], [], []
  for p, mi, wi, dmi, dwi, k, leaf_ok in zip(p_l, m_l, w_l, dm_l, dw_l, k_l, ok_l,
                                             strict=True):
    if p is None:
      u_l.append(None)
      new_m.append(None)
      new_w.append(None)
      continue
    if mi is None:
      u = dmi.astype(jnp.float32)
      ok = leaf_ok & jnp.all(jnp.isfinite(u))
      u = jnp.where(ok, u, 0.0)
      if k is not None:
        u = jnp.where(k, u, 0.0)
      u_l.append(u.astype(p.dtype))
      new_m.append(None)
      new_w.append(None)
      continue
    m2 = mi + dmi.astype(jnp.float32)
    w2 = wi + dwi.astype(jnp.float32)
    u = m2 * w2 - p.astype(jnp.float32)
    ok = leaf_ok & jnp.all(jnp.isfinite(u))
    m2, w2 = jnp.where(ok, m2, mi), jnp.where(ok, w2, wi)
    u = jnp.where(ok, u, 0.0)
    if k is not None:
      m0, w0 = split(jnp.zeros_like(m2), gamma)
      m2, w2 = jnp.where(k, m2, m0), jnp.where(k, w2, w0)
      m2 = jnp.where(leaf_ok, m2, mi)
      w2 = jnp.where(leaf_ok, w2, wi)
      u = jnp.where(k, u, 0.0)
    u_l.append(u.astype(p.dtype))
    new_m.append(m2)
    new_w.append(w2)
  skipped = sum(((~ok).astype(jnp.int32) for ok in ok_l if ok is not None),
                jnp.zeros([], jnp.int32))
  return (treedef.unflatten(u_l), treedef.unflatten(new_m), treedef.unflatten(new_w),
          base_state, skipped)


def l1_of_products(m: Any, w: Any) -> jax.Array:
  """``sum |m * w|`` over the factored leaves (float32 scalar)."""
  terms = [jnp.sum(jnp.abs(mi * wi)) for mi, wi in zip(jax.tree.leaves(m), jax.tree.leaves(w),
                                                       strict=True)]
  return sum(terms, jnp.zeros([], jnp.float32))
