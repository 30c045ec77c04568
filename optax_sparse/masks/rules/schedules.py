"""Sparsity schedules and gradual magnitude pruning (Zhu & Gupta's cubic schedule)."""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from optax_sparse import _hyperparams
from optax_sparse.masks import groups as groups_lib
from optax_sparse.masks.rules._base import (
  MaskRule,
  _check_step,
  _layer_magnitude_masks,
)

__all__ = ["gradual_magnitude", "gradual_sparsity"]


def gradual_sparsity(
    step: Any, initial_sparsity: Any, final_sparsity: Any, begin_step: int, end_step: int
) -> jax.Array:
  """Zhu & Gupta's cubic sparsity schedule s_t (clamped to the window).

  .. math::
    s_t = s_f + (s_i - s_f)\\left(1 - \\frac{t - t_0}{t_{end} - t_0}\\right)^3

  Args:
    step: the step t (traced OK).
    initial_sparsity: s_i.
    final_sparsity: s_f.
    begin_step: t₀.
    end_step: t_end > t₀.

  Returns:
    A float32 scalar.

  Examples:
    >>> import optax_sparse as osp
    >>> round(float(osp.gradual_sparsity(50, 0.0, 0.8, 0, 100)), 4)
    0.7
  """
  t = jnp.asarray(step, jnp.float32)
  progress = jnp.clip((t - begin_step) / float(end_step - begin_step), 0.0, 1.0)
  s_i = jnp.asarray(initial_sparsity, jnp.float32)
  s_f = jnp.asarray(final_sparsity, jnp.float32)
  return s_f + (s_i - s_f) * (1.0 - progress) ** 3


def gradual_magnitude(
    initial_sparsity: float = 0.0,
    *,
    begin_step: int,
    end_step: int,
    frequency: int = 100,
    groups: groups_lib.GroupsArg = None,
) -> MaskRule:
  """Gradual magnitude pruning (GMP) with Zhu & Gupta's cubic schedule.

  .. math::
    s_t = s_f + (s_i - s_f)\\left(1 - \\frac{t - t_0}{t_{end} - t_0}\\right)^3, \\quad
    t \\in \\{t_0, t_0 + Δt, \\dots\\} \\cup \\{t_{end}\\}

  At each event every eligible leaf is pruned by |θ| *among its active entries* to the density
  of s_t (through the distribution); pruned entries stay pruned. s_f is the ``sparsity`` given
  to :func:`optax_sparse.sparse` (a schedule is evaluated at the count). Masks at init have
  sparsity s_i (all active when s_i = 0).

  Args:
    initial_sparsity: s_i in [0, 1) (default 0).
    begin_step: t₀ >= 0, the first pruning event.
    end_step: t_end > t₀, the last pruning event (always an event).
    frequency: Δt >= 1 steps between events (default 100).
    groups: the grouping (``osp.groups``; None: unstructured): every leaf keeps its top groups
      by the group's reduced |θ| (see :doc:`/structured`).

  Returns:
    A :class:`MaskRule` for :func:`optax_sparse.sparse`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> rule = osp.gradual_magnitude(begin_step=0, end_step=10, frequency=5)
    >>> tx = osp.sparse(optax.sgd(0.1), rule, sparsity=0.75)
    >>> params = {"w": jnp.arange(1.0, 9.0).reshape(2, 4)}
    >>> state = tx.init(params)
    >>> update = jax.jit(tx.update)
    >>> for _ in range(11):
    ...   updates, state = update(params, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> int(osp.get_masks(state)["w"].sum())
    2

  References:
    Zhu, Gupta, *To prune, or not to prune: exploring the efficacy of pruning for model
    compression*, arXiv 1710.01878. Gale, Elsen, Hooker, *The State of Sparsity in Deep Neural
    Networks*, arXiv 1902.09574.
  """
  _hyperparams.check_scalar(
      "initial_sparsity", initial_sparsity, low=0.0, high=1.0, high_open=True,
      allow_schedule=False)
  _check_step("begin_step", begin_step)
  _check_step("end_step", end_step)
  _check_step("frequency", frequency, low=1)
  if end_step <= begin_step:
    raise ValueError(f"end_step must be > begin_step = {begin_step}; got {end_step!r}.")
  groups_lib.check("groups", groups)

  def init_masks(params, target, key):
    del key
    densities = target.densities(jnp.asarray(initial_sparsity, jnp.float32))
    return _layer_magnitude_masks(params, target, densities, groups=groups)

  def is_update_step(count):
    in_window = (count >= begin_step) & (count <= end_step)
    return in_window & (((count - begin_step) % frequency == 0) | (count == end_step))

  def update_masks(masks, params, grads, count, key, target, rule_state):
    del grads, key
    s_t = gradual_sparsity(count, initial_sparsity, target.sparsity, begin_step, end_step)
    densities = target.densities(s_t)
    return _layer_magnitude_masks(params, target, densities, masks, groups), rule_state

  return MaskRule("gradual_magnitude", init_masks, is_update_step, update_masks)
