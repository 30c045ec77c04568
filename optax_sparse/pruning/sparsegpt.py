"""SparseGPT: one-shot pruning with an approximate OBS weight update (arXiv 2301.00774).

For a linear layer ``y = x @ W`` with calibration inputs ``X`` (tokens × fan-in), SparseGPT
minimizes the layer's reconstruction error ``||X W − X Ŵ||²`` over masked ``Ŵ``: it visits the
input rows of ``W`` one at a time (our kernels are ``(in, out)``, so the paper's *columns* of its
``(out, in)`` matrix are our *rows*), zeroes the pruned entries of row ``i`` and spreads their
error over the rows not yet visited with the optimal-brain-surgeon update, read from the upper
Cholesky factor ``U`` of the inverse Hessian:

.. math::
  H = X^\\top X + δ I, \\quad δ = \\text{damp} \\cdot \\overline{\\operatorname{diag}(H)}, \\quad
  H^{-1} = U^\\top U \\\\
  e = (w_i - q_i) / U_{ii}, \\qquad W_{j,:} \\mathrel{-}= U_{ij}\\, e \\;\\; (j > i), \\qquad
  W_{i,:} = q_i = M_{i,:} \\odot w_i

The mask is chosen *adaptively*: for every block of ``B`` rows (``block_size``, 128 in the
paper) the entries with the smallest ``w² / U_jj²`` of the current (already updated) block are
pruned; with N:M the choice is made for every group of ``m`` consecutive rows just before the
group is visited, keeping the ``n`` largest ``w² / U_jj²`` of each output column. The update of
the rows after the block is applied once per block (the paper's lazy batch update). The output
columns never interact, so a ``W`` sharded along its output axis is pruned shard-locally, except
for the unstructured block selection, which sums counts over the shards.

Library decisions and differences from the official code (``IST-DASLab/sparsegpt``,
``SparseGPT.fasterprune``):

* The unstructured block selection keeps exactly ``count_for_density(B · out, 1 − s)`` entries
  (ties by lower index; sort-free ``select_top_k``); the official code prunes every entry
  ``<= `` the sorted value at index ``int(B · out · s)``, one more than ``B · out · s`` (or more
  with ties).
* ``n`` counts *kept* entries of each group (the official ``prune_n`` counts pruned ones).
* Inputs that are never active (``H_jj = 0``) get ``H_jj = 1`` and their weights are set to 0,
  as in the official code; they are then pruned first.
* Computation in float32 (the official code uses float32 too); the result has ``W``'s dtype.
  A Hessian that is not positive definite even after damping gives NaN weights: raise ``damp``.

References:
  Frantar, Alistarh, *SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot*,
  arXiv 2301.00774.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable, Iterable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from optax_sparse.masks import select
from optax_sparse.pruning import wanda as wanda_lib

__all__ = ["SparseGptResult", "prune_layerwise", "sparsegpt"]


class SparseGptResult(NamedTuple):
  """The result of :func:`~optax_sparse.pruning.sparsegpt`.

  Attributes:
    weights: the pruned and updated weights, ``W``'s shape and dtype (pruned entries exactly 0).
    mask: the bool mask (True = kept), ``W``'s shape.
    loss: the OBS error estimate ``Σ (w − q)² / U_ii² / 2`` per output column (float32).
  """

  weights: jax.Array
  mask: jax.Array
  loss: jax.Array


def _inverse_cholesky(h: jax.Array, damp: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``(U, dead)``: the upper Cholesky factor of (H + δI)^-1 after the dead-input fix."""
  diag = jnp.diagonal(h)
  dead = diag == 0
  h = jnp.where(jnp.diag(dead), 1.0, h)
  delta = damp * jnp.mean(jnp.diagonal(h))
  h = h + delta * jnp.eye(h.shape[0], dtype=h.dtype)
  low = jnp.linalg.cholesky(h)
  h_inv = jax.scipy.linalg.cho_solve((low, True), jnp.eye(h.shape[0], dtype=h.dtype))
  return jnp.linalg.cholesky(h_inv).T, dead


