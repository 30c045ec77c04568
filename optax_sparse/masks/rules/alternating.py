"""AC/DC: alternating compressed (sparse) and decompressed (dense) phases."""

from __future__ import annotations

import jax.numpy as jnp

from optax_sparse.masks import groups as groups_lib
from optax_sparse.masks.rules._base import (
  MaskRule,
  _all_true,
  _check_step,
  _global_magnitude_masks,
  _leafwise,
)

__all__ = ["acdc"]


def acdc(
    *,
    warmup_steps: int,
    sparse_steps: int,
    dense_steps: int,
    alternate_until: int,
    final_sparse_from: int,
    groups: groups_lib.GroupsArg = None,
) -> MaskRule:
  """AC/DC: alternating compressed (sparse) and decompressed (dense) phases.

  Phase of step t (sparse ⇔ compressed):

  .. math::
    \\text{sparse}(t) = \\big[t_w \\le t < t_a \\wedge (t - t_w) \\bmod (L_s + L_d) < L_s\\big]
    \\vee t \\ge t_f

  At every switch to a sparse phase the masks become one *global* magnitude top-k to the target
  sparsity (all eligible leaves); at every switch to a dense phase all entries are active again
  and the pruned weights restart from exactly 0. ``sparse()`` zeroes the inner optimizer's
  per-parameter state of every entry whose mask changes: at compression the moments of newly
  masked entries (a library decision, :doc:`/methods/acdc`), at decompression those of the
  returning ones. The update with count t sets the masks for phase(t + 1); masks at init follow
  phase(0).

  The paper's ImageNet schedule (100 epochs, T steps): dense warm-up 10% (``warmup_steps =
  0.1T``), then sparse 5% / dense 5% (``sparse_steps = dense_steps = 0.05T``) until 75%
  (``alternate_until = 0.75T``; the last alternating phase is sparse, 70–75%), dense 75–85%,
  final sparse phase from 85% (``final_sparse_from = 0.85T``).

  Args:
    warmup_steps: t_w >= 0, dense warm-up length.
    sparse_steps: L_s >= 1, length of each alternating sparse phase.
    dense_steps: L_d >= 1, length of each alternating dense phase.
    alternate_until: t_a >= t_w, end of the alternation.
    final_sparse_from: t_f >= t_a, start of the final sparse phase.
    groups: the grouping (``osp.groups``; None: unstructured): each compression keeps the top
      groups by reduced |θ| over all leaves (a global budget counted in groups).

  Returns:
    A :class:`MaskRule` with ``scope="global"``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> rule = osp.acdc(warmup_steps=1, sparse_steps=1, dense_steps=1, alternate_until=3,
    ...                 final_sparse_from=4)
    >>> tx = osp.sparse(optax.sgd(0.1), rule, sparsity=0.5)
    >>> params = {"w": jnp.arange(1.0, 5.0).reshape(2, 2)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update(params, state, params)
    >>> int(osp.get_masks(state)["w"].sum())
    2

  References:
    Peste, Iofinova, Vladu, Alistarh, *AC/DC: Alternating Compressed/DeCompressed Training of
    Deep Neural Networks*, arXiv 2106.12379.
  """
  _check_step("warmup_steps", warmup_steps)
  _check_step("sparse_steps", sparse_steps, low=1)
  _check_step("dense_steps", dense_steps, low=1)
  _check_step("alternate_until", alternate_until, low=warmup_steps)
  _check_step("final_sparse_from", final_sparse_from, low=alternate_until)
  groups_lib.check("groups", groups)

  def is_sparse(t):
    t = jnp.asarray(t, jnp.int32)
    alternating = (t >= warmup_steps) & (t < alternate_until) & (
        (t - warmup_steps) % (sparse_steps + dense_steps) < sparse_steps)
    return alternating | (t >= final_sparse_from)

  def init_masks(params, target, key):
    del key
    dense = _all_true(params, target)
    sparse = _global_magnitude_masks(params, target, False, groups)
    return _leafwise(lambda d, s: jnp.where(is_sparse(0), s, d), dense, sparse)

  def is_update_step(count):
    return is_sparse(count + 1) != is_sparse(count)

  def update_masks(masks, params, grads, count, key, target, rule_state):
    del grads, key
    compress = is_sparse(count + 1)
    sparse = _global_magnitude_masks(params, target, False, groups)
    new = _leafwise(lambda m, s: jnp.where(compress, s, True), masks, sparse)
    return new, rule_state

  return MaskRule("acdc", init_masks, is_update_step, update_masks, scope="global")
