"""HAM: the hyperbolic step that follows any base optimizer.

Jacobs, Gadhikar, Rubio-Madrigal, Burkholz, *Hyperbolic Aware Minimization: Implicit Bias for
Sparsity* (arXiv 2506.02630, ICLR 2026), deployed variant "HYP*" of the official wrapper
(``HamOptimizerWrapper``). With the base step ``θ½ = θ_t − η_t d_t`` and the raw gradient ``g_t``
taken at ``θ_t``::

    e_t     = clip(−η_t (α · sign(θ½) ⊙ g_t + β), −5, 5)          (float32)
    θ_{t+1} = where(θ½ ≠ 0, θ½ ⊙ exp(e_t), θ½)                     (eligible leaves)
    θ_{t+1} ← θ_{t+1} · min(1, c_max / ‖θ_{t+1}‖₂)                 (every leaf, per tensor)

:func:`hyperbolic_step` is step 2 and 3 alone; it emits ``u = θ_{t+1} − θ½`` where ``θ½`` is the
parameter iterate it receives. :func:`ham` is ``compose(base, hyperbolic_step(...))``, so the
hyperbolic step sees the same raw gradient as the base and the iterate the base left.

Library decisions where the paper and its code leave a choice (see :doc:`/methods/ham`):

* *Learning-rate coupling.* optax cannot read the base optimizer's learning rate, so the step
  takes its own ``learning_rate`` (a ``ScalarOrSchedule``) evaluated on its own count, which
  starts at 0 and advances once per ``update`` like the count of every optax optimizer: pass the
  base's schedule and the two stay in lockstep.
* *Post-step gradient clipping* of the official code (``clip_grad_norm_(20)`` after both steps)
  has no effect on the step itself and is not ported.
* *Non-finite values* (the library's policy, ``docs/nonfinite.md``). A leaf whose gradient or
  parameter is not finite (NaN or ±inf) is skipped: its update is exactly 0, the base step is
  guarded too (the base sees a zero gradient there and its state for that leaf is kept), and
  the state counts the skip (``skipped_leaves``). The official code restores a tensor whose
  result is non-finite and still caps it; here a skipped leaf is left untouched, cap included.
  With finite ``g`` and ``θ½`` the result can only be non-finite where ``|θ½|·e⁵`` overflows
  float32 (``|θ½| > 2.3e36``): those entries keep ``θ½`` (entrywise, no reduction over the
  result). A leaf whose squared norm overflows float32 (norm above ~1.8e19) is left uncapped.
* *Eligible leaves*: ``ndim >= 2`` by default (``where`` overrides); the weight-norm cap acts on
  every leaf, as in the official code; ``max_weight_norm=None`` switches it off.
* Maths in float32, results cast back to the parameters' dtype. Entries that are exactly zero
  stay exactly zero (the step is multiplicative).
* *One expression.* :func:`ham` is ``compose(base, hyperbolic_step(...))`` in value and state
  (a ``ComposeState``), but it emits ``u = θ_{t+1} − θ_t`` directly from the base update instead
  of materializing the iterate ``θ½`` and adding two updates (``θ½`` is still rounded to the
  parameters' dtype as ``optax.apply_updates`` would); ``hyperbolic_adamw(order="adamw_first")``
  is that ``ham``. The weight-norm cap needs the norm of the result before the update can be
  written, so with a cap the result is materialized once per leaf and read again.
* *Masks.* When the ``masks`` extra argument of :func:`optax_sparse.sparse` is present, the
  projection ``θ_{t+1} ← where(M, θ_{t+1}, 0)`` of eligible leaves happens inside the step,
  before the norm cap (library decision: the cap bounds the parameters as they land; the
  official code has no masks). ``sparse`` projects again afterwards, which is then a no-op.
* *Backend.* ``backend="pallas"`` computes the elementwise half step, factor and projection of
  each eligible leaf with :func:`optax_sparse.kernels.hyperbolic_mask_update`; ``"auto"`` picks
  it on GPU/TPU and the jnp expression on CPU. The guard and the cap are the same jnp code on
  both backends. For bfloat16 parameters the kernel forms ``θ½`` in float32 without rounding it
  to bfloat16 first, so the two backends can differ by a bfloat16 rounding there.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_sparse import (
  _eligibility,
  _hyperparams,
  _nonfinite,
  _select_in_place,
  _validation,
  kernels,
)
from optax_sparse.compose import ComposeState, compose
from optax_sparse.geometry.mirror import mirror_descent
from optax_sparse.geometry.potentials import Potential

__all__ = [
    "HyperbolicStepState", "ham", "hyperbolic_adamw", "hyperbolic_factor", "hyperbolic_step",
]

EXPONENT_CLIP = 5.0


class HyperbolicStepState(NamedTuple):
  """State of :func:`hyperbolic_step`.

  Attributes:
    count: int32 step counter on which ``learning_rate`` is evaluated (lockstep with the base).
    skipped_leaves: int32 number of (leaf, step) pairs skipped because of non-finite values.
  """

  count: jnp.ndarray
  skipped_leaves: jnp.ndarray


def hyperbolic_factor(
    params: jnp.ndarray,
    grads: jnp.ndarray,
    learning_rate: jnp.ndarray,
    alpha: jnp.ndarray,
    beta: jnp.ndarray,
) -> jnp.ndarray:
  """The per-leaf hyperbolic step in float32: ``θ·exp(clip(−η(α·sign(θ)·g + β), −5, 5))``.

  Pure and elementwise, so that a fused kernel can replace it. Zero entries stay exactly zero.

  Args:
    params: the iterate ``θ½`` the step receives (any float dtype).
    grads: the raw gradient, same shape.
    learning_rate: scalar ``η_t``.
    alpha: scalar ``α``.
    beta: scalar ``β``.

  Returns:
    The new parameters in float32.
  """
  h = params.astype(jnp.float32)
  e = _exponent(h, grads.astype(jnp.float32), learning_rate, alpha, beta)
  return jnp.where(h != 0, h * jnp.exp(e), h)


def _exponent(h: jnp.ndarray, g: jnp.ndarray, lr, alpha, beta) -> jnp.ndarray:
  """``clip(−η(α·sign(h)·g + β), −5, 5)`` in float32, exact wherever ``h ≠ 0``.

  ``sign(h)·g`` is written as the select ``where(h > 0, g, −g)`` (the kernel's form); it differs
  from it only where ``h = 0``, which every caller keeps at ``h``.
  """
  return jnp.clip(-lr * (alpha * jnp.where(h > 0, g, -g) + beta), -EXPONENT_CLIP, EXPONENT_CLIP)


def _cap_scale(x: jnp.ndarray, max_weight_norm: float | None) -> jnp.ndarray:
  """``min(1, c/‖x‖₂)``; a squared norm that overflows float32 (‖x‖ > ~1.8e19) gives 1."""
  if max_weight_norm is None:
    return jnp.ones([], jnp.float32)
  ratio_sq = jnp.sum(x * x) / (max_weight_norm * max_weight_norm)
  return jnp.where((ratio_sq > 1.0) & jnp.isfinite(ratio_sq), jax.lax.rsqrt(ratio_sq), 1.0)


def _capped_minus(out: jnp.ndarray, ref: jnp.ndarray, max_weight_norm: float | None):
  """``min(1, c/‖out‖₂)·out − ref``."""
  if max_weight_norm is None:
    return out - ref
  return out * _cap_scale(out, max_weight_norm) - ref


def _check_backend(backend: str) -> str:
  kernels.resolve_backend(backend, name="backend")
  return backend


def _hyperbolic_update(
    grads: Any,
    state: HyperbolicStepState,
    params: Any,
    base_updates: Any,
    masks: Any,
    *,
    learning_rate: optax.ScalarOrSchedule,
    alpha: float,
    beta: float,
    max_weight_norm: float | None,
    where: _eligibility.Where,
    backend: str,
    ok: Any = None,
) -> tuple[Any, HyperbolicStepState]:
  """The hyperbolic step on ``θ½ = params + base_updates``; returns ``θ_{t+1} − params``.

  With ``base_updates=None`` the iterate is ``params`` itself (:func:`hyperbolic_step`). The
  update is written in one expression from ``params``: no separate pass forms ``θ½`` or adds
  the base update to the hyperbolic one. ``ok``: the per-leaf verdict of the caller, who then
  counts the skips (the leaves it gets are already zeroed).
  """
  lr = _hyperparams.evaluate(learning_rate, state.count)
  a = jnp.asarray(alpha, jnp.float32)
  b = jnp.asarray(beta, jnp.float32)
  raw_grads = grads
  # MaskedNode (optax.masked / multi_transform) positions are dense, untouched leaves here.
  grads, params = _validation.to_none(grads), _validation.to_none(params)
  eligible = _eligibility.eligible_tree(where, params)
  use_pallas = kernels.resolve_backend(backend) == "pallas"
  treedef = jax.tree.structure(params, is_leaf=lambda x: x is None)
  none = [None] * treedef.num_leaves
  p_l = treedef.flatten_up_to(params)
  g_l = treedef.flatten_up_to(grads)
  e_l = treedef.flatten_up_to(eligible)
  ub_l = none if base_updates is None else treedef.flatten_up_to(
      _validation.to_none(base_updates))
  m_l = none if masks is None else treedef.flatten_up_to(_validation.to_none(masks))
  # ok given (ham): the caller checked the raw leaves and zeroed the bad ones; checking the
  # zeroed leaves again would cost two more reads of each (and keep them materialized).
  k_l = none if ok is None else treedef.flatten_up_to(_validation.to_none(ok))
  zero = jnp.zeros([], jnp.int32)

  def leaf(g, p, ub, elig, mask, ok):
    if p is None:
      return None, zero
    # Non-finite policy (docs/nonfinite.md): a leaf whose gradient or parameter is not finite
    # emits exactly 0 and is counted.
    if ok is None:
      ok = _nonfinite.finite(g) & _nonfinite.finite(p)
      skipped = (~ok).astype(jnp.int32)
    else:
      skipped = zero  # the caller counted it (here the leaf is zeros, as inside compose)
    p32 = p.astype(jnp.float32)
    # θ½ exactly as optax.apply_updates forms it (rounded to the parameters' dtype).
    h = p32 if ub is None else (p + ub).astype(p.dtype).astype(jnp.float32)
    if not elig:
      if max_weight_norm is None:
        u = jnp.zeros_like(p) if ub is None else ub
      else:
        u = _capped_minus(h, p32, max_weight_norm)
      return jnp.where(ok, u, 0.0).astype(p.dtype), skipped
    g32 = g.astype(jnp.float32)
    if use_pallas:
      # The kernel forms θ½ = θ + u_base in float32 (for float32 parameters the same θ½).
      u_kernel = kernels.hyperbolic_mask_update(
          p, g, jnp.zeros_like(p) if ub is None else ub, mask, learning_rate=lr, alpha=a,
          beta=b, backend="pallas")
      new = p32 + u_kernel.astype(jnp.float32)
    else:
      # hyperbolic_factor without its zero select: the guard below does its work. Where
      # θ½ = ±0, θ½·exp(e) is ±0 for a finite e and NaN otherwise (then θ½ is kept).
      new = h * jnp.exp(_exponent(h, g32, lr, a, b))
      if mask is not None:
        new = jnp.where(mask, new, 0.0)
    # With finite g and θ½ the result is non-finite only where θ½·e^5 overflows float32: such
    # entries keep θ½. This entrywise guard needs no reduction over the result.
    out = jnp.where(jnp.isfinite(new), new, h)
    # The cap comes last, on every leaf that is not skipped (the official order).
    u = _capped_minus(out, p32, max_weight_norm)
    return jnp.where(ok, u, 0.0).astype(p.dtype), skipped

  # Flat lists, not a tree of pairs: the parameters may themselves be tuples.
  out = [leaf(*xs) for xs in zip(g_l, p_l, ub_l, e_l, m_l, k_l, strict=True)]
  new_updates = _validation.like(raw_grads, treedef.unflatten([u for u, _ in out]))
  skipped = sum((k for _, k in out), zero)
  return new_updates, HyperbolicStepState(
      optax.safe_increment(state.count), state.skipped_leaves + skipped)


def hyperbolic_step(
    learning_rate: optax.ScalarOrSchedule,
    alpha: float = 200.0,
    beta: float = 1e-3,
    *,
    max_weight_norm: float | None = 1000.0,
    where: _eligibility.Where = None,
    backend: str = "auto",
) -> optax.GradientTransformationExtraArgs:
  r"""HAM's hyperbolic step on the iterate it receives, with the raw gradient it receives.

  .. math::

    \theta' = \theta \odot \exp(\mathrm{clip}(-\eta_t(\alpha\,\mathrm{sign}(\theta) \odot g +
    \beta), -5, 5)), \qquad u = \min(1, c/\|\theta'\|_2)\,\theta' - \theta

  The input ``updates`` must be the raw gradient: use it inside :func:`optax_sparse.compose`
  after a base optimizer (that is :func:`ham`), never after another gradient transformation in
  ``optax.chain``.

  Args:
    learning_rate: ``η_t``, the base optimizer's learning rate or schedule (``>= 0``).
    alpha: ``α``, strength of the hyperbolic geometry (any finite number; 200 in the paper).
    beta: ``β >= 0``, the lr-coupled multiplicative decay.
    max_weight_norm: per-tensor L2 cap applied to every leaf, or ``None`` for no cap.
    where: eligible leaves (default ``ndim >= 2``), a predicate or a static pytree of bools.
    backend: ``"auto"`` (the fused Pallas kernel on GPU/TPU, jnp on CPU), ``"xla"`` or
      ``"pallas"`` (interpret mode on CPU): how the elementwise step of each eligible leaf is
      computed (:func:`optax_sparse.kernels.hyperbolic_mask_update`); the non-finite guard and
      the norm cap stay in jnp.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` whose state is :class:`HyperbolicStepState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> tx = osp.hyperbolic_step(0.1, alpha=1.0, beta=0.0)
    >>> params = {"w": jnp.array([[1.0, 0.0]])}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.array([[1.0, 1.0]])}, state, params)
    >>> updates["w"]
    Array([[-0.09516257,  0.        ]], dtype=float32)

  References:
    Jacobs, Gadhikar, Rubio-Madrigal, Burkholz, `Hyperbolic Aware Minimization: Implicit Bias
    for Sparsity <https://arxiv.org/abs/2506.02630>`_, ICLR 2026.
  """
  _hyperparams.check_scalar("learning_rate", learning_rate, low=0.0)
  _hyperparams.check_scalar("alpha", alpha, allow_schedule=False)
  _hyperparams.check_scalar("beta", beta, low=0.0, allow_schedule=False)
  if max_weight_norm is not None:
    _hyperparams.check_scalar(
        "max_weight_norm", max_weight_norm, low=0.0, low_open=True, allow_schedule=False)
  _eligibility.check_where("where", where)
  _check_backend(backend)

  def init_fn(params):
    del params
    return HyperbolicStepState(jnp.zeros([], jnp.int32), jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(optax._src.base.NO_PARAMS_MSG)
    return _hyperbolic_update(
        updates, state, params, None, extra_args.get("masks"), learning_rate=learning_rate,
        alpha=alpha, beta=beta, max_weight_norm=max_weight_norm, where=where, backend=backend)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def ham(
    base: optax.GradientTransformation,
    learning_rate: optax.ScalarOrSchedule,
    alpha: float = 200.0,
    beta: float = 1e-3,
    *,
    max_weight_norm: float | None = 1000.0,
    where: _eligibility.Where = None,
    backend: str = "auto",
) -> optax.GradientTransformationExtraArgs:
  r"""HAM: a base optimizer step followed by the hyperbolic step with the same raw gradient.

  .. math::

    \theta_{t+1/2} = \theta_t + u^{base}_t, \qquad
    \theta_{t+1} = \theta_{t+1/2} \odot \exp(\mathrm{clip}(-\eta_t(\alpha\,
    \mathrm{sign}(\theta_{t+1/2}) \odot g_t + \beta), -5, 5))

  Equal in value and state to ``osp.compose(base, osp.hyperbolic_step(learning_rate, alpha,
  beta, ...))``, written as one expression per leaf (no materialized iterate). The ``masks``
  extra argument of :func:`optax_sparse.sparse`, when present, is forwarded to the base and
  projects the eligible leaves before the norm cap. Pass the base optimizer's own learning rate
  or schedule as ``learning_rate`` (optax cannot read it from the base); both counts
  start at 0 and advance together.

  Args:
    base: any optax optimizer (it must include its learning rate, as ``optax.sgd`` does).
    learning_rate: the base's learning rate or schedule ``η_t`` (``>= 0``).
    alpha: ``α`` (paper default 200).
    beta: ``β >= 0`` (paper default 1e-3; tune it like weight decay).
    max_weight_norm: per-tensor L2 cap on every leaf (official default 1000), ``None`` for none.
    where: leaves that take the hyperbolic step (default ``ndim >= 2``).
    backend: ``"auto"`` (the fused Pallas kernel on GPU/TPU, jnp on CPU), ``"xla"`` or
      ``"pallas"`` (interpret mode on CPU): how the elementwise step of each eligible leaf is
      computed (:func:`optax_sparse.kernels.hyperbolic_mask_update`); the non-finite guard and
      the norm cap stay in jnp.

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state ``ComposeState``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_sparse as osp
    >>> lr = optax.cosine_decay_schedule(0.1, 1000)
    >>> tx = osp.ham(optax.sgd(lr, momentum=0.9), learning_rate=lr)
    >>> params = {"w": jnp.ones((2, 2)), "b": jnp.zeros((2,))}
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.full((2, 2), 0.01), "b": jnp.ones((2,))}
    >>> updates, state = tx.update(grads, state, params)
    >>> optax.apply_updates(params, updates)["w"].round(4)  # 0.999 * exp(-0.1 * (2 + 1e-3))
    Array([[0.8178, 0.8178],
           [0.8178, 0.8178]], dtype=float32)

  References:
    Jacobs, Gadhikar, Rubio-Madrigal, Burkholz, `Hyperbolic Aware Minimization: Implicit Bias
    for Sparsity <https://arxiv.org/abs/2506.02630>`_, ICLR 2026.
  """
  if not isinstance(base, optax.GradientTransformation):
    raise _validation.ArgumentTypeError(
        f"base must be an optax.GradientTransformation; got {base!r}.")
  step = hyperbolic_step(
      learning_rate, alpha, beta, max_weight_norm=max_weight_norm, where=where, backend=backend)
  base = optax.with_extra_args_support(base)

  def init_fn(params):
    _validation.check_float_params(params)
    return ComposeState(inner_states=(base.init(params), step.init(params)),
                        skipped_leaves=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None:
      raise ValueError(optax._src.base.NO_PARAMS_MSG)
    _validation.check_grads(updates, params)
    # Non-finite policy (docs/nonfinite.md), as compose(): both steps see a skipped leaf as a
    # zero gradient and parameter, it emits exactly 0 and keeps its base state.
    ok = _nonfinite.ok_tree(updates, params)
    base_state, step_state = state.inner_states
    # The guard with the kept state selected where the base writes it: the donated moments
    # are updated in place, not copied first (_select_in_place).
    base_updates, base_state = _select_in_place.guard(
        base, updates, base_state, params, ok, **extra_args)
    # The step gets ok: the zeroed leaves need no second check (two more reads of each).
    new_updates, step_state = _hyperbolic_update(
        _nonfinite.zero_bad(updates, ok), step_state, _nonfinite.zero_bad(params, ok),
        base_updates, extra_args.get("masks"), learning_rate=learning_rate, alpha=alpha,
        beta=beta, max_weight_norm=max_weight_norm, where=where, backend=backend, ok=ok)
    new_updates = _nonfinite.zero_bad(new_updates, ok)
    return new_updates, ComposeState(
        inner_states=(base_state, step_state),
        skipped_leaves=state.skipped_leaves + _nonfinite.n_skipped(ok))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


_ORDERS = ("adamw_first", "mirror_first")


def hyperbolic_adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    weight_decay: float = 1e-4,
    alpha: float = 200.0,
    beta: float = 1e-3,
    *,
    order: str = "adamw_first",
    potential: Potential | None = None,
    max_weight_norm: float | None = 1000.0,
    where: _eligibility.Where = None,
    backend: str = "auto",
) -> optax.GradientTransformationExtraArgs:
  r"""Hyperbolic AdamW (proxy): AdamW composed with a hyperbolic mirror step.

  .. math::

    \theta_{t+1} = M_{\eta_t}(A_{\eta_t}(\theta_t)) \;\;(\texttt{adamw\_first}) \quad\text{or}\quad
    A_{\eta_t}(M_{\eta_t}(\theta_t)) \;\;(\texttt{mirror\_first})

  where ``A`` is an ``optax.adamw`` step and ``M`` is HAM's hyperbolic step
  (:func:`hyperbolic_step`, α, β) or, with ``potential``, a mirror-descent step
  (:func:`optax_sparse.mirror_descent`, ``other_leaves="keep"``); both receive the raw gradient
  through :func:`optax_sparse.compose`.

  What is published (HORST, arXiv 2605.21104, abstract only): optimizer steps composed as
  non-commuting operators, an Adam-type step for an L∞ bias and a hyperbolic mirror map for an
  L1 bias. Library choices, not the paper's rule (which is not public): the operator order
  (default AdamW first, configurable), the mirror input (the raw gradient), the mirror step
  (HAM's, with its published defaults α = 200, β = 1e-3), the scope (``ndim >= 2``) and the
  absence of a sparsifier. This is a proxy; do not call it HORST's rule.

  Args:
    learning_rate: ``η_t >= 0``, shared by both steps (a number or a schedule).
    b1: Adam's first-moment decay.
    b2: Adam's second-moment decay.
    eps: Adam's ``ε``.
    weight_decay: AdamW's decoupled decay (optax convention).
    alpha: ``α`` of the hyperbolic step.
    beta: ``β`` of the hyperbolic step.
    order: ``"adamw_first"`` or ``"mirror_first"``.
    potential: a potential for a mirror-descent step instead of HAM's step (α, β unused then).
    max_weight_norm: per-tensor cap of the hyperbolic step (``None`` for none).
    where: leaves that take the mirror step (default ``ndim >= 2``).
    backend: how the hyperbolic step is computed (see :func:`hyperbolic_step`).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state ``ComposeState``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> tx = osp.hyperbolic_adamw(1e-3, order="mirror_first")
    >>> params = {"w": jnp.ones((2, 2))}
    >>> updates, _ = tx.update({"w": jnp.ones((2, 2))}, tx.init(params), params)
    >>> updates["w"].shape
    (2, 2)

  References:
    Jacobs, Jain, Burkholz, `HORST: Composing Optimizer Geometries for Sparse Transformer
    Training <https://arxiv.org/abs/2605.21104>`_, 2026.
    Jacobs, Gadhikar, Rubio-Madrigal, Burkholz, `Hyperbolic Aware Minimization: Implicit Bias
    for Sparsity <https://arxiv.org/abs/2506.02630>`_, ICLR 2026.
  """
  if order not in _ORDERS:
    raise ValueError(f"order must be one of {_ORDERS}; got {order!r}.")
  _check_backend(backend)
  _hyperparams.check_scalar("weight_decay", weight_decay, low=0.0)
  adamw = optax.adamw(learning_rate, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay)
  if potential is None:
    if order == "adamw_first":
      # The same composition as compose(adamw, hyperbolic_step(...)), in one expression.
      return ham(adamw, learning_rate, alpha, beta, max_weight_norm=max_weight_norm,
                 where=where, backend=backend)
    mirror = hyperbolic_step(
        learning_rate, alpha, beta, max_weight_norm=max_weight_norm, where=where,
        backend=backend)
  else:
    mirror = mirror_descent(learning_rate, potential, where=where, other_leaves="keep")
  steps = (adamw, mirror) if order == "adamw_first" else (mirror, adamw)
  return compose(*steps)