def _prune_block(w1, u1, keep1, n, m, group):
  """Row-by-row OBS inside one block; N:M masks are chosen group by group (``group`` rows)."""
  rows = w1.shape[0]
  d = jnp.diagonal(u1)

  def visit(g, carry):
    w1, err1, keep1, loss = carry
    start = g * group
    if n is not None:
      block = jax.lax.dynamic_slice_in_dim(w1, start, group, axis=0)
      dg = jax.lax.dynamic_slice_in_dim(d, start, group)
      keep_g = select.nm_mask((block / dg[:, None]) ** 2, n, m, axis=0)
      keep1 = jax.lax.dynamic_update_slice_in_dim(keep1, keep_g, start, axis=0)
    for r in range(group):
      i = start + r
      w = w1[i]
      q = jnp.where(keep1[i], w, 0.0)
      e = (w - q) / u1[i, i]
      # U is upper triangular: row i of U is zero before column i, so rows < i are untouched.
      w1 = w1 - u1[i][:, None] * e[None, :]
      w1 = w1.at[i].set(q)
      err1 = err1.at[i].set(e)
      loss = loss + (w - q) ** 2 / u1[i, i] ** 2
    return w1, err1, keep1, loss

  init = (w1, jnp.zeros_like(w1), keep1, jnp.zeros(w1.shape[1], w1.dtype))
  return jax.lax.fori_loop(0, rows // group, visit, init)


@functools.partial(jax.jit, static_argnames=("n", "m", "block_size"))
def _sparsegpt(w, h, density, damp, n, m, block_size):
  w = jnp.asarray(w, jnp.float32)
  h = jnp.asarray(h, jnp.float32)
  u, dead = _inverse_cholesky(h, jnp.asarray(damp, jnp.float32))
  w = jnp.where(dead[:, None], 0.0, w)
  fan_in, fan_out = w.shape
  keep = jnp.zeros(w.shape, bool)
  loss = jnp.zeros(fan_out, jnp.float32)
  for i1 in range(0, fan_in, block_size):
    i2 = min(i1 + block_size, fan_in)
    w1, u1 = w[i1:i2], u[i1:i2, i1:i2]
    if n is None:
      scores = (w1 / jnp.diagonal(u1)[:, None]) ** 2
      keep1 = select.select_top_k(scores, select.count_for_density(scores.size, density))
    else:
      keep1 = jnp.zeros(w1.shape, bool)
    q1, err1, keep1, loss1 = _prune_block(w1, u1, keep1, n, m, 1 if n is None else m)
    w = w.at[i1:i2].set(q1)
    if i2 < fan_in:
      w = w.at[i2:].add(-jnp.matmul(u[i1:i2, i2:].T, err1,
                                    precision=jax.lax.Precision.HIGHEST))
    keep = keep.at[i1:i2].set(keep1)
    loss = loss + loss1 / 2
  return jnp.where(keep, w, 0.0), keep, loss


def sparsegpt(
    w: jax.Array, h: jax.Array, sparsity: Any = None, *, n: int | None = None,
    m: int | None = None, block_size: int = 128, damp: Any = 0.01,
) -> SparseGptResult:
  """SparseGPT on one layer: adaptive mask and OBS update from the Gram matrix H = XᵀX.

  .. math::
    H^{-1} = U^\\top U \\text{ of } X^\\top X + δ I, \\qquad
    W_{j,:} \\mathrel{-}= U_{ij} \\frac{w_i - q_i}{U_{ii}} \\;\\; (j > i)

  Rows (inputs) are visited in order in blocks of ``block_size``; see the module docstring for
  the whole algorithm. Jit-able (``sparsity`` and ``damp`` may be traced; ``n``, ``m`` and
  ``block_size`` are static); a ``w`` sharded along its output axis stays sharded.

  Args:
    w: the kernel, stored ``(in, out)`` (Flax layout, ``y = x @ W``); a kernel with several
      input dimensions (``(heads, head_dim, out)``) is read as ``(h.shape[0], -1)``.
    h: the Gram matrix ``X^T X`` of the layer's inputs, ``(fan_in, fan_in)`` (see
      :func:`~optax_sparse.pruning.input_grams`; any positive multiple gives the same result).
    sparsity: s in [0, 1) for unstructured pruning (exactly ``count_for_density(B·out, 1 − s)``
      kept per block); None with N:M.
    n: kept entries per group of ``m`` consecutive inputs of every output column (N:M).
    m: group size; ``fan_in`` and ``block_size`` must be divisible by ``m``.
    block_size: B >= 1, rows per lazy-update block (default 128, the paper's).
    damp: relative damping δ / mean(diag H) > 0 (default 0.01, the paper's).

  Returns:
    A :class:`~optax_sparse.pruning.SparseGptResult` ``(weights, mask, loss)``.

  Raises:
    ValueError: for shapes that do not match, a bad sparsity, pattern, ``block_size`` or
      ``damp``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from optax_sparse import pruning
    >>> x = jax.random.normal(jax.random.PRNGKey(0), (64, 8))
    >>> w = jax.random.normal(jax.random.PRNGKey(1), (8, 4))
    >>> out = pruning.sparsegpt(w, x.T @ x, n=2, m=4)
    >>> out.mask.reshape(2, 4, 4).sum(axis=1).tolist()
    [[2, 2, 2, 2], [2, 2, 2, 2]]
    >>> bool(jnp.all(out.weights[~out.mask] == 0))
    True

  References:
    Frantar, Alistarh, *SparseGPT: Massive Language Models Can Be Accurately Pruned in
    One-Shot*, arXiv 2301.00774.
  """
  wanda_lib._check_pattern(sparsity, n, m)
  if (not isinstance(block_size, (int, np.integer)) or isinstance(block_size, bool)
      or block_size < 1):
    raise ValueError(f"block_size must be an integer >= 1; got {block_size!r}.")
  if isinstance(damp, (int, float, np.floating)) and not (np.isfinite(damp) and damp > 0):
    raise ValueError(f"damp must be a finite number > 0; got {damp!r}.")
  shape = tuple(jnp.shape(w))
  if jnp.ndim(h) != 2 or jnp.shape(h)[0] != jnp.shape(h)[1]:
    raise ValueError(f"h must be a square (fan_in, fan_in) matrix; got shape {jnp.shape(h)}.")
  fan_in = int(jnp.shape(h)[0])
  prefix = [int(np.prod(shape[:i])) for i in range(1, len(shape))]
  if len(shape) < 2 or fan_in not in prefix:
    raise ValueError(
        f"w of shape {shape} has no leading input dimensions of size {fan_in} (h is "
        f"{jnp.shape(h)}).")
  if n is not None and (fan_in % m or block_size % m):
    raise ValueError(
        f"N:M needs fan_in = {fan_in} and block_size = {block_size} divisible by m = {m}.")
  density = None if sparsity is None else 1.0 - jnp.asarray(sparsity, jnp.float32)
  weights, mask, loss = _sparsegpt(
      jnp.reshape(w, (fan_in, -1)), h, density, damp, n=n, m=m, block_size=int(block_size))
  dtype = jnp.result_type(w)
  return SparseGptResult(weights.reshape(shape).astype(dtype), mask.reshape(shape), loss)


# ----------------------------------------------------------------------------------------------
# Layer-by-layer driver


def _get(tree: Any, path: tuple) -> Any:
  for k in path:
    tree = tree[k]
  return tree


def _set(tree: Any, path: tuple, value: Any) -> Any:
  if not path:
    return value
  out = dict(tree)
  out[path[0]] = _set(tree[path[0]], path[1:], value)
  return out


def prune_layerwise(
    model: Any, batches: Iterable[Any], sparsity: Any = None, *, n: int | None = None,
    m: int | None = None, densities: Any = None, method: str = "sparsegpt",
    variables: Any = None, forward: Callable[..., Any] | None = None,
    stage_of: Callable[[tuple], Hashable] | None = None,
    include: Callable[[tuple], bool] | None = None,
    block_size: int = 128, damp: float = 0.01,
) -> tuple[Any, Any]:
  """Prunes a Flax model's linear layers one stage at a time from calibration batches.

  .. math::
    \\text{for each stage } k: \\; H_l = X_l^\\top X_l \\text{ on the model with stages } < k
    \\text{ pruned}, \\quad W_l \\leftarrow \\mathrm{prune}(W_l, H_l)

  The official SparseGPT and Wanda drivers work block by block: the calibration inputs of block
  ``k`` come from the model whose earlier blocks are already pruned, so each stage corrects the
  error of the previous ones. Here a stage is one kernel (default), in the order the forward first
  calls them, or the kernels sharing a name under ``stage_of(path)`` (e.g. the transformer
  block: ``stage_of=lambda path: path[:2]``), all recorded in one pass before any of them is
  pruned (the official per-block order). Each stage runs the calibration batches once.

  Args:
    model: an ``nnx.Module`` (updated in place), or a Linen module with ``variables``.
    batches: a sequence of calibration inputs (iterated once per stage).
    sparsity: s in [0, 1) for every pruned kernel (unstructured); None with N:M or
      ``densities``.
    n: kept per group of ``m`` inputs (N:M).
    m: group size.
    densities: per-kernel densities, a tree like the parameters (e.g. from
      :func:`~optax_sparse.pruning.owl`), instead of ``sparsity``.
    method: ``"sparsegpt"`` (OBS update from H), ``"wanda"`` (mask from ||X_j||, no update) or
      ``"magnitude"`` (per-column |W|, no calibration, for comparison).
    variables: the Linen variables; None for NNX.
    forward: NNX only: ``forward(model, *batch)`` instead of ``model(*batch)``.
    stage_of: kernel path -> stage name; None: one stage per kernel.
    include: kernel path -> bool, which recorded kernels to prune (default: all).
    block_size: SparseGPT's block size.
    damp: SparseGPT's relative damping.

  Returns:
    ``(params, masks)``: the pruned parameters (NNX: the pure dict, already written into
    ``model``; Linen: the new ``variables["params"]``) and a tree like them with a bool mask per
    pruned kernel and ``None`` elsewhere.

  Raises:
    ValueError: for an unknown ``method`` or a bad sparsity / pattern.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> from optax_sparse import pruning
    >>> model = nnx.Sequential(nnx.Linear(8, 8, rngs=nnx.Rngs(0)), nnx.relu,
    ...                        nnx.Linear(8, 4, rngs=nnx.Rngs(1)))
    >>> batches = [jax.random.normal(jax.random.PRNGKey(i), (16, 8)) for i in range(2)]
    >>> params, masks = pruning.prune_layerwise(model, batches, 0.5)
    >>> [int(masks["layers"][i]["kernel"].sum()) for i in (0, 2)]
    [32, 16]
    >>> float(jnp.mean(model.layers[0].kernel[...] == 0))
    0.5

  References:
    Frantar, Alistarh, *SparseGPT*, arXiv 2301.00774; Sun et al., *Wanda*, arXiv 2306.11695.
  """
  from optax_sparse.pruning import calibration  # noqa: PLC0415 - imports flax lazily.

  if method not in ("sparsegpt", "wanda", "magnitude"):
    raise ValueError(f"method must be 'sparsegpt', 'wanda' or 'magnitude'; got {method!r}.")
  if densities is None:
    wanda_lib._check_pattern(sparsity, n, m)
  batches = list(batches)
  calibration._check_model(model, variables)
  params = calibration._params_tree(model, variables)
  _, order = calibration.record_inputs(
      model, batches[:1], "sq_norm", variables=variables, forward=forward, only=())
  order = [p for p in order if include is None or include(p)]
  d_tree = densities
  stages: list[list[tuple]] = []
  names: dict[Hashable, int] = {}
  for path in order:
    name = path if stage_of is None else stage_of(path)
    if name not in names:
      names[name] = len(stages)
      stages.append([])
    stages[names[name]].append(path)
  masks = jax.tree.map(lambda _: None, params)
  statistic = "gram" if method == "sparsegpt" else "sq_norm"
  for stage in stages:
    # Magnitude needs only the kernels' input shapes: one batch is enough.
    tree, _ = calibration.record_inputs(
        model, batches[:1] if method == "magnitude" else batches, statistic,
        variables=None if variables is None else {**variables, "params": params},
        forward=forward, only=stage)
    stats = {p: _get(tree, p) for p in stage}
    for path in stage:
      w = _get(params, path)
      d = None if d_tree is None else _get(d_tree, path)
      s = (1.0 - d) if d is not None else sparsity
      if method == "sparsegpt":
        out = sparsegpt(w, stats[path], s, n=n, m=m, block_size=block_size, damp=damp)
        new_w, mask = out.weights, out.mask
      else:
        norm = jnp.sqrt(stats[path])
        if method == "magnitude":
          norm = jnp.ones_like(norm)
        density = None if s is None else 1.0 - jnp.asarray(s, jnp.float32)
        mask = wanda_lib.leaf_mask(wanda_lib._leaf_scores(w, norm), density, n, m,
                                   tuple(w.shape))
        new_w = jnp.where(mask, w, jnp.zeros_like(w))
      params = _set(params, path, new_w)
      masks = _set(masks, path, mask)
    _write(model, variables, params)
  return params, masks


def _write(model: Any, variables: Any, params: Any) -> None:
  if variables is not None:
    return
  from flax import nnx  # noqa: PLC0415 - flax is optional.

  state = nnx.state(model, nnx.Param)
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)
