"""Unstructured straight-through estimators: magnitude STE and random STE.

The dense weights W live in the optimizer state; the parameters are the masked weights θ = W ⊙ M,
so the gradient the user computes at θ is the straight-through estimate for W. The mask is
recomputed from W after every step (magnitude) or redrawn (random), at the scheduled sparsity.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_sparse import _eligibility, _hyperparams, _nonfinite, _validation
from optax_sparse.masks import groups as groups_lib
from optax_sparse.masks.rules._base import (
  _is_none,
  _layer_select,
  _leaf_keys,
  _leafwise,
  _magnitude,
  _template,
)

__all__ = ["SteState", "magnitude_ste", "random_ste"]


class SteState(NamedTuple):
  """State of :func:`magnitude_ste` and :func:`random_ste`.

  Attributes:
    count: int32 step counter (the sparsity schedule and the random draws read it).
    masks: the current masks M (bool, None for dense leaves).
    dense: the dense weights W (None for dense leaves, whose weights are the params).
    key: the PRNG key of :func:`random_ste` (step t draws with ``fold_in(key, t)``).
    inner_state: the inner optimizer's state (on W).
    skipped_leaves: int32 number of (leaf, step) pairs skipped under the non-finite policy
      (a leaf whose gradient or parameter is not finite keeps W, its mask and its inner state,
      and its update is 0).
  """

  count: jax.Array
  masks: Any
  dense: Any
  key: jax.Array
  inner_state: optax.OptState
  skipped_leaves: jax.Array


def _ste(inner, sparsity, distribution, groups, where, seed, kind):
  _hyperparams.check_scalar("sparsity", sparsity, low=0.0, high=1.0, high_open=True)
  _eligibility.check_where("where", where)
  groups_lib.check("groups", groups)
  if distribution is None:
    from optax_sparse.masks import distributions  # noqa: PLC0415 - sibling module.

    distribution = distributions.uniform()
  inner = optax.with_extra_args_support(inner)

  def masks_of(weights, eligible, count, key):
    s = _hyperparams.evaluate(sparsity, count)
    densities = distribution.densities(weights, s, eligible)
    template = _template(eligible, weights)
    gtree = groups_lib.resolve(groups, weights, eligible)
    keys = _leaf_keys(jax.random.fold_in(key, count), template)

    def leaf(w, d, g, k):
      if kind == "magnitude":
        scores = _magnitude(w)
      else:
        scores = groups_lib.expand(g, jax.random.uniform(k, g.unit_shape(w.shape)), w.shape)
      return _layer_select(g, scores, d)

    return _leafwise(leaf, template, densities, gtree, keys)

  def init_fn(params):
    eligible = _eligibility.eligible_tree(where, params)
    key = jax.random.PRNGKey(seed)
    masks = jax.jit(lambda p, k: masks_of(p, eligible, jnp.zeros([], jnp.int32), k))(params, key)
    dense = _leafwise(lambda p: p, _template(eligible, params))
    return SteState(count=jnp.zeros([], jnp.int32), masks=masks, dense=dense, key=key,
                    inner_state=inner.init(params), skipped_leaves=jnp.zeros([], jnp.int32))

  def update_fn(grads, state, params=None, **extra_args):
    if params is None:
      raise ValueError(optax._src.base.NO_PARAMS_MSG)
    _validation.check_grads(grads, params)
    eligible = _eligibility.eligible_tree(where, params)
    ok = _nonfinite.ok_tree(grads, params)
    weights = jax.tree.map(
        lambda d, p: p if d is None else d, state.dense, params, is_leaf=_is_none)
    extra_args.pop("masks", None)
    u_w, inner_state = _nonfinite.guard(
        inner, grads, state.inner_state, weights, ok, masks=state.masks, **extra_args)
    new_w = jax.tree.map(
        lambda e, w, u: None if e is None else (jnp.asarray(w, jnp.float32) + u).astype(w.dtype),
        state.masks, weights, u_w, is_leaf=_is_none)
    full_w = jax.tree.map(lambda d, p: p if d is None else d, new_w, params, is_leaf=_is_none)
    count = optax.safe_increment(state.count)
    new_masks = masks_of(full_w, eligible, count, state.key)
    new_masks = jax.tree.map(lambda n_, o, k: None if n_ is None else jnp.where(k, n_, o),
                             new_masks, state.masks, ok, is_leaf=_is_none)

    def emit(m, u, p, w):
      if m is None:
        return u
      return jnp.where(m, jnp.asarray(w, p.dtype) - p, -p).astype(p.dtype)

    updates = jax.tree.map(emit, new_masks, u_w, params, new_w, is_leaf=_is_none)
    updates = _nonfinite.zero_bad(updates, ok)
    return updates, SteState(count=count, masks=new_masks, dense=new_w, key=state.key,
                             inner_state=inner_state,
                             skipped_leaves=state.skipped_leaves + _nonfinite.n_skipped(ok))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def magnitude_ste(
    inner: optax.GradientTransformation,
    sparsity: optax.ScalarOrSchedule,
    distribution: Any = None,
    *,
    groups: groups_lib.GroupsArg = None,
    where: _eligibility.Where = None,
) -> optax.GradientTransformationExtraArgs:
  """Magnitude STE: dense weights W in the state, parameters θ = W ⊙ top-k(|W|), every step.

  .. math::
    (u_W, s') = \\mathrm{inner}(g, s, W), \\quad W' = W + u_W, \\quad
    M' = \\operatorname{top}_{k_l}(|W'_l|), \\quad u = W' ⊙ M' − θ

  g is the gradient at θ, applied to W unchanged (straight-through). The sparsity (a float or a
  schedule of the count, e.g. ``osp.gradual_sparsity``) and the distribution give k_l per leaf,
  evaluated for the mask of step t + 1 at count t + 1. As jaxpruner's ``magnitude_ste``, but the
  dense weights live in the state and the masked weights are the parameters, so no call outside
  ``update`` is needed. The first forward uses the parameters given to ``init`` masked by M_0.
  The inner transformation receives the current masks as the extra argument ``masks``.

  Args:
    inner: the optimizer of the dense weights W.
    sparsity: s in [0, 1) or a schedule of the count.
    distribution: the layer-wise distribution (default ``uniform()``).
    groups: the grouping (``osp.groups``; None: unstructured).
    where: eligible leaves (None: ndim >= 2; a predicate or a static tree of bools).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state :class:`SteState`.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> tx = osp.magnitude_ste(optax.sgd(1.0), sparsity=0.5)
    >>> params = {"w": jnp.array([[1.0, -3.0], [0.5, 2.0]])}
    >>> state = tx.init(params)
    >>> params = {"w": params["w"] * osp.get_masks(state)["w"]}  # the first forward
    >>> updates, state = tx.update({"w": jnp.array([[0.0, 0.0], [-2.0, 0.0]])}, state, params)
    >>> optax.apply_updates(params, updates)["w"].tolist()  # W' = [[1, -3], [2.5, 2]]
    [[0.0, -3.0], [2.5, 0.0]]

  References:
    Bengio, Léonard, Courville, *Estimating or Propagating Gradients Through Stochastic Neurons
    for Conditional Computation*, arXiv 1308.3432; jaxpruner (``SteMagnitudePruning``),
    Lee et al., arXiv 2304.14082.
  """
  return _ste(inner, sparsity, distribution, groups, where, 0, "magnitude")


def random_ste(
    inner: optax.GradientTransformation,
    sparsity: optax.ScalarOrSchedule,
    distribution: Any = None,
    *,
    groups: groups_lib.GroupsArg = None,
    where: _eligibility.Where = None,
    seed: int = 0,
) -> optax.GradientTransformationExtraArgs:
  """Random STE: dense weights W in the state, θ = W ⊙ M with a fresh random mask every step.

  .. math::
    W' = W + u_W, \\quad M' = \\operatorname{top}_{k_l}(U_l),\\; U_l \\sim \\mathcal{U}(0,1)
    \\text{ keyed by } \\operatorname{fold\\_in}(key, t + 1), \\quad u = W' ⊙ M' − θ

  As :func:`magnitude_ste` with random scores (jaxpruner's ``random_ste``); with ``groups`` the
  random draw is per group.

  Args:
    inner: the optimizer of the dense weights W.
    sparsity: s in [0, 1) or a schedule of the count.
    distribution: the layer-wise distribution (default ``uniform()``).
    groups: the grouping (``osp.groups``; None: unstructured).
    where: eligible leaves (None: ndim >= 2).
    seed: the seed of the mask draws.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state :class:`SteState`.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> tx = osp.random_ste(optax.sgd(0.1), sparsity=0.75)
    >>> state = tx.init({"w": jnp.ones((4, 4))})
    >>> int(osp.get_masks(state)["w"].sum())
    4

  References:
    jaxpruner (``SteRandomPruning``), Lee et al., arXiv 2304.14082.
  """
  return _ste(inner, sparsity, distribution, groups, where, seed, "random")
