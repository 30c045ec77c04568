"""Export a sparse model with real storage savings, and load it back bit-identically.

Masks in the optimizer state are one byte per entry and a pruned dense array still stores every
zero. :func:`compress` keeps, for each sparse leaf, only

* ``"bitmask"``: the values of the active entries in row-major order (their own dtype) and the
  mask packed to one bit per entry (``numpy.packbits``): ``z · itemsize + ⌈n / 8⌉`` bytes instead
  of ``n · itemsize``;
* ``"nm"`` (with ``nm=(N, M)``, for leaves whose pattern has at most N entries in every group of
  M along ``nm_axis``): N values per group and each value's position in its group, packed to
  ``⌈log₂ M⌉`` bits (the layout of 2:4 sparse tensor-core metadata): ``(N / M) n · itemsize +
  N ⌈log₂ M⌉ n / (8 M)`` bytes, the same size as the bitmask at 2:4;

and every other leaf as it is. :func:`save_compressed` writes this through Orbax (the arrays with
``StandardSave``, the layout as JSON); :func:`load_compressed` restores the parameters and
their masks.
:func:`to_bcoo` / :func:`to_bcsr` convert leaves to ``jax.experimental.sparse`` arrays for
inference (``x @ w_bcoo``); whether that is faster than the dense matmul depends on the
hardware and the density (see the export benchmark page: on CPU at 90% sparsity it was not).

Library decisions:

* The pattern of a leaf is its mask (``masks``, e.g. ``osp.get_masks(state)``), else the entries
  whose bits are not +0.0 (``x != 0`` or a sign bit set, so that a ``-0.0`` is stored and comes
  back as ``-0.0``). With ``masks``, an entry outside its mask must be zero (ValueError
  otherwise); a ``-0.0`` outside the mask is loaded as ``+0.0`` (``sparse()`` and
  :func:`~optax_sparse.masks.finetune.keep_mask` only produce ``+0.0``). Active entries whose
  value is 0 are stored, so the mask survives the round trip.
* Without ``masks``, leaves chosen by ``where`` (default ``ndim >= 2``) are compressed when that
  saves bytes (a dense kernel stays dense); with ``masks``, every masked leaf is compressed.
* In the ``"nm"`` format each group holds exactly N slots: a group with fewer active entries is
  padded with its lowest-index inactive entries, which are stored as zeros; the loaded mask of
  such a leaf is the N:M slot pattern (exactly N per group).
* Nothing is imported from Orbax or ``jax.experimental.sparse`` until a function needs it.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optax_sparse import _eligibility
from optax_sparse import report as report_lib

__all__ = [
    "CompressedParams",
    "compress",
    "decompress",
    "load_compressed",
    "save_compressed",
    "to_bcoo",
    "to_bcsr",
]

FORMAT = "optax_sparse.compressed/1"


def _is_none(x: Any) -> bool:
  return x is None


class CompressedParams(NamedTuple):
  """A compressed parameter tree.

  Attributes:
    arrays: ``{leaf id: {"values"|"bits"|"index_bits"|"dense": numpy array}}`` (what Orbax
      saves).
    meta: the layout, JSON-serializable: ``{"format", "leaves": [{"name", "shape", "dtype",
      "kind", "masked", "nnz", "n", "m", "axis"}]}`` in the parameters' leaf order.
  """

  arrays: dict[str, dict[str, np.ndarray]]
  meta: dict[str, Any]

  @property
  def nbytes(self) -> int:
    """Bytes of all stored arrays."""
    return sum(int(a.nbytes) for leaf in self.arrays.values() for a in leaf.values())

  @property
  def dense_nbytes(self) -> int:
    """Bytes of the same parameters stored dense."""
    return sum(math.prod(r["shape"]) * np.dtype(_dtype(r["dtype"])).itemsize
               for r in self.meta["leaves"])


def _dtype(name: str) -> Any:
  return jnp.dtype(name)  # knows bfloat16 and the float8 types, unlike numpy alone


def _bit_pattern(x: np.ndarray) -> np.ndarray:
  """Entries whose bits are not those of +0.0 (nonzero, NaN, or -0.0)."""
  if np.issubdtype(x.dtype, np.integer) or x.dtype == bool:
    return x != 0
  return (x != 0) | np.signbit(x.astype(np.float32))


def _nm_slots(pattern: np.ndarray, n: int, m: int, axis: int) -> np.ndarray | None:
  """The N slots per group: the active entries, padded with the lowest-index inactive ones.

  Returns the in-group positions, shape ``(groups, n)`` (sorted), or None when the pattern has
  more than N active entries in some group or the axis is not divisible by M.
  """
  if pattern.ndim == 0 or not -pattern.ndim <= axis < pattern.ndim or pattern.shape[axis] % m:
    return None
  groups = np.moveaxis(pattern, axis, -1).reshape(-1, m)
  if np.any(groups.sum(axis=-1) > n):
    return None
  # Active entries first, then inactive, each by position; the first n are the slots.
  order = np.argsort(~groups, axis=-1, kind="stable")[:, :n]
  return np.sort(order, axis=-1)


def _index_bits(m: int) -> int:
  return max(1, math.ceil(math.log2(m)))


def compress(
    params: Any,
    masks: Any = None,
    *,
    where: _eligibility.Where = None,
    nm: tuple[int, int] | None = None,
    nm_axis: int = -2,
) -> CompressedParams:
  """Compresses the sparse leaves of ``params``: active values plus packed masks or N:M indices.

  .. math::
    \\text{bytes}_{\\text{bitmask}} = z · s + ⌈n/8⌉, \\qquad
    \\text{bytes}_{N:M} = \\tfrac{N}{M} n · s + ⌈\\tfrac{N}{M} n ⌈\\log_2 M⌉ / 8⌉

  for a leaf of n entries, z active, itemsize s (against n · s dense).

  Args:
    params: the parameters (any pytree of arrays).
    masks: the masks (a bool array or None per leaf, ``osp.get_masks(state)``); default: the
      nonzero bit pattern of the leaves selected by ``where``.
    where: which leaves to compress when ``masks`` is None (None: ``ndim >= 2``; a predicate
      ``(path, leaf) -> bool`` or a static pytree of bools).
    nm: store leaves that conform to this N:M pattern in the ``"nm"`` format, e.g. ``(2, 4)``.
    nm_axis: the N:M grouping axis (default -2, the fan-in of Flax kernels).

  Returns:
    A :class:`CompressedParams`.

  Raises:
    ValueError: ``masks`` not matching the parameters; nonzero entries outside a mask; a bad
      ``nm``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> params = {"w": jnp.zeros((64, 64)).at[0, :8].set(1.0), "b": jnp.ones(64)}
    >>> c = osp.compress(params)
    >>> c.meta["leaves"][1]["kind"], c.nbytes, c.dense_nbytes
    ('bitmask', 800, 16640)
    >>> restored, masks = osp.decompress(c, like=params)
    >>> bool((restored["w"] == params["w"]).all()), int(masks["w"].sum()), masks["b"]
    (True, 8, None)
  """
  if nm is not None:
    if (not isinstance(nm, (tuple, list)) or len(nm) != 2
        or not all(isinstance(v, (int, np.integer)) for v in nm) or not 1 <= nm[0] <= nm[1]):
      raise ValueError(f"nm must be (n, m) with integers 1 <= n <= m; got {nm!r}.")
    nm = (int(nm[0]), int(nm[1]))
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  if masks is None:
    eligible = treedef.flatten_up_to(_eligibility.eligible_tree(where, params))
    mask_leaves = [None] * len(flat)
  else:
    try:
      mask_leaves = treedef.flatten_up_to(masks)
    except (ValueError, TypeError) as err:
      raise ValueError(f"masks must have the structure of the parameters: {err}") from err
    eligible = [m is not None for m in mask_leaves]
  arrays: dict[str, dict[str, np.ndarray]] = {}
  leaves_meta = []
  for i, ((path, x), e, m) in enumerate(zip(flat, eligible, mask_leaves, strict=True)):
    x = np.asarray(x)
    name = report_lib.path_name(path)
    record: dict[str, Any] = {"name": name, "shape": list(x.shape), "dtype": str(x.dtype),
                              "masked": m is not None}
    key = f"{i:05d}"
    if x.size == 0:
      record["kind"] = "empty"  # Orbax cannot store a zero-size array
    elif not e:
      record["kind"] = "dense"
      arrays[key] = {"dense": x}
    else:
      if m is not None:
        pattern = np.asarray(m).astype(bool)
        if pattern.shape != x.shape:
          raise ValueError(f"masks[{name!r}] has shape {pattern.shape} for a parameter of shape "
                           f"{x.shape}.")
        outside = int(np.count_nonzero((x != 0) & ~pattern))
        if outside:
          raise ValueError(f"params[{name!r}] has {outside} nonzero entries outside its mask.")
      else:
        pattern = _bit_pattern(x)
      record["kind"], arrays_i = _compress_leaf(x, pattern, nm, nm_axis, keep=m is not None)
      record.update(arrays_i.pop("_meta"))
      if arrays_i:
        arrays[key] = arrays_i
    leaves_meta.append(record)
  return CompressedParams(arrays, {"format": FORMAT, "leaves": leaves_meta})


def _compress_leaf(x, pattern, nm, nm_axis, keep):
  if nm is not None:
    n, m = nm
    slots = _nm_slots(pattern, n, m, nm_axis)
    if slots is not None:
      moved = np.moveaxis(x, nm_axis, -1).reshape(-1, m)
      values = np.take_along_axis(moved, slots, axis=-1)
      b = _index_bits(m)
      bits = ((slots[..., None] >> np.arange(b)) & 1).astype(bool)
      return "nm", {"values": values, "index_bits": np.packbits(bits.ravel()),
                    "_meta": {"nnz": int(values.size), "n": n, "m": m,
                              "axis": nm_axis % x.ndim}}
  nnz = int(pattern.sum())
  compressed = nnz * x.dtype.itemsize + -(-x.size // 8)
  if not keep and compressed >= x.nbytes:
    return "dense", {"dense": x, "_meta": {}}
  out = {"bits": np.packbits(pattern.ravel()), "_meta": {"nnz": nnz}}
  if nnz:
    out["values"] = x[pattern]
  return "bitmask", out


def _unpack_leaf(record: dict[str, Any], arrays: dict[str, Any]) -> tuple[jax.Array, Any]:
  shape, dtype = tuple(record["shape"]), _dtype(record["dtype"])
  size = math.prod(shape)
  kind = record["kind"]
  if kind == "empty":
    return jnp.zeros(shape, dtype), (jnp.zeros(shape, bool) if record["masked"] else None)
  if kind == "dense":
    return jnp.asarray(arrays["dense"]), None
  if kind == "bitmask":
    mask = jnp.unpackbits(jnp.asarray(arrays["bits"]), count=size).astype(bool)
    if record["nnz"] == 0:
      return jnp.zeros(shape, dtype), mask.reshape(shape)
    values = jnp.asarray(arrays["values"])
    pos = jnp.clip(jnp.cumsum(mask, dtype=jnp.int32) - 1, 0, values.size - 1)
    out = jnp.where(mask, values[pos], jnp.zeros((), dtype))
    return out.reshape(shape), mask.reshape(shape)
  if kind == "nm":
    n, m, axis = record["n"], record["m"], record["axis"]
    b = _index_bits(m)
    values = jnp.asarray(arrays["values"])
    bits = jnp.unpackbits(jnp.asarray(arrays["index_bits"]), count=values.size * b)
    slots = jnp.sum(bits.reshape(-1, n, b).astype(jnp.int32) << jnp.arange(b), axis=-1)
    onehot = slots[..., None] == jnp.arange(m)  # (groups, n, m)
    mask = jnp.any(onehot, axis=1)
    # A gather, not a sum over the slots: -0.0 + 0.0 would lose the sign bit.
    which = jnp.argmax(onehot, axis=1)  # (groups, m): the slot of each position
    group = jnp.where(mask, jnp.take_along_axis(values, which, axis=1), jnp.zeros((), dtype))
    moved_shape = shape[:axis] + shape[axis + 1:] + (shape[axis],)
    out = jnp.moveaxis(group.reshape(moved_shape), -1, axis)
    return out.astype(dtype), jnp.moveaxis(mask.reshape(moved_shape), -1, axis)
  raise ValueError(f"unknown leaf kind {kind!r} in a compressed checkpoint.")


def _nest(names: list[str], values: list[Any]) -> dict[str, Any]:
  out: dict[str, Any] = {}
  for name, v in zip(names, values, strict=True):
    node = out
    *head, last = name.split("/")
    for k in head:
      node = node.setdefault(k, {})
    node[last] = v
  return out


def decompress(compressed: CompressedParams, like: Any = None) -> tuple[Any, Any]:
  """The parameters and masks of a :class:`CompressedParams`, bit-identical to what was saved.

  Args:
    compressed: what :func:`compress` returned (or :func:`load_compressed` read).
    like: a pytree with the parameters' structure (arrays or ``jax.ShapeDtypeStruct``); the
      result takes its structure. Default: nested dicts keyed by the leaf names.

  Returns:
    ``(params, masks)``: ``masks`` has a bool array for every compressed leaf (the stored
    pattern) and None for leaves stored dense.

  Raises:
    ValueError: an unknown format, or ``like`` with other leaves, shapes or dtypes.
  """
  meta = compressed.meta
  if meta.get("format") != FORMAT:
    raise ValueError(f"not a compressed checkpoint of this library: format {meta.get('format')!r}"
                     f" (expected {FORMAT!r}).")
  params, masks = [], []
  for i, record in enumerate(meta["leaves"]):
    value, mask = _unpack_leaf(record, compressed.arrays.get(f"{i:05d}", {}))
    params.append(value)
    masks.append(mask)
  names = [r["name"] for r in meta["leaves"]]
  if like is None:
    return _nest(names, params), _nest(names, masks)
  leaves, treedef = jax.tree.flatten(like)
  if len(leaves) != len(params):
    raise ValueError(f"like has {len(leaves)} leaves; the checkpoint has {len(params)}.")
  for name, a, b in zip(names, leaves, params, strict=True):
    if tuple(a.shape) != tuple(b.shape) or jnp.dtype(a.dtype) != b.dtype:
      raise ValueError(f"like: leaf {name!r} is {a.dtype}{list(a.shape)}; the checkpoint has "
                       f"{b.dtype}{list(b.shape)}.")
  return treedef.unflatten(params), treedef.unflatten(masks)


def save_compressed(
    path: str | pathlib.Path,
    params: Any,
    masks: Any = None,
    *,
    where: _eligibility.Where = None,
    nm: tuple[int, int] | None = None,
    nm_axis: int = -2,
) -> CompressedParams:
  """Compresses ``params`` (see :func:`compress`) and writes it to a new Orbax folder ``path``.

  The folder holds two Orbax items: ``arrays`` (``StandardSave``) and ``meta`` (``JsonSave``,
  the layout).

  Args:
    path: a folder that does not exist yet.
    params: the parameters.
    masks: their masks (``osp.get_masks(state)``), optional.
    where: see :func:`compress`.
    nm: see :func:`compress`.
    nm_axis: see :func:`compress`.

  Returns:
    The :class:`CompressedParams` written (its ``nbytes`` and ``dense_nbytes`` give the
    saving).
  """
  import orbax.checkpoint as ocp  # noqa: PLC0415 - optional at import time

  compressed = compress(params, masks, where=where, nm=nm, nm_axis=nm_axis)
  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  checkpointer.save(
      pathlib.Path(path).absolute(),
      ocp.args.Composite(arrays=ocp.args.StandardSave(compressed.arrays),
                         meta=ocp.args.JsonSave(compressed.meta)))
  return compressed


def is_compressed_checkpoint(path: str | pathlib.Path) -> bool:
  """Whether ``path`` is a folder written by :func:`save_compressed`."""
  path = pathlib.Path(path)
  meta = path / "meta" / "metadata"
  if not meta.is_file():
    return False
  try:
    return json.loads(meta.read_text()).get("format") == FORMAT
  except (OSError, ValueError, AttributeError):
    return False


def load_compressed(path: str | pathlib.Path, like: Any = None) -> tuple[Any, Any]:
  """Reads what :func:`save_compressed` wrote: the parameters (bit-identical) and their masks.

  Args:
    path: the folder.
    like: the parameters' structure (see :func:`decompress`); default nested dicts by name.

  Returns:
    ``(params, masks)`` as :func:`decompress`.

  Examples:
    >>> import tempfile, pathlib, jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> params = {"w": jnp.zeros((8, 8)).at[2].set(-1.5)}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...   _ = osp.save_compressed(pathlib.Path(tmp) / "ckpt", params)
    ...   restored, masks = osp.load_compressed(pathlib.Path(tmp) / "ckpt")
    >>> bool((restored["w"] == params["w"]).all()), int(masks["w"].sum())
    (True, 8)
  """
  import orbax.checkpoint as ocp  # noqa: PLC0415 - optional at import time

  checkpointer = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
  restored = checkpointer.restore(
      pathlib.Path(path).absolute(),
      ocp.args.Composite(arrays=ocp.args.StandardRestore(), meta=ocp.args.JsonRestore()))
  return decompress(CompressedParams(dict(restored.arrays), dict(restored.meta)), like)


def _sparse_leaves(params: Any, masks: Any, where: _eligibility.Where, convert):
  treedef = jax.tree.structure(params)
  leaves = treedef.flatten_up_to(params)
  if masks is None:
    eligible = treedef.flatten_up_to(_eligibility.eligible_tree(where, params))
    mask_leaves = [None] * len(leaves)
  else:
    mask_leaves = treedef.flatten_up_to(masks)
    eligible = [m is not None for m in mask_leaves]
  out = []
  for x, e, m in zip(leaves, eligible, mask_leaves, strict=True):
    if not e:
      out.append(x)
      continue
    x_np = np.asarray(x)
    pattern = np.asarray(m).astype(bool) if m is not None else x_np != 0
    out.append(convert(x_np, pattern))
  return treedef.unflatten(out)


def _bcoo(x: np.ndarray, pattern: np.ndarray):
  from jax.experimental import sparse  # noqa: PLC0415 - imported on use

  indices = np.argwhere(pattern).astype(np.int32)  # row-major: sorted and unique
  return sparse.BCOO((jnp.asarray(x[pattern]), jnp.asarray(indices)), shape=x.shape,
                     indices_sorted=True, unique_indices=True)


def to_bcoo(params: Any, masks: Any = None, *, where: _eligibility.Where = None) -> Any:
  """Converts the sparse leaves to ``jax.experimental.sparse.BCOO`` arrays (for inference).

  Each converted leaf stores exactly its pattern (the mask, else ``x != 0``), so ``x @ w``
  with the BCOO ``w`` computes the same product as with the dense ``w`` (up to summation
  order).

  Args:
    params: the parameters.
    masks: their masks; default: the nonzeros of the leaves selected by ``where``.
    where: see :func:`compress` (default ``ndim >= 2``).

  Returns:
    The parameters with BCOO leaves where converted, other leaves unchanged.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> w = jnp.array([[0.0, 2.0], [1.0, 0.0]])
    >>> sparse_params = osp.to_bcoo({"w": w})
    >>> sparse_params["w"].nse, (jnp.ones((1, 2)) @ sparse_params["w"]).tolist()
    (2, [[1.0, 2.0]])
  """
  return _sparse_leaves(params, masks, where, _bcoo)


def to_bcsr(params: Any, masks: Any = None, *, where: _eligibility.Where = None) -> Any:
  """Converts the sparse 2-D leaves to ``jax.experimental.sparse.BCSR`` arrays.

  Args:
    params: the parameters.
    masks: their masks; default: the nonzeros of the leaves selected by ``where``.
    where: see :func:`compress` (default ``ndim >= 2``).

  Returns:
    The parameters with BCSR leaves where converted, other leaves unchanged.

  Raises:
    ValueError: a selected leaf that is not 2-D (BCSR is a matrix format).
  """
  from jax.experimental import sparse  # noqa: PLC0415 - imported on use

  def convert(x, pattern):
    if x.ndim != 2:
      raise ValueError(f"to_bcsr converts 2-D leaves only; got shape {x.shape} (use to_bcoo).")
    return sparse.BCSR.from_bcoo(_bcoo(x, pattern))

  return _sparse_leaves(params, masks, where, convert)
