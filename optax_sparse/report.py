"""What a sparse model looks like: a per-leaf sparsity report and mask connectivity images.

:func:`sparsity_report` reads parameters (and optionally the optimizer state that holds the
masks) and returns a :class:`SparsityReport`: one :class:`LeafReport` per array leaf and the
totals. For a leaf with ``n`` entries, ``z`` of them nonzero, and its pattern P (the mask of the
optimizer state where there is one, ``θ ≠ 0`` otherwise):

* density ``z / n``; the mask's active count |P| and the nonzeros outside the mask (0 after
  every step of :func:`optax_sparse.sparse`);
* N:M conformity: the fraction of groups of ``m`` consecutive entries along ``nm_axis`` with at
  most ``n`` entries of P;
* mask churn against a previous state (a state, a mask tree or parameters):
  kept = |P_prev ∧ P| / |P_prev| (jaxpruner's ``summarize_intersection``), grown = |P ∖ P_prev|,
  dropped = |P_prev ∖ P|;
* sign flips against reference parameters: #{i ∈ P : θ_i · θ^ref_i < 0};
* estimated forward FLOPs of a leaf used as the kernel of a matmul (``ndim == 2``, ``(in,
  out)``) or a convolution (``ndim >= 3``, ``(..., in, out)``): dense ``2 n r`` and sparse
  ``2 z r`` multiply-adds per example, with ``r`` the number of times the kernel is applied per
  example (output positions of a convolution, tokens of a sequence model; ``positions``,
  default 1).

:func:`connectivity_image` turns a mask into the empirical graphon of the Graphon Limit
Hypothesis: the input-output adjacency with rows and columns ordered by degree, averaged over
blocks. Random and magnitude masks give a flat image; saliency-based pruning (SNIP, GraSP)
gives a smooth degree gradient, SynFlow a dense block-like core. ``report_plot.plot_report``
draws per-layer density and these images (matplotlib, imported only there).

The report is computed on the host with NumPy (every leaf is copied from the device once).

References:
  Pham, Ta, Jacobs, Burkholz, Tran-Thanh, *The Graphon Limit Hypothesis: Understanding Neural
  Network Pruning via Infinite Width Analysis*, arXiv 2510.17515.
  Lee et al., *JaxPruner: A concise library for sparsity research*, arXiv 2304.14082
  (``summarize_sparsity``, ``summarize_intersection``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

__all__ = ["LeafReport", "SparsityReport", "connectivity_image", "sparsity_report"]


def _is_none(x: Any) -> bool:
  return x is None


def path_name(path: Any) -> str:
  """A readable name of a ``jax.tree_util`` key path: ``"fc1/kernel"``, ``"0/w"``."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


@dataclasses.dataclass(frozen=True)
class LeafReport:
  """The report of one parameter leaf (``None`` where a quantity does not apply).

  Attributes:
    name: the leaf's path, ``"/"``-joined.
    shape: the leaf's shape.
    dtype: the leaf's dtype name.
    size: number of entries n.
    nonzeros: number of nonzero entries z.
    density: z / n.
    mask_active: |M| when the state holds a mask for this leaf.
    outside_mask: nonzero entries where the mask is False.
    nm_conformity: fraction of N:M groups with at most N entries of the pattern.
    kept: |P_prev ∧ P| / |P_prev| against the previous pattern.
    grown: |P ∖ P_prev|.
    dropped: |P_prev ∖ P|.
    sign_flips: active entries whose sign is opposite to the reference.
    kind: ``"dense"`` (a 2-D kernel) or ``"conv"`` (``ndim >= 3``); None for vectors.
    dense_flops: 2 n r for a kernel applied r times per example.
    sparse_flops: 2 z r.
  """

  name: str
  shape: tuple[int, ...]
  dtype: str
  size: int
  nonzeros: int
  density: float
  mask_active: int | None = None
  outside_mask: int | None = None
  nm_conformity: float | None = None
  kept: float | None = None
  grown: int | None = None
  dropped: int | None = None
  sign_flips: int | None = None
  kind: str | None = None
  dense_flops: int | None = None
  sparse_flops: int | None = None


