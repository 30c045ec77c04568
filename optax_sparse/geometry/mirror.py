"""Mirror descent over a separable potential.

With a potential ``φ`` (see :mod:`optax_sparse.geometry.potentials`), learning rate ``η_t`` and
input ``x_t`` (see :doc:`/methods/mirror_descent`)::

    θ_{t+1} = (∇φ)⁻¹(∇φ(θ_t) − η_t x_t),        u_t = θ_{t+1} − θ_t

The input ``x_t`` is whatever reaches the transform: the raw gradient when it stands alone or
inside :func:`optax_sparse.compose`, or a base direction ``d_t`` when it follows e.g.
``optax.scale_by_adam()`` in ``optax.chain``.

Library decisions:

* The potential is a required argument (no paper fixes a default one).
* Leaves selected by ``where`` (default ``ndim >= 2``) take the mirror step; the other leaves
  (biases, norm scales) take a plain gradient step ``−η_t x_t`` (``other_leaves="sgd"``, the
  Euclidean potential) or are left alone (``other_leaves="keep"``, for use after a base
  optimizer inside ``compose``).
* Each potential carries its dual clamp and numerically safe form; maths in float32, results
  cast back. Non-finite values: a leaf whose input ``x`` has a NaN or an infinity keeps its
  value (the state counts such skips in ``skipped_leaves``); an entry whose result is not finite
  (an overflow, e.g. of the unclamped power potential) keeps its value.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_sparse import _eligibility, _hyperparams, _nonfinite, _validation
from optax_sparse.geometry.potentials import Potential

__all__ = ["MirrorDescentState", "mirror_descent"]

_OTHER_LEAVES = ("sgd", "keep")


class MirrorDescentState(NamedTuple):
  """State of :func:`mirror_descent`.

  Attributes:
    count: int32 step counter for the learning rate and time-dependent potentials.
    skipped_leaves: int32 number of (leaf, step) pairs skipped because of non-finite values.
  """

  count: jnp.ndarray
  skipped_leaves: jnp.ndarray


def mirror_descent(
    learning_rate: optax.ScalarOrSchedule,
    potential: Potential,
    *,
    where: _eligibility.Where = None,
    other_leaves: str = "sgd",
) -> optax.GradientTransformationExtraArgs:
  r"""Mirror descent: a step in the dual space of a separable potential.

  .. math::

    \theta_{t+1} = (\nabla\phi)^{-1}\big(\nabla\phi(\theta_t) - \eta_t x_t\big)

  Args:
    learning_rate: ``η_t >= 0``, a number or a schedule of the step count.
    potential: a :class:`~optax_sparse.geometry.potentials.Potential`, e.g.
      ``osp.potentials.hyperbolic_entropy(0.1)``.
    where: leaves that take the mirror step (default ``ndim >= 2``).
    other_leaves: ``"sgd"`` (plain gradient step on the other leaves) or ``"keep"``.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is :class:`MirrorDescentState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> tx = osp.mirror_descent(0.1, osp.potentials.ham_log(1.0))
    >>> params = {"w": jnp.array([[1.0, -1.0]])}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.array([[1.0, 1.0]])}, state, params)
    >>> updates["w"]
    Array([[-0.19032526, -0.21034193]], dtype=float32)

  References:
    Ghai, Hazan, Singer, `Exponentiated Gradient Meets Gradient Descent
    <https://arxiv.org/abs/1902.01903>`_, 2019.
    Jacobs, Montúfar, `Implicit Bias of Mirror Flow in Homogeneous Neural Networks: Sparse and
    Dense Feature Learning <https://arxiv.org/abs/2605.19458>`_, 2026.
  """
  _hyperparams.check_scalar("learning_rate", learning_rate, low=0.0)
  if not isinstance(potential, Potential):
    raise ValueError(
        f"potential must be an osp.potentials.Potential (e.g. osp.potentials.quadratic()); "
        f"got {potential!r}.")
  if other_leaves not in _OTHER_LEAVES:
    raise ValueError(f"other_leaves must be one of {_OTHER_LEAVES}; got {other_leaves!r}.")
  _eligibility.check_where("where", where)

  def init_fn(params):
    _validation.check_float_params(params)
    return MirrorDescentState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(optax._src.base.NO_PARAMS_MSG)
    _validation.check_grads(updates, params)
    raw = updates
    updates, params = _validation.to_none(updates), _validation.to_none(params)
    lr = _hyperparams.evaluate(learning_rate, state.count)
    eligible = _eligibility.eligible_tree(where, params)
    zero = jnp.zeros([], jnp.int32)

    def leaf(x, p, elig):
      if p is None:
        return None, zero
      # Non-finite policy (docs/nonfinite.md): a leaf whose input or parameter is not finite
      # emits exactly 0 and is counted; an entry whose result overflows keeps its value.
      ok = _nonfinite.finite(x) & _nonfinite.finite(p)
      skipped = (~ok).astype(jnp.int32)
      if not elig or potential.euclidean:
        if not elig and other_leaves == "keep":
          return jnp.zeros_like(p), skipped
        return jnp.where(ok, -lr * x.astype(jnp.float32), 0.0).astype(p.dtype), skipped
      theta = p.astype(jnp.float32)
      x32 = x.astype(jnp.float32)
      new = potential.step(theta, x32, lr, state.count)
      u = jnp.where(ok & jnp.isfinite(new), new - theta, 0.0)
      return u.astype(p.dtype), skipped

    # Flat lists, not a tree of pairs: the parameters may themselves be tuples.
    treedef = jax.tree.structure(params, is_leaf=lambda v: v is None)
    out = [leaf(x, p, e) for x, p, e in zip(
        treedef.flatten_up_to(updates), treedef.flatten_up_to(params),
        treedef.flatten_up_to(eligible), strict=True)]
    new_updates = _validation.like(raw, treedef.unflatten([u for u, _ in out]))
    skipped = sum((k for _, k in out), zero)
    return new_updates, MirrorDescentState(
        optax.safe_increment(state.count), state.skipped_leaves + skipped)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
