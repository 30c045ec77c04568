"""PILoT (Mask in the Mirror): m⊙w with an adaptive, then vanishing, decay on both factors.

Jacobs, Burkholz, *Mask in the Mirror: Implicit Sparsification* (arXiv 2408.09966, ICLR 2025).
Each eligible leaf is trained as ``theta = m * w`` (real factors) on ``f(m w) + lam_t/2 (|m|^2 +
|w|^2)``: with raw gradient ``g`` the base direction receives

    g_m = w * g + lam_t * m,        g_w = m * g + lam_t * w

(``lam`` is the per-factor decay *rate*, ``dm/dt = -w g - lam m``), the factors move by
``-eta_t * base(g_m, g_w)`` and the emitted update lands on the new product,
``u = m' w' - theta``. Init from the given parameters with ``m0**2 - w0**2 = beta``::

    m0 = sqrt((beta + sqrt(beta**2 + 4 theta0**2)) / 2),      w0 = theta0 / m0.

Mirror view (our derivation, :doc:`/methods/pilot`): the flow conserves ``u v`` up to decay, with
``u, v = (m +- w)/sqrt 2``; ``theta = (gamma_t / 2) sinh(psi)``, ``d psi/dt = -2 g``,
``gamma_t = beta exp(-2 int lam)``. This is mirror flow with the hyperbolic entropy of scale
``a_t = gamma_t / 2`` and ``grad phi_t = arcsinh(theta / a_t) / 2``, so that
``d theta/dt = -sqrt(4 theta**2 + gamma_t**2) g - 2 lam theta``. :func:`pilot_mirror` takes that
step directly: ``theta' = (a_{t+1}/a_t) * a_t sinh(arcsinh(theta/a_t) - 2 eta g)`` with
``a_{t+1} = a_t exp(-2 eta lam)``. (Written with ``u0, v0`` as ``a_t sinh(2z + log(u0/v0))``, the
scale is ``u0 v0 = beta / 2``, the same ``gamma / 2`` as above. The constant ``log(u0/v0)`` only
fixes the
origin of the dual variable and cancels in a step.)

Adaptive schedule (Algorithm 1) at each epoch boundary ``k`` (the step after which
``(count + 1) % steps_per_epoch == 0``)::

    if acc_k > best and ||m w||_1 >= K and k <= T/2:  lam <- delta * lam   else: lam <- lam / delta

Library decisions where the paper leaves a choice (see :doc:`/methods/pilot`):

* the training accuracy enters as the extra ``update`` argument ``train_accuracy`` (as
  ``optax.contrib.reduce_on_plateau`` takes ``value``): the accuracy of the epoch that ends with
  this step; it is read only at epoch boundaries. "Improved" is strictly greater than the best
  so far (initially ``-inf``). ``||m w||_1`` is summed over the reparameterized leaves;
* without ``train_accuracy`` (the argument absent) the deterministic fallback keeps ``lam``
  constant up to epoch ``T/2`` and divides it by ``delta`` at every later boundary;
* ``lambda_init = 1e-4``, ``delta = 1.1``, ``target_l1 = K = 0`` (floor off), ``beta = 1``;
* the base is a *direction* (no learning rate): default ``optax.trace(0.9)`` (SGD with momentum
  0.9, as in the paper's recipe), scaled by ``-learning_rate``; ``lam`` is coupled (added to the
  factor gradients before the momentum), as weight decay is in the paper's SGD;
* leaves that are not reparameterized (default: ``ndim < 2``) are trained by the same base
  directly on ``theta``, without decay; PILoT is a dense-to-sparse method and ignores ``masks``;
* factors are float32; a leaf whose new factors are not finite keeps them and emits zero.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax._src import base as optax_base

from optax_sparse import _eligibility, _nonfinite, _validation
from optax_sparse._hyperparams import check_scalar, evaluate
from optax_sparse.geometry import potentials
from optax_sparse.methods import _factors

__all__ = ["PilotMirrorState", "PilotSchedule", "PilotState", "pilot", "pilot_mirror"]


class PilotSchedule(NamedTuple):
  """The adaptive decay of Algorithm 1.

  Attributes:
    lam: float32, the per-factor decay rate used during the current epoch.
    best_accuracy: float32, the best training accuracy seen at an epoch boundary (``-inf``).
  """

  lam: jax.Array
  best_accuracy: jax.Array


class PilotState(NamedTuple):
  """State of :func:`pilot`: counter, factors (None off the reparameterized leaves), schedule.

  ``skipped_leaves`` counts the (leaf, step) pairs skipped under the non-finite policy
  (``docs/nonfinite.md``).
  """

  count: jax.Array
  m: Any
  w: Any
  base_state: Any
  schedule: PilotSchedule
  skipped_leaves: jax.Array


class PilotMirrorState(NamedTuple):
  """State of :func:`pilot_mirror`: counter, hypentropy scale ``a_t = gamma_t / 2``, schedule.

  ``skipped_leaves`` counts the (leaf, step) pairs skipped under the non-finite policy
  (``docs/nonfinite.md``).
  """

  count: jax.Array
  scale: jax.Array
  schedule: PilotSchedule
  skipped_leaves: jax.Array


def _check(beta, lambda_init, delta, target_l1, steps_per_epoch, total_epochs):
  check_scalar("beta", beta, low=0.0, low_open=True, allow_schedule=False)
  check_scalar("lambda_init", lambda_init, low=0.0, allow_schedule=False)
  check_scalar("delta", delta, low=1.0, allow_schedule=False)
  check_scalar("target_l1", target_l1, low=0.0, allow_schedule=False)
  for name, v in (("steps_per_epoch", steps_per_epoch), ("total_epochs", total_epochs)):
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
      raise ValueError(f"{name} must be a positive int; got {v!r}.")


def _init_schedule(lambda_init) -> PilotSchedule:
  return PilotSchedule(jnp.asarray(lambda_init, jnp.float32), jnp.asarray(-jnp.inf, jnp.float32))


def _next_schedule(sched, count, l1, accuracy, delta, target_l1, steps_per_epoch, total_epochs):
  """Algorithm 1's update of ``lam`` after the step ``count`` (a no-op inside an epoch)."""
  done = count + 1
  boundary = done % steps_per_epoch == 0
  epoch = (done // steps_per_epoch).astype(jnp.float32)
  first_half = epoch <= 0.5 * total_epochs
  if accuracy is None:
    grow, keep, best = jnp.zeros([], bool), first_half, sched.best_accuracy
  else:
    acc = jnp.asarray(accuracy, jnp.float32)
    grow = (acc > sched.best_accuracy) & (l1 >= target_l1) & first_half
    keep = jnp.zeros([], bool)
    best = jnp.where(boundary, jnp.maximum(sched.best_accuracy, acc), sched.best_accuracy)
  factor = jnp.where(grow, delta, jnp.where(keep, 1.0, 1.0 / delta))
  lam = jnp.where(boundary, sched.lam * factor, sched.lam)
  return PilotSchedule(lam.astype(jnp.float32), best.astype(jnp.float32))


def pilot(
    learning_rate: optax.ScalarOrSchedule,
    *,
    steps_per_epoch: int,
    total_epochs: int,
    beta: float = 1.0,
    lambda_init: float = 1e-4,
    delta: float = 1.1,
    target_l1: float = 0.0,
    base: optax.GradientTransformation | None = None,
    where: _eligibility.Where = None,
) -> optax.GradientTransformationExtraArgs:
  r"""PILoT: trains ``theta = m * w`` with an adaptive per-factor decay (Mask in the Mirror).

  .. math::
    (m, w) \leftarrow (m, w) - \eta_t\,\mathrm{base}(w \odot g + \lambda_t m,\;
    m \odot g + \lambda_t w), \qquad u = m \odot w - \theta,

  with :math:`m_0^2 - w_0^2 = \beta` and ``lambda_t`` adapted at epoch boundaries
  (Algorithm 1; see the module docstring). Pass the epoch's training accuracy as the extra
  argument ``train_accuracy=`` to ``update`` (only read at epoch boundaries); without it, ``lam``
  stays constant to ``T/2`` and then decays geometrically by ``delta`` per epoch.

  Args:
    learning_rate: ``eta_t`` (scalar or schedule).
    steps_per_epoch: optimizer steps per epoch (static), for the epoch boundaries.
    total_epochs: ``T``; ``lam`` may grow only while ``epoch <= T/2``.
    beta: ``m0**2 - w0**2`` (the paper's scaling, 1 in all experiments), ``> 0``.
    lambda_init: initial per-factor decay rate (``>= 0``).
    delta: multiplicative change of ``lam`` per epoch (``>= 1``).
    target_l1: ``K``: ``lam`` grows only while ``||m w||_1 >= K``.
    base: a direction for the factors without learning rate (default ``optax.trace(0.9)``:
      SGD with momentum 0.9); e.g. ``optax.identity()`` for plain gradient descent.
    where: which leaves are reparameterized: None (``ndim >= 2``), a predicate or a static
      pytree of bools.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state is a :class:`PilotState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> tx = osp.pilot(0.1, steps_per_epoch=2, total_epochs=4, lambda_init=0.1, delta=2.0)
    >>> params = {"w": jnp.array([[0.5, -1.0]])}
    >>> state = tx.init(params)
    >>> for _ in range(2):
    ...   updates, state = tx.update({"w": jnp.zeros((1, 2))}, state, params,
    ...                              train_accuracy=0.9)
    >>> state.schedule.lam  # the accuracy improved at the first epoch boundary: lam * delta
    Array(0.2, dtype=float32)

  References:
    Jacobs, Burkholz, `Mask in the Mirror: Implicit Sparsification
    <https://arxiv.org/abs/2408.09966>`_, ICLR 2025.
  """
  check_scalar("learning_rate", learning_rate)
  _check(beta, lambda_init, delta, target_l1, steps_per_epoch, total_epochs)
  if base is not None and not isinstance(base, optax.GradientTransformation):
    raise ValueError(f"base must be an optax.GradientTransformation or None; got {base!r}.")
  _eligibility.check_where("where", where)
  direction = optax.with_extra_args_support(
      optax.trace(decay=0.9) if base is None else base)

  def init_fn(params):
    _validation.check_float_params(params)
    flags = _eligibility.eligible_tree(where, params)
    m, w = _factors.init_factors(params, flags, beta)
    base_state = direction.init(_factors.base_tree(params, m, w))
    return PilotState(jnp.zeros([], jnp.int32), m, w, base_state, _init_schedule(lambda_init),
                      jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(optax_base.NO_PARAMS_MSG)
    _validation.check_grads(updates, params)
    accuracy = extra_args.pop("train_accuracy", None)
    extra_args.pop("masks", None)
    count = state.count
    lr = evaluate(learning_rate, count)
    scaled = _ScaledBase(direction, lr)
    new_updates, m, w, base_state, skipped = _factors.factor_step(
        updates, params, state.m, state.w, scaled, state.base_state, state.schedule.lam, beta,
        None, extra_args)
    l1 = _factors.l1_of_products(m, w)
    sched = _next_schedule(state.schedule, count, l1, accuracy, delta, target_l1,
                           steps_per_epoch, total_epochs)
    return new_updates, PilotState(optax.safe_increment(count), m, w, base_state, sched,
                                   state.skipped_leaves + skipped)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


class _ScaledBase(NamedTuple):
  """``-lr * direction``: the base step on the factor tree (update only)."""

  direction: optax.GradientTransformationExtraArgs
  lr: jax.Array

  def update(self, grads, state, params=None, **extra_args):
    d, state = self.direction.update(grads, state, params, **extra_args)
    return jax.tree.map(lambda x: -self.lr * x.astype(jnp.float32), d), state


def pilot_mirror(
    learning_rate: optax.ScalarOrSchedule,
    *,
    steps_per_epoch: int,
    total_epochs: int,
    beta: float = 1.0,
    lambda_init: float = 1e-4,
    delta: float = 1.1,
    target_l1: float = 0.0,
    where: _eligibility.Where = None,
) -> optax.GradientTransformationExtraArgs:
  r"""PILoT as mirror descent with the time-dependent hyperbolic entropy (Mask in the Mirror).

  .. math::
    \theta_{t+1} = \frac{a_{t+1}}{a_t}\, a_t \sinh\!\big(\mathrm{arcsinh}(\theta_t/a_t)
    - 2\eta_t g_t\big), \qquad a_{t+1} = a_t e^{-2\eta_t\lambda_t}, \quad a_0 = \beta/2,

  the step of the flow :math:`\dot\theta = -\sqrt{4\theta^2 + \gamma_t^2}\,g - 2\lambda\theta`
  that :func:`pilot` with ``base=optax.identity()`` discretizes on the factors (the two agree to
  first order in the learning rate). The inner step is
  ``osp.potentials.hyperbolic_entropy(a_t).step`` (dual step clamped to ``[-5, 5]``). The decay
  ``lambda_t`` follows the same Algorithm 1 as :func:`pilot` (``train_accuracy`` extra
  argument); other leaves take plain gradient steps.

  Args:
    learning_rate: ``eta_t`` (scalar or schedule).
    steps_per_epoch: optimizer steps per epoch (static).
    total_epochs: ``T``.
    beta: the initial ``gamma = m0**2 - w0**2``; the hypentropy scale starts at ``beta / 2``.
    lambda_init: initial per-factor decay rate.
    delta: multiplicative change of ``lam`` per epoch.
    target_l1: ``K`` (``||theta||_1`` over the mirror leaves).
    where: which leaves take the mirror step (default ``ndim >= 2``).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state is a :class:`PilotMirrorState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> tx = osp.pilot_mirror(0.01, steps_per_epoch=10, total_epochs=2, lambda_init=0.0)
    >>> params = {"w": jnp.array([[0.0, 1.5]])}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.ones((1, 2))}, state, params)
    >>> [round(float(u), 4) for u in updates["w"].ravel()]  # ~ -eta sqrt(4 theta^2 + 1) g
    [-0.01, -0.0313]

  References:
    Jacobs, Burkholz, `Mask in the Mirror: Implicit Sparsification
    <https://arxiv.org/abs/2408.09966>`_, ICLR 2025.
  """
  check_scalar("learning_rate", learning_rate)
  _check(beta, lambda_init, delta, target_l1, steps_per_epoch, total_epochs)
  _eligibility.check_where("where", where)

  def init_fn(params):
    _validation.check_float_params(params)
    return PilotMirrorState(jnp.zeros([], jnp.int32), jnp.asarray(0.5 * beta, jnp.float32),
                            _init_schedule(lambda_init), jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(optax_base.NO_PARAMS_MSG)
    _validation.check_grads(updates, params)
    accuracy = extra_args.get("train_accuracy")
    count = state.count
    lr = evaluate(learning_rate, count)
    a = state.scale
    shrink = jnp.exp(-2.0 * lr * state.schedule.lam)
    potential = potentials.hyperbolic_entropy(a)
    flags = _eligibility.eligible_tree(where, params)
    l1_terms = []

    skips = []

    def leaf(g, p, elig):
      if g is None or p is None:
        return None
      # Non-finite policy (docs/nonfinite.md): a leaf whose gradient or parameter is not
      # finite emits 0 and is counted.
      leaf_ok = _nonfinite.finite(g) & _nonfinite.finite(p)
      skips.append((~leaf_ok).astype(jnp.int32))
      g32 = jnp.where(leaf_ok, g.astype(jnp.float32), 0.0)
      if not elig:
        return jnp.where(leaf_ok, -lr * g32, 0.0).astype(p.dtype)
      theta = jnp.where(leaf_ok, p.astype(jnp.float32), 0.0)
      new = shrink * potential.step(theta, g32, 2.0 * lr, count)
      ok = leaf_ok & jnp.all(jnp.isfinite(new))
      new = jnp.where(ok, new, theta)
      l1_terms.append(jnp.sum(jnp.abs(new)))
      return (new - theta).astype(p.dtype)

    new_updates = jax.tree.map(leaf, updates, params, flags, is_leaf=lambda x: x is None)
    l1 = sum(l1_terms, jnp.zeros([], jnp.float32))
    sched = _next_schedule(state.schedule, count, l1, accuracy, delta, target_l1,
                           steps_per_epoch, total_epochs)
    return new_updates, PilotMirrorState(optax.safe_increment(count), a * shrink, sched,
                                         state.skipped_leaves + sum(skips, jnp.zeros([],
                                                                                  jnp.int32)))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