_COLUMNS = (
    # (field, header, format)
    ("shape", "shape", lambda v: "x".join(map(str, v)) if v else "scalar"),
    ("density", "density", lambda v: f"{v:.2%}"),
    ("nonzeros", "nonzeros", lambda v: f"{v:,}"),
    ("mask_active", "mask", lambda v: f"{v:,}"),
    ("outside_mask", "off-mask nz", lambda v: f"{v:,}"),
    ("nm_conformity", "N:M ok", lambda v: f"{v:.2%}"),
    ("kept", "kept", lambda v: f"{v:.2%}"),
    ("grown", "grown", lambda v: f"{v:,}"),
    ("dropped", "dropped", lambda v: f"{v:,}"),
    ("sign_flips", "sign flips", lambda v: f"{v:,}"),
    ("sparse_flops", "FLOPs sparse", lambda v: _si(v)),
    ("dense_flops", "FLOPs dense", lambda v: _si(v)),
)


def _si(v: float) -> str:
  for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(v) >= scale:
      return f"{v / scale:.2f}{unit}"
  return f"{v:g}"


@dataclasses.dataclass(frozen=True)
class SparsityReport:
  """A sparsity report: one :class:`LeafReport` per leaf and the totals.

  ``str(report)`` and ``to_markdown()`` give a markdown table, :meth:`print` a Rich table
  when Rich is installed (markdown otherwise), ``to_dict()`` plain Python numbers for a
  logger.

  Attributes:
    leaves: the per-leaf reports, in the parameters' leaf order.
    total: the totals: ``size``, ``nonzeros``, ``density``, ``sparsity`` (over all leaves),
      ``masked_size``, ``masked_sparsity`` (over leaves with a mask, or None), and where they
      apply ``mask_active``, ``nm_conformity``, ``kept``, ``grown``, ``dropped``,
      ``sign_flips``, ``dense_flops``, ``sparse_flops``, ``flops_ratio`` (sparse / dense).
    nm: the (N, M) checked, or None.
  """

  leaves: tuple[LeafReport, ...]
  total: dict[str, Any]
  nm: tuple[int, int] | None = None

  def to_dict(self, flat: bool = False) -> dict[str, Any]:
    """The report as Python numbers.

    Args:
      flat: return ``{"leaf/field": value, ..., "total/field": value}`` with scalar values
        only (what ``wandb.log`` or TensorBoard take), instead of
        ``{"leaves": {name: {...}}, "total": {...}}``.

    Returns:
      A dict (JSON-serializable).
    """
    leaves = {r.name: {k: (list(v) if isinstance(v, tuple) else v)
                       for k, v in dataclasses.asdict(r).items() if k != "name"}
              for r in self.leaves}
    if not flat:
      return {"leaves": leaves, "total": dict(self.total)}
    out = {}
    for name, fields in leaves.items():
      for k, v in fields.items():
        if v is not None and not isinstance(v, (list, str)):
          out[f"{name}/{k}"] = v
    for k, v in self.total.items():
      if v is not None:
        out[f"total/{k}"] = v
    return out

  def _table(self) -> tuple[list[str], list[list[str]]]:
    used = [c for c in _COLUMNS
            if any(getattr(r, c[0]) is not None for r in self.leaves) or c[0] == "shape"]
    header = ["leaf"] + [c[1] for c in used]
    if self.nm is not None:
      header = [h.replace("N:M", f"{self.nm[0]}:{self.nm[1]}") for h in header]
    rows = []
    for r in self.leaves:
      rows.append([r.name] + ["-" if getattr(r, f) is None else fmt(getattr(r, f))
                              for f, _, fmt in used])
    total = ["total"]
    for f, _, fmt in used:
      value = {"shape": None}.get(f, self.total.get(f))
      total.append("-" if value is None else fmt(value))
    total[1] = f"{self.total['size']:,} entries"
    rows.append(total)
    return header, rows

  def to_markdown(self) -> str:
    """A markdown table: one row per leaf and a total row."""
    header, rows = self._table()
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    if self.total.get("flops_ratio") is not None:
      lines.append(
          f"\nEstimated forward FLOPs: sparse / dense = {self.total['flops_ratio']:.3f} "
          "(matmul and convolution kernels; per example and application).")
    return "\n".join(lines)

  def __str__(self) -> str:
    return self.to_markdown()

  def print(self, use_rich: bool | None = None) -> None:
    """Prints the report: a Rich table when Rich is importable (or ``use_rich``), else markdown.

    Args:
      use_rich: force (True) or refuse (False) Rich; None: use it when installed.
    """
    if use_rich is not False:
      try:
        import rich.console  # noqa: PLC0415 - optional dependency
        import rich.table  # noqa: PLC0415
      except ImportError:
        if use_rich:
          raise
      else:
        header, rows = self._table()
        table = rich.table.Table(title="sparsity report")
        for i, h in enumerate(header):
          table.add_column(h, justify="left" if i == 0 else "right")
        for i, row in enumerate(rows):
          table.add_row(*row, end_section=i == len(rows) - 2)
        console = rich.console.Console()
        if not console.is_terminal:  # a pipe or a file: no terminal width to fit
          console = rich.console.Console(width=200)
        console.print(table)
        if self.total.get("flops_ratio") is not None:
          console.print(f"Estimated forward FLOPs: sparse / dense = "
                        f"{self.total['flops_ratio']:.3f}")
        return
    print(self.to_markdown())


