"""Decoupled weight decay that follows a schedule, the paper form of AdamW, switch-off schedules.

Two conventions (see :doc:`/methods/weight_decay`):

* optax / PyTorch (the library default, lr-coupled): ``u = −η_t(d_t + λ_t θ_t)``, i.e. a per-step
  decay ``η_t λ_t``. :func:`decoupled_weight_decay` adds ``λ_t θ_t`` to the update; put it before
  ``optax.scale_by_learning_rate`` exactly like ``optax.add_decayed_weights``.
* Loshchilov & Hutter, *Decoupled Weight Decay Regularization* (arXiv 1711.05101), Algorithm 2:
  ``θ_t = θ_{t−1} − η_t(α·μ̂_t/(√ν̂_t + ε) + λθ_{t−1})`` with base rate ``α`` and schedule
  multiplier ``η_t``: the decay is scaled by ``η_t`` only, not by ``α``
  (:func:`adamw_paper`). ``optax.adamw(α·η_t, weight_decay=λ/α)`` is the same rule.

Switching decay off (Jacobs, Zhou, Burkholz, *Mirror, Mirror of the Flow: How Does
Regularization Shape Implicit Bias?*, arXiv 2504.12883; :doc:`/methods/weight_decay`): the paper
proposes to stop weight decay during training; its shape and timing are not public.
:func:`decay_switch_off` builds ``λ(t) = λ·clip((t_end − t)/(t_end − t_off), 0, 1)`` (linear), its
cosine variant, or the
hard step ``λ·1[t < t_off]``; the proposed default is a hard switch-off at ``t_off = 0.5·T``.

Library decisions: the decay rate is a ``ScalarOrSchedule`` evaluated on a count kept in the
state (always present, so the state does not change shape with the argument's type); ``where``
selects the decayed leaves and defaults to every leaf, as ``optax.adamw``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_sparse import _eligibility, _hyperparams, _nonfinite

__all__ = [
    "DecoupledWeightDecayState",
    "PaperAdamWState",
    "adamw_paper",
    "decay_switch_off",
    "decoupled_weight_decay",
]

_RAMPS = ("linear", "cosine")


class DecoupledWeightDecayState(NamedTuple):
  """State of :func:`decoupled_weight_decay`: the int32 step count for the schedule."""

  count: jnp.ndarray


def _is_literal_zero(value) -> bool:
  return isinstance(value, (int, float)) and value == 0


def _decayed_leaves(where: _eligibility.Where, params):
  if where is None:
    return jax.tree.map(lambda _: True, params)
  return _eligibility.eligible_tree(where, params)


def decoupled_weight_decay(
    weight_decay: optax.ScalarOrSchedule,
    *,
    where: _eligibility.Where = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Adds ``λ_t·θ`` to the update, with ``λ_t`` a number or a schedule of the step count.

  .. math::

    u \leftarrow u + \lambda_t\,\theta

  Stand it before ``optax.scale_by_learning_rate`` in a chain (optax's lr-coupled convention:
  the per-step decay is ``η_t λ_t``).

  Args:
    weight_decay: ``λ_t >= 0``, a number or a schedule (e.g. :func:`decay_switch_off`). With a
      literal 0 the transform also works without ``params``.
    where: decayed leaves: ``None`` (every leaf), a predicate or a static pytree of bools.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state :class:`DecoupledWeightDecayState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_sparse as osp
    >>> wd = osp.decay_switch_off(0.1, off_step=1)
    >>> tx = optax.chain(osp.decoupled_weight_decay(wd), optax.scale_by_learning_rate(1.0))
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> tx.update(jnp.zeros(2), state, params)[0]
    Array([-0.1,  0.2], dtype=float32)

  References:
    Loshchilov, Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.
  """
  return _decoupled_weight_decay(weight_decay, where, check=True)


