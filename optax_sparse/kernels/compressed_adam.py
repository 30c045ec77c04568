"""NanoAdam compressed-state step: gather, Adam on k moments, scatter into a dense update.

Paper: C. Zhou, T. Jacobs, A. Gadhikar, R. Burkholz, *Pay Attention to Small Weights*,
arXiv 2506.21374 (NanoAdam, Algorithm 1, steps 3-4).

For a leaf with flat gradient g, int32 flat indices I (k slots, ``-1`` marks an unused slot) and
compressed moments μ, ν of shape (k,) (float32)::

  g_I = g[I]
  μ  <- b1 · μ + (1 - b1) · g_I
  ν  <- b2 · ν + (1 - b2) · g_I²
  s  = -lr · (μ / c1) / (sqrt(ν / c2) + eps)
  u  = scatter(s at I, zeros elsewhere)             (the param's shape and dtype)

``c1``, ``c2`` are optional bias-correction factors (1 - b1^t, 1 - b2^t), passed as scalars;
the default 1.0 follows Algorithm 1 (no correction). Unused slots (index ``-1``, or ``>= size``)
get μ = ν = 0 and contribute nothing. Indices must be unique (the scatter is a ``set``).

How the Pallas version is split (library decision): the Adam maths over the k slots is the
kernel, tiled over (rows, 128) blocks of the compressed state, with μ and ν aliased in place
(``input_output_aliases``). The gather ``g[I]`` before it and the scatter into a zero dense
buffer after it are XLA ``gather``/``scatter`` ops: an in-kernel gather/scatter at arbitrary
flat positions would need the whole dense leaf resident in one block (or TPU-only manual DMAs
from ``pl.ANY`` memory), which neither fits VMEM/shared memory for large leaves nor runs the
same way in interpret mode. Both are O(k) memory traffic, while the dense output is written once.

Not in the kernel: the non-finite gradient guard and the choice of I (bottom-k by |θ|) belong to
the transformation that calls it.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from optax_sparse.kernels import dispatch


def _adam_maths(g_sel, valid, mu, nu, lr, b1, b2, eps, c1, c2):
  """Shared float32 maths of the twin and the kernel body; invalid slots are zeroed."""
  g_sel = jnp.where(valid, g_sel.astype(jnp.float32), 0.0)
  mu = jnp.where(valid, b1 * mu + (1.0 - b1) * g_sel, 0.0)
  nu = jnp.where(valid, b2 * nu + (1.0 - b2) * g_sel * g_sel, 0.0)
  step = jnp.where(valid, -lr * (mu / c1) / (jnp.sqrt(nu / c2) + eps), 0.0)
  return step, mu, nu


def _gather(grads, indices):
  flat = jnp.ravel(grads)
  valid = (indices >= 0) & (indices < flat.size)
  return jnp.take(flat, jnp.where(valid, indices, 0), mode="clip"), valid


def _scatter(step, indices, valid, shape, dtype):
  size = math.prod(shape)
  # Invalid slots point past the end and are dropped (a negative index would wrap around).
  idx = jnp.where(valid, indices, size)
  dense = jnp.zeros((size,), jnp.float32).at[idx].set(step, mode="drop")
  return dense.astype(dtype).reshape(shape)


def _scalars(learning_rate, b1, b2, eps, c1, c2):
  return [jnp.asarray(v, jnp.float32).reshape(()) for v in (learning_rate, b1, b2, eps, c1, c2)]


@functools.partial(jax.jit, static_argnames=("dtype",))
def compressed_adam_update_xla(
    grads: jax.Array,
    indices: jax.Array,
    mu: jax.Array,
    nu: jax.Array,
    *,
    learning_rate,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    bias_correction1=1.0,
    bias_correction2=1.0,
    dtype=None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Pure-jnp twin of :func:`compressed_adam_update` (same arguments, same result)."""
  dtype = grads.dtype if dtype is None else dtype
  g_sel, valid = _gather(grads, indices)
  s = _scalars(learning_rate, b1, b2, eps, bias_correction1, bias_correction2)
  step, mu, nu = _adam_maths(g_sel, valid, mu.astype(jnp.float32), nu.astype(jnp.float32), *s)
  return _scatter(step, indices, valid, grads.shape, dtype), mu, nu


def _kernel(s_ref, g_ref, idx_ref, mu_ref, nu_ref, step_ref, mu_out, nu_out):
  scal = [s_ref[0, j] for j in range(6)]
  step, mu, nu = _adam_maths(g_ref[...], idx_ref[...] >= 0, mu_ref[...], nu_ref[...], *scal)
  step_ref[...] = step
  mu_out[...] = mu
  nu_out[...] = nu


