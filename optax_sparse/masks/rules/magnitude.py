"""Magnitude pruning rules: one-shot (per leaf and global) and static random masks."""

from __future__ import annotations

import jax.numpy as jnp

from optax_sparse.masks import groups as groups_lib
from optax_sparse.masks.rules._base import (
  MaskRule,
  _all_true,
  _check_step,
  _global_magnitude_masks,
  _keep,
  _layer_magnitude_masks,
  _no_update,
  _random_masks,
)

__all__ = ["global_magnitude", "one_shot_magnitude", "static_random"]


def one_shot_magnitude(at_step: int = 0, *, groups: groups_lib.GroupsArg = None) -> MaskRule:
  """One-shot magnitude pruning: M = top-k(|θ|) per leaf once, fixed afterwards.

  .. math::
    M_l = \\operatorname{top}_{k_l}(|θ_l|), \\quad k_l = \\max(1, \\operatorname{round}(n_l ρ_l))

  With ``at_step = 0`` the masks come from the initial parameters at ``init`` (dense training
  never happens); with ``at_step = t₀ > 0`` training is dense until the update with count t₀,
  which prunes by the parameters θ_{t₀} it receives and lands on the pruned masks.

  Args:
    at_step: the update count at which to prune (an int >= 0).
    groups: the grouping (``osp.groups``; None: unstructured): every leaf keeps its top groups
      by the group's reduced |θ| (see :doc:`/structured`).

  Returns:
    A :class:`MaskRule` for :func:`optax_sparse.sparse`.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> tx = osp.sparse(optax.sgd(0.1), osp.one_shot_magnitude(), sparsity=0.5)
    >>> state = tx.init({"w": jnp.array([[1.0, -3.0], [0.5, 2.0]])})
    >>> osp.get_masks(state)["w"].tolist()
    [[False, True], [False, True]]

  References:
    Zhu, Gupta, *To prune, or not to prune*, arXiv 1710.01878.
  """
  _check_step("at_step", at_step)
  groups_lib.check("groups", groups)

  def init_masks(params, target, key):
    del key
    if at_step == 0:
      return _layer_magnitude_masks(
          params, target, target.densities(target.sparsity), groups=groups)
    return _all_true(params, target)

  def is_update_step(count):
    return jnp.asarray(at_step > 0) & (count == at_step)

  def update_masks(masks, params, grads, count, key, target, rule_state):
    del masks, grads, count, key
    densities = target.densities(target.sparsity)
    return _layer_magnitude_masks(params, target, densities, groups=groups), rule_state

  return MaskRule("one_shot_magnitude", init_masks, is_update_step, update_masks)




def global_magnitude(
    at_step: int = 0, *, normalize: bool = False, groups: groups_lib.GroupsArg = None
) -> MaskRule:
  """One-shot global magnitude pruning: one top-k of |θ| over all eligible leaves.

  .. math::
    M = \\operatorname{top}_k\\big(\\{|θ_l| / c_l\\}_l\\big), \\quad
    k = \\max(1, \\operatorname{round}((1 - s) \\textstyle\\sum_l n_l)),
    \\quad c_l = \\lVert θ_l \\rVert_2 \\text{ if normalize else } 1

  The total count is exact; leaves share one threshold (ties by leaf order, then flat index).
  Takes no layer-wise distribution. ``at_step`` as in :func:`one_shot_magnitude`.

  Args:
    at_step: the update count at which to prune (0: at init from the initial parameters).
    normalize: divide each leaf's scores by its L2 norm first (jaxpruner's default); off by
      default (:doc:`/methods/magnitude`).
    groups: the grouping (``osp.groups``; None: unstructured): one top-k of the groups' reduced
      |θ| over all leaves; the budget counts groups, k = max(1, round((1 − s)·Σ_l G_l)), so the
      entry sparsity is exactly s only when every leaf has the same group size. Within-groups
      groupings (``fan_in``) are refused (ValueError at init).

  Returns:
    A :class:`MaskRule` with ``scope="global"``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> tx = osp.sparse(optax.sgd(0.1), osp.global_magnitude(), sparsity=0.5)
    >>> state = tx.init({"a": jnp.array([[4.0, 3.0]]), "b": jnp.array([[1.0, 2.0]])})
    >>> [m.tolist() for m in osp.get_masks(state).values()]
    [[[True, True]], [[False, False]]]

  References:
    Gale, Elsen, Hooker, *The State of Sparsity in Deep Neural Networks*, arXiv 1902.09574.
  """
  _check_step("at_step", at_step)
  normalize = bool(normalize)
  groups_lib.check("groups", groups)

  def init_masks(params, target, key):
    del key
    if at_step == 0:
      return _global_magnitude_masks(params, target, normalize, groups)
    return _all_true(params, target)

  def is_update_step(count):
    return jnp.asarray(at_step > 0) & (count == at_step)

  def update_masks(masks, params, grads, count, key, target, rule_state):
    del masks, grads, count, key
    return _global_magnitude_masks(params, target, normalize, groups), rule_state

  return MaskRule("global_magnitude", init_masks, is_update_step, update_masks, scope="global")


def static_random(*, groups: groups_lib.GroupsArg = None) -> MaskRule:
  """Static random sparsity: a uniformly random mask per leaf at init, never updated.

  .. math::
    M_l = \\operatorname{top}_{k_l}(U_l), \\quad U_l \\sim \\mathcal{U}(0, 1)^{n_l}

  The key is ``sparse()``'s seed; per-leaf densities come from the distribution.

  Args:
    groups: the grouping (``osp.groups``; None: unstructured): uniformly random whole groups
      (or, within groups, the same number of random members in every group).

  Returns:
    A :class:`MaskRule` for :func:`optax_sparse.sparse`.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> tx = osp.sparse(optax.sgd(0.1), osp.static_random(), sparsity=0.75, seed=1)
    >>> int(osp.get_masks(tx.init({"w": jnp.ones((4, 4))}))["w"].sum())
    4

  References:
    Evci et al., *Rigging the Lottery: Making All Tickets Winners*, arXiv 1911.11134 (static
    baseline).
  """
  groups_lib.check("groups", groups)

  def init_masks(params, target, key):
    return _random_masks(params, target, key, groups)

  return MaskRule("static_random", init_masks, _no_update, _keep)
