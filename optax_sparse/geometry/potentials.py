"""Separable mirror potentials for :func:`optax_sparse.mirror_descent`.

A potential ``φ`` (per coordinate) gives the mirror map ``∇φ`` and its inverse; a mirror step is
``θ' = (∇φ)⁻¹(∇φ(θ) − δ)`` with the dual step ``δ = η_t x_t`` (see :doc:`/methods/mirror_descent`):

=======================  ===========================  ==============================  ==========
potential                ∇φ(θ)                        (∇φ)⁻¹(z)                       P = 1/φ''
=======================  ===========================  ==============================  ==========
quadratic                θ                            z                               1
hyperbolic entropy (a)   arcsinh(θ/a)                 a·sinh(z)                       √(θ²+a²)
  normalized (a·φ)       a·arcsinh(θ/a)               a·sinh(z/a)                     √(1+θ²/a²)
HAM-log (α)              sign(θ)·log1p(α|θ|)/α        sign(z)·expm1(α|z|)/α           1+α|θ|
entropy (θ > 0)          log θ                        exp(z)                          θ
power (m ∈ [0, 1))       sign(θ)|θ|^{1−m}/(1−m)       sign(z)((1−m)|z|)^{1/(1−m)}     |θ|^m
=======================  ===========================  ==============================  ==========

Numerics and library decisions:

* The dual step is clamped to [−5, 5] in log/arcsinh units (HAM's budget): ``δ = ηx``
  (hyperbolic entropy, entropy), ``ηx/a`` (normalized hyperbolic entropy), ``αηx`` (HAM-log).
  The quadratic potential is not clamped (mirror descent with it is SGD exactly) and neither is
  the power potential, whose dual is not in log units.
* Hyperbolic entropy uses the overflow-free form ``θ' = θ·cosh δ − hypot(θ, a)·sinh δ`` (from
  ``sinh(A − B)``): no arcsinh/sinh round trip, no overflow for large ``θ``. Where ``θ·δ > 0``
  (a step towards zero) its terms cancel, so there the equal form
  ``(θ − a sinh δ)(θ + a sinh δ)/(θ cosh δ + hypot(θ, a) sinh δ)`` is used.
* HAM-log uses ``log1p``/``expm1``, switching to ``log α + log|θ|`` and ``exp(|w| − log α)``
  where ``α|θ|`` or ``expm1`` would overflow; all maps are computed in float32.
* Time-dependent scale (PILoT, Mask in the Mirror): ``hyperbolic_entropy`` accepts a schedule for
  ``scale``; it is evaluated once per step, at the step's count, and used for both the forward
  and the inverse map of that step (a choice of ours: the scheme
  ``∇φ_{t+1}(θ_{t+1}) = ∇φ_t(θ_t) − δ`` would add a pure rescaling between steps; we leave that to
  an explicit decay transform).
* Entropy lives on the positive orthant. Values cannot be checked at trace time, so the step
  keeps every entry ``<= 0`` unchanged (no NaN, no sign flip); its maps return NaN outside the
  domain, as ``log`` does. Use ``hyperbolic_entropy`` for signed parameters (its ``a → 0`` limit
  is EG±).
* Default scale for the normalized hyperbolic entropy: ``a = 5e-3`` (≈ 1/α for HAM's α = 200);
  Sign-In / PILoT's γ = 1 corresponds to ``a = 0.5``, nearly Euclidean for typical weights.

References:
  Ghai, Hazan, Singer, *Exponentiated Gradient Meets Gradient Descent*, arXiv 1902.01903.
  Jacobs, Burkholz et al., *Mask in the Mirror: Implicit Sparsification*, arXiv 2408.09966.
  Jacobs, Zhou, Burkholz, *Never Saddle for Reparameterized Steepest Descent as Mirror Flow*,
  arXiv 2603.02064.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
import optax

from optax_sparse import _hyperparams

__all__ = [
    "Potential",
    "entropy",
    "ham_log",
    "hyperbolic_entropy",
    "power",
    "quadratic",
]

DUAL_CLIP = 5.0
_BIG = 1e30

Array = jnp.ndarray


class Potential(NamedTuple):
  """A separable mirror potential.

  Attributes:
    name: a short name, for messages and reprs.
    mirror_map: ``(theta, count) -> ∇φ(theta)`` in float32.
    inverse_map: ``(z, count) -> (∇φ)⁻¹(z)`` in float32.
    step: ``(theta, x, lr, count) -> theta'``, the mirror step ``(∇φ)⁻¹(∇φ(θ) − lr·x)`` with the
      potential's dual clamp and numerically safe form, in float32.
    euclidean: whether the potential is ``θ²/2``, so that mirror descent emits ``−η·x`` exactly.
  """

  name: str
  mirror_map: Callable[[Array, Array], Array]
  inverse_map: Callable[[Array, Array], Array]
  step: Callable[[Array, Array, Array, Array], Array]
  euclidean: bool = False


def _clip(d: Array) -> Array:
  return jnp.clip(d, -DUAL_CLIP, DUAL_CLIP)


def _hypentropy_step(theta: Array, d: Array, a: Array) -> Array:
  """``a·sinh(arcsinh(θ/a) − d)`` without overflow and without cancellation.

  ``θ cosh d − r sinh d`` with ``r = hypot(θ, a)`` never overflows for representable results;
  when ``θ·d > 0`` (a step towards zero) its two terms cancel, so there we use the equal form
  ``(θ − a sinh d)·(θ + a sinh d)/(θ cosh d + r sinh d)``, whose denominator adds terms of one
  sign (``r² − θ² = a²``).
  """
  c, s = jnp.cosh(d), jnp.sinh(d)
  r = jnp.hypot(theta, a)
  direct = theta * c - r * s
  a_s = a * s
  denom = theta * c + r * s
  safe = jnp.where(denom == 0, 1.0, denom)
  towards_zero = (theta - a_s) * ((theta + a_s) / safe)
  return jnp.where(theta * d > 0, towards_zero, direct)


def _log(a: float | Array) -> float | Array:
  """``log`` of a Python number in float64, of a traced value (inject_hyperparams) in jnp."""
  return math.log(a) if isinstance(a, float) else jnp.log(a)


def _as_static_or_traced(value: float | Array) -> float | Array:
  """A Python float for a number, the array itself for a traced hyperparameter."""
  try:
    return float(value)
  except Exception:  # noqa: BLE001 - a tracer (optax.inject_hyperparams under jit).
    return value


def _log1p_abs(alpha: float, v: Array) -> Array:
  """``log1p(α|v|)`` that stays finite when ``α|v|`` overflows float32."""
  av = jnp.abs(v)
  big = av > _BIG / alpha
  return jnp.where(big, _log(alpha) + jnp.log(jnp.where(big, av, 1.0)),
                   jnp.log1p(alpha * jnp.where(big, 0.0, av)))


def _expm1_over_alpha(alpha: float, w: Array) -> Array:
  """``expm1(|w|)/α`` that stays finite while the result is representable."""
  aw = jnp.abs(w)
  big = aw > 80.0
  return jnp.where(big, jnp.exp(jnp.where(big, aw, 0.0) - _log(alpha)),
                   jnp.expm1(jnp.where(big, 0.0, aw)) / alpha)


def quadratic() -> Potential:
  """The Euclidean potential ``θ²/2``: mirror descent with it is SGD exactly.

  Examples:
    >>> import optax_sparse as osp
    >>> osp.potentials.quadratic().name
    'quadratic'
  """

  def step(theta, x, lr, count):
    del count
    return theta - lr * x

  return Potential(
      "quadratic",
      lambda theta, count: theta,
      lambda z, count: z,
      step,
      euclidean=True,
  )


def hyperbolic_entropy(
    scale: optax.ScalarOrSchedule, *, normalized: bool = False
) -> Potential:
  r"""Hyperbolic entropy (hypentropy) ``φ_a(θ) = θ·arcsinh(θ/a) − √(θ² + a²)``.

  .. math::

    \nabla\phi(\theta) = \mathrm{arcsinh}(\theta/a), \qquad
    \theta' = \theta\cosh\delta - \sqrt{\theta^2 + a^2}\,\sinh\delta, \quad
    \delta = \mathrm{clip}(\eta x, -5, 5)

  With ``normalized=True`` the potential is ``a·φ_a`` (``P(0) = 1``, learning rates comparable
  to SGD and HAM with ``α ≈ 1/a``) and ``δ = clip(ηx/a, −5, 5)``.

  Args:
    scale: ``a > 0``, a number or a schedule of the step count (PILoT's time-dependent
      potential; each step evaluates it once). The proposed default for the normalized form is
      ``5e-3``.
    normalized: use ``a·φ_a``.

  Returns:
    A :class:`Potential`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> pot = osp.potentials.hyperbolic_entropy(0.5)
    >>> pot.inverse_map(pot.mirror_map(jnp.array([0.0, 2.0]), 0), 0).round(4)
    Array([0., 2.], dtype=float32)

  References:
    Ghai, Hazan, Singer, `Exponentiated Gradient Meets Gradient Descent
    <https://arxiv.org/abs/1902.01903>`_, 2019.
  """
  _hyperparams.check_scalar("scale", scale, low=0.0, low_open=True)

  def a_at(count):
    return _hyperparams.evaluate(scale, count)

  def mirror_map(theta, count):
    a = a_at(count)
    z = jnp.arcsinh(theta / a)
    return a * z if normalized else z

  def inverse_map(z, count):
    a = a_at(count)
    return a * jnp.sinh(z / a if normalized else z)

  def step(theta, x, lr, count):
    a = a_at(count)
    d = _clip(lr * x / a if normalized else lr * x)
    return _hypentropy_step(theta, d, a)

  name = "normalized_hyperbolic_entropy" if normalized else "hyperbolic_entropy"
  return Potential(name, mirror_map, inverse_map, step)


def ham_log(alpha: float = 200.0) -> Potential:
  r"""The potential of HAM's metric: ``φ(θ) = [(1+α|θ|)·ln(1+α|θ|) − α|θ|]/α²``.

  .. math::

    \nabla\phi(\theta) = \mathrm{sign}(\theta)\,\frac{\log(1+\alpha|\theta|)}{\alpha},\qquad
    (\nabla\phi)^{-1}(z) = \mathrm{sign}(z)\,\frac{\exp(\alpha|z|) - 1}{\alpha}

  Inverse metric ``1 + α|θ|``: to first order, HAM's per-weight learning rate (derivation,
  :doc:`/methods/ham`). The dual step is clamped in log units, ``clip(αηx, −5, 5)``.

  Args:
    alpha: ``α > 0``.

  Returns:
    A :class:`Potential`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> pot = osp.potentials.ham_log(2.0)
    >>> pot.inverse_map(pot.mirror_map(jnp.array([-1.0, 0.0]), 0), 0)
    Array([-1.,  0.], dtype=float32)

  References:
    Jacobs, Gadhikar, Rubio-Madrigal, Burkholz, `Hyperbolic Aware Minimization: Implicit Bias
    for Sparsity <https://arxiv.org/abs/2506.02630>`_, ICLR 2026.
  """
  _hyperparams.check_scalar("alpha", alpha, low=0.0, low_open=True, allow_schedule=False)

  alpha = _as_static_or_traced(alpha)

  def mirror_map(theta, count):
    del count
    return jnp.sign(theta) * _log1p_abs(alpha, theta) / alpha

  def inverse_map(z, count):
    del count
    return jnp.sign(z) * _expm1_over_alpha(alpha, alpha * z)

  def step(theta, x, lr, count):
    del count
    # Dual coordinate in log units: w = α·∇φ(θ) = sign(θ)·log1p(α|θ|).
    w = jnp.sign(theta) * _log1p_abs(alpha, theta) - _clip(alpha * lr * x)
    return jnp.sign(w) * _expm1_over_alpha(alpha, w)

  return Potential("ham_log", mirror_map, inverse_map, step)


def entropy() -> Potential:
  r"""The entropic potential ``θ log θ − θ`` on the positive orthant (exponentiated gradient).

  .. math::

    \nabla\phi(\theta) = \log\theta,\qquad \theta' = \theta\exp(-\mathrm{clip}(\eta x, -5, 5))

  Entries ``<= 0`` are outside the domain: the step keeps them unchanged (values cannot be
  checked at trace time); the maps return NaN there, like ``log``.

  Returns:
    A :class:`Potential`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> pot = osp.potentials.entropy()
    >>> pot.step(jnp.array([1.0, -1.0]), jnp.array([1.0, 1.0]), 0.5, 0)
    Array([ 0.60653067, -1.        ], dtype=float32)

  References:
    Jacobs, Zhou, Burkholz, `Never Saddle for Reparameterized Steepest Descent as Mirror Flow
    <https://arxiv.org/abs/2603.02064>`_, ICLR 2026.
  """

  def step(theta, x, lr, count):
    del count
    return jnp.where(theta > 0, theta * jnp.exp(-_clip(lr * x)), theta)

  return Potential(
      "entropy",
      lambda theta, count: jnp.log(theta),
      lambda z, count: jnp.exp(z),
      step,
  )


def power(metric_exponent: float) -> Potential:
  r"""The power potential ``|θ|^{2−m}/((1−m)(2−m))`` with inverse metric ``|θ|^m``.

  .. math::

    \nabla\phi(\theta) = \mathrm{sign}(\theta)\frac{|\theta|^{1-m}}{1-m},\qquad
    (\nabla\phi)^{-1}(z) = \mathrm{sign}(z)\,((1-m)|z|)^{1/(1-m)}

  ``m = 0`` is the quadratic potential; ``m → 1`` approaches the entropic one. From deep
  diagonal networks trained by q-steepest descent, ``m = q(L−1)/L``
  (:doc:`/methods/steepest_descent`). The dual step is not clamped (it is not in log units). Both
  maps are bijections of ℝ.

  Args:
    metric_exponent: ``m`` in ``[0, 1)``, the exponent of the inverse metric ``|θ|^m``.

  Returns:
    A :class:`Potential`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> pot = osp.potentials.power(0.5)
    >>> pot.mirror_map(jnp.array([4.0, -1.0]), 0)
    Array([ 4., -2.], dtype=float32)

  References:
    Jacobs, Zhou, Burkholz, `Never Saddle for Reparameterized Steepest Descent as Mirror Flow
    <https://arxiv.org/abs/2603.02064>`_, ICLR 2026.
  """
  _hyperparams.check_scalar(
      "metric_exponent", metric_exponent, low=0.0, high=1.0, high_open=True,
      allow_schedule=False)
  m = _as_static_or_traced(metric_exponent)
  k = 1.0 - m

  def mirror_map(theta, count):
    del count
    return jnp.sign(theta) * jnp.abs(theta) ** k / k

  def inverse_map(z, count):
    del count
    return jnp.sign(z) * (k * jnp.abs(z)) ** (1.0 / k)

  def step(theta, x, lr, count):
    return inverse_map(mirror_map(theta, count) - lr * x, count)

  return Potential("power", mirror_map, inverse_map, step)
