"""Iterative magnitude pruning (IMP) with weight rewinding or learning-rate rewinding.

The whole lottery-ticket loop runs inside ``tx.update``: the rule's state keeps the rewind point
θ_k, and at each pruning round the update emitted by :func:`optax_sparse.sparse` lands the
parameters on the rewound, masked weights M ⊙ θ_k (the rule's ``restart`` hook). The learning
rate is rewound by evaluating the optimizer's schedule at the rewound step :func:`imp_step`
(:func:`imp_schedule`), a pure function of the count.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_sparse.masks import groups as groups_lib
from optax_sparse.masks.rules._base import (
  MaskRule,
  _all_true,
  _check_step,
  _is_none,
  _layer_magnitude_masks,
)

__all__ = ["ImpState", "imp", "imp_schedule", "imp_step"]


class ImpState(NamedTuple):
  """State of the :func:`imp` rule.

  Attributes:
    rewind: the rewind point θ_k, a pytree like the parameters (every leaf, dense ones too), or
      ``optax.EmptyState()`` for learning-rate rewinding.
  """

  rewind: Any


def _check_imp(train_steps: Any, rewind_step: Any, rounds: Any) -> None:
  _check_step("train_steps", train_steps, low=1)
  _check_step("rounds", rounds, low=1)
  _check_step("rewind_step", rewind_step)
  if rewind_step >= train_steps:
    raise ValueError(
        f"rewind_step must be < train_steps = {train_steps}; got {rewind_step!r}.")


def imp_step(count: Any, train_steps: int, rewind_step: int) -> jax.Array:
  """The rewound step τ(t) that an :func:`imp` schedule is evaluated at.

  .. math::
    τ(t) = t \\;(t \\le T), \\qquad τ(t) = k + \\big((t - T - 1) \\bmod (T - k + 1)\\big)
    \\;(t > T)

  Round r ≥ 1 replays the steps k, …, T − 1 of the first training run; the pruning event itself
  (τ = T) emits no optimizer step.

  Args:
    count: the update count t (traced OK).
    train_steps: T, the length of the first (dense) training run.
    rewind_step: k < T, the rewind point.

  Returns:
    An int32 scalar.

  Examples:
    >>> import optax_sparse as osp
    >>> [int(osp.imp_step(t, 4, 1)) for t in range(10)]
    [0, 1, 2, 3, 4, 1, 2, 3, 4, 1]
  """
  _check_imp(train_steps, rewind_step, 1)
  t = jnp.asarray(count, jnp.int32)
  period = train_steps - rewind_step + 1
  later = rewind_step + jnp.mod(t - train_steps - 1, period)
  return jnp.where(t <= train_steps, t, later).astype(jnp.int32)


def imp_schedule(
    schedule: optax.ScalarOrSchedule, *, train_steps: int, rewind_step: int = 0
) -> optax.Schedule:
  """A schedule replayed from the rewind point after each IMP round: t ↦ schedule(τ(t)).

  Give it to the inner optimizer of ``sparse(inner, imp(...))`` to rewind the learning rate
  (its count advances with ``sparse()``'s own).

  Args:
    schedule: the schedule (or constant) of the first training run.
    train_steps: T, as in :func:`imp`.
    rewind_step: k, as in :func:`imp`.

  Returns:
    An optax schedule.

  Examples:
    >>> import optax, optax_sparse as osp
    >>> lr = osp.imp_schedule(optax.linear_schedule(1.0, 0.0, 4), train_steps=4)
    >>> [float(lr(t)) for t in (0, 3, 5, 6)]
    [1.0, 0.25, 1.0, 0.75]
  """
  _check_imp(train_steps, rewind_step, 1)
  if not callable(schedule):
    value = schedule
    return lambda count: jnp.asarray(value, jnp.float32)
  return lambda count: schedule(imp_step(count, train_steps, rewind_step))


def imp(
    *,
    train_steps: int,
    rounds: int,
    rewind_step: int = 0,
    rewind: str = "weights",
    groups: groups_lib.GroupsArg = None,
) -> MaskRule:
  """Iterative magnitude pruning with weight rewinding (lottery tickets) or LR rewinding.

  Rounds r = 1, …, R happen at the counts t_r = T + (r − 1)(T − k + 1). At round r every leaf
  keeps, among its active entries, the largest |θ_{t_r}| at the density of

  .. math::
    s_r = 1 - (1 - s)^{r / R}

  (through the distribution: the same fraction p = 1 − (1 − s)^{1/R} of the remaining weights
  each round under ``uniform()``), and the update lands the parameters on

  .. math::
    θ_{t_r + 1} = M_r ⊙ θ_k \\;(\\text{weight rewinding}), \\qquad
    θ_{t_r + 1} = M_r ⊙ θ_{t_r} \\;(\\text{LR rewinding})

  with a fresh inner optimizer state (per-parameter leaves zeroed; counts go on). Then training
  runs T − k more steps. To rewind the learning rate as well (both variants need it), build the
  inner optimizer with :func:`imp_schedule`: step t_r + j uses the rate of step k + j. The
  whole run is T + R(T − k + 1) updates; the mask after round R has sparsity s.

  Library decisions: the pruning-round update emits no optimizer step (it only lands); the inner
  state restarts from zero at each round (a new optimizer, as a new training run from the rewind
  point); the rewind point θ_k is taken from the parameters the update with count k receives
  (k = 0: the parameters given to ``init``) and covers every leaf, dense ones (biases) too;
  masks before round 1 are dense.

  Args:
    train_steps: T >= 1, the length of the first (dense) training run and the step of round 1.
    rounds: R >= 1, the number of pruning rounds.
    rewind_step: k in [0, T), the rewind point (Frankle et al. 2019: a small k > 0 for deep
      networks; Renda et al.'s LR rewinding replays the schedule from k).
    rewind: ``"weights"`` (land on M ⊙ θ_k; the state keeps θ_k, one copy of the parameters) or
      ``"lr"`` (keep the trained weights, land on M ⊙ θ; the state keeps nothing).
    groups: the grouping (``osp.groups``; None: unstructured): prune whole groups by reduced |θ|.

  Returns:
    A :class:`MaskRule` for :func:`optax_sparse.sparse` (its ``sparsity`` is the final s).

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> rule = osp.imp(train_steps=2, rounds=1)
    >>> tx = osp.sparse(optax.sgd(osp.imp_schedule(0.1, train_steps=2)), rule, sparsity=0.5)
    >>> params = {"w": jnp.array([[1.0, -2.0], [3.0, -4.0]])}
    >>> state = tx.init(params)
    >>> for _ in range(3):
    ...   grads = {"w": -jnp.array([[1.0, 1.0], [1.0, 1.0]])}
    ...   updates, state = tx.update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> params["w"].tolist()  # rewound to θ_0 on the 2 largest trained weights
    [[0.0, 0.0], [3.0, -4.0]]

  References:
    Frankle, Carbin, *The Lottery Ticket Hypothesis: Finding Sparse, Trainable Neural Networks*,
    arXiv 1803.03635. Frankle, Dziugaite, Roy, Carbin, *Linear Mode Connectivity and the Lottery
    Ticket Hypothesis*, arXiv 1912.05671. Renda, Frankle, Carbin, *Comparing Rewinding and
    Fine-tuning in Neural Network Pruning*, arXiv 2003.02389.
  """
  _check_imp(train_steps, rewind_step, rounds)
  if rewind not in ("weights", "lr"):
    raise ValueError(f"rewind must be 'weights' or 'lr'; got {rewind!r}.")
  groups_lib.check("groups", groups)
  period = train_steps - rewind_step + 1
  last = train_steps + (rounds - 1) * period
  capture = rewind == "weights" and rewind_step > 0

  def is_event(count):
    return (count >= train_steps) & (count <= last) & ((count - train_steps) % period == 0)

  def init_state(params):
    if rewind == "lr":
      return optax.EmptyState()
    return ImpState(rewind=jax.tree.map(
        lambda p: None if p is None else jnp.asarray(p), params, is_leaf=_is_none))

  def init_masks(params, target, key):
    del key
    return _all_true(params, target)

  def is_update_step(count):
    due = is_event(count)
    if capture:
      due = due | (count == rewind_step)
    return due

  def update_masks(masks, params, grads, count, key, target, rule_state):
    del grads, key
    event = is_event(count)
    r = (jnp.asarray(count, jnp.int32) - train_steps) // period + 1
    s = jnp.asarray(target.sparsity, jnp.float32)
    s_r = 1.0 - (1.0 - s) ** (r.astype(jnp.float32) / rounds)
    pruned = _layer_magnitude_masks(params, target, target.densities(s_r), masks, groups)
    new = jax.tree.map(
        lambda m, n: None if m is None else jnp.where(event, n, m), masks, pruned,
        is_leaf=_is_none)
    if capture:
      at_k = count == rewind_step
      rule_state = ImpState(rewind=jax.tree.map(
          lambda old, p: None if p is None else jnp.where(at_k, p, old), rule_state.rewind,
          params, is_leaf=_is_none))
    return new, rule_state

  def restart(count, rule_state):
    if rewind == "lr":
      return is_event(count), None
    return is_event(count), rule_state.rewind

  return MaskRule("imp", init_masks, is_update_step, update_masks, init_state=init_state,
                  restart=restart)
