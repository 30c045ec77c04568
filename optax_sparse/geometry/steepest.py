"""Steepest descent in the L_p geometry, from sign descent (q = 1) to gradient descent (q = 2).

Jacobs, Zhou, Burkholz, *Never Saddle for Reparameterized Steepest Descent as Mirror Flow*
(arXiv 2603.02064, ICLR 2026). With ``1/p + 1/q = 1`` and ``q ∈ [1, 2]`` the elementwise flow is
``dx = −sign(∇f)⊙|∇f|^{q−1} dt``; its discrete form with decoupled, lr-coupled weight decay
(our derivation, see :doc:`/methods/steepest_descent`) is::

    u_t = −η_t (sign(g_t)⊙|g_t|^{q−1} · N_q(g_t) + λ θ_t)

Library decisions (the paper defines a flow, not an optimizer):

* *Norm factor.* ``N_q = 1`` by default (elementwise, the flow of the paper).
  ``normalization="per_leaf"`` or ``"global"`` uses the classical ℓ_p steepest-descent step,
  ``N_q = ‖g‖_q^{2−q}`` over each leaf or over the whole tree (for ``q = 2`` it is 1).
* ``q = 1`` uses ``sign(g)`` exactly (no ``0⁰``); ``q = 2`` is the gradient itself, so
  ``steepest_descent(lr, 2.0)`` is ``optax.sgd(lr)``. ``q`` outside ``[1, 2]`` raises.
* Maths in float32, results cast back to the input dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from optax_sparse import _eligibility, _hyperparams, _nonfinite
from optax_sparse.geometry.decay import _decoupled_weight_decay

__all__ = ["scale_by_steepest", "steepest_descent"]

_NORMALIZATIONS = ("none", "per_leaf", "global")


def _is_static(q) -> bool:
  return isinstance(q, float)


def _direction(g: jnp.ndarray, q) -> jnp.ndarray:
  if _is_static(q) and q == 1.0:
    return jnp.sign(g)
  if _is_static(q) and q == 2.0:
    return g
  # A traced q (optax.inject_hyperparams) takes this form for every q in [1, 2]; at q = 1 it is
  # sign(g) (|0|^0 = 1 times sign(0) = 0) and at q = 2 it is g.
  return jnp.sign(g) * jnp.abs(g) ** (q - 1.0)


def _q_norm_sum(g: jnp.ndarray, q: float) -> jnp.ndarray:
  return jnp.sum(jnp.abs(g) ** q)


def scale_by_steepest(q: float, *, normalization: str = "none") -> optax.GradientTransformation:
  r"""Rescales updates to the L_p steepest-descent direction ``sign(g)⊙|g|^{q−1}``.

  .. math::

    d = \mathrm{sign}(g) \odot |g|^{q-1} \cdot N_q(g), \qquad
    N_q = 1 \;|\; \|g\|_q^{2-q}

  Args:
    q: the dual exponent in ``[1, 2]`` (1: sign descent, 2: gradient descent).
    normalization: ``"none"`` (elementwise, default), ``"per_leaf"`` or ``"global"``.

  Returns:
    A stateless ``optax.GradientTransformation``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> tx = osp.scale_by_steepest(1.5)
    >>> tx.update(jnp.array([4.0, -1.0, 0.0]), tx.init(None))[0]
    Array([ 2., -1.,  0.], dtype=float32)

  References:
    Jacobs, Zhou, Burkholz, `Never Saddle for Reparameterized Steepest Descent as Mirror Flow
    <https://arxiv.org/abs/2603.02064>`_, ICLR 2026.
  """
  return _scale_by_steepest(q, normalization, check=True)


def _scale_by_steepest(q, normalization: str, *, check: bool) -> optax.GradientTransformation:
  """:func:`scale_by_steepest`; ``check=False`` inside a guard that already applies the
  non-finite policy (its skipped leaves arrive as zeros and leave as zeros)."""
  _hyperparams.check_scalar("q", q, low=1.0, high=2.0, allow_schedule=False)
  if normalization not in _NORMALIZATIONS:
    raise ValueError(f"normalization must be one of {_NORMALIZATIONS}; got {normalization!r}.")
  try:
    q = float(q)
  except Exception:  # noqa: BLE001 - traced (optax.inject_hyperparams under jit): kept as is.
    pass
  is_two = _is_static(q) and q == 2.0

  def init_fn(params):
    del params
    return optax.EmptyState()

  def update_fn(updates, state, params=None):
    # Non-finite policy (docs/nonfinite.md): a leaf whose gradient (or parameter) is not finite
    # gets a zero direction and stays out of the global norm.
    if check:
      ok = _nonfinite.ok_tree(updates, params)
      g32 = jax.tree.map(
          lambda g, k: None if g is None else jnp.where(k, g.astype(jnp.float32), 0.0),
          updates, ok, is_leaf=lambda v: v is None)
    else:
      g32 = jax.tree.map(lambda g: None if g is None else g.astype(jnp.float32), updates,
                         is_leaf=lambda v: v is None)
    leaves = [g for g in jax.tree.leaves(g32)]
    if normalization == "global" and not is_two and leaves:
      total = sum(_q_norm_sum(g, q) for g in leaves)
      factor = total ** ((2.0 - q) / q)
    else:
      factor = None

    def leaf(g, u):
      if u is None:
        return None
      d = _direction(g, q)
      if normalization == "per_leaf" and not is_two:
        d = d * _q_norm_sum(g, q) ** ((2.0 - q) / q)
      elif factor is not None:
        d = d * factor
      return d.astype(u.dtype)

    return jax.tree.map(leaf, g32, updates, is_leaf=lambda v: v is None), state

  return optax.GradientTransformation(init_fn, update_fn)


def steepest_descent(
    learning_rate: optax.ScalarOrSchedule,
    q: float,
    *,
    weight_decay: optax.ScalarOrSchedule = 0.0,
    normalization: str = "none",
    decay_where: _eligibility.Where = None,
) -> optax.GradientTransformationExtraArgs:
  r"""L_p steepest descent with optional decoupled, lr-coupled weight decay.

  .. math::

    u_t = -\eta_t\,(\mathrm{sign}(g_t)\odot|g_t|^{q-1} + \lambda_t\,\theta_t)

  ``q = 1`` is ``optax.sign_sgd`` plus decay; ``q = 2`` is SGD. ``weight_decay`` may be a
  schedule (e.g. :func:`optax_sparse.decay_switch_off`).

  Args:
    learning_rate: ``η_t >= 0``, a number or a schedule.
    q: the dual exponent in ``[1, 2]``.
    weight_decay: ``λ >= 0``, a number or a schedule; 0 adds no decay.
    normalization: see :func:`scale_by_steepest`.
    decay_where: leaves that are decayed (default: every leaf, as ``optax.adamw``).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> tx = osp.steepest_descent(0.1, q=1.0)
    >>> params = jnp.array([1.0, 2.0])
    >>> tx.update(jnp.array([3.0, -0.5]), tx.init(params), params)[0]
    Array([-0.1,  0.1], dtype=float32)

  References:
    Jacobs, Zhou, Burkholz, `Never Saddle for Reparameterized Steepest Descent as Mirror Flow
    <https://arxiv.org/abs/2603.02064>`_, ICLR 2026.
  """
  _hyperparams.check_scalar("learning_rate", learning_rate, low=0.0)
  _hyperparams.check_scalar("weight_decay", weight_decay, low=0.0)
  # The decay stage is always present so that the state keeps one structure whatever the type
  # of weight_decay (optax.inject_hyperparams turns the default 0.0 into a traced value). The
  # guard counts the leaves skipped under the non-finite policy.
  return _nonfinite.guarded(optax.chain(
      # The guard zeros a skipped leaf's gradient and parameter before the chain and its
      # update after: the stages need not check again (one finiteness pass per step).
      _scale_by_steepest(q, normalization, check=False),
      _decoupled_weight_decay(weight_decay, decay_where, check=False),
      optax.scale_by_learning_rate(learning_rate),
  ))
