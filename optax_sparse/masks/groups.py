"""Groupings: structured sparsity as one abstraction shared by every mask rule.

A grouping maps a leaf of shape ``(n_0, …, n_{d-1})`` to *units* and back. Each dimension is tiled
by a block size ``b_i`` dividing ``n_i`` (``ValueError`` otherwise, at ``init``); a group is one
tile, so there are ``G = ∏ n_i / b_i`` groups of ``K = ∏ b_i`` members each. Two selection modes:

* **whole groups** (default): the entry scores of a group are reduced to one group score
  (``reduce``: L1 ``Σ|s|``, L2 ``(Σ s²)^{1/2}`` or mean ``Σ s / K``; default L1), the rule selects
  ``k = max(1, round(G·d))`` groups with the same exact selection code as unstructured sparsity
  (``select``: no sort, ties by lower group index), and every member of a pruned group is
  pruned. The units are one row ``(1, *grid)``, grid = ``(n_i / b_i)_i`` (the leaf's own layout,
  so a sharded leaf needs no gather; the group order is the grid's row-major order).
* **within groups** (``within=True``, the constant fan-in of SRigL): every group keeps the same
  number ``max(1, round(K·d))`` of its members, ranked inside the group (ties by lower member
  index). The units are a ``(G, K)`` matrix, one row per group.

Unstructured sparsity is the grouping of size 1 (``unstructured()``, every ``b_i = 1``): one unit
per entry, no reduction, exactly the per-entry selection. Rules never special-case a structure:
they score entries, call :func:`units` to get unit scores, select ``k`` units per row with the
row selection below, and call :func:`expand` to get the entry mask back.

Groupings (Flax layouts: dense kernels ``(in, out)``, convolutions ``(kh, kw, in, out)``,
attention projections ``(in, heads·head_dim)`` or ``(in, heads, head_dim)``):

* :func:`unstructured`: every entry its own group.
* :func:`neurons` (``axis=-1``): output neurons of a dense kernel, filters of a convolution — one
  group per index along ``axis``, all other entries of that slice its members.
* :func:`channels` (``axis=-2``): input features of a dense kernel, input channels of a
  convolution.
* :func:`heads` (``num_heads``, ``axis``): attention heads: ``axis`` is split into ``num_heads``
  contiguous chunks (``axis`` of length ``num_heads`` or ``num_heads·head_dim``).
* :func:`blocks`: ``k`` consecutive entries along ``axis`` (an int), or tiles of the trailing
  dimensions (a tuple).
* :func:`fan_in`: the constant fan-in grouping (``within=True`` over output neurons): every
  output neuron keeps the same number of inputs.

Non-finite entry scores (the rules map them to ``-inf``) make the whole group rank lowest.

References:
  Lasby, Golubeva, Evci, Nica, Ioannou, *Dynamic Sparse Training with Structured Sparsity*
  (SRigL, constant fan-in), arXiv 2305.02299.
  Wen, Wu, Wang, Chen, Li, *Learning Structured Sparsity in Deep Neural Networks*,
  arXiv 1608.03665 (group structures: filters, channels, shapes).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optax_sparse.masks import select

__all__ = [
    "Grouping",
    "blocks",
    "channels",
    "expand",
    "fan_in",
    "heads",
    "neurons",
    "resolve",
    "select_units",
    "unit_counts",
    "units",
    "unstructured",
]

_REDUCTIONS = ("l1", "l2", "mean")


@dataclasses.dataclass(frozen=True)
class Grouping:
  """How a leaf is cut into groups (build it with :func:`neurons`, :func:`blocks`, …).

  Attributes:
    kind: ``"unstructured"``, ``"slices"`` (one group per ``size`` consecutive indices along
      ``axis``, every other dimension whole), ``"heads"`` (``num`` chunks along ``axis``) or
      ``"blocks"`` (``size`` entries along ``axis`` when ``size`` is an int, tiles of the trailing
      dimensions when it is a tuple).
    axis: the axis of ``slices``, ``heads`` and int ``blocks``.
    size: the chunk length (``slices``, int ``blocks``) or the tile shape (tuple ``blocks``).
    num: the number of heads (``heads``).
    reduce: ``"l1"``, ``"l2"`` or ``"mean"``: the group score from the entry scores (whole-group
      mode).
    within: select members within every group at one common count (constant fan-in) instead of
      whole groups.
  """

  kind: str = "unstructured"
  axis: int = -1
  size: Any = 1
  num: int = 1
  reduce: str = "l1"
  within: bool = False

  def block_sizes(self, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The tile ``(b_0, …, b_{d-1})`` of a leaf of ``shape``; ValueError unless it divides."""
    shape = tuple(int(s) for s in shape)
    nd = len(shape)
    if self.kind == "unstructured":
      return (1,) * nd
    if self.kind in ("slices", "heads") or (self.kind == "blocks" and isinstance(self.size, int)):
      if nd == 0 or not -nd <= self.axis < nd:
        raise ValueError(
            f"groups: axis {self.axis} is out of range for a leaf of shape {shape}.")
      ax = self.axis % nd
      length = shape[ax]
      if self.kind == "heads":
        if length % self.num:
          raise ValueError(
              f"groups: axis {self.axis} of length {length} (shape {shape}) is not divisible by "
              f"num_heads = {self.num}.")
        chunk = length // self.num
      else:
        chunk = int(self.size)
      if length % chunk:
        raise ValueError(
            f"groups: axis {self.axis} of length {length} (shape {shape}) is not divisible by "
            f"the group size {chunk}.")
      if self.kind == "blocks":
        out = [1] * nd
      else:
        out = list(shape)
      out[ax] = chunk
      return tuple(out)
    tile = tuple(int(b) for b in self.size)
    if len(tile) > nd:
      raise ValueError(f"groups: block shape {tile} has more dimensions than the leaf {shape}.")
    full = (1,) * (nd - len(tile)) + tile
    for s, b in zip(shape, full, strict=True):
      if s % b:
        raise ValueError(
            f"groups: the leaf shape {shape} is not divisible by the block shape {tile}.")
    return full

  def layout(self, shape: tuple[int, ...]) -> tuple[int, int]:
    """``(G, K)``: the number of groups and of members per group for a leaf of ``shape``."""
    b = self.block_sizes(shape)
    k = math.prod(b)
    return math.prod(shape) // max(k, 1), k

  def unit_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The units: ``(1, *grid)`` for whole groups (one row), ``(G, K)`` within groups."""
    g, k = self.layout(shape)
    if self.within:
      return (g, k)
    b = self.block_sizes(shape)
    return (1, *(int(s) // bi for s, bi in zip(shape, b, strict=True)))


def _check_reduce(reduce: str) -> str:
  if reduce not in _REDUCTIONS:
    raise ValueError(f"reduce must be one of {_REDUCTIONS}; got {reduce!r}.")
  return reduce


def _check_axis(axis: Any) -> int:
  if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
    raise ValueError(f"axis must be an int; got {axis!r}.")
  return int(axis)


def _check_positive(name: str, value: Any) -> int:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
    raise ValueError(f"{name} must be an integer >= 1; got {value!r}.")
  return int(value)


def unstructured() -> Grouping:
  """Every entry its own group (size 1): plain unstructured sparsity.

  Returns:
    A :class:`Grouping`.

  Examples:
    >>> import optax_sparse as osp
    >>> osp.groups.unstructured().layout((4, 8))
    (32, 1)
  """
  return Grouping()


def neurons(axis: int = -1, *, reduce: str = "l1") -> Grouping:
  """Output neurons (dense kernels) or filters (convolutions): one group per index along ``axis``.

  .. math::
    \\text{score}_j = \\operatorname{reduce}_{i : i_{axis} = j} s_i

  Args:
    axis: the output axis (−1 for Flax kernels ``(in, out)`` and ``(kh, kw, in, out)``).
    reduce: ``"l1"`` (default), ``"l2"`` or ``"mean"``.

  Returns:
    A :class:`Grouping`.

  Examples:
    >>> import optax_sparse as osp
    >>> osp.groups.neurons().layout((3, 2, 4, 8))
    (8, 24)
  """
  return Grouping("slices", _check_axis(axis), 1, 1, _check_reduce(reduce))


def channels(axis: int = -2, *, reduce: str = "l1") -> Grouping:
  """Input features (dense kernels) or input channels (convolutions): groups along ``axis``.

  Args:
    axis: the input axis (−2 for Flax kernels).
    reduce: ``"l1"`` (default), ``"l2"`` or ``"mean"``.

  Returns:
    A :class:`Grouping`.

  Examples:
    >>> import optax_sparse as osp
    >>> osp.groups.channels().layout((3, 3, 4, 8))
    (4, 72)
  """
  return Grouping("slices", _check_axis(axis), 1, 1, _check_reduce(reduce))


def heads(num_heads: int, axis: int = -1, *, reduce: str = "l1") -> Grouping:
  """Attention heads: ``axis`` split into ``num_heads`` contiguous chunks, one group each.

  For a fused projection ``(in, heads·head_dim)`` use ``axis=-1``; for Flax ``DenseGeneral``
  kernels ``(in, heads, head_dim)`` use ``axis=-2`` (chunks of one index); for the output
  projection ``(heads, head_dim, out)`` use ``axis=0``.

  Args:
    num_heads: the number of heads (the axis length must be a multiple of it).
    axis: the axis that carries the heads.
    reduce: ``"l1"`` (default), ``"l2"`` or ``"mean"``.

  Returns:
    A :class:`Grouping`.

  Examples:
    >>> import optax_sparse as osp
    >>> osp.groups.heads(4).layout((16, 32))
    (4, 128)
  """
  return Grouping("heads", _check_axis(axis), 1, _check_positive("num_heads", num_heads),
                  _check_reduce(reduce))


def blocks(size: int | tuple[int, ...], axis: int = -2, *, reduce: str = "l1",
           within: bool = False) -> Grouping:
  """Blocks: ``size`` consecutive entries along ``axis`` (an int), or tiles of the trailing dims.

  With ``within=True`` and an int ``size = m`` every block keeps the same number of entries: at
  density n/m this is the N:M pattern.

  Args:
    size: an int k (k-element blocks along ``axis``) or a tuple of ints (a tile of the trailing
      dimensions, e.g. ``(4, 4)``).
    axis: the axis of int blocks (−2, the fan-in of Flax kernels, as N:M).
    reduce: ``"l1"`` (default), ``"l2"`` or ``"mean"``.
    within: keep a common number of entries in every block instead of whole blocks.

  Returns:
    A :class:`Grouping`.

  Examples:
    >>> import optax_sparse as osp
    >>> osp.groups.blocks(4).layout((8, 3)), osp.groups.blocks((2, 2)).layout((4, 6))
    ((6, 4), (6, 4))
  """
  if isinstance(size, (int, np.integer)) and not isinstance(size, bool):
    size = _check_positive("size", size)
  else:
    try:
      size = tuple(_check_positive("size", s) for s in size)
    except TypeError:
      raise ValueError(f"size must be an int or a tuple of ints; got {size!r}.") from None
    if not size:
      raise ValueError(f"size must be an int or a non-empty tuple of ints; got {size!r}.")
  return Grouping("blocks", _check_axis(axis), size, 1, _check_reduce(reduce), bool(within))


def fan_in(axis: int = -1) -> Grouping:
  """Constant fan-in (SRigL): every output neuron along ``axis`` keeps the same number of inputs.

  .. math::
    \\#\\{i : M_i = 1,\\ i_{axis} = j\\} = \\max(1, \\operatorname{round}(K d)) \\quad \\forall j

  Args:
    axis: the output axis (−1 for Flax kernels).

  Returns:
    A :class:`Grouping` with ``within=True``.

  Examples:
    >>> import optax_sparse as osp
    >>> osp.groups.fan_in().unit_shape((6, 4))
    (4, 6)

  References:
    Lasby et al., *Dynamic Sparse Training with Structured Sparsity*, arXiv 2305.02299.
  """
  return Grouping("slices", _check_axis(axis), 1, 1, "l1", True)


def check(name: str, value: Any) -> None:
  """Raises ValueError naming ``name`` unless ``value`` is None, a Grouping or a callable."""
  if value is None or isinstance(value, Grouping) or callable(value):
    return
  raise ValueError(
      f"{name} must be None, an osp.groups grouping or a function (path, leaf) -> grouping; got "
      f"{value!r}.")


def resolve(groups: Any, params: Any, eligible: Any) -> Any:
  """The per-leaf groupings: a Grouping per eligible leaf, None elsewhere.

  Args:
    groups: None (unstructured), a :class:`Grouping` for every eligible leaf, or a function
      ``(path, leaf) -> Grouping | None`` (None: unstructured for that leaf).
    params: the parameters (only paths and shapes are read).
    eligible: a pytree of Python bools like the parameters.

  Returns:
    A pytree like the parameters.
  """
  leaves, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=lambda x: x is None)
  elig = jax.tree.leaves(eligible, is_leaf=lambda x: x is None)
  out = []
  for (path, leaf), ok in zip(leaves, elig, strict=True):
    if leaf is None or not ok:
      out.append(None)
      continue
    g = groups(path, leaf) if callable(groups) and not isinstance(groups, Grouping) else groups
    if g is None:
      g = Grouping()
    if not isinstance(g, Grouping):
      raise ValueError(
          f"groups returned {g!r} for {jax.tree_util.keystr(path)}; expected a grouping or None.")
    g.block_sizes(jnp.shape(leaf))  # validates the shape now (at init).
    out.append(g)
  return jax.tree.unflatten(treedef, out)


def _split(shape: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
  return tuple(x for s, bi in zip(shape, b, strict=True) for x in (s // bi, bi))


def units(grouping: Grouping, scores: jax.Array) -> jax.Array:
  """Unit scores: ``(1, *grid)`` reduced group scores, or ``(G, K)`` member scores within groups.

  In whole-group mode a group with a ±inf entry score scores ``-inf`` (ranks lowest); NaN, the
  exclusion marker, propagates.
  """
  s = jnp.asarray(scores, jnp.float32)
  shape = s.shape
  b = grouping.block_sizes(shape)
  g, k = grouping.layout(shape)
  nd = len(shape)
  split = s.reshape(_split(shape, b))
  if grouping.within:
    order = tuple(range(0, 2 * nd, 2)) + tuple(range(1, 2 * nd, 2))
    return jnp.transpose(split, order).reshape(g, k)
  if k == 1:
    return s[None]
  member_axes = tuple(range(1, 2 * nd, 2))
  finite = jnp.isfinite(split) | jnp.isnan(split)
  x = jnp.where(finite, split, 0.0)
  if grouping.reduce == "l1":
    red = jnp.sum(jnp.abs(x), axis=member_axes)
  elif grouping.reduce == "l2":
    red = jnp.sqrt(jnp.sum(x * x, axis=member_axes))
  else:
    red = jnp.sum(x, axis=member_axes) / k
  bad = ~jnp.all(finite, axis=member_axes)
  return jnp.where(bad, -jnp.inf, red)[None]


def unit_mask(grouping: Grouping, mask: jax.Array) -> jax.Array:
  """The units of a bool entry mask: a group is active when any of its members is."""
  m = jnp.asarray(mask, bool)
  shape = m.shape
  b = grouping.block_sizes(shape)
  g, k = grouping.layout(shape)
  nd = len(shape)
  split = m.reshape(_split(shape, b))
  if grouping.within:
    order = tuple(range(0, 2 * nd, 2)) + tuple(range(1, 2 * nd, 2))
    return jnp.transpose(split, order).reshape(g, k)
  if k == 1:
    return m[None]
  return jnp.any(split, axis=tuple(range(1, 2 * nd, 2)))[None]


def expand(grouping: Grouping, unit_values: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """The entry array of ``shape`` from unit values (the inverse of :func:`units` for masks)."""
  shape = tuple(int(s) for s in shape)
  b = grouping.block_sizes(shape)
  nd = len(shape)
  grid = tuple(s // bi for s, bi in zip(shape, b, strict=True))
  if grouping.within:
    x = unit_values.reshape(grid + b)
    inverse = np.argsort(tuple(range(0, 2 * nd, 2)) + tuple(range(1, 2 * nd, 2)))
    return jnp.transpose(x, tuple(int(i) for i in inverse)).reshape(shape)
  if math.prod(b) == 1:
    return unit_values.reshape(shape)
  x = unit_values.reshape(tuple(v for gi in grid for v in (gi, 1)))
  return jnp.broadcast_to(x, _split(shape, b)).reshape(shape)


def unit_counts(grouping: Grouping, shape: tuple[int, ...], density: Any) -> jax.Array:
  """Units kept per row at ``density``: ``max(1, round(G·d))`` groups, or ``round(K·d)`` members."""
  g, k = grouping.layout(shape)
  return select.count_for_density(k if grouping.within else g, density)


# Rows of at most this many units are ranked by pairwise comparison (``O(N·K)``, local to each
# row); longer rows by the bit-by-bit threshold search of ``_row_top_k``.
_ROW_PAIRWISE = 16


def _row_count(x: jax.Array) -> jax.Array:
  return jnp.sum(x, axis=1, keepdims=True, dtype=jnp.int32)


def _row_top_k(scores: jax.Array, k: jax.Array) -> jax.Array:
  """Per-row mask of the ``k[r]`` largest scores (ties by lower index, NaN lowest).

  Equal to keeping the first ``k[r]`` entries of a stable descending argsort of each row, but
  built from row reductions only, in the array's own ``(rows, cols)`` layout: nothing is sorted,
  flattened or gathered, so on a mesh each pass is a local comparison and row sum plus (when
  the member axis is sharded) an all-reduce of one count per row.

  * ``cols <= _ROW_PAIRWISE``: rank by pairwise comparison inside each row.
  * otherwise: the threshold ``T_r`` (the ``k[r]``-th largest key of row r, on the
    order-preserving uint32 keys of ``select``) is built bit by bit from the top: 32 passes, each
    one count per row of ``key >= candidate``. Entries with ``key > T_r`` are kept; when a row's
    ties at ``T_r`` are not all needed (``r = k - #{key > T_r} < #{key = T_r}``), the first
    ``r`` ties by index are kept, found by the same bit-by-bit search over the index bound
    (``ceil(log2(cols + 1))`` passes, only when some row needs it).
  """
  rows, cols = scores.shape
  key = select._keys(scores)  # noqa: SLF001 - the shared key map of the selections.
  k = jnp.clip(jnp.reshape(k, (rows, 1)), 0, cols).astype(jnp.int32)
  index = jax.lax.broadcasted_iota(jnp.int32, (rows, cols), 1)
  if cols <= _ROW_PAIRWISE:
    a, b = key[:, None, :], key[:, :, None]  # [r, i, j]: entry j against entry i.
    above = (a > b) | ((a == b) & (index[:, None, :] < index[:, :, None]))
    rank = jnp.sum(above, axis=-1, dtype=jnp.int32)
    return rank < k
  def threshold_bit(i, t):
    cand = t | jnp.left_shift(jnp.uint32(1), (31 - i).astype(jnp.uint32))
    return jnp.where(_row_count(key >= cand) >= k, cand, t)

  # A loop, not 32 unrolled passes: its body compiles once.
  t = jax.lax.fori_loop(0, 32, threshold_bit, jnp.zeros((rows, 1), jnp.uint32))
  n_gt = _row_count(key > t)
  n_eq = _row_count(key == t)
  r = k - n_gt

  def all_ties() -> jax.Array:
    # r >= n_eq means #{key >= t} = k exactly (t is the largest with #{key >= t} >= k).
    return (key >= t) & (k > 0)

  def cut_ties() -> jax.Array:
    tie = key == t
    bits = int(cols).bit_length()

    # The largest bound c with #{tie, index < c} <= r; the count rises by one per tie, so it
    # reaches exactly r (every tie when r >= n_eq).
    def bound_bit(i, bound):
      cand = bound | jnp.left_shift(jnp.int32(1), bits - 1 - i)
      return jnp.where(_row_count(tie & (index < cand)) <= r, cand, bound)

    bound = jax.lax.fori_loop(0, bits, bound_bit, jnp.zeros((rows, 1), jnp.int32))
    return ((key > t) | (tie & (index < bound))) & (k > 0)

  return jax.lax.cond(jnp.any(r < n_eq), cut_ties, all_ties)


def select_units(unit_scores: jax.Array, k: Any) -> jax.Array:
  """The ``k`` largest units of every row (``k`` a scalar or one count per row), exact counts.

  A single row (whole groups, unstructured) goes through ``select.select_top_k`` (radix search,
  traced ``k``); several rows (within groups) are ranked inside each row by row reductions
  (``_row_top_k``: pairwise comparison for rows of at most 16 units, otherwise a bit-by-bit
  threshold search), never by sorting, so no row is gathered on a mesh.
  """
  rows = unit_scores.shape[0]
  if rows == 1:
    return select.select_top_k(unit_scores[0], jnp.reshape(k, (-1,))[0])[None, :]
  return _row_top_k(unit_scores, jnp.broadcast_to(jnp.asarray(k, jnp.int32), (rows,)))


GroupsArg = None | Grouping | Callable[[Any, Any], Grouping | None]
