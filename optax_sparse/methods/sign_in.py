"""Sign-In: m⊙w reparameterized sparse training with periodic resets of the split.

Gadhikar, Jacobs, Zhou, Burkholz, *Sign-In to the Lottery: Reparameterized Sparse Training*
(arXiv 2504.12801, NeurIPS 2025). Each eligible leaf is trained as ``theta = m * w``: with raw
gradient ``g`` (masked by ``M`` when a mask is given) the base optimizer receives

    g_m = w * g,      g_w = m * g

and the emitted update lands the parameters on the new product, ``u = M * (m' w') - theta``.
The gradient flow conserves ``m**2 - w**2 = gamma``; then ``d theta/dt = -sqrt(4 theta**2 +
gamma**2) g``, whose preconditioner stays ``gamma`` at ``theta = 0`` so signs can flip. Weight
decay and SGD noise shrink ``gamma``; every ``reset_every`` steps Sign-In re-splits the current
parameters (``theta`` unchanged)::

    m = sqrt((gamma + sqrt(gamma**2 + 4 theta**2)) / 2),    w = theta / m.

Library decisions (the paper does not state them; see :doc:`/methods/sign_in`):

* the reset period is given in steps (the paper resets every epoch: pass steps per epoch);
* init is ``split(theta_0; gamma)``; the reset happens before the step whose count is a positive
  multiple of ``reset_every``; the base optimizer's moments are left untouched by a reset;
* eligible leaves: ``ndim >= 2`` by default (``where``); other leaves are trained by the base
  optimizer directly on ``theta``;
* the base optimizer's own weight decay applies to ``m`` and ``w`` (it is what shrinks
  ``gamma``);
* masks: the ``masks`` extra argument of :func:`optax_sparse.sparse` is read when present.
  Masked-out entries get a zero gradient, a zero update and factors ``split(0) = (sqrt(gamma),
  0)``, so a weight grown later (``theta = 0``) starts from ``m = sqrt(gamma)``, ``w = 0``;
* factors are float32; a leaf whose new factors are not finite keeps them and emits zero.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from optax._src import base as optax_base

from optax_sparse import _eligibility, _validation
from optax_sparse._hyperparams import check_scalar
from optax_sparse.methods import _factors

__all__ = ["SignInState", "count_sign_flips", "sign_in"]


class SignInState(NamedTuple):
  """State of :func:`sign_in`.

  Attributes:
    count: int32 step counter.
    m: float32 factors ``m`` (params structure, None on leaves that are not reparameterized).
    w: float32 factors ``w`` (same structure).
    base_state: the base optimizer's state over the factor tree ``(m or theta, w or None)``.
    skipped_leaves: int32 number of (leaf, step) pairs skipped under the non-finite policy
      (``docs/nonfinite.md``).
  """

  count: jax.Array
  m: Any
  w: Any
  base_state: Any
  skipped_leaves: jax.Array


def sign_in(
    base: optax.GradientTransformation,
    *,
    reset_every: int,
    gamma: float = 1.0,
    where: _eligibility.Where = None,
) -> optax.GradientTransformationExtraArgs:
  r"""Trains ``theta = m * w`` with ``base`` and re-splits ``(m, w)`` every ``reset_every`` steps.

  .. math::
    g_m = w \odot g,\quad g_w = m \odot g,\quad (m, w) \leftarrow \mathrm{base}(g_m, g_w),\quad
    u = M \odot (m \odot w) - \theta,

  and at every positive multiple of ``reset_every`` (before the step)
  :math:`m = \sqrt{(\gamma + \sqrt{\gamma^2 + 4\theta^2})/2}`, :math:`w = \theta / m`.

  Args:
    base: any optax transformation that emits full updates (with its learning rate), applied to
      the factors; e.g. ``optax.sgd(0.1, momentum=0.9)``.
    reset_every: steps between two resets of the split (one epoch in the paper).
    gamma: the split's ``m**2 - w**2`` (1 in the paper), ``> 0``.
    where: which leaves are reparameterized: None (``ndim >= 2``), a predicate ``(path, leaf)
      -> bool`` or a static pytree of bools.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state is a :class:`SignInState`. Extra
    arguments other than ``masks`` are forwarded to ``base``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_sparse as osp
    >>> tx = osp.sign_in(optax.sgd(0.1), reset_every=100)
    >>> params = {"w": jnp.array([[0.0, 1.5]])}
    >>> state = tx.init(params)
    >>> (state.m["w"] ** 2 - state.w["w"] ** 2).round(5)  # gamma
    Array([[1., 1.]], dtype=float32)
    >>> updates, state = tx.update({"w": jnp.array([[1.0, 1.0]])}, state, params)
    >>> [round(float(u), 3) for u in updates["w"].ravel()]  # -0.1 (m^2 + w^2) g + 0.01 theta g^2
    [-0.1, -0.301]

  References:
    Gadhikar, Jacobs, Zhou, Burkholz, `Sign-In to the Lottery: Reparameterized Sparse Training
    <https://arxiv.org/abs/2504.12801>`_, NeurIPS 2025.
  """
  _validation.check_transformation("base", base)
  _validation.check_int("reset_every", reset_every, low=1, allow_traced=True)
  check_scalar("gamma", gamma, low=0.0, low_open=True, allow_schedule=False)
  _eligibility.check_where("where", where)
  base = optax.with_extra_args_support(base)

  def init_fn(params):
    _validation.check_float_params(params)
    flags = _eligibility.eligible_tree(where, params)
    m, w = _factors.init_factors(params, flags, gamma)
    base_state = base.init(_factors.base_tree(params, m, w))
    return SignInState(jnp.zeros([], jnp.int32), m, w, base_state, jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(optax_base.NO_PARAMS_MSG)
    _validation.check_grads(updates, params)
    masks = extra_args.pop("masks", None)
    count = state.count
    reset = (count > 0) & (count % reset_every == 0)

    def resplit(p, mi, wi):
      if mi is None:
        return None, None
      m_new, w_new = _factors.split(p, gamma)
      return jnp.where(reset, m_new, mi), jnp.where(reset, w_new, wi)

    treedef = jax.tree.structure(params, is_leaf=lambda x: x is None)
    pairs = [resplit(p, mi, wi) for p, mi, wi in zip(
        treedef.flatten_up_to(params), treedef.flatten_up_to(state.m),
        treedef.flatten_up_to(state.w), strict=True)]
    m = treedef.unflatten([a for a, _ in pairs])
    w = treedef.unflatten([b for _, b in pairs])
    new_updates, m, w, base_state, skipped = _factors.factor_step(
        updates, params, m, w, base, state.base_state, 0.0, gamma, masks, extra_args)
    return new_updates, SignInState(optax.safe_increment(count), m, w, base_state,
                                    state.skipped_leaves + skipped)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def count_sign_flips(params_a: Any, params_b: Any, masks: Any = None) -> jax.Array:
  """Counts the entries whose sign differs strictly between two parameter trees.

  An entry flips when ``a * b < 0``: an entry that is zero in either tree (pruned, or not yet
  grown) is never counted. With ``masks`` (the structure of the parameters, a bool array or None
  per leaf) only entries where the mask is True are counted; None leaves count every entry.

  Args:
    params_a: a parameter tree.
    params_b: a parameter tree of the same structure.
    masks: optional masks restricting the count.

  Returns:
    An int32 scalar array (jit-friendly; ``int(...)`` gives a Python int).

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> int(osp.count_sign_flips({"w": jnp.array([1.0, -2.0, 0.0])},
    ...                          {"w": jnp.array([-1.0, -3.0, 4.0])}))
    1
  """
  none = lambda x: x is None  # noqa: E731
  treedef = jax.tree.structure(params_a, is_leaf=none)
  a_l = treedef.flatten_up_to(params_a)
  b_l = treedef.flatten_up_to(params_b)
  k_l = [None] * len(a_l) if masks is None else treedef.flatten_up_to(masks)
  total = jnp.zeros([], jnp.int32)
  for a, b, k in zip(a_l, b_l, k_l, strict=True):
    if a is None or b is None:
      continue
    flip = (jnp.sign(a.astype(jnp.float32)) * jnp.sign(b.astype(jnp.float32))) < 0
    if k is not None:
      flip = flip & k
    total = total + jnp.sum(flip, dtype=jnp.int32)
  return total
