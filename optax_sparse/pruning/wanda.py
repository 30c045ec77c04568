"""Wanda: pruning by weights and activations (Sun, Liu, Bair, Kolter, arXiv 2306.11695).

Wanda scores every weight of a linear layer by its magnitude times the L2 norm of the input
feature it multiplies, over the tokens of a small calibration set, and prunes the lowest scores
*within each output neuron*, with no weight update:

.. math::
  S_{jk} = |W_{jk}| \\, \\lVert X_j \\rVert_2, \\qquad
  M_{:,k} = \\operatorname{top}_{k_{col}}(S_{:,k}) \\text{ for every output } k

Layout. Our kernels are stored ``(in, out)`` as Flax ``Dense`` kernels (``y = x @ W``), the
transpose of PyTorch's ``(out, in)``. So the paper's comparison group "per output row" is per
output neuron = per **column** of a Flax kernel, and the input norm ``||X_j||`` is per input
feature = per **row** index of a Flax kernel. A kernel with several input or output dimensions
(``nnx.LinearGeneral``, attention projections ``(in, heads, head_dim)`` and ``(heads, head_dim,
out)``) is read as the matrix ``(prod(norm.shape), rest)``: its norm has the shape of the
kernel's leading input dimensions, and everything after them is the output.

Unstructured: exactly ``k_col = count_for_density(fan_in, density)`` entries are kept in every
output column (ties by lower input index, NaN lowest; the selection is sort-free: a 32-step
bitwise search of the k-th largest key per column plus an index tie-cut, so a traced density
works). N:M: in every group of ``m`` consecutive inputs (the fan-in axis, as ``osp.nm_mask``'s
default ``axis=-2``), the ``n`` largest scores are kept, as the official code does with
``prune_n, prune_m`` (which count *pruned* entries; ``n`` here counts *kept* ones).

Library decisions and differences from the official code (``locuslab/wanda``):

* The official code prunes ``floor(fan_in · s)`` per row; we keep ``max(1, round(fan_in · (1 −
  s)))`` (the library's ``count_for_density``); both agree whenever ``fan_in · s`` is an integer.
* The official code measures the norms of block ``i`` after blocks ``< i`` are pruned (it runs
  the calibration batch through the model block by block).
  :func:`~optax_sparse.pruning.input_norms` measures all of them in one pass through the given
  model; :func:`~optax_sparse.pruning.prune_layerwise` with ``method="wanda"`` runs the
  sequential variant.
* ``||X_j||`` is the norm over all calibration tokens (the official code keeps the mean of the
  squares over batches, a positive constant per layer that changes no ranking).
* The paper's "Wanda variant" that searches a per-row sparsity is not implemented.

References:
  Sun, Liu, Bair, Kolter, *A Simple and Effective Pruning Approach for Large Language Models*,
  arXiv 2306.11695.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optax_sparse import masks as masks_lib
from optax_sparse.masks import groups, select
from optax_sparse.masks.rules import _base as rules_base

__all__ = ["wanda", "wanda_masks", "wanda_scores"]


def _is_none(x: Any) -> bool:
  return x is None


def path_key(path: Any) -> tuple:
  """A key path as plain keys: ``DictKey``/``SequenceKey``/``GetAttrKey`` unwrapped, and the
  ``.value`` of an ``nnx.Variable`` dropped, so that an ``nnx.State`` and its pure dict agree."""
  out = []
  for k in path:
    if isinstance(k, jax.tree_util.GetAttrKey):
      if k.name != "value":
        out.append(k.name)
    else:
      out.append(getattr(k, "key", getattr(k, "idx", k)))
  return tuple(out)


def stats_by_path(stats: Any, name: str) -> dict[tuple, Any]:
  """The non-None leaves of ``stats`` by ``path_key``."""
  leaves = jax.tree_util.tree_flatten_with_path(stats, is_leaf=_is_none)[0]
  return {path_key(path): s for path, s in leaves if s is not None}


def check_stat(path: Any, p: Any, s: Any, name: str) -> None:
  """Raises ValueError unless ``s``'s shape is the leading input dimensions of ``p``'s."""
  p_shape, s_shape = tuple(jnp.shape(p)), tuple(jnp.shape(s))
  if p is None or len(s_shape) >= len(p_shape) or p_shape[:len(s_shape)] != s_shape:
    raise ValueError(
        f"{name}{jax.tree_util.keystr(path)} has shape {s_shape}, which is not the leading "
        f"input dimensions of the parameter of shape {p_shape}.")


def aligned_leaves(params: Any, stats: Any, name: str,
                   check: bool = True) -> tuple[Any, list[tuple[Any, Any, Any]]]:
  """``(treedef, [(path, param, stat or None), ...])`` matching ``stats`` to ``params``.

  ``stats`` is a tree whose non-None leaves sit at the key paths of parameters (the parameters'
  structure with ``None`` elsewhere, or any part of it; a pure dict of an ``nnx.State`` matches
  the state). With ``check``, every statistic must sit at a parameter and its shape be a leading
  part of that parameter's (the rule checks only the eligible leaves it prunes).

  Raises:
    ValueError: naming ``name`` for a statistic at no parameter's path, or a bad shape.
  """
  p_leaves, treedef = jax.tree_util.tree_flatten_with_path(params, is_leaf=_is_none)
  lookup = stats_by_path(stats, name)
  known = {path_key(path) for path, _ in p_leaves}
  stray = [k for k in lookup if k not in known]
  if stray and check:
    raise ValueError(f"{name} has an entry at {stray[0]!r}, which is not a parameter's path.")
  out = []
  for path, p in p_leaves:
    s = lookup.get(path_key(path))
    if s is not None and check:
      check_stat(path, p, s, name)
    out.append((path, p, s))
  return treedef, out


def _leaf_scores(w: jax.Array, norm: jax.Array) -> jax.Array:
  """``|W| · ||X||`` in float32 as the ``(fan_in, fan_out)`` matrix; non-finite ranks lowest."""
  fan_in = int(np.prod(jnp.shape(norm)))
  a = jnp.abs(jnp.asarray(w, jnp.float32)).reshape(fan_in, -1)
  s = a * jnp.asarray(norm, jnp.float32).reshape(fan_in, 1)
  return jnp.where(jnp.isfinite(s), s, -jnp.inf)


@jax.jit
def top_k_per_column(scores: jax.Array, k: Any) -> jax.Array:
  """Mask of the ``k`` largest entries of every column of a 2-D ``scores`` (sort-free).

  The per-row selection of ``osp.groups`` on the transposed scores: a bitwise search finds the
  k-th largest order-preserving key of every column (``select.score_keys``: NaN lowest,
  ``-0.0 == 0.0``); entries above it are kept and the ties at it are cut by lower row index with
  a second bitwise search over the row index (no cumulative sum). Exactly ``clip(k, 0, rows)``
  per column; ``k`` may be traced. Every pass is an elementwise comparison and a count per
  column, so a sharded kernel is never gathered.
  """
  rows, cols = scores.shape
  k = jnp.clip(jnp.asarray(k, jnp.int32), 0, rows)
  return groups._row_top_k(scores.T, jnp.broadcast_to(k, (cols,))).T  # noqa: SLF001


def _check_pattern(sparsity: Any, n: Any, m: Any) -> None:
  if (n is None) != (m is None):
    raise ValueError(f"give both n and m for N:M pruning, or neither; got n={n!r}, m={m!r}.")
  if n is not None:
    if not isinstance(m, (int, np.integer)) or isinstance(m, bool) or m < 1:
      raise ValueError(f"m must be an integer >= 1; got {m!r}.")
    if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 1 <= n <= m:
      raise ValueError(f"n must be an integer with 1 <= n <= m = {m}; got {n!r}.")
    if sparsity is not None:
      raise ValueError(f"sparsity must be None with an N:M pattern; got {sparsity!r}.")
  elif sparsity is None:
    raise ValueError("give a sparsity in [0, 1) or an N:M pattern (n, m); got neither.")
  elif isinstance(sparsity, (int, float, np.floating)) and not 0.0 <= float(sparsity) < 1.0:
    raise ValueError(f"sparsity must be in [0, 1); got {sparsity!r}.")


def leaf_mask(scores2d: jax.Array, density: Any, n: Any, m: Any, shape: tuple[int, ...]):
  """Per-column top-k (unstructured) or N:M along the fan-in axis, reshaped to ``shape``."""
  if n is not None:
    if scores2d.shape[0] % m:
      raise ValueError(
          f"the fan-in {scores2d.shape[0]} of a kernel of shape {shape} is not divisible by "
          f"m = {m}.")
    mask = select.nm_mask(scores2d, n, m, axis=0)
  else:
    mask = top_k_per_column(scores2d, select.count_for_density(scores2d.shape[0], density))
  return mask.reshape(shape)


def wanda_scores(params: Any, norms: Any) -> Any:
  """Wanda scores |W_jk| · ||X_j||_2 of every leaf that has an input norm.

  .. math::
    S_{jk} = |W_{jk}| \\, \\lVert X_j \\rVert_2

  Args:
    params: the parameters; kernels stored ``(in, out)`` (Flax layout, ``y = x @ W``).
    norms: a tree like ``params`` with, for each kernel to score, the L2 norms of its input
      features over the calibration tokens (shape: the kernel's leading input dimensions, e.g.
      ``(in,)``), and ``None`` elsewhere (see :func:`~optax_sparse.pruning.input_norms`);
      leaves are matched by key path, so a sub-tree, or the pure dict of an ``nnx.State``,
      works too.

  Returns:
    A tree like ``params``: float32 scores of each kernel's shape, ``None`` elsewhere.

  Raises:
    ValueError: when ``norms`` does not match ``params``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optax_sparse import pruning
    >>> s = pruning.wanda_scores({"w": jnp.array([[1.0, -2.0], [3.0, 1.0]])},
    ...                          {"w": jnp.array([2.0, 0.5])})
    >>> s["w"].tolist()
    [[2.0, 4.0], [1.5, 0.5]]

  References:
    Sun, Liu, Bair, Kolter, *A Simple and Effective Pruning Approach for Large Language Models*,
    arXiv 2306.11695.
  """
  treedef, leaves = aligned_leaves(params, norms, "norms")
  out = [None if s is None else _leaf_scores(p, s).reshape(jnp.shape(p)) for _, p, s in leaves]
  return jax.tree.unflatten(treedef, out)


def wanda_masks(
    params: Any, norms: Any, sparsity: Any = None, *, n: int | None = None, m: int | None = None,
    densities: Any = None,
) -> Any:
  """Wanda masks: per output neuron top-k of |W|·||X||, or N:M along the fan-in.

  .. math::
    M_{:,k} = \\operatorname{top}_{k_{col}}\\big(|W_{:,k}| \\odot \\lVert X \\rVert_2\\big),
    \\quad k_{col} = \\max(1, \\operatorname{round}(n_{in}(1 - s)))

  Each output column (the paper's output row; our kernels are ``(in, out)``) keeps exactly
  ``k_col`` entries; with ``n, m`` every group of ``m`` consecutive inputs of every column keeps
  exactly ``n``. Jit-able: ``sparsity`` may be traced.

  Args:
    params: the parameters (Flax layout ``(in, out)``).
    norms: input norms per kernel, ``None`` elsewhere (see
      :func:`~optax_sparse.pruning.wanda_scores`).
    sparsity: the sparsity s in [0, 1) of every scored kernel (unstructured); None with N:M or
      with ``densities``.
    n: kept entries per group of ``m`` (N:M; give both or neither).
    m: group size along the fan-in axis; the fan-in must be divisible by ``m``.
    densities: optional per-leaf densities (a tree like ``params``, e.g. from
      ``osp.pruning.owl(...).densities(params, s)``) instead of one ``sparsity``.

  Returns:
    A tree like ``params``: bool masks (True = kept) for the scored kernels, ``None`` elsewhere.

  Raises:
    ValueError: for a bad sparsity / pattern, or ``norms`` not matching ``params``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from optax_sparse import pruning
    >>> w = jnp.array([[1.0, -2.0], [3.0, 1.0]])
    >>> pruning.wanda_masks({"w": w}, {"w": jnp.array([2.0, 0.5])}, 0.5)["w"].tolist()
    [[True, True], [False, False]]

  References:
    Sun, Liu, Bair, Kolter, *A Simple and Effective Pruning Approach for Large Language Models*,
    arXiv 2306.11695.
  """
  if densities is None:
    _check_pattern(sparsity, n, m)
  elif sparsity is not None or n is not None:
    raise ValueError(
        f"densities replaces sparsity and n:m; got sparsity={sparsity!r}, n={n!r}.")
  treedef, leaves = aligned_leaves(params, norms, "norms")
  if densities is not None:
    d_leaves = jax.tree.leaves(densities, is_leaf=_is_none)
    if len(d_leaves) != len(leaves):
      raise ValueError("densities must have the structure of the parameters.")
  else:
    d = None if sparsity is None else 1.0 - jnp.asarray(sparsity, jnp.float32)
    d_leaves = [d] * len(leaves)
  out = []
  for (path, p, s), d in zip(leaves, d_leaves, strict=True):
    if s is None:
      out.append(None)
      continue
    if n is None and d is None:
      raise ValueError(
          f"densities has no density for the scored leaf {jax.tree_util.keystr(path)}.")
    out.append(leaf_mask(_leaf_scores(p, s), d, n, m, tuple(jnp.shape(p))))
  return jax.tree.unflatten(treedef, out)


def wanda(norms: Any, *, n: int | None = None, m: int | None = None,
          at_step: int = 0) -> masks_lib.MaskRule:
  """Wanda as a one-shot rule of :func:`optax_sparse.sparse` (pruning with calibration norms).

  .. math::
    M_{:,k} = \\operatorname{top}_{k_{col}}\\big(|θ_{:,k}| \\odot \\lVert X \\rVert_2\\big)
    \\text{ per output column, or N:M of } |θ| \\odot \\lVert X \\rVert_2
    \\text{ along the fan-in}

  The masks are computed once, from the parameters at ``init`` (``at_step = 0``) or from those
  the update with count ``at_step`` receives, and never change afterwards (fine-tuning keeps
  them). Unstructured, each leaf's density comes from ``sparse()``'s ``sparsity`` and
  ``distribution`` (``uniform()`` or :func:`~optax_sparse.pruning.owl`), then every output
  column keeps ``count_for_density(fan_in, density)`` entries; with ``n, m`` the pattern fixes
  the sparsity and ``sparse()`` takes ``sparsity=None``. Every eligible leaf (see ``where`` of
  ``sparse()``) needs a norm: restrict ``where`` to the kernels you measured, e.g.
  ``where=lambda path, leaf: "kernel" in jax.tree_util.keystr(path)``.

  Args:
    norms: input norms per kernel, ``None`` elsewhere (a tree like the parameters, see
      :func:`~optax_sparse.pruning.input_norms`); concrete arrays, captured by the rule.
    n: kept entries per group of ``m`` consecutive inputs (N:M; both or neither).
    m: group size; every eligible fan-in must be divisible by ``m``.
    at_step: the update count at which to prune (0: at init).

  Returns:
    A :class:`~optax_sparse.MaskRule` (``scope="pattern"`` for N:M, else ``"layer"``).

  Raises:
    ValueError: for a bad pattern or ``at_step``; at ``init``, for norms that do not match the
      parameters or an eligible leaf without a norm.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> params = {"w": jnp.array([[1.0, -2.0], [3.0, 1.0]])}
    >>> rule = osp.pruning.wanda({"w": jnp.array([2.0, 0.5])})
    >>> state = osp.sparse(optax.sgd(0.1), rule, sparsity=0.5).init(params)
    >>> osp.get_masks(state)["w"].tolist()
    [[True, True], [False, False]]

  References:
    Sun, Liu, Bair, Kolter, *A Simple and Effective Pruning Approach for Large Language Models*,
    arXiv 2306.11695.
  """
  if (n is None) != (m is None):
    raise ValueError(f"give both n and m for N:M pruning, or neither; got n={n!r}, m={m!r}.")
  if n is not None:
    _check_pattern(None, n, m)
  if not isinstance(at_step, (int, np.integer)) or isinstance(at_step, bool) or at_step < 0:
    raise ValueError(f"at_step must be an integer >= 0; got {at_step!r}.")

  def pattern(params, target):
    treedef, leaves = aligned_leaves(params, norms, "norms", check=False)
    eligible = jax.tree.leaves(target.eligible, is_leaf=_is_none)
    densities = (None if n is not None
                 else jax.tree.leaves(target.densities(target.sparsity), is_leaf=_is_none))
    out = []
    for i, ((path, p, s), e) in enumerate(zip(leaves, eligible, strict=True)):
      if not e or p is None:
        out.append(None)
        continue
      if s is None:
        raise ValueError(
            f"norms has no input norm for the eligible leaf {jax.tree_util.keystr(path)}; "
            "restrict `where` of osp.sparse to the kernels you measured.")
      check_stat(path, p, s, "norms")
      d = None if densities is None else densities[i]
      out.append(leaf_mask(_leaf_scores(p, s), d, n, m, tuple(jnp.shape(p))))
    return jax.tree.unflatten(treedef, out)

  def init_masks(params, target, key):
    del key
    return pattern(params, target) if at_step == 0 else rules_base._all_true(params, target)

  def is_update_step(count):
    return jnp.asarray(at_step > 0) & (count == at_step)

  def update_masks(masks, params, grads, count, key, target, rule_state):
    del masks, grads, count, key
    return pattern(params, target), rule_state

  scope = "pattern" if n is not None else "layer"
  return masks_lib.MaskRule("wanda", init_masks, is_update_step, update_masks, scope=scope)