def _masks_of(tree: Any) -> Any:
  """The masks of an optimizer state (None when it has none)."""
  from optax_sparse.masks.sparse import get_masks  # noqa: PLC0415 - sibling, on use

  try:
    return get_masks(tree)
  except ValueError:
    return None


def _flat(tree: Any, treedef: Any, what: str) -> list[Any]:
  try:
    return treedef.flatten_up_to(tree)
  except (ValueError, TypeError) as err:
    raise ValueError(f"{what} must have the structure of the parameters: {err}") from err


def _pattern_leaves(tree: Any, treedef: Any, what: str) -> list[np.ndarray | None]:
  """A boolean pattern per leaf: the state's masks, a mask tree, or ``x != 0`` of parameters."""
  masks = _masks_of(tree)
  if masks is not None:
    tree = masks
  out = []
  for x in _flat(tree, treedef, what):
    if x is None:
      out.append(None)
      continue
    x = np.asarray(x)
    out.append(x.astype(bool) if x.dtype == bool else x != 0)
  return out


def _nm_conformity(pattern: np.ndarray, n: int, m: int, axis: int) -> float | None:
  if pattern.ndim == 0 or not -pattern.ndim <= axis < pattern.ndim:
    return None
  if pattern.shape[axis] % m:
    return None
  moved = np.moveaxis(pattern, axis, -1)
  groups = moved.reshape(-1, m).sum(axis=-1)
  return float(np.mean(groups <= n)) if groups.size else None


