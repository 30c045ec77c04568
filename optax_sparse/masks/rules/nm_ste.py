"""N:M rules and straight-through estimators with dense shadow weights (SR-STE)."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_sparse import _eligibility, _hyperparams, _nonfinite, _validation
from optax_sparse.masks import select
from optax_sparse.masks.rules._base import (
  MaskRule,
  _all_true,
  _check_step,
  _is_none,
  _leafwise,
  _magnitude,
  _template,
)

__all__ = ["SrSteState", "nm", "sr_ste"]


def _check_nm(n: Any, m: Any) -> None:
  if not isinstance(m, (int, np.integer)) or isinstance(m, bool) or m < 1:
    raise ValueError(f"m must be an integer >= 1; got {m!r}.")
  if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 1 <= n <= m:
    raise ValueError(f"n must be an integer with 1 <= n <= m = {m}; got {n!r}.")


def nm(n: int = 2, m: int = 4, axis: int = -2, *, at_step: int = 0) -> MaskRule:
  """One-shot N:M magnitude pruning: keep the n largest |θ| of every m consecutive entries.

  .. math::
    M = \\operatorname{top}_n(|θ|) \\text{ within each group of } m \\text{ along } axis

  The sparsity is 1 − n/m, fixed by the pattern: ``sparse()`` takes ``sparsity=None``. Every
  eligible leaf must have an ``axis`` length divisible by m (``ValueError`` at init). Default
  axis −2, the fan-in of Flax kernels ``(in, out)`` / ``(kh, kw, in, out)`` that 2:4 sparse
  tensor cores need (:doc:`/methods/nm`). With a fixed mask the pruned weights are 0, so re-ranking
  them is meaningless: N:M *training* with a mask that moves needs dense shadow weights, which
  :func:`sr_ste` keeps.

  Args:
    n: kept entries per group (1 <= n <= m).
    m: group size.
    axis: grouping axis.
    at_step: the update count at which to prune (0: at init from the initial parameters).

  Returns:
    A :class:`MaskRule` with ``scope="pattern"``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> tx = osp.sparse(optax.sgd(0.1), osp.nm(2, 4), sparsity=None)
    >>> masks = osp.get_masks(tx.init({"w": jnp.array([[1.0], [4.0], [3.0], [2.0]])}))
    >>> masks["w"].ravel().tolist()
    [False, True, True, False]

  References:
    Zhou et al., *Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch*,
    arXiv 2102.04010.
  """
  _check_nm(n, m)
  _check_step("at_step", at_step)

  def pattern(params, target):
    template = _template(target.eligible, params)
    return _leafwise(lambda p: select.nm_mask(_magnitude(p), n, m, axis), template)

  def init_masks(params, target, key):
    del key
    return pattern(params, target) if at_step == 0 else _all_true(params, target)

  def is_update_step(count):
    return jnp.asarray(at_step > 0) & (count == at_step)

  def update_masks(masks, params, grads, count, key, target, rule_state):
    del masks, grads, count, key
    return pattern(params, target), rule_state

  return MaskRule("nm", init_masks, is_update_step, update_masks, scope="pattern")


class SrSteState(NamedTuple):
  """State of :func:`sr_ste`.

  Attributes:
    count: int32 step counter (for ``mask_decay`` and schedules).
    masks: the current N:M masks E (bool, None for dense leaves).
    dense: the dense shadow weights W (None for dense leaves, whose weights are the params).
    inner_state: the inner optimizer's state (on W).
    skipped_leaves: int32 number of (leaf, step) pairs skipped under the non-finite policy
      (``docs/nonfinite.md``).
  """

  count: jax.Array
  masks: Any
  dense: Any
  inner_state: optax.OptState
  skipped_leaves: jax.Array


def sr_ste(
    inner: optax.GradientTransformation,
    n: int = 2,
    m: int = 4,
    axis: int = -2,
    *,
    refine: optax.ScalarOrSchedule = 2e-4,
    mask_decay: optax.ScalarOrSchedule | None = None,
    where: _eligibility.Where = None,
) -> optax.GradientTransformationExtraArgs:
  """SR-STE N:M training: dense shadow weights W in the state, parameters θ = W⊙E.

  .. math::
    g_W = g + λ_W (1 - E)⊙W, \\quad (u_W, s') = \\mathrm{inner}(g_W, s, W), \\quad
    W' = W + u_W \\\\
    E' = \\mathrm{N{:}M}(|W'|), \\quad θ' = W' ⊙ (E' + (1 - E') b_t), \\quad u = θ' − θ

  g is the gradient at the masked parameters θ, used for W as a straight-through estimate. The
  N:M mask is recomputed from |W'| every step. With ``mask_decay`` = b_t (MDGF, a schedule
  decaying from 1 to 0) pruned weights enter the forward with weight b_t instead of 0; MDGF
  uses plain STE, i.e. ``refine=0``: exponential b_t = exp(−ct) is
  ``optax.exponential_decay(1.0, 1, math.exp(-c))`` and linear b_t = max(0, 1 − ct) is
  ``optax.linear_schedule(1.0, 0.0, round(1 / c))`` (paper: exponential, c = 1e-4 per step).

  Library decisions: this is a transformation wrapping ``inner`` (not a ``sparse()`` rule)
  because it owns dense shadow weights; the inner optimizer's state lives on W; the first
  ``update`` starts from W = the initial (dense) parameters, so only the first forward is dense;
  the inner transformation receives the masks E as the extra argument ``masks``; leaves outside
  ``where`` (default ndim >= 2) are updated by ``inner`` alone. ``get_masks`` finds E.

  Args:
    inner: the optimizer of the dense weights W.
    n: kept entries per group (2).
    m: group size (4); every eligible leaf's ``axis`` length must be divisible by m.
    axis: grouping axis (−2, the fan-in of Flax kernels).
    refine: λ_W >= 0, the sparse-refined decay of the pruned weights (2e-4, the paper's and
      praxis's default); a schedule is evaluated at the count.
    mask_decay: b_t in [0, 1] (a schedule, MDGF) or None for b_t = 0 (SR-STE).
    where: eligible leaves (None: ndim >= 2; a predicate or a static tree of bools).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> tx = osp.sr_ste(optax.sgd(0.1), 2, 4)
    >>> params = {"w": jnp.array([[1.0], [4.0], [3.0], [2.0]])}
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.zeros((4, 1))}
    >>> updates, state = tx.update(grads, state, params)
    >>> optax.apply_updates(params, updates)["w"].ravel().tolist()
    [0.0, 4.0, 3.0, 0.0]

  References:
    Zhou et al., *Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch*,
    arXiv 2102.04010. Bambhaniya et al., *Progressive Gradient Flow for Robust N:M Sparsity
    Training in Transformers*, arXiv 2402.04744.
  """
  _validation.check_transformation("inner", inner)
  _check_nm(n, m)
  _hyperparams.check_scalar("refine", refine, low=0.0)
  if mask_decay is not None:
    _hyperparams.check_scalar("mask_decay", mask_decay, low=0.0, high=1.0)
  _eligibility.check_where("where", where)
  inner = optax.with_extra_args_support(inner)

  def pattern(w):
    return select.nm_mask(_magnitude(w), n, m, axis)

  def init_fn(params):
    _validation.check_float_params(params)
    inner_state = inner.init(params)
    params = _validation.to_none(params)  # MaskedNode (optax.masked): a dense leaf, mask None.
    eligible = _eligibility.eligible_tree(where, params)
    template = _template(eligible, params)
    masks = jax.jit(lambda t: _leafwise(pattern, t))(template)
    dense = _leafwise(lambda p: p, template)
    return SrSteState(
        count=jnp.zeros([], jnp.int32), masks=masks, dense=dense,
        inner_state=inner_state, skipped_leaves=jnp.zeros([], jnp.int32))

  def update_fn(grads, state, params=None, **extra_args):
    if params is None:
      raise ValueError(optax._src.base.NO_PARAMS_MSG)
    _validation.check_grads(grads, params)
    # Schedules out of range: λ_W clipped to >= 0 and b_t to [0, 1], NaN read as 0.
    lam = _hyperparams.evaluate(refine, state.count)
    lam = jnp.maximum(jnp.where(jnp.isnan(lam), 0.0, lam), 0.0)
    b_t = (jnp.zeros([], jnp.float32) if mask_decay is None
           else _hyperparams.evaluate(mask_decay, state.count))
    b_t = jnp.clip(jnp.where(jnp.isnan(b_t), 0.0, b_t), 0.0, 1.0)
    # Non-finite policy (docs/nonfinite.md): a leaf whose gradient or parameter is not finite
    # is skipped (W, mask and inner state kept, update 0), counted.
    ok = _nonfinite.ok_tree(grads, params)
    masks = state.masks
    # The full weights the inner optimizer acts on: W on eligible leaves, params elsewhere.
    weights = jax.tree.map(
        lambda d, p: p if d is None else d, state.dense, params, is_leaf=_is_none)

    def refined(e, g, w):
      g32 = jnp.asarray(g, jnp.float32) + lam * jnp.where(e, 0.0, jnp.asarray(w, jnp.float32))
      return g32.astype(g.dtype)

    g_w = jax.tree.map(
        lambda e, g, w: g if e is None else refined(e, g, w), masks, grads, weights,
        is_leaf=_is_none)
    extra_args.pop("masks", None)
    u_w, inner_state = _nonfinite.guard(
        inner, g_w, state.inner_state, weights, ok, masks=masks, **extra_args)
    new_w = jax.tree.map(
        lambda e, w, u: None if e is None else (jnp.asarray(w, jnp.float32) + u).astype(w.dtype),
        masks, weights, u_w, is_leaf=_is_none)
    new_masks = _leafwise(pattern, new_w)
    new_masks = jax.tree.map(lambda n_, o, k: None if n_ is None else jnp.where(k, n_, o),
                             new_masks, masks, ok, is_leaf=_is_none)

    def emit(e, u, p, w):
      if e is None:
        return u
      value = jnp.asarray(w, jnp.float32) * jnp.where(e, 1.0, b_t)
      return (value - jnp.asarray(p, jnp.float32)).astype(p.dtype)

    updates = jax.tree.map(emit, new_masks, u_w, params, new_w, is_leaf=_is_none)
    updates = _nonfinite.zero_bad(updates, ok)
    return updates, SrSteState(
        count=optax.safe_increment(state.count), masks=new_masks, dense=new_w,
        inner_state=inner_state,
        skipped_leaves=state.skipped_leaves + _nonfinite.n_skipped(ok))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
