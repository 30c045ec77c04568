"""Fused HAM hyperbolic step and mask projection, one pass over a leaf.

Paper: T. Jacobs, A. Gadhikar, C. Rubio-Madrigal, R. Burkholz, *Hyperbolic Aware Minimization:
Implicit Bias for Sparsity*, arXiv 2506.02630 (HAM, deployed variant HYP*).

Given params θ, the raw gradient g at θ, the base optimizer's update u_base and an optional
bool mask M, one pass computes (all maths in float32)::

  h   = θ + u_base                                   (half step)
  e   = clip(-lr · (alpha · sign(h) · g + beta), -5, 5)
  h'  = where(h != 0, h · exp(e), h)                  (exact zeros stay zero)
  h'' = where(M, h', 0)                               (mask projection, emit-to-land)
  u   = h'' - θ                                       (cast to θ's dtype)

Library decisions and what is NOT in the kernel:

* The per-leaf non-finite guard of HAM (skip a leaf whose θ or g is non-finite, revert a
  non-finite result to h) and the per-leaf weight-norm cap ``‖θ‖₂ ≤ c_max`` are per-leaf
  reductions; they stay outside this kernel, in the transformation that calls it. The kernel is
  purely elementwise, so a non-finite input only affects its own entries.
* With a mask the projection is applied after the hyperbolic factor, matching the order
  mask(HAM(base)) of the library (:doc:`/methods/ham`).
* The Pallas output is aliased to ``base_updates`` (``input_output_aliases``) when both have
  θ's dtype, so under ``jit`` with a donated ``base_updates`` the update is written in place;
  when ``θ.size`` is not a multiple of 128 the flat tail is padded, which costs one copy.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from optax_sparse.kernels import dispatch

_EXP_CLIP = 5.0


def _ham_maths(theta, grads, base, mask, lr, alpha, beta):
  """Shared float32 maths of the twin and the kernel body."""
  theta = theta.astype(jnp.float32)
  h = theta + base.astype(jnp.float32)
  g = grads.astype(jnp.float32)
  # sign(h) · g written as a select: equal wherever h != 0 (the only entries that use e), and
  # it avoids a sign op that some Pallas lowerings special-case per chip generation.
  signed_g = jnp.where(h > 0, g, -g)
  e = jnp.clip(-lr * (alpha * signed_g + beta), -_EXP_CLIP, _EXP_CLIP)
  h = jnp.where(h != 0, h * jnp.exp(e), h)
  if mask is not None:
    h = jnp.where(mask, h, jnp.zeros_like(h))
  return h - theta


@jax.jit
def hyperbolic_mask_update_xla(
    params: jax.Array,
    grads: jax.Array,
    base_updates: jax.Array,
    mask: jax.Array | None = None,
    *,
    learning_rate,
    alpha,
    beta,
) -> jax.Array:
  """Pure-jnp twin of :func:`hyperbolic_mask_update` (same arguments, same result)."""
  lr = jnp.asarray(learning_rate, jnp.float32)
  alpha = jnp.asarray(alpha, jnp.float32)
  beta = jnp.asarray(beta, jnp.float32)
  m = None if mask is None else mask.astype(bool)
  return _ham_maths(params, grads, base_updates, m, lr, alpha, beta).astype(params.dtype)


def _kernel(s_ref, theta_ref, g_ref, u_ref, *rest):
  if len(rest) == 2:
    m_ref, o_ref = rest
    mask = m_ref[...] != 0
  else:
    (o_ref,) = rest
    mask = None
  lr, alpha, beta = s_ref[0, 0], s_ref[0, 1], s_ref[0, 2]
  out = _ham_maths(theta_ref[...], g_ref[...], u_ref[...], mask, lr, alpha, beta)
  o_ref[...] = out.astype(o_ref.dtype)


@functools.partial(jax.jit, static_argnames=("interpret",))
def hyperbolic_mask_update_pallas(
    params: jax.Array,
    grads: jax.Array,
    base_updates: jax.Array,
    mask: jax.Array | None = None,
    *,
    learning_rate,
    alpha,
    beta,
    interpret: bool | None = None,
) -> jax.Array:
  """Pallas version of :func:`hyperbolic_mask_update` (one grid step per row block)."""
  interpret = dispatch.resolve_interpret(interpret)
  shape, dtype = params.shape, params.dtype
  operands = [dispatch.pack_scalars(learning_rate, alpha, beta), dispatch.to_rows(params),
              dispatch.to_rows(grads), dispatch.to_rows(base_updates)]
  if mask is not None:
    # int8 keeps the mask at one byte per entry; bool refs are not portable across lowerings.
    operands.append(dispatch.to_rows(mask.astype(bool).astype(jnp.int8)))
  rows = operands[1].shape[0]
  block = dispatch.row_block(rows)
  spec = pl.BlockSpec((block, dispatch.LANES), lambda i: (i, 0))
  in_specs = [dispatch.scalar_spec(interpret)] + [spec] * (len(operands) - 1)
  aliases = {3: 0} if base_updates.dtype == dtype else {}
  out = pl.pallas_call(
      _kernel,
      out_shape=jax.ShapeDtypeStruct((rows, dispatch.LANES), dtype),
      grid=(pl.cdiv(rows, block),),
      in_specs=in_specs,
      out_specs=spec,
      input_output_aliases=aliases,
      interpret=interpret,
      compiler_params=dispatch.compiler_params(interpret),
      name="hyperbolic_mask_update",
  )(*operands)
  return dispatch.from_rows(out, shape)


def hyperbolic_mask_update(
    params: jax.Array,
    grads: jax.Array,
    base_updates: jax.Array,
    mask: jax.Array | None = None,
    *,
    learning_rate,
    alpha,
    beta,
    backend: str = "auto",
    interpret: bool | None = None,
) -> jax.Array:
  """Fused HAM half step, hyperbolic factor and mask projection for one leaf.

  With h = θ + u_base (float32)::

    e = clip(-lr · (alpha · sign(h) · g + beta), -5, 5)
    u = where(M, where(h != 0, h · exp(e), h), 0) - θ

  The non-finite guard and the weight-norm cap of HAM are per-leaf reductions and are not part
  of this function (see the module docstring).

  Args:
    params: θ, any shape, bf16 or f32.
    grads: the raw gradient g at θ, same shape.
    base_updates: the base optimizer's update u_base, same shape (aliased to the output by the
      Pallas kernel when it has θ's dtype).
    mask: optional bool array of the same shape; ``False`` entries land at exactly 0.
    learning_rate: the current (scheduled) learning rate, scalar (may be traced).
    alpha: HAM's alpha, scalar.
    beta: HAM's beta, scalar.
    backend: ``"auto"``, ``"xla"`` (jnp twin) or ``"pallas"``.
    interpret: override of the Pallas interpret mode (default: interpret on CPU only).

  Returns:
    The update u with θ's shape and dtype.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optax_sparse import kernels
    >>> theta = jnp.array([[1.0, -2.0], [0.5, 0.0]])
    >>> u = kernels.hyperbolic_mask_update(
    ...     theta, jnp.ones_like(theta), jnp.zeros_like(theta), theta != 0.5,
    ...     learning_rate=0.1, alpha=1.0, beta=0.0, backend="xla")
    >>> print(jnp.round(theta + u, 4))
    [[ 0.9048 -2.2103]
     [ 0.      0.    ]]

  References:
    Jacobs, Gadhikar, Rubio-Madrigal, Burkholz, *Hyperbolic Aware Minimization: Implicit Bias
    for Sparsity*, arXiv 2506.02630.
  """
  if dispatch.resolve_backend(backend) == "pallas":
    return hyperbolic_mask_update_pallas(
        params, grads, base_updates, mask, learning_rate=learning_rate, alpha=alpha, beta=beta,
        interpret=interpret)
  return hyperbolic_mask_update_xla(
      params, grads, base_updates, mask, learning_rate=learning_rate, alpha=alpha, beta=beta)
