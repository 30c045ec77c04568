"""Choosing HAM's ``alpha``: per-layer diagnostics and a scale-aware suggestion.

HAM's hyperbolic step multiplies every eligible weight by ``exp(e)`` with the per-step exponent
``e = −η(α·sign(θ)·g + β)`` (clipped to ±5). To first order it is gradient descent with the
per-weight learning-rate multiplier ``1 + α|θ|`` plus a decay ``β``; that reading, and the
paper's continuous-time analysis, hold only while ``|e| ≪ 1``. The paper's defaults (α = 200)
belong to ImageNet ResNet-50, whose per-weight gradients are orders of magnitude smaller than
those of a small network, so the same α gives a tiny exponent there and an exponent of order
one on a small model, where one step can then multiply a weight by ``e^{±1}`` and training
collapses (measured in the guide, section "Choosing alpha").

:func:`ham_diagnostics` reports, per eligible leaf, the multiplier ``1 + α|θ|`` and the exponent
``|e|`` (median and maximum) and the fraction of entries at the clip. :func:`suggest_ham_alpha`
returns the α whose exponent has a chosen quantile equal to a target on one batch:

.. math::

  \\alpha = \\frac{e^\\ast}{\\eta\\, Q_q(|g|)}

over all eligible entries (library rule of thumb, not the paper's; its evidence is in the guide).
Because it divides by the gradient scale, the same target transfers across models and learning
rates, where a fixed α does not.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_sparse import _eligibility, _hyperparams
from optax_sparse.geometry.hyperbolic import EXPONENT_CLIP

__all__ = ["HamDiagnostics", "ham_diagnostics", "suggest_ham_alpha"]


class HamDiagnostics(NamedTuple):
  """What HAM's step does to one leaf (float32 scalars).

  Attributes:
    multiplier_median: median over entries of ``1 + α|θ|`` (the first-order lr multiplier).
    multiplier_max: its maximum.
    exponent_median: median of ``|η(α·sign(θ)·g + β)|``, the per-step log-change of a weight.
    exponent_max: its maximum (before the clip).
    clipped_fraction: fraction of entries whose exponent reaches the clip (±5).
  """

  multiplier_median: jax.Array
  multiplier_max: jax.Array
  exponent_median: jax.Array
  exponent_max: jax.Array
  clipped_fraction: jax.Array


def _check(learning_rate, alpha, beta, where):
  _hyperparams.check_scalar("learning_rate", learning_rate, low=0.0)
  _hyperparams.check_scalar("alpha", alpha, allow_schedule=False)
  _hyperparams.check_scalar("beta", beta, low=0.0, allow_schedule=False)
  _eligibility.check_where("where", where)


def ham_diagnostics(
    params: Any,
    grads: Any,
    learning_rate: optax.ScalarOrSchedule,
    alpha: float = 200.0,
    beta: float = 1e-3,
    *,
    step: int = 0,
    where: _eligibility.Where = None,
) -> Any:
  r"""Per-leaf multiplier ``1 + α|θ|`` and exponent ``|η(α sign(θ) g + β)|`` of HAM's step.

  .. math::

    m = 1 + \alpha|\theta|, \qquad e = \eta_t(\alpha\,\mathrm{sign}(\theta) \odot g + \beta)

  Keep ``exponent_max`` well below 1 (the step is then the small mirror step of the theory);
  ``clipped_fraction > 0`` means the clip at ±5 is doing the work.

  Args:
    params: the parameters ``θ``.
    grads: a raw gradient at ``θ`` (one minibatch), same structure.
    learning_rate: ``η``, a number or a schedule (evaluated at ``step``).
    alpha: ``α``.
    beta: ``β >= 0``.
    step: the step at which a schedule is evaluated.
    where: eligible leaves (default ``ndim >= 2``), as in :func:`optax_sparse.ham`.

  Returns:
    A pytree like ``params`` with a :class:`HamDiagnostics` per eligible leaf, None elsewhere.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> params = {"w": jnp.array([[0.1, -0.2]]), "b": jnp.zeros(2)}
    >>> grads = {"w": jnp.array([[0.01, 0.03]]), "b": jnp.ones(2)}
    >>> d = osp.ham_diagnostics(params, grads, learning_rate=0.1, alpha=200.0, beta=0.0)
    >>> float(d["w"].multiplier_max), round(float(d["w"].exponent_max), 4), d["b"]
    (41.0, 0.6, None)

  References:
    Jacobs, Gadhikar, Rubio-Madrigal, Burkholz, `Hyperbolic Aware Minimization: Implicit Bias
    for Sparsity <https://arxiv.org/abs/2506.02630>`_, ICLR 2026 (the step and its
    first-order view).
  """
  _check(learning_rate, alpha, beta, where)
  lr = _hyperparams.evaluate(learning_rate, jnp.asarray(step, jnp.int32))
  eligible = _eligibility.eligible_tree(where, params)

  def leaf(p, g, elig):
    if p is None or not elig:
      return None
    p32, g32 = jnp.asarray(p, jnp.float32), jnp.asarray(g, jnp.float32)
    mult = 1.0 + alpha * jnp.abs(p32)
    e = jnp.abs(lr * (alpha * jnp.sign(p32) * g32 + beta))
    return HamDiagnostics(jnp.median(mult), jnp.max(mult), jnp.median(e), jnp.max(e),
                          jnp.mean(e >= EXPONENT_CLIP))

  return jax.tree.map(leaf, params, grads, eligible, is_leaf=lambda x: x is None)


def suggest_ham_alpha(
    params: Any,
    grads: Any,
    learning_rate: optax.ScalarOrSchedule,
    *,
    target_exponent: float = 0.01,
    quantile: float = 0.99,
    step: int = 0,
    where: _eligibility.Where = None,
) -> float:
  r"""The ``α`` at which the ``quantile`` of HAM's per-step exponent equals ``target_exponent``.

  .. math::

    \alpha = e^\ast / (\eta_t\, Q_q(|g|)), \quad Q_q \text{ over all eligible entries}

  A library rule of thumb (measured in the guide, "Choosing alpha"), not the paper's: on the
  digits models of the reproductions, training collapsed once the 99th percentile of the
  exponent at initialization exceeded about 0.02 to 0.08, and the default target 0.01 stayed
  below it. Measure ``grads`` on an ordinary minibatch at the start of training.

  Args:
    params: the parameters (used for eligibility).
    grads: one raw minibatch gradient.
    learning_rate: ``η > 0`` (a schedule is evaluated at ``step``).
    target_exponent: ``e* > 0``, the per-step log-change allowed at the quantile.
    quantile: ``q`` in (0, 1].
    step: the step at which a schedule is evaluated.
    where: eligible leaves (default ``ndim >= 2``).

  Returns:
    ``α`` as a Python float.

  Raises:
    ValueError: a non-positive target, a quantile outside (0, 1], a zero learning rate or a zero
      gradient on every eligible entry.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> params = {"w": jnp.ones((2, 2))}
    >>> grads = {"w": jnp.full((2, 2), 0.02)}
    >>> osp.suggest_ham_alpha(params, grads, learning_rate=0.1)  # 0.01 / (0.1 * 0.02)
    5.0

  References:
    Jacobs, Gadhikar, Rubio-Madrigal, Burkholz, `Hyperbolic Aware Minimization: Implicit Bias
    for Sparsity <https://arxiv.org/abs/2506.02630>`_, ICLR 2026.
  """
  _check(learning_rate, 1.0, 0.0, where)
  _hyperparams.check_scalar("target_exponent", target_exponent, low=0.0, low_open=True,
                            allow_schedule=False)
  _hyperparams.check_scalar("quantile", quantile, low=0.0, high=1.0, low_open=True,
                            allow_schedule=False)
  lr = float(_hyperparams.evaluate(learning_rate, jnp.asarray(step, jnp.int32)))
  if lr <= 0.0:
    raise ValueError(f"learning_rate must be > 0 at step {step}; got {lr}.")
  eligible = _eligibility.eligible_tree(where, params)
  flat = [np.abs(np.asarray(g, np.float32)).ravel() for g, e in zip(
      jax.tree.leaves(grads, is_leaf=lambda x: x is None),
      jax.tree.leaves(eligible, is_leaf=lambda x: x is None), strict=True)
      if g is not None and e]
  if not flat:
    raise ValueError("grads has no eligible leaf (where selects none).")
  scale = float(np.quantile(np.concatenate(flat), quantile))
  if not scale > 0.0:
    raise ValueError(f"the {quantile} quantile of |grads| over eligible leaves is {scale}; "
                     "pass a non-zero minibatch gradient.")
  return round(float(target_exponent) / (lr * scale), 6)
