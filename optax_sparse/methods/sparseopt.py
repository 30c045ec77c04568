"""SparseOpt: per-neuron correction of the normalization-induced gradient skew of sparse layers.

Adnan, Jain, Jacobs, Sharma, Krishnan, Burkholz, Ioannou, *SparseOpt: Addressing
Normalization-induced Gradient Skew in Sparse Training* (arXiv 2605.27541, ICML 2026). With a
normalization layer after a sparse layer, the gradient into output neuron ``i`` is amplified by
``(1 - s_i)^(-1/2)``, ``s_i`` the neuron's input sparsity. SparseOpt rescales each neuron's
incoming gradient before any base optimizer::

    s_i = 1 - active_fan_in_i / fan_in,     s_bar = mean_i s_i,
    g~[..., i] = sqrt(1 - s_i) / sqrt(max(1 - s_bar, eps)) * g[..., i].

Library decisions where the paper leaves a choice (see :doc:`/methods/sparseopt`):

* **Output axis.** ``axis=-1``: the last axis indexes output neurons, as in Flax kernels
  ``Dense (in, out)`` and ``Conv (kh, kw, in, out)``; fan-in is the product of the other axes
  (``in`` or ``kh * kw * in``). PyTorch-layout kernels ``(out, in[, kh, kw])`` use ``axis=0``.
* **Mask.** The ``masks`` extra argument of :func:`optax_sparse.sparse` gives the current mask;
  leaves without a mask array (None) are left unchanged. Without ``masks`` the fallback mask is
  ``params != 0`` on the eligible leaves (``where``, default ``ndim >= 2``), so a trained weight
  that is exactly zero counts as pruned.
* **Scope.** Every masked eligible leaf (not only layers followed by a normalization). A dense
  layer gets the identity; a neuron with ``s_i = 1`` gets a zero gradient; ``eps`` guards a
  fully pruned leaf.
* **Place in a chain.** First, on the raw gradient: ``optax.chain(osp.sparseopt(), base)``.
  Inside :func:`optax_sparse.sparse` the mask rule (e.g. RigL growth) still sees the raw
  gradient (the paper's variant (a)).
* A time-constant per-coordinate scale cancels in Adam's ``mu / sqrt(nu)`` (derivation), so the
  correction matters mainly for SGD-type bases or just after a mask update.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from optax._src import base as optax_base

from optax_sparse import _eligibility, _nonfinite
from optax_sparse._hyperparams import check_scalar

__all__ = ["SparseOptState", "sparseopt", "sparseopt_scale"]

SparseOptState = optax.EmptyState


def sparseopt_scale(mask: jax.Array, axis: int = -1, eps: float = 1e-8) -> jax.Array:
  """Per-neuron factors ``sqrt(1 - s_i) / sqrt(max(1 - s_bar, eps))``, shaped to broadcast.

  Args:
    mask: a bool (or 0/1) array, the layer's mask.
    axis: the output-neuron axis.
    eps: the guard of ``1 - s_bar``.

  Returns:
    A float32 array with the mask's rank, size 1 on every axis except ``axis``.
  """
  axis = axis % mask.ndim
  others = tuple(a for a in range(mask.ndim) if a != axis)
  density = jnp.mean(mask.astype(jnp.float32), axis=others, keepdims=True)  # 1 - s_i
  mean_density = jnp.mean(density)  # 1 - s_bar
  return jnp.sqrt(density) / jnp.sqrt(jnp.maximum(mean_density, eps))


def sparseopt(
    *, axis: int = -1, where: _eligibility.Where = None, eps: float = 1e-8
) -> optax.GradientTransformationExtraArgs:
  r"""Rescales each output neuron's gradient by its input density (SparseOpt).

  .. math::
    \tilde g_{\cdot, i} = \frac{\sqrt{1 - s_i}}{\sqrt{\max(1 - \bar s, \epsilon)}}\, g_{\cdot, i},
    \qquad s_i = 1 - \frac{\#\text{active inputs of } i}{\text{fan-in}}, \quad
    \bar s = \frac{1}{n_\text{out}} \sum_i s_i.

  Stateless. Reads the ``masks`` extra argument when present; otherwise the mask of an eligible
  leaf is ``params != 0``.

  Args:
    axis: output-neuron axis of the kernels (``-1`` for Flax ``Dense``/``Conv`` kernels, ``0``
      for PyTorch-layout ones).
    where: which leaves are corrected (used for the ``params != 0`` fallback and to restrict the
      leaves given by ``masks``): None (``ndim >= 2``), a predicate or a static pytree of bools.
    eps: lower bound on ``1 - s_bar``.

  Returns:
    An ``optax.GradientTransformationExtraArgs``; place it before the base optimizer.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_sparse as osp
    >>> tx = optax.chain(osp.sparseopt(), optax.sgd(1.0))
    >>> params = {"w": jnp.array([[1.0, 0.0], [1.0, 0.0], [1.0, 3.0], [1.0, 0.0]])}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.ones((4, 2))}, state, params)
    >>> updates["w"][0]  # densities 1 and 1/4, mean 5/8: factors sqrt(8/5) and sqrt(2/5)
    Array([-1.264911 , -0.6324555], dtype=float32)

  References:
    Adnan, Jain, Jacobs, Sharma, Krishnan, Burkholz, Ioannou, `SparseOpt: Addressing
    Normalization-induced Gradient Skew in Sparse Training <https://arxiv.org/abs/2605.27541>`_,
    ICML 2026.
  """
  if isinstance(axis, bool) or not isinstance(axis, int):
    raise ValueError(f"axis must be an int; got {axis!r}.")
  check_scalar("eps", eps, low=0.0, low_open=True, allow_schedule=False)
  _eligibility.check_where("where", where)

  def init_fn(params):
    del params
    return SparseOptState()

  def update_fn(updates, state, params=None, **extra_args):
    masks = extra_args.get("masks")
    if masks is None and params is None:
      raise ValueError(optax_base.NO_PARAMS_MSG)
    ref = params if params is not None else updates
    flags = _eligibility.eligible_tree(where, ref)
    none = lambda x: x is None  # noqa: E731
    treedef = jax.tree.structure(ref, is_leaf=none)
    g_l = treedef.flatten_up_to(updates)
    f_l = treedef.flatten_up_to(flags)
    p_l = treedef.flatten_up_to(params) if params is not None else [None] * len(g_l)
    k_l = treedef.flatten_up_to(masks) if masks is not None else [None] * len(g_l)
    out = []
    for g, elig, p, k in zip(g_l, f_l, p_l, k_l, strict=True):
      mask = k if masks is not None else (None if p is None else p != 0)
      if g is None:
        out.append(g)
        continue
      # Non-finite policy (docs/nonfinite.md): a leaf with a NaN/Inf gradient (or parameter)
      # is emitted as zeros; stateless, so the optimizer it feeds counts the skip.
      ok = _nonfinite.finite(g) & (True if p is None else _nonfinite.finite(p))
      if not elig or mask is None or g.ndim < 1:
        out.append(jnp.where(ok, g, jnp.zeros_like(g)))
        continue
      if not -g.ndim <= axis < g.ndim:
        raise ValueError(f"axis {axis} is out of range for a leaf of shape {g.shape}.")
      scale = sparseopt_scale(mask, axis, eps)
      out.append(jnp.where(ok, g.astype(jnp.float32) * scale, 0.0).astype(g.dtype))
    return treedef.unflatten(out), state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)

