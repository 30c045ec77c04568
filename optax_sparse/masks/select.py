"""Sort-free selection of the k largest (or smallest) entries, N:M groups and blocks.

Every mask in the library is built here. The functions are pure ``jax.numpy``, usable under
``jax.jit`` with a *traced* ``k`` (a sparsity schedule evaluated inside ``update``), never sort
a whole array, never reshape it and never gather it on a device mesh.

Algorithm (threshold search plus an index tie-fix). Each score is mapped to the order-preserving
unsigned integer key of its float32 bit pattern (bf16/f16/integer scores are upcast to float32
first): for a non-negative float the sign bit is set, for a negative float all bits are flipped,
so that unsigned integer order equals float order, ``-0.0`` and ``0.0`` share one key (XLA on
CPU also flushes subnormals to zero), ``-inf`` is the lowest float key, and **NaN is ranked below
every number** (key 0). The key ``T`` of the k-th largest entry is found by a radix select of
three passes (11, 11 and 10 bits of the key): each pass is one histogram of the next digit of the
keys that share the digits found so far (an ``O(N)`` scatter-add into 2048 bins) and a suffix sum
over the bins fixes that digit, which gives ``T`` exactly, together with ``#{key > T}`` and
``#{key = T}``. All entries with key ``> T`` are kept, and the remaining ``r = k - #{key > T}``
slots go to the entries tied at ``T`` with the lowest flat indices. When every tie is kept (the
usual case for continuous scores) the mask is the single comparison ``key >= T``; otherwise the
tie of flat index ``i`` is given the key ``~i`` and the same search finds the r-th of them. The
mask has exactly ``k`` True entries (``k`` clamped to ``[0, n]``) and equals the first ``k``
entries of a stable descending argsort. Cost: three scatter-add passes and one comparison pass,
plus three passes when ties straddle the threshold; the only size-N temporaries are uint32 keys
and int32 digits.

Sharding. Every step keeps the array in its own shape (keys, digits and the flat index are
elementwise, the flat index comes from iotas, so each device computes the global index of its
own entries) and only the histograms, the tie counts and scalars are reduced across devices.
Under ``jax.jit`` on a mesh XLA's SPMD partitioner therefore runs each pass as a local
scatter-add and an all-reduce of the 2048 counts (8 KB); no score, key or mask is gathered, and
the mask comes out sharded like the scores. The answer is defined by the keys and the global
flat index only, so it is bit-identical on every mesh (``docs/sharding.md``).

Backends (``backend="auto" | "xla" | "pallas"`` on every function that searches a threshold,
validated by ``kernels.resolve_backend``): ``"xla"`` is the jnp path above; ``"pallas"`` runs
the histogram passes through the kernel ``kernels.key_histogram`` (four passes of 8 bits; in
interpret mode on CPU, a slow correctness path), fed with ``kernels.key_to_float(key)`` so that
the kernel ranks exactly the keys above; ``"auto"`` is Pallas on GPU/TPU and jnp on CPU. The
threshold, counts and tie-break do not depend on the digit width, so every backend returns the
identical mask.

Library decisions (see :doc:`/methods/selection`):

* ``k = max(1, round(n * density))`` clipped to ``[0, n]`` (``count_for_density``); rounding is
  half-to-even, computed exactly for Python numbers and in float32 for traced densities.
* Ties are broken by the lower flat index (global selection: by leaf order, then flat index).
* NaN scores rank lowest in both directions: ``select_top_k`` keeps them last, ``select_bottom_k``
  picks them first (a NaN weight is the first to drop).
* N:M groups default to the fan-in axis ``-2`` (Flax kernels ``(in, out)`` and
  ``(kh, kw, in, out)``), see :doc:`/methods/nm`.
* Blocks are scored by the mean absolute score over the block's entries (partial edge blocks
  average over their valid entries only); shapes not divisible by the block are handled by
  partial edge blocks, never an error.

References:
  Evci et al., *Rigging the Lottery: Making All Tickets Winners*, arXiv 1911.11134.
  Zhou et al., *Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch*,
  arXiv 2102.04010.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optax_sparse import kernels

__all__ = [
    "block_mask",
    "count_for_density",
    "nm_mask",
    "nonzero_indices",
    "score_keys",
    "select_bottom_k",
    "select_top_k",
    "select_top_k_global",
]

# Bits of the key resolved per histogram pass: three passes of 2048, 2048 and 1024 bins. On a
# mesh each pass all-reduces one histogram (8 KB); on one CPU device this is as fast as two
# passes of 65536 bins (whose 256 KB histograms miss the cache), measured on 1M-4M entries.
_PASSES = (11, 11, 10)
# Blocks of the last axis in ``_flat_rank`` (at most; a divisor of the axis length): the largest
# number of devices along that axis for which the rank needs no gather of the axis.
_RANK_BLOCKS = 16
# Bits per pass of the Pallas histogram kernel (four passes of 256 bins).
_PALLAS_BITS = 8
# Largest N:M group ranked by pairwise comparison (O(N·m) work); larger groups use lax.top_k.
_NM_PAIRWISE = 16


def count_for_density(n: int, density: Any) -> jnp.ndarray:
  """Number of entries kept out of ``n`` at ``density``, as an int32 scalar.

  .. math::
    k = \\min(n, \\max(0, \\max(1, \\operatorname{round}(n \\cdot d))))

  The ``max(1, .)`` keeps at least one entry of a non-empty leaf (jaxpruner's rule); rounding is
  half-to-even. Python numbers are computed exactly; a traced density in float32 (for
  ``n > 2**24`` the count may then be off by a few entries, never outside ``[0, n]``).

  Args:
    n: the number of entries (a static Python int).
    density: the kept fraction, a Python float or a traced scalar.

  Returns:
    An int32 scalar in ``[0, n]``.

  Examples:
    >>> import optax_sparse as osp
    >>> int(osp.count_for_density(10, 0.25))
    2
    >>> int(osp.count_for_density(10, 0.0))
    1
  """
  from optax_sparse import _validation  # noqa: PLC0415 - argument checks (H5).

  _validation.check_int("n", n, low=0)
  if isinstance(density, (int, float, np.floating, np.integer)) and not 0.0 <= density <= 1.0:
    raise ValueError(f"density must be a number in [0, 1]; got {density!r}.")
  n = int(n)
  if isinstance(density, (int, float, np.floating, np.integer)):
    k = max(1, round(n * float(density)))
    return jnp.asarray(min(max(k, 0), n), jnp.int32)
  d = jnp.asarray(density, jnp.float32)
  d = jnp.where(jnp.isnan(d), 0.0, d)  # a NaN density keeps the minimum, one entry.
  k = jnp.maximum(1.0, jnp.round(jnp.float32(n) * d))
  return jnp.clip(k, 0, n).astype(jnp.int32)


def score_keys(scores: jnp.ndarray) -> jnp.ndarray:
  """Order-preserving uint32 keys of ``scores`` (flattened); NaN maps to 0, below ``-inf``.

  Args:
    scores: an array of any float (or integer) dtype; non-float32 dtypes are upcast to float32.

  Returns:
    A flat uint32 array with ``key(a) < key(b)`` iff ``a < b`` for non-NaN ``a, b``.
  """
  return _keys(scores).reshape(-1)


def _keys(scores: jnp.ndarray) -> jnp.ndarray:
  """``score_keys`` in the shape of ``scores``: elementwise, so it keeps any sharding."""
  x = jnp.asarray(scores).astype(jnp.float32)
  # -0.0 and 0.0 must share a key (XLA on CPU also flushes subnormals to zero here).
  x = jnp.where(x == 0, jnp.float32(0), x)
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  sign = bits >> 31
  key = jnp.where(sign == 1, ~bits, bits | jnp.uint32(0x80000000))
  return jnp.where(jnp.isnan(x), jnp.uint32(0), key)


def _flat_index(shape: tuple[int, ...]) -> jnp.ndarray:
  """The row-major flat index of every entry, as uint32 in ``shape``, built from iotas.

  An iota is partitioned with each shard's offset, so every device computes the *global* flat
  index of its own entries without any communication (a reshape to flat would not be free on a
  mesh whose sharded axis is not the leading one).
  """
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    stride *= shape[axis]
  return index


def _suffix_digit(hist: jnp.ndarray, k: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
  """Largest digit ``d`` with ``#{digit >= d} >= k``, and ``#{digit > d}``."""
  above_eq = jnp.cumsum(hist[::-1])[::-1]  # above_eq[d] = #{digit >= d}
  d = jnp.sum(above_eq[1:] >= k, dtype=jnp.int32)
  return d, above_eq[d] - hist[d]


def _histogram(digits: jnp.ndarray, length: int) -> jnp.ndarray:
  return jnp.zeros((length,), jnp.int32).at[digits].add(1, mode="promise_in_bounds")


def _kth_key(
    keys: Sequence[jnp.ndarray], k: jnp.ndarray, backend: str = "xla"
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Radix search for the k-th largest key summed over ``keys``.

  Returns ``(t, n_gt, n_eq)``: the largest ``t`` with ``#{key >= t} >= k`` (``0xFFFFFFFF`` for
  k = 0), and the numbers of keys above and equal to ``t``.
  """
  if backend == "pallas":
    return _kth_key_pallas(keys, k)
  prefix = jnp.uint32(0)
  prefix_mask = jnp.uint32(0)
  remaining = k
  n_gt = jnp.int32(0)
  hist = digit = None
  shift = 32
  for p, bits in enumerate(_PASSES):
    shift -= bits
    size = 1 << bits
    # Pass p counts the digit of the keys that share the digits found so far; the others go
    # to a spare bin (the first pass counts every key).
    hist = sum(
        _histogram(_digit(key, shift, bits, prefix, prefix_mask, p > 0), size + 1)[:size]
        for key in keys
    )
    digit, above = _suffix_digit(hist, remaining)
    remaining = remaining - above
    n_gt = n_gt + above
    prefix = prefix | (digit.astype(jnp.uint32) << jnp.uint32(shift))
    prefix_mask = prefix_mask | jnp.uint32((size - 1) << shift)
  return prefix, n_gt, hist[digit]


def _digit(
    key: jnp.ndarray, shift: int, bits: int, prefix: jnp.ndarray, prefix_mask: jnp.ndarray,
    filtered: bool,
) -> jnp.ndarray:
  """The digit ``(key >> shift) & (2**bits - 1)`` as int32, or ``2**bits`` off the prefix."""
  size = 1 << bits
  digit = ((key >> jnp.uint32(shift)) & jnp.uint32(size - 1)).astype(jnp.int32)
  if not filtered:
    return digit
  return jnp.where((key & prefix_mask) == prefix, digit, size)


def _kth_key_pallas(
    keys: Sequence[jnp.ndarray], k: jnp.ndarray
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """``_kth_key`` with the histograms of ``kernels.key_histogram`` (Pallas, 4 passes of 8 bits).

  The kernel takes float scores and keys them with ``kernels.float_to_key``; it is given
  ``kernels.key_to_float(key)``, the float whose kernel key is exactly ``key`` (a bijection of
  bit patterns), so both backends rank the same keys (NaN low, ``-0.0 == 0.0``).
  """
  floats = [kernels.key_to_float(key) for key in keys]
  prefix = jnp.uint32(0)
  prefix_mask = jnp.uint32(0)
  remaining = k
  n_gt = jnp.int32(0)
  counts = None
  digit = None
  for p in range(32 // _PALLAS_BITS):
    shift = 32 - _PALLAS_BITS * (p + 1)
    counts = sum(kernels.key_histogram(x, shift, _PALLAS_BITS, prefix, prefix_mask,
                                       backend="pallas") for x in floats)
    digit, above = _suffix_digit(counts, remaining)
    remaining = remaining - above
    n_gt = n_gt + above
    prefix = prefix | (digit.astype(jnp.uint32) << jnp.uint32(shift))
    prefix_mask = prefix_mask | jnp.uint32(((1 << _PALLAS_BITS) - 1) << shift)
  return prefix, n_gt, counts[digit]


def _take_ties(
    key: jnp.ndarray, t: jnp.ndarray, r: jnp.ndarray, backend: str = "xla"
) -> jnp.ndarray:
  """Mask ``key > t`` plus the first ``r`` entries (by flat index) with ``key == t``.

  The cut is a second exact search, over the flat indices of the tied entries: the tie of
  flat index i gets the key ``~i`` (lower index, larger key; the others key 0), and the r-th
  largest of these keys is found by the same histogram passes as the threshold. Everything
  stays in the array's shape (per-shard counts summed across devices), nothing is gathered.
  """
  tie = key == t
  order = jnp.where(tie, ~_flat_index(key.shape), jnp.uint32(0))
  cut, _, _ = _kth_key([order], r, backend)
  # The keys ~i of tied entries are distinct and nonzero, so exactly r of them reach the cut
  # (for r = 0 the search returns the largest key, which entry 0 could reach: excluded).
  return (key > t) | (tie & (order >= cut) & (r > 0))


def _cut(
    key: jnp.ndarray, t: jnp.ndarray, r: jnp.ndarray, n_eq: jnp.ndarray, backend: str = "xla"
) -> jnp.ndarray:
  """``key > t`` plus the first ``r`` of the ``n_eq`` ties; one comparison when all are taken."""
  return jax.lax.cond(
      r >= n_eq, lambda: key >= t, lambda: _take_ties(key, t, r, backend)
  )


def _flat_rank(mask: jnp.ndarray) -> jnp.ndarray:
  """``#{j < i : mask_j}`` (row-major order) for every entry, as int32 in ``mask``'s shape.

  No prefix sum runs along the last axis across devices (XLA would gather that axis): the last
  axis is cut into ``B`` blocks (``B`` divides its length, at most ``_RANK_BLOCKS``), each
  block's own prefix sum is local, and the count of entries in earlier blocks is one masked
  row sum per block (a local sum and an all-reduce of one count per row). Earlier rows are
  counted with prefix sums over the leading axes, whose arrays have one entry per row.
  """
  shape = mask.shape
  nd = len(shape)
  x = mask.astype(jnp.int32)
  if nd == 0:
    return jnp.zeros((), jnp.int32)
  length = shape[-1]
  blocks = math.gcd(length, _RANK_BLOCKS)
  xb = x.reshape(shape[:-1] + (blocks, length // blocks))
  inner = jnp.cumsum(xb, axis=-1) - xb
  # Entries of the row in earlier blocks, one reduction per block: each is a local sum and an
  # all-reduce of one count per row (a prefix sum over the block axis, or a broadcast of the
  # block totals, lets XLA gather the totals along a sharded last axis instead).
  block = jax.lax.broadcasted_iota(jnp.int32, shape, nd - 1) // (length // blocks)
  before = jnp.stack(
      [jnp.sum(jnp.where(block < b, x, 0), axis=-1) for b in range(blocks)], axis=-1)
  rank = (inner + before[..., None]).reshape(shape)
  for axis in range(nd - 1):
    count = jnp.sum(x, axis=tuple(range(axis + 1, nd)))
    prior = jnp.cumsum(count, axis=axis) - count
    rank = rank + prior.reshape(prior.shape + (1,) * (nd - axis - 1))
  return rank


def nonzero_indices(mask: jnp.ndarray, size: int, fill_value: int) -> jnp.ndarray:
  """Ascending flat indices of the True entries of ``mask``, padded to ``size`` with ``fill_value``.

  The result equals ``jnp.nonzero(mask.ravel(), size=size, fill_value=fill_value)[0]`` (int32),
  but the array is never flattened nor gathered on a mesh: each True entry's rank in row-major
  order is computed in the mask's shape (``_flat_rank``) and its global flat index (from iotas)
  is scatter-added into its slot, which XLA partitions as a local scatter and an all-reduce of
  the ``size`` slots.

  Args:
    mask: a bool array of any shape.
    size: the static number of slots; True entries beyond the first ``size`` are left out.
    fill_value: the value of unused slots.

  Returns:
    An int32 array of shape ``(size,)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optax_sparse.masks import select
    >>> select.nonzero_indices(jnp.array([[False, True], [True, True]]), 4, -1).tolist()
    [1, 2, 3, -1]
  """
  if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 0:
    raise ValueError(f"size must be an integer >= 0; got {size!r}.")
  mask = jnp.asarray(mask, bool)
  if size == 0:
    return jnp.zeros((0,), jnp.int32)
  rank = _flat_rank(mask)
  slot = jnp.where(mask, rank, size)
  value = jnp.where(mask, _flat_index(mask.shape).astype(jnp.int32) + 1, 0)
  filled = jnp.zeros((size,), jnp.int32).at[slot].add(value, mode="drop")
  return jnp.where(filled > 0, filled - 1, jnp.int32(fill_value))


def _clamp_k(k: Any, n: int) -> jnp.ndarray:
  return jnp.clip(jnp.asarray(k, jnp.int32), 0, n)


def _backend(backend: str) -> str:
  """``kernels.resolve_backend``: ``"xla"`` or ``"pallas"``; ValueError naming ``backend``."""
  return kernels.resolve_backend(backend, name="backend")


@functools.partial(jax.jit, static_argnums=(2, 3))
def _select(scores: jnp.ndarray, k: Any, bottom: bool, backend: str = "xla") -> jnp.ndarray:
  key = _keys(scores)
  if bottom:
    key = ~key
  n = key.size
  if n == 0:
    return jnp.zeros(scores.shape, bool)
  k = _clamp_k(k, n)
  t, n_gt, n_eq = _kth_key([key], k, backend)
  return _cut(key, t, k - n_gt, n_eq, backend)


def select_top_k(scores: jnp.ndarray, k: Any, *, backend: str = "auto") -> jnp.ndarray:
  """Boolean mask of the ``k`` largest entries of ``scores``, ties by lower flat index.

  .. math::
    M_i = 1 \\iff \\#\\{j : s_j > s_i\\} + \\#\\{j < i : s_j = s_i\\} < k

  Exactly ``min(max(k, 0), n)`` entries are True. The threshold is found by a radix search over
  the order-preserving integer keys of the float32 bit pattern (two 16-bit histogram passes),
  then ties are cut by flat index; nothing is sorted. NaN ranks below ``-inf``.

  Args:
    scores: an array of any shape; bf16/f16/integer scores are upcast to float32.
    k: the number of entries to keep: a Python int or a traced int scalar (no recompilation
      for a new value).
    backend: where the threshold's histogram passes run: ``"auto"`` (the Pallas kernel
      ``kernels.key_histogram`` on GPU/TPU, jnp on CPU), ``"xla"`` (jnp: two 16-bit
      scatter-add passes) or ``"pallas"`` (four 8-bit kernel passes; interpret mode on CPU,
      slow). Every backend returns the identical mask.

  Returns:
    A bool array of ``scores.shape``.

  Raises:
    ValueError: naming ``backend`` when it is not one of the three.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> osp.select_top_k(jnp.array([0.5, 2.0, 1.0, 2.0]), 2).tolist()
    [False, True, False, True]
    >>> osp.select_top_k(jnp.array([1.0, 1.0, 1.0]), 2).tolist()
    [True, True, False]
  """
  if scores is None or not hasattr(scores, "shape") and not isinstance(scores, (list, tuple)):
    raise TypeError(f"scores must be an array; got {scores!r}.")
  if k is None or isinstance(k, (bool, str)):
    raise TypeError(f"k must be an int or an int array; got {k!r}.")
  backend = _backend(backend)
  scores = jnp.asarray(scores)
  return _select(scores, k, False, backend)


def select_bottom_k(scores: jnp.ndarray, k: Any, *, backend: str = "auto") -> jnp.ndarray:
  """Boolean mask of the ``k`` smallest entries of ``scores``, ties by lower flat index.

  NaN ranks lowest, so NaN entries are selected first. Otherwise as ``select_top_k``.

  Args:
    scores: an array of any shape.
    k: the number of entries to select (Python or traced int).
    backend: ``"auto"``, ``"xla"`` or ``"pallas"``, as in ``select_top_k``.

  Returns:
    A bool array of ``scores.shape`` with exactly ``clip(k, 0, n)`` True entries.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> osp.select_bottom_k(jnp.array([0.5, 2.0, 1.0, 0.5]), 2).tolist()
    [True, False, False, True]
  """
  if scores is None or not hasattr(scores, "shape") and not isinstance(scores, (list, tuple)):
    raise TypeError(f"scores must be an array; got {scores!r}.")
  if k is None or isinstance(k, (bool, str)):
    raise TypeError(f"k must be an int or an int array; got {k!r}.")
  backend = _backend(backend)
  scores = jnp.asarray(scores)
  return _select(scores, k, True, backend)


def select_top_k_global(scores_tree: Any, k: Any, *, backend: str = "auto") -> Any:
  """Masks with exactly ``k`` True entries in total over all leaves of ``scores_tree``.

  One threshold is searched over all leaves at once: each histogram pass sums per-leaf histograms (a
  reduction across leaves, never a concatenation). Ties are broken by leaf order (the order of
  ``jax.tree.leaves``), then flat index. ``None`` leaves are skipped and stay ``None``.

  Args:
    scores_tree: a pytree of score arrays (``None`` leaves allowed).
    k: the total number of entries to keep (Python or traced int).
    backend: ``"auto"``, ``"xla"`` or ``"pallas"``, as in ``select_top_k`` (the Pallas passes
      sum per-leaf kernel histograms).

  Returns:
    A pytree of bool arrays with the structure of ``scores_tree``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> m = osp.select_top_k_global({'a': jnp.array([3.0, 1.0]), 'b': jnp.array([2.0])}, 2)
    >>> m['a'].tolist(), m['b'].tolist()
    ([True, False], [True])
  """
  backend = _backend(backend)
  return _select_top_k_global(scores_tree, jnp.asarray(k, jnp.int32), backend)


@functools.partial(jax.jit, static_argnums=2)
def _select_top_k_global(scores_tree: Any, k: jnp.ndarray, backend: str = "xla") -> Any:
  leaves, treedef = jax.tree.flatten(scores_tree, is_leaf=lambda x: x is None)
  present = [i for i, x in enumerate(leaves) if x is not None and jnp.size(x) > 0]
  out: list[Any] = [
      None if x is None else jnp.zeros(jnp.shape(x), bool) for x in leaves
  ]
  if not present:
    return jax.tree.unflatten(treedef, out)
  keys = [_keys(leaves[i]) for i in present]
  n = sum(key.size for key in keys)
  k = _clamp_k(k, n)
  t, n_gt, n_eq = _kth_key(keys, k, backend)
  r = k - n_gt
  if len(keys) == 1:
    ties = n_eq[None]
  else:
    ties = jnp.stack([jnp.sum(key == t, dtype=jnp.int32) for key in keys])
  before = jnp.cumsum(ties) - ties
  for j, i in enumerate(present):
    left = jnp.clip(r - before[j], 0, ties[j])
    out[i] = _cut(keys[j], t, left, ties[j], backend)
  return jax.tree.unflatten(treedef, out)


def nm_mask(scores: jnp.ndarray, n: int, m: int, axis: int = -2) -> jnp.ndarray:
  """N:M mask: in each group of ``m`` consecutive entries along ``axis`` keep the ``n`` largest.

  Exactly ``n`` entries are kept per group; ties by lower index within the group, NaN lowest.
  The default axis is the fan-in (reduction) axis of Flax kernels, ``-2`` for ``(in, out)`` and
  ``(kh, kw, in, out)``, which 2:4 sparse tensor cores need (:doc:`/methods/nm`).
  Ranks are computed by pairwise comparison inside each group (``O(N·m)``) for ``m <= 16``, and
  by ``jax.lax.top_k`` within each group (static ``n``) for larger groups; no whole-array sort.

  Args:
    scores: an array with at least one dimension.
    n: kept entries per group, ``0 <= n <= m``.
    m: group size, ``m >= 1``; the length of ``axis`` must be divisible by ``m``.
    axis: the grouping axis.

  Returns:
    A bool array of ``scores.shape``.

  Raises:
    ValueError: naming ``n``, ``m`` or ``axis`` when they are invalid for ``scores``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> osp.nm_mask(jnp.array([[1.0], [4.0], [3.0], [2.0]]), 2, 4).ravel().tolist()
    [False, True, True, False]
  """
  if not isinstance(m, (int, np.integer)) or m < 1:
    raise ValueError(f"m must be an integer >= 1; got {m!r}.")
  if not isinstance(n, (int, np.integer)) or n < 0 or n > m:
    raise ValueError(f"n must be an integer with 0 <= n <= m = {m}; got {n!r}.")
  scores = jnp.asarray(scores)
  if scores.ndim == 0:
    raise ValueError(f"nm_mask needs an array with at least one axis; got shape {scores.shape}.")
  if not -scores.ndim <= axis < scores.ndim:
    raise ValueError(f"axis must be in [-{scores.ndim}, {scores.ndim}); got {axis!r}.")
  length = scores.shape[axis]
  if length % m:
    raise ValueError(
        f"axis {axis} of length {length} (shape {scores.shape}) is not divisible by m = {m}."
    )
  return _nm_mask(scores, n, m, axis)


@functools.partial(jax.jit, static_argnums=(1, 2, 3))
def _nm_mask(scores: jnp.ndarray, n: int, m: int, axis: int) -> jnp.ndarray:
  moved = jnp.moveaxis(scores, axis, -1)
  length = moved.shape[-1]
  key = _keys(moved).reshape(moved.shape[:-1] + (length // m, m))
  if m > _NM_PAIRWISE:
    # Large groups: lax.top_k inside each group (lower index first among equal keys); signed
    # keys keep the order of the unsigned ones.
    signed = jax.lax.bitcast_convert_type(key ^ jnp.uint32(0x80000000), jnp.int32)
    _, idx = jax.lax.top_k(signed, n)
    keep = jnp.sum(jax.nn.one_hot(idx, m, dtype=jnp.int32), axis=-2) > 0
    return jnp.moveaxis(keep.reshape(moved.shape), -1, axis)
  idx = jnp.arange(m)
  # rank_i = #{j : key_j > key_i} + #{j < i : key_j = key_i}
  above = (key[..., None, :] > key[..., :, None]) | (
      (key[..., None, :] == key[..., :, None]) & (idx[None, :] < idx[:, None])
  )
  rank = jnp.sum(above, axis=-1, dtype=jnp.int32)
  keep = (rank < n).reshape(moved.shape)
  return jnp.moveaxis(keep, -1, axis)


def block_mask(
    scores: jnp.ndarray,
    block_shape: Sequence[int],
    k_blocks: Any = None,
    *,
    density: Any = None,
    backend: str = "auto",
) -> jnp.ndarray:
  """Block mask: keep the blocks with the largest mean ``|score|``.

  The array is tiled by ``block_shape`` (aligned to the last dimensions; leading dimensions not
  covered by ``block_shape`` are blocks of size 1). Shapes not divisible by the block get
  partial edge blocks, scored by the mean over their valid entries. Exactly ``k_blocks`` blocks
  are kept (ties by block flat index); with ``density`` the count is
  ``count_for_density(number_of_blocks, density)``, so the kept fraction of *entries* is only
  approximately ``density`` when edge blocks are partial.

  Args:
    scores: an array with at least ``len(block_shape)`` dimensions.
    block_shape: the block size along the trailing dimensions, each ``>= 1``.
    k_blocks: number of blocks kept (Python or traced int); exclusive with ``density``.
    density: kept fraction of blocks (Python or traced float).
    backend: ``"auto"``, ``"xla"`` or ``"pallas"`` for the block threshold, as in
      ``select_top_k``.

  Returns:
    A bool array of ``scores.shape``, constant over each block.

  Raises:
    ValueError: for a bad ``block_shape`` or when not exactly one of ``k_blocks``/``density``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> s = jnp.array([[1.0, 1.0, 5.0, 5.0], [1.0, 1.0, 5.0, 5.0]])
    >>> osp.block_mask(s, (2, 2), 1).astype(int).tolist()
    [[0, 0, 1, 1], [0, 0, 1, 1]]
  """
  backend = _backend(backend)
  scores = jnp.asarray(scores)
  block_shape = tuple(int(b) for b in block_shape)
  if not block_shape or any(b < 1 for b in block_shape) or len(block_shape) > scores.ndim:
    raise ValueError(
        f"block_shape must be a non-empty tuple of ints >= 1 with at most {scores.ndim} "
        f"entries; got {block_shape!r}."
    )
  if (k_blocks is None) == (density is None):
    raise ValueError(
        f"give exactly one of k_blocks and density; got k_blocks={k_blocks!r}, "
        f"density={density!r}."
    )
  full = (1,) * (scores.ndim - len(block_shape)) + block_shape
  n_blocks = math.prod(-(-s // b) for s, b in zip(scores.shape, full, strict=True))
  k = count_for_density(n_blocks, density) if density is not None else k_blocks
  return _block_mask(scores, full, jnp.asarray(k, jnp.int32), backend)


@functools.partial(jax.jit, static_argnums=(1, 3))
def _block_mask(
    scores: jnp.ndarray, full: tuple[int, ...], k: jnp.ndarray, backend: str = "xla"
) -> jnp.ndarray:
  nb = tuple(-(-s // b) for s, b in zip(scores.shape, full, strict=True))
  pads = [(0, g * b - s) for s, b, g in zip(scores.shape, full, nb, strict=True)]
  a = jnp.pad(jnp.abs(scores.astype(jnp.float32)), pads)
  valid = jnp.pad(jnp.ones(scores.shape, jnp.float32), pads)
  split = tuple(x for g, b in zip(nb, full, strict=True) for x in (g, b))
  inner = tuple(range(1, 2 * scores.ndim, 2))
  block_sum = a.reshape(split).sum(axis=inner)
  block_cnt = valid.reshape(split).sum(axis=inner)
  block_score = block_sum / block_cnt
  keep = _select(block_score, k, False, backend)
  for ax, b in enumerate(full):
    keep = jnp.repeat(keep, b, axis=ax, total_repeat_length=keep.shape[ax] * b)
  return keep[tuple(slice(0, s) for s in scores.shape)]
