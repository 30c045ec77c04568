"""Iterative N:M: from dense through unstructured sparsity that contains an N:M pattern to N:M."""

from __future__ import annotations

import jax.numpy as jnp

from optax_sparse.masks import select
from optax_sparse.masks.rules._base import (
  MaskRule,
  _all_true,
  _check_step,
  _exclude,
  _leafwise,
  _magnitude,
  _template,
)
from optax_sparse.masks.rules.nm_ste import _check_nm
from optax_sparse.masks.rules.schedules import gradual_sparsity

__all__ = ["iterative_nm"]


def iterative_nm(
    n: int = 2, m: int = 4, axis: int = -2, *, begin_step: int, end_step: int,
    frequency: int = 100,
) -> MaskRule:
  """Iterative N:M pruning: the sparsity grows on a cubic schedule to 1 − n/m, always ⊇ N:M.

  .. math::
    s_t = (1 - n/m)\\left(1 - \\left(1 - \\frac{t - t_0}{t_{end} - t_0}\\right)^3\\right), \\quad
    M_t = \\operatorname{top}_{k_t}\\big(|θ| + ∞ · \\mathrm{N{:}M}(|θ|)\\big) \\text{ on } M_{t-1}

  At each event (as :func:`gradual_magnitude`: t₀, t₀ + Δt, …, and t_end) every eligible leaf
  keeps, among its active entries, the N:M pattern of |θ| plus the largest remaining |θ| up to
  k_t = max(1, round(n_l (1 − s_t))) entries. The masks go from dense through coarser,
  unstructured masks that contain an N:M pattern to exactly the N:M pattern at t_end (where
  k equals the pattern's count). jaxpruner's ``iterative_nm`` (N:M kept first, unstructured top-k
  at the scheduled sparsity) with pruned entries staying pruned. ``sparse()`` takes
  ``sparsity=None``; every eligible leaf's ``axis`` length must be divisible by m.

  Args:
    n: kept entries per group at the end (1 <= n <= m).
    m: group size.
    axis: grouping axis (−2, the fan-in of Flax kernels).
    begin_step: t₀ >= 0, the first event.
    end_step: t_end > t₀, the event that reaches the N:M pattern.
    frequency: Δt >= 1 steps between events (default 100).

  Returns:
    A :class:`MaskRule` with ``scope="pattern"``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> rule = osp.iterative_nm(1, 2, axis=-1, begin_step=0, end_step=2, frequency=1)
    >>> tx = osp.sparse(optax.sgd(0.0), rule, sparsity=None)
    >>> params = {"w": jnp.array([[4.0, 1.0, 3.0, 2.0], [1.0, 5.0, 6.0, 7.0]])}
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   updates, state = tx.update(params, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> params["w"].tolist()
    [[4.0, 0.0, 3.0, 0.0], [0.0, 5.0, 0.0, 7.0]]

  References:
    jaxpruner ``iterative_nm`` (Lee et al., arXiv 2304.14082); Zhou et al., *Learning N:M
    Fine-grained Structured Sparse Neural Networks From Scratch*, arXiv 2102.04010.
  """
  _check_nm(n, m)
  _check_step("begin_step", begin_step)
  _check_step("end_step", end_step)
  _check_step("frequency", frequency, low=1)
  if end_step <= begin_step:
    raise ValueError(f"end_step must be > begin_step = {begin_step}; got {end_step!r}.")
  final = 1.0 - n / m

  def init_masks(params, target, key):
    del key
    template = _template(target.eligible, params)
    _leafwise(lambda p: select.nm_mask(jnp.zeros(p.shape), n, m, axis), template)  # validates
    return _all_true(params, target)

  def is_update_step(count):
    in_window = (count >= begin_step) & (count <= end_step)
    return in_window & (((count - begin_step) % frequency == 0) | (count == end_step))

  def update_masks(masks, params, grads, count, key, target, rule_state):
    del grads, key
    s_t = gradual_sparsity(count, 0.0, final, begin_step, end_step)

    def leaf(mask, p):
      scores = _exclude(_magnitude(p), mask)
      pattern = select.nm_mask(scores, n, m, axis)
      boosted = jnp.where(pattern, jnp.inf, scores)
      return select.select_top_k(boosted, select.count_for_density(p.size, 1.0 - s_t))

    return _leafwise(leaf, masks, params), rule_state

  return MaskRule("iterative_nm", init_masks, is_update_step, update_masks, scope="pattern")