def _decoupled_weight_decay(weight_decay, where, *, check: bool):
  """:func:`decoupled_weight_decay`; ``check=False`` inside a guard that already applies the
  non-finite policy (its skipped leaves arrive as zeros and leave as zeros)."""
  _hyperparams.check_scalar("weight_decay", weight_decay, low=0.0)
  _eligibility.check_where("where", where)

  def init_fn(params):
    del params
    return DecoupledWeightDecayState(jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      if _is_literal_zero(weight_decay):
        return updates, DecoupledWeightDecayState(optax.safe_increment(state.count))
      raise ValueError(optax._src.base.NO_PARAMS_MSG)
    wd = _hyperparams.evaluate(weight_decay, state.count)
    decayed = _decayed_leaves(where, params)

    def leaf(u, p, on):
      if u is None:
        return u
      # Non-finite policy (docs/nonfinite.md): a leaf whose update or parameter is not finite
      # emits 0 (stateless: the optimizer around it counts the skip).
      ok = (_nonfinite.finite(u) & _nonfinite.finite(p)) if check else True
      if not on:
        return jnp.where(ok, u, jnp.zeros_like(u))
      new = u.astype(jnp.float32) + wd * p.astype(jnp.float32)
      return jnp.where(ok, new, 0.0).astype(u.dtype)

    new = jax.tree.map(leaf, updates, params, decayed, is_leaf=lambda v: v is None)
    return new, DecoupledWeightDecayState(optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class PaperAdamWState(NamedTuple):
  """State of the paper-form scaling in :func:`adamw_paper`: the int32 count of the multiplier."""

  count: jnp.ndarray


def _scale_by_paper_decay(
    learning_rate: float,
    multiplier: optax.ScalarOrSchedule,
    weight_decay: optax.ScalarOrSchedule,
    where: _eligibility.Where,
) -> optax.GradientTransformationExtraArgs:
  """``d ↦ −η_t(α·d + λθ)``: the last stage of :func:`adamw_paper`."""

  def init_fn(params):
    del params
    return PaperAdamWState(jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(optax._src.base.NO_PARAMS_MSG)
    eta = _hyperparams.evaluate(multiplier, state.count)
    alpha = jnp.asarray(learning_rate, jnp.float32)
    wd = _hyperparams.evaluate(weight_decay, state.count)
    decayed = _decayed_leaves(where, params)

    def leaf(d, p, on):
      if d is None:
        return None
      step = alpha * d.astype(jnp.float32)
      if on:
        step = step + wd * p.astype(jnp.float32)
      return (-eta * step).astype(d.dtype)

    new = jax.tree.map(leaf, updates, params, decayed, is_leaf=lambda v: v is None)
    return new, PaperAdamWState(optax.safe_increment(state.count))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def adamw_paper(
    learning_rate: float = 1e-3,
    weight_decay: optax.ScalarOrSchedule = 1e-4,
    *,
    multiplier: optax.ScalarOrSchedule = 1.0,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    where: _eligibility.Where = None,
) -> optax.GradientTransformationExtraArgs:
  r"""AdamW in the form of the paper: the decay is scaled by the schedule multiplier only.

  .. math::

    \theta_t = \theta_{t-1} - \eta_t\Big(\alpha\,\frac{\hat m_t}{\sqrt{\hat v_t} + \epsilon}
    + \lambda\,\theta_{t-1}\Big)

  Equivalent to ``optax.adamw(α·η_t, weight_decay=λ/α)``; with the paper's form the best ``λ``
  does not move when ``α`` is swept.

  Args:
    learning_rate: the base rate ``α > 0`` (a number; schedules go into ``multiplier``).
    weight_decay: ``λ >= 0`` (a number or a schedule), not multiplied by ``α``.
    multiplier: the schedule multiplier ``η_t`` (a number or a schedule, usually in [0, 1]).
    b1: Adam's first-moment decay.
    b2: Adam's second-moment decay.
    eps: Adam's ``ε``, added to the root of the second moment.
    where: decayed leaves (default: every leaf).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> tx = osp.adamw_paper(1e-3, weight_decay=0.5)
    >>> params = jnp.array([2.0])
    >>> tx.update(jnp.array([1.0]), tx.init(params), params)[0]
    Array([-1.001], dtype=float32)

  References:
    Loshchilov, Hutter, `Decoupled Weight Decay Regularization
    <https://arxiv.org/abs/1711.05101>`_, ICLR 2019.
  """
  _hyperparams.check_scalar("learning_rate", learning_rate, low=0.0, low_open=True,
                            allow_schedule=False)
  _hyperparams.check_scalar("weight_decay", weight_decay, low=0.0)
  _hyperparams.check_scalar("multiplier", multiplier, low=0.0)
  _hyperparams.check_scalar("b1", b1, low=0.0, high=1.0, high_open=True, allow_schedule=False)
  _hyperparams.check_scalar("b2", b2, low=0.0, high=1.0, high_open=True, allow_schedule=False)
  _hyperparams.check_scalar("eps", eps, low=0.0, allow_schedule=False)
  _eligibility.check_where("where", where)
  # The guard holds the non-finite policy for the Adam moments and counts the skips.
  return _nonfinite.guarded(optax.chain(
      optax.scale_by_adam(b1=b1, b2=b2, eps=eps),
      _scale_by_paper_decay(learning_rate, multiplier, weight_decay, where),
  ))


def decay_switch_off(
    weight_decay: float,
    off_step: int,
    *,
    ramp_steps: int = 0,
    ramp: str = "linear",
) -> optax.Schedule:
  r"""A weight-decay schedule that is ``λ`` until ``off_step``, then ramps down to 0.

  .. math::

    \lambda(t) = \lambda\cdot r\big(\mathrm{clip}((t - t_{off}) / n_{ramp}, 0, 1)\big),
    \qquad r(s) = 1 - s \;\text{(linear)} \;|\; (1 + \cos\pi s)/2 \;\text{(cosine)}

  With ``ramp_steps=0`` the switch is hard: ``λ(t) = λ·1[t < t_off]``. The paper's proposal is
  to switch decay off during training; its shape and timing are not public, the proposed
  default is a hard switch at half of training (``off_step = T // 2``).

  Args:
    weight_decay: ``λ >= 0`` before the switch.
    off_step: the step ``t_off >= 0`` at which the decay starts to fall.
    ramp_steps: length of the ramp (``>= 0``; 0 is a hard switch).
    ramp: ``"linear"`` or ``"cosine"``.

  Returns:
    An ``optax.Schedule``.

  Examples:
    >>> import optax_sparse as osp
    >>> sched = osp.decay_switch_off(0.1, off_step=10, ramp_steps=4)
    >>> [round(float(sched(t)), 3) for t in (0, 10, 12, 14)]
    [0.1, 0.1, 0.05, 0.0]

  References:
    Jacobs, Zhou, Burkholz, `Mirror, Mirror of the Flow: How Does Regularization Shape Implicit
    Bias? <https://arxiv.org/abs/2504.12883>`_, ICML 2025.
  """
  _hyperparams.check_scalar("weight_decay", weight_decay, low=0.0, allow_schedule=False)
  _hyperparams.check_scalar("off_step", off_step, low=0.0, allow_schedule=False)
  _hyperparams.check_scalar("ramp_steps", ramp_steps, low=0.0, allow_schedule=False)
  if ramp not in _RAMPS:
    raise ValueError(f"ramp must be one of {_RAMPS}; got {ramp!r}.")
  # weight_decay stays un-converted: inside optax.inject_hyperparams it is a traced value.
  lam, t_off, n = weight_decay, float(off_step), float(ramp_steps)

  def schedule(count):
    t = jnp.asarray(count, jnp.float32)
    if n == 0:
      return jnp.where(t < t_off, jnp.asarray(lam, jnp.float32), 0.0)
    s = jnp.clip((t - t_off) / n, 0.0, 1.0)
    r = 1.0 - s if ramp == "linear" else 0.5 * (1.0 + jnp.cos(jnp.pi * s))
    return jnp.asarray(lam, jnp.float32) * r

  return schedule
