"""OWL: outlier-weighed layer-wise sparsity (Yin et al., arXiv 2310.05175).

OWL gives layers with more *outliers* among their Wanda scores a lower sparsity. The outlier
ratio of layer l is the share of its scores above ``M`` times their mean; the ratios are
min-max normalized to ``[0, 2λ]`` and shifted so that the mean sparsity is the target:

.. math::
  D_l = \\frac{1}{n_l} \\#\\{(j, k) : S^l_{jk} > M \\, \\overline{S^l}\\}, \\qquad
  \\hat D_l = 2λ \\frac{D_l - \\min_i D_i}{\\max_i D_i - \\min_i D_i} \\\\
  d_l = \\operatorname{clip}\\big(1 - s + \\hat D_l - c, \\, 0, \\, 1\\big), \\qquad
  \\textstyle\\sum_l d_l n_l = (1 - s) \\sum_l n_l

so layer densities spread over ``1 − s ± λ``. The official code (``luuyin/OWL``,
``prune_wanda_outlier``; defaults ``M = 5``, ``λ = 0.08`` for LLaMA-7B) computes one ratio per
transformer block over all its linear layers together and subtracts the plain mean of ``\\hat
D``, which keeps the mean sparsity because its blocks all have the same size. Here a "layer" is
a parameter leaf, or a group of leaves named by ``layer_of`` (one group per block reproduces the
paper); ``c`` is the parameter-weighted mean of ``\\hat D`` (equal to the plain one for equal
sizes), found by bisection when a density would leave ``[0, 1]``, so the total number of kept
entries is exactly ``(1 − s) N`` before per-leaf rounding in every case. The official code
instead clamps a layer sparsity ``<= 0`` to ``0.01`` (which changes the mean). A traced ``s``
(a schedule) works.

References:
  Yin, Wu, Zhang, Zhu, Ma, Wang, Pechenizkiy, Liang, Wang, Liu, *Outlier Weighed Layerwise
  Sparsity (OWL): A Missing Secret Sauce for Pruning LLMs to High Sparsity*, arXiv 2310.05175.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optax_sparse import masks as masks_lib
from optax_sparse.pruning import wanda as wanda_lib

__all__ = ["OwlDistribution", "outlier_ratios", "owl"]


def _is_none(x: Any) -> bool:
  return x is None


def _check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
  ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
  if not ok or not np.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
    kind = ">= 0" if allow_zero else "> 0"
    raise ValueError(f"{name} must be a finite number {kind}; got {value!r}.")
  return float(value)


def _groups(scores: Any, layer_of: Callable[[Any], Hashable] | None):
  """``(treedef, [group index or None per leaf], [leaf indices per group])``."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(scores, is_leaf=_is_none)
  names: dict[Hashable, int] = {}
  group_of: list[int | None] = []
  for i, (path, s) in enumerate(leaves):
    if s is None:
      group_of.append(None)
      continue
    name = i if layer_of is None else layer_of(path)
    group_of.append(names.setdefault(name, len(names)))
  members = [[i for i, g in enumerate(group_of) if g == j] for j in range(len(names))]
  return treedef, [s for _, s in leaves], group_of, members


def outlier_ratios(scores: Any, m: float = 5.0, *,
                   layer_of: Callable[[Any], Hashable] | None = None) -> Any:
  """OWL's layer outlier ratios D_l: the share of scores above M times the layer mean.

  .. math::
    D_l = \\frac{1}{n_l} \\#\\{(j, k) : S^l_{jk} > M \\, \\overline{S^l}\\}

  Args:
    scores: a tree of score arrays (e.g. :func:`~optax_sparse.pruning.wanda_scores`), ``None``
      where there is no score.
    m: the outlier threshold M > 0 (default 5, the paper's LLaMA-7B value).
    layer_of: optional function of a leaf's key path to a group name: leaves of one group share
      one ratio computed over all their scores (one group per transformer block in the paper).

  Returns:
    A tree like ``scores``: a Python float ratio in [0, 1] per scored leaf, ``None`` elsewhere.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optax_sparse import pruning
    >>> pruning.outlier_ratios({"a": jnp.array([[1.0, 1.0, 1.0, 9.0]])}, m=2.0)
    {'a': 0.25}

  References:
    Yin et al., *Outlier Weighed Layerwise Sparsity (OWL)*, arXiv 2310.05175.
  """
  m = _check_positive("m", m)
  treedef, leaves, group_of, members = _groups(scores, layer_of)
  ratios = []
  for idx in members:
    flat = [jnp.asarray(leaves[i], jnp.float32).reshape(-1) for i in idx]
    total = sum(int(x.size) for x in flat)
    mean = sum(float(jnp.sum(x)) for x in flat) / max(total, 1)
    count = sum(int(jnp.sum(x > m * mean)) for x in flat)
    ratios.append(count / max(total, 1))
  out = [None if g is None else ratios[g] for g in group_of]
  return jax.tree.unflatten(treedef, out)


