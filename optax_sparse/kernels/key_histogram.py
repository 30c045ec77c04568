"""Sort-free selection core: radix histograms of order-preserving float keys.

Top-k by magnitude / saliency needs the k-th largest score with a k that may be traced
(scheduled sparsity), so ``jax.lax.top_k`` (static k) and a full sort (jaxpruner) are both poor
fits (:doc:`/methods/selection`). This module finds the exact k-th largest float32 score in a
bounded number of histogram passes (a most-significant-digit radix select):

* ``float_to_key`` maps float32 to uint32 so that integer order equals float order: flip all
  bits of negatives, set the sign bit of non-negatives (``-0.0`` sorts just below ``+0.0``).
* ``key_histogram`` is one pass: among entries whose key matches ``prefix`` on ``prefix_mask``,
  count how many have each value of the digit ``(key >> shift) & (2**bits - 1)``.
* ``radix_select_threshold`` runs ``32 / bits`` passes (4 passes of 8 bits by default), each
  fixing the next digit of the k-th largest key, and returns that key, its float value and the
  number of entries strictly greater (the caller breaks ties among entries equal to the
  threshold, e.g. by flat index, to get an exact count).

Library decisions: ``k`` is clipped to ``[1, size]``; NaN scores have keys above ``+inf`` (or
below ``-inf`` for a negative NaN), so callers replace them first (e.g. by ``-inf``); bf16
scores are compared through their exact float32 value.

Pallas version: one grid step per row block of the (rows, 128) layout writes that block's
``2**bits`` counts (a ``fori_loop`` over the digit values, each a compare and a sum, so no
(entries x bins) one-hot is materialized); the per-block counts are summed outside. Entries past
the end of the array (padding, and NaN-filled out-of-bounds reads in interpret mode) are
excluded by their flat index. On CPU the jnp twin (a ``bincount``) is what ``backend="auto"``
gives.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import pallas as pl

from optax_sparse.kernels import dispatch

_SIGN = 0x80000000


def float_to_key(x: jax.Array) -> jax.Array:
  """Order-preserving uint32 key of float scores (bf16/f16 are widened to float32 first).

  Examples:
    >>> import jax.numpy as jnp
    >>> from optax_sparse import kernels
    >>> k = kernels.float_to_key(jnp.array([-1.0, 0.0, 2.0]))
    >>> bool(k[0] < k[1] < k[2])
    True
  """
  bits = jax.lax.bitcast_convert_type(jnp.asarray(x).astype(jnp.float32), jnp.uint32)
  negative = (bits >> jnp.uint32(31)) != 0
  return jnp.where(negative, ~bits, bits | jnp.uint32(_SIGN))


def key_to_float(key: jax.Array) -> jax.Array:
  """Inverse of :func:`float_to_key` (float32)."""
  key = jnp.asarray(key, jnp.uint32)
  non_negative = (key >> jnp.uint32(31)) != 0
  bits = jnp.where(non_negative, key & jnp.uint32(_SIGN - 1), ~key)
  return jax.lax.bitcast_convert_type(bits, jnp.float32)


def _check_digit(shift: int, bits: int) -> None:
  if not isinstance(bits, int) or not 1 <= bits <= 16:
    raise ValueError(f"bits must be an int in [1, 16], got {bits!r}.")
  if not isinstance(shift, int) or shift < 0 or shift + bits > 32:
    raise ValueError(f"shift must be an int with 0 <= shift and shift + bits <= 32, got {shift!r}.")


def _digits(keys, shift, bits, prefix, prefix_mask, valid):
  """Digit of each entry, or the sentinel ``2**bits`` for entries that do not take part."""
  nbins = 1 << bits
  match = valid & ((keys & prefix_mask) == prefix)
  digit = ((keys >> jnp.uint32(shift)) & jnp.uint32(nbins - 1)).astype(jnp.int32)
  return jnp.where(match, digit, nbins)


def _as_u32(value) -> jax.Array:
  """uint32 view of a prefix or mask given as a Python int (up to 2**32 - 1) or an array."""
  if isinstance(value, int):
    return jnp.asarray(np.uint32(value))
  return jnp.asarray(value).astype(jnp.uint32)


@functools.partial(jax.jit, static_argnames=("shift", "bits"))
def _histogram_xla(scores, prefix, prefix_mask, *, shift, bits):
  keys = float_to_key(jnp.ravel(scores))
  digit = _digits(keys, shift, bits, prefix, prefix_mask, True)
  return jnp.bincount(digit, length=(1 << bits) + 1)[:-1].astype(jnp.int32)


def key_histogram_xla(scores, shift: int, bits: int, prefix=0, prefix_mask=0) -> jax.Array:
  """Pure-jnp twin of :func:`key_histogram` (a ``bincount``)."""
  _check_digit(shift, bits)
  return _histogram_xla(scores, _as_u32(prefix), _as_u32(prefix_mask), shift=shift, bits=bits)


def _kernel(p_ref, x_ref, o_ref, *, size, shift, bits, block):
  nbins = 1 << bits
  keys = float_to_key(x_ref[...])
  row = pl.program_id(0) * block + jax.lax.broadcasted_iota(jnp.int32, keys.shape, 0)
  lane = jax.lax.broadcasted_iota(jnp.int32, keys.shape, 1)
  valid = row * dispatch.LANES + lane < size
  digit = _digits(keys, shift, bits, p_ref[0, 0], p_ref[0, 1], valid)
  bins = jax.lax.broadcasted_iota(jnp.int32, (1, nbins), 1)

  def count(b, acc):
    return acc + jnp.where(bins == b, jnp.sum((digit == b).astype(jnp.int32)), 0)

  counts = jax.lax.fori_loop(0, nbins, count, jnp.zeros((1, nbins), jnp.int32))
  o_ref[...] = counts


def key_histogram_pallas(
    scores, shift: int, bits: int, prefix=0, prefix_mask=0, *, interpret: bool | None = None
) -> jax.Array:
  """Pallas version of :func:`key_histogram` (per-block counts, summed outside)."""
  _check_digit(shift, bits)
  return _histogram_pallas(scores, _as_u32(prefix), _as_u32(prefix_mask), shift=shift, bits=bits,
                           interpret=dispatch.resolve_interpret(interpret))


@functools.partial(jax.jit, static_argnames=("shift", "bits", "interpret"))
def _histogram_pallas(scores, prefix, prefix_mask, *, shift, bits, interpret):
  scores = jnp.asarray(scores)
  if not jnp.issubdtype(scores.dtype, jnp.floating):
    scores = scores.astype(jnp.float32)
  size = scores.size
  rows_in = dispatch.to_rows(scores)
  rows = rows_in.shape[0]
  block = dispatch.row_block(rows)
  grid = pl.cdiv(rows, block)
  nbins = 1 << bits
  params = dispatch.pack_scalars(prefix, prefix_mask, dtype=jnp.uint32)
  kernel = functools.partial(_kernel, size=size, shift=shift, bits=bits, block=block)
  counts = pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((grid, 1, nbins), jnp.int32),
      grid=(grid,),
      in_specs=[dispatch.scalar_spec(interpret),
                pl.BlockSpec((block, dispatch.LANES), lambda i: (i, 0))],
      out_specs=pl.BlockSpec((None, 1, nbins), lambda i: (i, 0, 0)),
      interpret=interpret,
      compiler_params=dispatch.compiler_params(interpret),
      name="key_histogram",
  )(params, rows_in)
  return jnp.sum(counts, axis=(0, 1), dtype=jnp.int32)


def key_histogram(
    scores: jax.Array,
    shift: int,
    bits: int,
    prefix=0,
    prefix_mask=0,
    *,
    backend: str = "auto",
    interpret: bool | None = None,
) -> jax.Array:
  """Counts of one radix digit of the order-preserving keys of ``scores``.

  With key = float_to_key(score)::

    counts[d] = #{ i : key_i & prefix_mask == prefix  and  (key_i >> shift) & (2**bits - 1) == d }

  Args:
    scores: float scores, any shape (bf16 / f32).
    shift: static bit position of the digit (0 <= shift, shift + bits <= 32).
    bits: static digit width in [1, 16]; the result has ``2**bits`` bins.
    prefix: uint32 prefix the high bits must match (may be traced).
    prefix_mask: uint32 mask of the bits compared with ``prefix`` (0: every entry counts).
    backend: ``"auto"``, ``"xla"`` (jnp twin) or ``"pallas"``.
    interpret: override of the Pallas interpret mode (default: interpret on CPU only).

  Returns:
    int32 counts of shape ``(2**bits,)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optax_sparse import kernels
    >>> counts = kernels.key_histogram(jnp.array([-2.0, -1.0, 1.0, 3.0]), 31, 1, backend="xla")
    >>> print(counts)  # negatives in bin 0, non-negatives in bin 1
    [2 2]
  """
  if dispatch.resolve_backend(backend) == "pallas":
    return key_histogram_pallas(scores, shift, bits, prefix, prefix_mask, interpret=interpret)
  return key_histogram_xla(scores, shift, bits, prefix, prefix_mask)


class RadixThreshold(NamedTuple):
  """The k-th largest score: its key, its float32 value, and how many entries are greater."""

  key: jax.Array
  value: jax.Array
  num_greater: jax.Array


def radix_select_threshold(
    scores: jax.Array,
    k,
    *,
    bits: int = 8,
    backend: str = "auto",
    interpret: bool | None = None,
) -> RadixThreshold:
  """Exact k-th largest score in ``32 / bits`` histogram passes, without a sort.

  Pass p fixes digit p of the k-th largest key: with counts c of the entries that match the
  digits found so far and suffix sums S[d] = Σ_{j >= d} c[j], the digit is
  d* = max{d : S[d] >= k} and k <- k - S[d* + 1]. After the last pass the prefix is the key.
  The entries with ``key > result.key`` are exactly ``result.num_greater`` (< k); the
  ``k - num_greater`` remaining slots go to entries equal to the threshold.

  Args:
    scores: float scores, any shape (bf16 / f32); NaNs should be replaced by the caller.
    k: how many entries to keep (int, may be traced); clipped to ``[1, scores.size]``.
    bits: static digit width per pass; must divide 32 (default 8: 4 passes of 256 bins).
    backend: ``"auto"``, ``"xla"`` (jnp twin) or ``"pallas"`` for the histogram passes.
    interpret: override of the Pallas interpret mode (default: interpret on CPU only).

  Returns:
    ``RadixThreshold(key, value, num_greater)``: uint32 key, float32 value, int32 count.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optax_sparse import kernels
    >>> t = kernels.radix_select_threshold(jnp.array([0.5, -1.0, 3.0, 2.0, 2.0]), 3,
    ...                                    backend="xla")
    >>> print(float(t.value), int(t.num_greater))
    2.0 1
  """
  if not isinstance(bits, int) or bits < 1 or bits > 16 or 32 % bits:
    raise ValueError(f"bits must be one of 1, 2, 4, 8, 16, got {bits!r}.")
  backend = dispatch.resolve_backend(backend)
  if math.prod(jnp.shape(scores)) == 0:
    raise ValueError("scores must have at least one entry, got an empty array.")
  return _radix_select(scores, k, bits=bits, backend=backend, interpret=interpret)


@functools.partial(jax.jit, static_argnames=("bits", "backend", "interpret"))
def _radix_select(scores, k, *, bits, backend, interpret):
  size = math.prod(scores.shape)
  target = jnp.clip(jnp.asarray(k, jnp.int32), 1, size)
  remaining = target
  prefix = jnp.uint32(0)
  prefix_mask = jnp.uint32(0)
  digit_mask = (1 << bits) - 1
  for p in range(32 // bits):
    shift = 32 - bits * (p + 1)
    counts = key_histogram(scores, shift, bits, prefix, prefix_mask, backend=backend,
                           interpret=interpret)
    suffix = jnp.cumsum(counts[::-1])[::-1]
    digit = jnp.sum(suffix >= remaining).astype(jnp.int32) - 1
    remaining = remaining - (suffix[digit] - counts[digit])
    prefix = prefix | (digit.astype(jnp.uint32) << jnp.uint32(shift))
    prefix_mask = prefix_mask | jnp.uint32(digit_mask << shift)
  return RadixThreshold(prefix, key_to_float(prefix), target - remaining)