def sparsity_report(
    params: Any,
    opt_state: Any = None,
    *,
    masks: Any = None,
    previous: Any = None,
    reference: Any = None,
    nm: tuple[int, int] | None = None,
    nm_axis: int = -2,
    positions: Mapping[str, int] | None = None,
) -> SparsityReport:
  """A per-leaf and total report of a sparse model (see the module docstring for the maths).

  Args:
    params: the parameters (any pytree of arrays: dicts, Flax NNX ``nnx.State``, ...).
    opt_state: the optimizer state; its masks (``osp.get_masks``) give each leaf's pattern and
      the mask columns. Without it the pattern is ``params != 0``.
    masks: the masks themselves (a bool array or None per leaf), instead of ``opt_state``
      (e.g. the masks of :func:`optax_sparse.load_compressed`).
    previous: the pattern to measure churn against: an earlier optimizer state (its masks), a
      mask tree, or earlier parameters (their nonzeros).
    reference: parameters to count sign flips against (e.g. the initialization).
    nm: ``(n, m)`` to check N:M conformity, e.g. ``(2, 4)``.
    nm_axis: the N:M grouping axis (default -2, the fan-in of Flax kernels).
    positions: ``{leaf name: r}``, how many times a kernel is applied per example (output
      positions of a convolution, tokens); default 1 for every kernel.

  Returns:
    A :class:`SparsityReport`.

  Raises:
    ValueError: ``nm`` not two integers with 0 <= n <= m, m >= 1; a tree not matching the
      parameters; both ``masks`` and ``opt_state``; a ``positions`` key that names no kernel,
      or a value < 1.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> params = {"w": jnp.array([[0.0, 1.0], [2.0, 3.0], [0.0, 0.0], [3.0, 4.0]])}
    >>> report = osp.sparsity_report(params, nm=(1, 2))
    >>> report.leaves[0].density, report.leaves[0].nm_conformity, report.total["dense_flops"]
    (0.625, 0.75, 16)
    >>> print(report.to_markdown().splitlines()[0])
    | leaf | shape | density | nonzeros | 1:2 ok | FLOPs sparse | FLOPs dense |
  """
  if nm is not None:
    if (not isinstance(nm, (tuple, list)) or len(nm) != 2
        or not all(isinstance(v, (int, np.integer)) for v in nm)
        or not (nm[1] >= 1 and 0 <= nm[0] <= nm[1])):
      raise ValueError(f"nm must be (n, m) with integers 0 <= n <= m, m >= 1; got {nm!r}.")
    nm = (int(nm[0]), int(nm[1]))
  flat, treedef = jax.tree_util.tree_flatten_with_path(params)
  names = [path_name(p) for p, _ in flat]
  values = [np.asarray(x) for _, x in flat]
  positions = dict(positions or {})
  kernels = {n for n, v in zip(names, values, strict=True) if v.ndim >= 2}
  for key, r in positions.items():
    if key not in kernels:
      raise ValueError(f"positions: {key!r} is not the name of a kernel leaf (ndim >= 2); "
                       f"kernels: {sorted(kernels)}.")
    if not isinstance(r, (int, np.integer)) or r < 1:
      raise ValueError(f"positions[{key!r}] must be an integer >= 1; got {r!r}.")
  if masks is not None and opt_state is not None:
    raise ValueError("give masks or opt_state, not both.")
  if masks is None and opt_state is not None:
    masks = _masks_of(opt_state)
  mask_leaves = (_flat(masks, treedef, "the masks of opt_state") if masks is not None
                 else [None] * len(values))
  prev = None if previous is None else _pattern_leaves(previous, treedef, "previous")
  ref = None if reference is None else _flat(reference, treedef, "reference")

  leaves = []
  for i, (name, x) in enumerate(zip(names, values, strict=True)):
    nonzero = x != 0
    nnz = int(np.count_nonzero(nonzero))
    mask = None if mask_leaves[i] is None else np.asarray(mask_leaves[i]).astype(bool)
    pattern = nonzero if mask is None else mask
    row: dict[str, Any] = {
        "name": name, "shape": tuple(int(d) for d in x.shape), "dtype": str(x.dtype),
        "size": int(x.size), "nonzeros": nnz, "density": nnz / x.size if x.size else 0.0}
    if mask is not None:
      row["mask_active"] = int(mask.sum())
      row["outside_mask"] = int(np.count_nonzero(nonzero & ~mask))
    if nm is not None:
      row["nm_conformity"] = _nm_conformity(pattern, nm[0], nm[1], nm_axis)
    if prev is not None and prev[i] is not None:
      before = prev[i]
      row["kept"] = float((before & pattern).sum() / max(int(before.sum()), 1))
      row["grown"] = int((pattern & ~before).sum())
      row["dropped"] = int((before & ~pattern).sum())
    if ref is not None and ref[i] is not None:
      r = np.asarray(ref[i], np.float32)
      row["sign_flips"] = int(np.count_nonzero(
          (np.sign(x.astype(np.float32)) * np.sign(r) < 0) & pattern))
    if x.ndim >= 2:
      reps = int(positions.get(name, 1))
      row["kind"] = "dense" if x.ndim == 2 else "conv"
      row["dense_flops"] = 2 * int(x.size) * reps
      row["sparse_flops"] = 2 * nnz * reps
    leaves.append(LeafReport(**row))
  return SparsityReport(tuple(leaves), _totals(leaves), nm)


def _sum(leaves, field):
  vals = [getattr(r, field) for r in leaves if getattr(r, field) is not None]
  return sum(vals) if vals else None