def _spread(ratios: np.ndarray, lam: float) -> np.ndarray:
  """Min-max normalization of the ratios to [0, 2λ] (all 0 when they are all equal)."""
  lo, hi = float(np.min(ratios)), float(np.max(ratios))
  if hi <= lo:
    return np.zeros_like(ratios)
  return (ratios - lo) / (hi - lo) * 2.0 * lam


def _densities(sizes: np.ndarray, spread: np.ndarray, sparsity: Any, rounds: int = 64):
  """d_l = clip(1 − s + D̂_l − c, 0, 1) with Σ n_l d_l = (1 − s) Σ n_l (bisection on c)."""
  n = jnp.asarray(sizes, jnp.float32)
  base = 1.0 - jnp.asarray(sparsity, jnp.float32) + jnp.asarray(spread, jnp.float32)
  budget = (1.0 - jnp.asarray(sparsity, jnp.float32)) * jnp.sum(n)

  def kept(c):
    return jnp.sum(n * jnp.clip(base - c, 0.0, 1.0))

  # kept(c) decreases in c; the root lies in [min(base) - 1, max(base)].
  def halve(_, bounds):
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    too_many = kept(mid) > budget
    return jnp.where(too_many, mid, lo), jnp.where(too_many, hi, mid)

  c0 = jnp.sum(n * jnp.asarray(spread, jnp.float32)) / jnp.sum(n)
  lo, hi = jax.lax.fori_loop(0, rounds, halve, (jnp.min(base) - 1.0, jnp.max(base)))
  # Without clipping the weighted mean is the exact root: use it then (no bisection error).
  exact = jnp.all((base - c0 >= 0.0) & (base - c0 <= 1.0))
  c = jnp.where(exact, c0, 0.5 * (lo + hi))
  return jnp.clip(base - c, 0.0, 1.0)


@dataclasses.dataclass(frozen=True, eq=False)
class OwlDistribution(masks_lib.LayerDistribution):
  """The OWL layer-wise distribution (build it with :func:`~optax_sparse.pruning.owl`).

  Attributes:
    ratios: ``((path, (ratio, group)), ...)``: the outlier ratio and group index of every scored
      leaf by key path (leaves of a group share one density).
    lam: λ, half the spread of the densities.
  """

  ratios: tuple = ()
  lam: float = 0.08

  def _layout(self, params: Any, eligible: Any):
    """(leaves with paths, eligible slots, {slot: (ratio, group)}) for ``params``."""
    p_leaves = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_none)[0]
    if eligible is None:
      eligible = jax.tree.map(lambda p: p is not None and jnp.ndim(p) >= 2, params,
                              is_leaf=_is_none)
    e_leaves = jax.tree.leaves(eligible, is_leaf=_is_none)
    if len(e_leaves) != len(p_leaves):
      raise ValueError("eligible must have the structure of the parameters.")
    table = dict(self.ratios)
    slots, found = [], {}
    for i, ((path, p), e) in enumerate(zip(p_leaves, e_leaves, strict=True)):
      if not e or p is None:
        continue
      entry = table.get(wanda_lib.path_key(path))
      if entry is None:
        raise ValueError(
            f"the OWL distribution has no outlier ratio for the eligible leaf "
            f"{jax.tree_util.keystr(path)}; restrict `where` to the scored kernels.")
      slots.append(i)
      found[i] = entry
    return p_leaves, slots, found

  def densities(self, params: Any, sparsity: Any, eligible: Any = None) -> Any:
    """Per-leaf densities d_l (float32 scalars for eligible leaves, ``None`` elsewhere).

    Args:
      params: the parameters (only shapes are read); leaves are matched to the scores by key
        path (an ``nnx.State`` matches its pure dict).
      sparsity: the target s in [0, 1): a Python float or a traced scalar.
      eligible: a tree of bools like the parameters (default: ndim >= 2).

    Returns:
      A tree with the parameters' structure.
    """
    if isinstance(sparsity, (int, float, np.floating)) and not 0.0 <= float(sparsity) < 1.0:
      raise ValueError(f"sparsity must be in [0, 1); got {sparsity!r}.")
    p_leaves, slots, found = self._layout(params, eligible)
    out: list[Any] = [None] * len(p_leaves)
    if slots:
      # One entry per group among the eligible leaves; a group's size is the sum of its leaves.
      group_ids = sorted({found[i][1] for i in slots})
      where = {g: j for j, g in enumerate(group_ids)}
      sizes = np.zeros(len(group_ids))
      ratio = np.zeros(len(group_ids))
      for i in slots:
        r, g = found[i]
        sizes[where[g]] += int(np.prod(jnp.shape(p_leaves[i][1])))
        ratio[where[g]] = r
      d = _densities(sizes, _spread(ratio, self.lam), sparsity)
      for i in slots:
        out[i] = d[where[found[i][1]]]
    return jax.tree.unflatten(jax.tree.structure(params, is_leaf=_is_none), out)

  def check_target(self, params: Any, sparsity: float, eligible: Any = None) -> None:
    """Validates ``sparsity`` and the ratios against ``params`` (every target is feasible)."""
    if not 0.0 <= float(sparsity) < 1.0:
      raise ValueError(f"sparsity must be in [0, 1); got {sparsity!r}.")
    self._layout(params, eligible)