@functools.partial(jax.jit, static_argnames=("dtype", "interpret"))
def compressed_adam_update_pallas(
    grads: jax.Array,
    indices: jax.Array,
    mu: jax.Array,
    nu: jax.Array,
    *,
    learning_rate,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    bias_correction1=1.0,
    bias_correction2=1.0,
    dtype=None,
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Pallas version of :func:`compressed_adam_update` (Adam maths in the kernel)."""
  interpret = dispatch.resolve_interpret(interpret)
  dtype = grads.dtype if dtype is None else dtype
  (k,) = indices.shape
  g_sel, valid = _gather(grads, indices)
  operands = [
      dispatch.pack_scalars(learning_rate, b1, b2, eps, bias_correction1, bias_correction2),
      dispatch.to_rows(g_sel.astype(jnp.float32)),
      dispatch.to_rows(jnp.where(valid, indices, -1).astype(jnp.int32), fill=-1),
      dispatch.to_rows(mu.astype(jnp.float32)),
      dispatch.to_rows(nu.astype(jnp.float32)),
  ]
  rows = operands[1].shape[0]
  block = dispatch.row_block(rows)
  spec = pl.BlockSpec((block, dispatch.LANES), lambda i: (i, 0))
  state = jax.ShapeDtypeStruct((rows, dispatch.LANES), jnp.float32)
  step, mu, nu = pl.pallas_call(
      _kernel,
      out_shape=(state, state, state),
      grid=(pl.cdiv(rows, block),),
      in_specs=[dispatch.scalar_spec(interpret)] + [spec] * 4,
      out_specs=(spec, spec, spec),
      input_output_aliases={3: 1, 4: 2},
      interpret=interpret,
      compiler_params=dispatch.compiler_params(interpret),
      name="compressed_adam_update",
  )(*operands)
  step, mu, nu = (dispatch.from_rows(x, (k,)) for x in (step, mu, nu))
  return _scatter(step, indices, valid, grads.shape, dtype), mu, nu


def compressed_adam_update(
    grads: jax.Array,
    indices: jax.Array,
    mu: jax.Array,
    nu: jax.Array,
    *,
    learning_rate,
    b1=0.9,
    b2=0.999,
    eps=1e-8,
    bias_correction1=1.0,
    bias_correction2=1.0,
    dtype=None,
    backend: str = "auto",
    interpret: bool | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """NanoAdam step on compressed moments, scattered into a dense update.

  With g_I = g[I] (flat indices I; ``-1`` or ``>= size`` = unused slot)::

    μ <- b1 μ + (1 - b1) g_I,   ν <- b2 ν + (1 - b2) g_I²
    u[I] = -lr (μ / c1) / (sqrt(ν / c2) + eps),   u = 0 elsewhere

  Args:
    grads: the dense gradient of one leaf (its shape is the update's shape).
    indices: int32 flat indices, shape (k,), unique among the used slots; an index ``< 0`` or
      ``>= grads.size`` (e.g. the sentinel ``size``) marks an unused slot.
    mu: first moments of the k slots, shape (k,), float32.
    nu: second moments of the k slots, shape (k,), float32.
    learning_rate: scalar (may be traced).
    b1: first-moment decay.
    b2: second-moment decay.
    eps: added to sqrt(ν) in the denominator.
    bias_correction1: c1, e.g. ``1 - b1**t`` (1.0: none, as in Algorithm 1).
    bias_correction2: c2, e.g. ``1 - b2**t`` (1.0: none).
    dtype: dtype of the dense update (default: ``grads.dtype``; pass the param's dtype).
    backend: ``"auto"``, ``"xla"`` (jnp twin) or ``"pallas"``.
    interpret: override of the Pallas interpret mode (default: interpret on CPU only).

  Returns:
    ``(dense_update, new_mu, new_nu)``; unused slots have μ = ν = 0.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optax_sparse import kernels
    >>> g = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    >>> u, mu, nu = kernels.compressed_adam_update(
    ...     g, jnp.array([3, -1], jnp.int32), jnp.zeros(2), jnp.zeros(2),
    ...     learning_rate=0.1, backend="xla")
    >>> print(jnp.round(u, 4))
    [[ 0.      0.    ]
     [ 0.     -0.3162]]

  References:
    Zhou, Jacobs, Gadhikar, Burkholz, *Pay Attention to Small Weights*, arXiv 2506.21374.
  """
  kwargs = dict(learning_rate=learning_rate, b1=b1, b2=b2, eps=eps,
                bias_correction1=bias_correction1, bias_correction2=bias_correction2, dtype=dtype)
  if dispatch.resolve_backend(backend) == "pallas":
    return compressed_adam_update_pallas(grads, indices, mu, nu, interpret=interpret, **kwargs)
  return compressed_adam_update_xla(grads, indices, mu, nu, **kwargs)