def _totals(leaves: list[LeafReport]) -> dict[str, Any]:
  size = sum(r.size for r in leaves)
  nnz = sum(r.nonzeros for r in leaves)
  masked = [r for r in leaves if r.mask_active is not None]
  masked_size = sum(r.size for r in masked)
  total: dict[str, Any] = {
      "size": size, "nonzeros": nnz, "density": nnz / size if size else 0.0,
      "sparsity": 1.0 - nnz / size if size else 0.0,
      "masked_size": masked_size,
      "masked_sparsity": (1.0 - sum(r.nonzeros for r in masked) / masked_size
                          if masked_size else None)}
  for field in ("mask_active", "outside_mask", "grown", "dropped", "sign_flips", "dense_flops",
                "sparse_flops"):
    total[field] = _sum(leaves, field)
  nm_rows = [r for r in leaves if r.nm_conformity is not None]
  total["nm_conformity"] = (
      sum(r.nm_conformity * r.size for r in nm_rows) / sum(r.size for r in nm_rows)
      if nm_rows else None)
  kept_rows = [r for r in leaves if r.kept is not None]
  if kept_rows:
    prev_active = sum(_prev_active(r) for r in kept_rows)
    kept_count = sum(_prev_active(r) - r.dropped for r in kept_rows)
    total["kept"] = kept_count / max(prev_active, 1)
  else:
    total["kept"] = None
  total["flops_ratio"] = (total["sparse_flops"] / total["dense_flops"]
                          if total["dense_flops"] else None)
  return total


def _prev_active(r: LeafReport) -> int:
  """|P_prev| of a leaf: |P| − grown + dropped."""
  active = r.mask_active if r.mask_active is not None else r.nonzeros
  return active - r.grown + r.dropped


def connectivity_image(mask: Any, resolution: int = 32) -> np.ndarray:
  """The empirical graphon of a mask: degree-ordered adjacency, averaged over blocks.

  .. math::
    A_{ij} = \\frac{1}{K} \\sum_k M_{k, i, j}, \\qquad
    W_{ab} = \\operatorname{mean}\\{A_{π(i) σ(j)} : i ∈ I_a, j ∈ J_b\\}

  for a kernel of shape ``(..., in, out)`` (the leading axes, e.g. a convolution's window of K
  positions, are averaged), π and σ ordering inputs and outputs by decreasing degree (row and
  column sums of A, ties by index) and I_a, J_b splitting them into ``resolution`` nearly equal
  consecutive blocks.

  Args:
    mask: a bool (or 0/1) array with at least two dimensions.
    resolution: the number of blocks per side (at most the number of rows / columns).

  Returns:
    A float64 array of shape ``(min(resolution, in), min(resolution, out))`` with values in
    [0, 1]; its mean is the density of the mask.

  Raises:
    ValueError: ``mask`` with fewer than two dimensions, or ``resolution`` < 1.

  Examples:
    >>> import numpy as np
    >>> import optax_sparse as osp
    >>> mask = np.array([[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]])
    >>> osp.connectivity_image(mask, resolution=2).tolist()
    [[1.0, 0.75], [0.75, 0.0]]

  References:
    Pham et al., *The Graphon Limit Hypothesis: Understanding Neural Network Pruning via
    Infinite Width Analysis*, arXiv 2510.17515.
  """
  a = np.asarray(mask)
  if a.ndim < 2:
    raise ValueError(f"mask must have at least two dimensions; got shape {a.shape}.")
  if not isinstance(resolution, (int, np.integer)) or resolution < 1:
    raise ValueError(f"resolution must be an integer >= 1; got {resolution!r}.")
  a = (a != 0).astype(np.float64).reshape((-1,) + a.shape[-2:]).mean(axis=0)
  rows = np.argsort(-a.sum(axis=1), kind="stable")
  cols = np.argsort(-a.sum(axis=0), kind="stable")
  a = a[rows][:, cols]
  for axis, n in ((0, a.shape[0]), (1, a.shape[1])):
    k = min(int(resolution), n)
    starts = np.array([math.floor(i * n / k) for i in range(k)])
    sums = np.add.reduceat(a, starts, axis=axis)
    counts = np.diff(np.append(starts, n))
    a = sums / (counts[:, None] if axis == 0 else counts[None, :])
  return a