def owl(scores: Any, *, m: float = 5.0, lam: float = 0.08,
        layer_of: Callable[[Any], Hashable] | None = None) -> OwlDistribution:
  """OWL layer-wise densities from the outlier ratios of (Wanda) scores, mean kept exact.

  .. math::
    d_l = \\operatorname{clip}\\Big(1 - s + 2λ \\frac{D_l - \\min D}{\\max D - \\min D} - c,
    0, 1\\Big), \\quad \\textstyle\\sum_l d_l n_l = (1 - s) \\sum_l n_l

  Use it as ``distribution=`` of :func:`optax_sparse.sparse` next to ``osp.erk()``, usually
  with :func:`~optax_sparse.pruning.wanda`, or call ``.densities(params, s)`` and give the
  result to :func:`~optax_sparse.pruning.wanda_masks` or
  :func:`~optax_sparse.pruning.sparsegpt`. The ratios are computed here, once, from concrete
  scores (see :func:`~optax_sparse.pruning.outlier_ratios`).

  Args:
    scores: a tree like the parameters with a score array per scored kernel (e.g.
      ``wanda_scores(params, norms)``), ``None`` elsewhere.
    m: the outlier threshold M > 0 (default 5).
    lam: λ >= 0, half the spread of the densities (default 0.08; λ = 0 is uniform).
    layer_of: optional key path -> group name; the leaves of a group share one ratio and one
      density (one group per transformer block reproduces the paper).

  Returns:
    An :class:`~optax_sparse.pruning.OwlDistribution` (a ``LayerDistribution``).

  Raises:
    ValueError: for ``m <= 0`` or ``lam < 0``; at use, for an eligible leaf without a score.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optax_sparse import pruning
    >>> scores = {"a": jnp.array([[1.0, 1.0, 1.0, 9.0]]), "b": jnp.ones((1, 4))}
    >>> d = pruning.owl(scores, m=2.0, lam=0.1).densities(scores, 0.5)
    >>> round(float(d["a"]), 4), round(float(d["b"]), 4)
    (0.6, 0.4)

  References:
    Yin et al., *Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning
    LLMs to High Sparsity*, arXiv 2310.05175.
  """
  m = _check_positive("m", m)
  lam = _check_positive("lam", lam, allow_zero=True)
  ratios = outlier_ratios(scores, m, layer_of=layer_of)
  _, _, group_of, _ = _groups(scores, layer_of)
  paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(scores, is_leaf=_is_none)[0]]
  r_leaves = jax.tree.leaves(ratios, is_leaf=_is_none)
  table = tuple((wanda_lib.path_key(p), (r, g))
                for p, r, g in zip(paths, r_leaves, group_of, strict=True) if g is not None)
  return OwlDistribution(kind="owl", ratios=table, lam=lam)
