"""NanoAdam: Adam on the smallest weights only, with moments stored for that subset.

Zhou, Jacobs, Gadhikar, Burkholz, *Pay Attention to Small Weights* (arXiv 2506.21374,
NeurIPS 2025), Algorithm 1. Per weight matrix ``W`` (``n`` entries) with density ``rho_t``::

    k_t = clip(round(rho_t * n), 1, k_max)
    if t mod tau == 0 or k_t != k_{t-1}:  I <- Bottom-k_t(|W|)      (no gradient needed)
    g_I = g[I];  mu <- b1 mu + (1 - b1) g_I;  nu <- b2 nu + (1 - b2) g_I^2
    u[I] = -eta_t mu / (sqrt(nu) + eps);      u = 0 elsewhere (parameters bit-identical)

Leaves marked ``dense`` (by default every leaf with ``ndim < 2``: biases, normalization scales)
are updated densely with plain, bias-corrected Adam (``optax.adam``'s rule).

Library decisions where the paper leaves a choice (see :doc:`/methods/nanoadam`):

* **Compressed state.** For each selected leaf the state keeps only ``k_max`` slots: int32 flat
  indices (strictly ascending; unused slots hold ``n + slot``, out of range), ``mu`` and ``nu``
  in float32 and an
  int32 valid count. ``k_max`` is fixed at ``init`` from ``max_density`` (or the density at step
  0), so a density schedule never changes shapes; the state is ``O(k)``, not ``O(n)``.
* **Selection** is exact per whole matrix (no chunks), ties by lower flat index:
  ``optax_sparse.masks.select.select_bottom_k`` with the traced ``k_t`` (a sort-free radix
  threshold, several times faster than a large ``top_k`` on CPU), then the ascending flat
  indices by ``select.nonzero_indices``; both work in the leaf's shape, so on a device mesh
  they reduce histograms and counts instead of gathering the matrix (``docs/sharding.md``).
  On one device, where nothing is sharded, the flattened leaf is used instead: ``jax.lax.top_k``
  when ``k_max <= n/32``, otherwise the same radix threshold with a compaction over packed
  32-bit words (the same indices, several times faster on CPU).
* **Chunks** (the paper code's option, off by default): ``chunks`` selects within equal
  chunks or tiles of each matrix, each with its own ``k`` and slots ``(*grid, k_max)``; ties by
  lower index inside the chunk (``jax.lax.top_k`` on one device, a stable sort per chunk on a
  mesh: the same indices).
* **Sharding.** Whole-matrix slots are replicated (``osp.state_shardings``); each step reads
  and writes the slots through a multi-index into the sharded gradient and update, which XLA
  partitions as local gathers / scatters plus an all-reduce of the ``k_max`` selected values.
  With ``chunks=osp.shard_grid(param_shardings)`` each device's shard is one tile: the slots
  are sharded like the parameter and a step moves scalars only.
* **Moments on refresh** (proposed default): an entry that stays selected keeps its ``mu`` and
  ``nu``; a newly selected entry starts from zero; a dropped entry's moments are discarded.
  Without bias correction (Algorithm 1) the first step of a new entry is
  ``(1 - b1) / sqrt(1 - b2) * sign(g) ~= 3.16 * sign(g)`` times ``eta`` (derivation).
* **Bias correction** is off by default (Algorithm 1); ``bias_correction=True`` corrects the
  subset moments with the global step count (paper's App. I.5).
* **Non-finite gradients:** a leaf whose (selected) gradient is not finite is skipped for that
  step: zero update and unchanged moments.
* The density schedule is evaluated at every step (the paper's ``tau_d`` is expressed by the
  schedule itself, e.g. a piecewise-constant one).
* **Backend** (``backend="auto" | "xla" | "pallas"``, resolved at construction by
  ``kernels.resolve_backend``): with Pallas the compressed-state step is
  ``kernels.compressed_adam_update`` (gather, Adam maths on the ``k_max`` slots, scatter; the
  sentinels ``n + slot`` are its unused slots) and large leaves select with the Pallas radix
  histogram; the non-finite guard stays outside the kernel. The jnp step performs the kernel's
  float32 operations in the same order, but the compiler may contract them differently
  (fused multiply-add), so the two backends agree to a few ulps, not bitwise; selections agree
  exactly. As in the kernel, ``1 - b1`` and ``1 - b2`` of the subset moments are computed in
  float32 from float32 ``b1``, ``b2`` (the two EMA weights sum to exactly 1); with ``b2 = 0.999``
  this weight is ``1.3e-5`` (relative) below the decimal ``0.001`` that ``optax.adam`` uses.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax._src import base

from optax_sparse import _eligibility, _nonfinite, _validation, kernels
from optax_sparse._hyperparams import check_scalar, evaluate
from optax_sparse.masks import select

__all__ = ["NanoAdamDenseMoments", "NanoAdamSubsetMoments", "NanoAdamState", "nanoadam"]


class NanoAdamSubsetMoments(NamedTuple):
  """Compressed Adam moments of one selected leaf (``k_max`` static slots).

  Attributes:
    indices: int32 ``[k_max]`` strictly ascending flat indices; an unused slot ``j`` holds
      ``n + j`` (out of range, ``n`` the leaf size).
    mu: float32 ``[k_max]`` first moments of the selected entries.
    nu: float32 ``[k_max]`` second moments of the selected entries.
    valid: int32 scalar, the number of used slots (the current ``k``).
  """

  indices: jax.Array
  mu: jax.Array
  nu: jax.Array
  valid: jax.Array


class NanoAdamDenseMoments(NamedTuple):
  """Adam moments of a leaf updated densely (float32, the leaf's shape)."""

  mu: jax.Array
  nu: jax.Array


class NanoAdamState(NamedTuple):
  """State of :func:`nanoadam`.

  Attributes:
    count: int32 step counter.
    moments: per-leaf moments (None for None leaves).
    skipped_leaves: int32 number of (leaf, step) pairs skipped under the non-finite policy
      (``docs/nonfinite.md``).
  """

  count: jax.Array
  moments: Any
  skipped_leaves: jax.Array


# Leaves up to this size select with ``jax.lax.top_k`` of the flattened leaf, others with the
# radix selection in the leaf's shape. 0 (every leaf by radix): on a device mesh the flattened
# top_k would gather the whole parameter, while the radix selection reduces histograms only.
TOP_K_MAX_SIZE = 0


def _default_dense(path: Any, leaf: Any) -> bool:
  del path
  return getattr(leaf, "ndim", 0) < 2


def _k_of(density: jax.Array, n: int, k_max: int, current: jax.Array) -> jax.Array:
  """``clip(round(rho n), 1, k_max)``; a NaN density keeps the current k (k_max at first)."""
  d = jnp.asarray(density, jnp.float32)
  k = jnp.round(jnp.clip(jnp.where(jnp.isnan(d), 0.0, d), 0.0, 1.0) * n).astype(jnp.int32)
  keep = jnp.where(current > 0, current, k_max)
  return jnp.where(jnp.isnan(d), keep, jnp.clip(k, 1, k_max)).astype(jnp.int32)


# On one device (no mesh to keep the leaf sharded on), the refresh may work on the flattened
# leaf: ``jax.lax.top_k`` when ``k_max`` is at most this fraction of the leaf (a partial sort
# of few entries is faster on CPU than the radix passes), otherwise the radix selection with
# ``_flat_nonzero`` as the compaction (cheaper on CPU than the shape-preserving ranks of
# ``select.nonzero_indices``). Both give exactly the indices of the mesh path.
ONE_DEVICE_TOP_K_MAX_FRACTION = 1 / 32


def _one_device() -> bool:
  return jax.device_count() == 1


def _flat_nonzero(mask: jax.Array, size: int, fill_value: int) -> jax.Array:
  """``select.nonzero_indices(mask, size, fill_value)`` on one device, without a prefix sum of n.

  The mask is packed into 32-bit words (one pass); slot ``s`` finds its word by a binary search
  over the words' inclusive set-bit counts, and its bit by a 5-step popcount bisection inside the
  word. Work O(n) + O(size log n), against the O(n log n) prefix sum and the n-update scatter of
  the general compaction on XLA CPU.
  """
  flat = mask.reshape(-1)
  n = flat.size
  rows = -(-n // 32)
  flat = jnp.pad(flat, (0, rows * 32 - n)).reshape(rows, 32)
  bit = jnp.uint32(1) << jnp.arange(32, dtype=jnp.uint32)
  words = jnp.sum(jnp.where(flat, bit, jnp.uint32(0)), axis=1, dtype=jnp.uint32)
  counts = jax.lax.population_count(words).astype(jnp.int32)
  inclusive = jnp.cumsum(counts)
  slot = jnp.arange(size, dtype=jnp.int32)
  row = jnp.searchsorted(inclusive, slot, side="right", method="scan_unrolled").astype(jnp.int32)
  safe = jnp.minimum(row, rows - 1)
  rank = slot - (inclusive[safe] - counts[safe])  # the wanted set bit of the word, 0-based
  word = words[safe]
  pos = jnp.zeros_like(slot)
  for step in (16, 8, 4, 2, 1):
    cand = pos + step
    below = jax.lax.population_count(
        word & ((jnp.uint32(1) << cand.astype(jnp.uint32)) - jnp.uint32(1))).astype(jnp.int32)
    pos = jnp.where(below <= rank, cand, pos)
  return jnp.where(row < rows, safe * 32 + pos, jnp.int32(fill_value))


def _unravel(flat: jax.Array, shape: tuple[int, ...]) -> tuple[jax.Array, ...]:
  """Row-major multi-index of flat indices; the sentinels ``n + slot`` fall out of range."""
  out = []
  for size in reversed(shape[1:]):
    out.append(flat % size)
    flat = flat // size
  return (flat, *reversed(out))


def _refresh(
    leaf_abs: jax.Array, mom: NanoAdamSubsetMoments, k: jax.Array, backend: str = "xla"
) -> NanoAdamSubsetMoments:
  """Selects the ``k`` smallest magnitudes; keeps the moments of entries that stay selected."""
  n = leaf_abs.size
  k_max = mom.indices.shape[0]
  one_device = _one_device() and backend != "pallas"
  if n <= TOP_K_MAX_SIZE or (one_device and k_max <= ONE_DEVICE_TOP_K_MAX_FRACTION * n):
    # Small leaves: top_k of -|W| at the static k_max (its first k outputs are the k smallest,
    # ties by lower flat index), then ascending order. Cheap to compile and to run. Entries
    # that compare equal to 0 (subnormals, which XLA CPU flushes) are 0, as in the radix keys.
    flat = leaf_abs.reshape(-1)
    flat = jnp.where(flat == 0, jnp.float32(0), flat)
    _, raw = jax.lax.top_k(-flat, k_max)
    slot = jnp.arange(k_max, dtype=jnp.int32)
    new_idx = jnp.sort(jnp.where(slot < k, raw.astype(jnp.int32), jnp.int32(n)))
  else:
    # The sort-free radix threshold with the traced k (same ties), then the selected flat
    # indices in ascending order, both in the leaf's shape (nothing is gathered on a mesh; a
    # large top_k is also several times slower on CPU).
    chosen = select.select_bottom_k(leaf_abs, k, backend=backend)
    if one_device:
      new_idx = _flat_nonzero(chosen, k_max, n)
    else:
      new_idx = select.nonzero_indices(chosen, k_max, n)
  # Unused slots get distinct out-of-range indices n + slot: the index vector stays strictly
  # ascending and unique, which lets the gather and scatter of every step use the fast paths.
  slots = jnp.arange(k_max, dtype=jnp.int32)
  new_idx = jnp.where(new_idx < n, new_idx, jnp.int32(n) + slots)
  # Old indices are ascending with sentinels last, so membership is a binary search: O(k log k).
  pos = jnp.clip(jnp.searchsorted(mom.indices, new_idx, method="scan_unrolled"), 0, k_max - 1)
  kept = (mom.indices[pos] == new_idx) & (new_idx < n)
  mu = jnp.where(kept, mom.mu[pos], 0.0)
  nu = jnp.where(kept, mom.nu[pos], 0.0)
  return NanoAdamSubsetMoments(new_idx, mu, nu, k.astype(jnp.int32))



def _tile_view(x: jax.Array, grid: tuple[int, ...]) -> jax.Array:
  """``x`` as ``(*grid, t)``: tile ``(i_0, ..)`` holds its entries in row-major order.

  ``len(grid) == x.ndim`` (a grid of tiles over the axes; on a mesh whose shards are these
  tiles, every tile is one device's shard and the view moves no data between devices), or
  ``grid == (C,)`` for ``C`` contiguous chunks of the flattened leaf.
  """
  if len(grid) != x.ndim:
    return x.reshape(*grid, -1)
  split = []
  for size, ways in zip(x.shape, grid, strict=True):
    split += [ways, size // ways]
  nd = x.ndim
  perm = tuple(range(0, 2 * nd, 2)) + tuple(range(1, 2 * nd, 2))
  return x.reshape(split).transpose(perm).reshape(*grid, -1)


def _untile(y: jax.Array, grid: tuple[int, ...], shape: tuple[int, ...]) -> jax.Array:
  """The inverse of :func:`_tile_view`."""
  if len(grid) != len(shape):
    return y.reshape(shape)
  nd = len(shape)
  inner = [size // ways for size, ways in zip(shape, grid, strict=True)]
  y = y.reshape(*grid, *inner)
  perm = []
  for axis in range(nd):
    perm += [axis, nd + axis]
  return y.transpose(perm).reshape(shape)


def _per_tile(fn, batch: int):
  """``fn`` of one tile's vectors, mapped over the ``batch`` leading (grid) axes."""
  for _ in range(batch):
    fn = jax.vmap(fn)
  return fn


def _refresh_tiles(tiles_abs: jax.Array, mom: NanoAdamSubsetMoments,
                   k: jax.Array) -> NanoAdamSubsetMoments:
  """:func:`_refresh` in every tile of ``(*grid, t)``: the ``k`` smallest of each tile."""
  t = tiles_abs.shape[-1]
  k_max = mom.indices.shape[-1]
  flat = jnp.where(tiles_abs == 0, jnp.float32(0), tiles_abs)
  if _one_device():
    _, raw = jax.lax.top_k(-flat, k_max)
  else:
    # A stable sort along the last axis (the same order: ties by lower index). XLA partitions
    # a sort along its batch axes, so each device sorts its own tiles; it would gather the
    # operand of a top_k.
    iota = jax.lax.broadcasted_iota(jnp.int32, flat.shape, flat.ndim - 1)
    _, raw = jax.lax.sort((flat, iota), dimension=flat.ndim - 1, is_stable=True, num_keys=1)
    raw = raw[..., :k_max]
  slots = jnp.arange(k_max, dtype=jnp.int32)
  new_idx = jnp.sort(jnp.where(slots < k, raw.astype(jnp.int32), jnp.int32(t)), axis=-1)
  new_idx = jnp.where(new_idx < t, new_idx, jnp.int32(t) + slots)
  search = _per_tile(lambda a, v: jnp.searchsorted(a, v, method="scan_unrolled"),
                     new_idx.ndim - 1)
  pos = jnp.clip(search(mom.indices, new_idx), 0, k_max - 1)
  kept = (jnp.take_along_axis(mom.indices, pos, axis=-1) == new_idx) & (new_idx < t)
  mu = jnp.where(kept, jnp.take_along_axis(mom.mu, pos, axis=-1), 0.0)
  nu = jnp.where(kept, jnp.take_along_axis(mom.nu, pos, axis=-1), 0.0)
  return NanoAdamSubsetMoments(new_idx, mu, nu, k.astype(jnp.int32))


def _grid_of(chunks: Any, path: Any, p: jax.Array) -> tuple[int, ...] | None:
  """The static tile grid of one selected leaf from ``chunks`` (None: the whole matrix)."""
  spec = chunks(path, p) if callable(chunks) else chunks
  where = f"chunks for the leaf {jax.tree_util.keystr(path)} of shape {tuple(p.shape)}"
  if spec is None:
    return None
  if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
    c = int(spec)
    if c < 1 or p.size % c:
      raise ValueError(f"{where}: {c} chunks must be >= 1 and divide its {p.size} entries.")
    if p.ndim >= 1 and p.shape[0] % c == 0:
      return (c,) + (1,) * (p.ndim - 1)  # the same contiguous chunks, as a grid of row blocks
    return (c,)
  if not isinstance(spec, (tuple, list)) or not all(
      isinstance(g, (int, np.integer)) and not isinstance(g, bool) for g in spec):
    raise ValueError(f"{where}: expected None, an int or a tuple of ints; got {spec!r}.")
  grid = tuple(int(g) for g in spec)
  if len(grid) != p.ndim or any(g < 1 or s % g for g, s in zip(grid, p.shape, strict=True)):
    raise ValueError(f"{where}: a tile grid needs one count per axis, each >= 1 and dividing the "
                     f"axis; got {spec!r}.")
  return grid


def nanoadam(
    learning_rate: optax.ScalarOrSchedule,
    density: optax.ScalarOrSchedule,
    refresh_every: int = 100,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    dense: _eligibility.Where = None,
    bias_correction: bool = False,
    max_density: float | None = None,
    chunks: Any = None,
    backend: str = "auto",
) -> optax.GradientTransformationExtraArgs:
  r"""Adam on the ``k`` smallest-magnitude entries of each matrix, moments kept for them only.

  For each selected leaf ``W`` with ``n`` entries, ``k_t = clip(round(rho_t n), 1, k_max)``. The
  index set ``I`` (bottom-``k_t`` of ``|W|``, chosen without gradients) is refreshed when
  ``t mod refresh_every == 0`` or when ``k_t`` changes; then

  .. math::
    \mu \leftarrow \beta_1 \mu + (1-\beta_1) g_I,\quad
    \nu \leftarrow \beta_2 \nu + (1-\beta_2) g_I^2,\quad
    u_I = -\eta_t \frac{\mu}{\sqrt{\nu} + \epsilon},\quad u_{\bar I} = 0.

  Leaves marked ``dense`` are updated with bias-corrected Adam. Moments of entries that stay
  selected are kept at a refresh, new entries start from zero, dropped ones are discarded; without
  bias correction the first step of a new entry is about ``3.16 * eta * sign(g)``.

  Args:
    learning_rate: the step size ``eta_t`` (scalar or schedule).
    density: fraction ``rho`` of each selected matrix that is updated, in ``(0, 1]`` (scalar or
      schedule; the paper decays it linearly, e.g. 10% to 4%).
    refresh_every: ``tau``, steps between two selections (the paper's mask interval, 100 by
      default in the authors' configuration).
    b1: Adam's first-moment decay.
    b2: Adam's second-moment decay.
    eps: Adam's epsilon, added to ``sqrt(nu)``.
    dense: which leaves are updated densely: ``None`` (leaves with ``ndim < 2``), a predicate
      ``(path, leaf) -> bool`` or a static pytree of bools. The paper also updates the classifier
      head densely; mark it by name, e.g.
      ``dense=lambda path, x: x.ndim < 2 or "head" in jax.tree_util.keystr(path)``.
    bias_correction: correct the subset moments with the global step count (off in Algorithm
      1).
    max_density: the largest density the schedule will reach, which sizes the compressed state
      (``k_max = clip(round(max_density n), 1, n)``). Defaults to ``density`` at step 0.
    chunks: select within chunks of each selected leaf instead of the whole matrix (the
      paper's code has this option): ``None`` (whole matrices), an int ``C`` (``C`` equal
      contiguous chunks of the flattened leaf), a tuple (a grid of equal tiles, one count per
      axis) or a callable ``(path, leaf) -> None | int | tuple``, e.g.
      ``osp.shard_grid(param_shardings)``. Each chunk of ``t`` entries updates its
      ``clip(round(rho t), 1, k_max)`` smallest entries and keeps its own compressed slots
      (shape ``(*grid, k_max)``, indices within the chunk). When the chunks are the shards of
      the leaf on a device mesh, the slots are sharded like the parameter
      (``osp.state_shardings``) and a step communicates nothing but scalars. Chunked leaves use
      the jnp step on every backend.
    backend: where the compressed-state step runs: ``"auto"`` (the Pallas kernel
      ``kernels.compressed_adam_update`` on GPU/TPU, jnp on CPU), ``"xla"`` (jnp) or
      ``"pallas"`` (interpret mode on CPU, slow). It also picks the backend of the radix
      selection of large leaves. Both backends compute the same float32 operations (equal
      up to a few ulps).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state is a :class:`NanoAdamState`.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> tx = osp.nanoadam(learning_rate=0.1, density=0.5)
    >>> params = {"w": jnp.array([[0.1, -2.0], [3.0, 0.2]])}
    >>> state = tx.init(params)
    >>> updates, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
    >>> updates["w"]  # only the two smallest-magnitude entries move (3.16 * 0.1 at step one)
    Array([[-0.31622976,  0.        ],
           [ 0.        , -0.31622976]], dtype=float32)

  References:
    Zhou, Jacobs, Gadhikar, Burkholz, `Pay Attention to Small Weights
    <https://arxiv.org/abs/2506.21374>`_, NeurIPS 2025.
  """
  check_scalar("learning_rate", learning_rate)
  check_scalar("density", density, low=0.0, high=1.0, low_open=True)
  if max_density is not None:
    check_scalar("max_density", max_density, low=0.0, high=1.0, low_open=True,
                 allow_schedule=False)
  _validation.check_int("refresh_every", refresh_every, low=1, allow_traced=True)
  check_scalar("b1", b1, low=0.0, high=1.0, high_open=True)
  check_scalar("b2", b2, low=0.0, high=1.0, high_open=True)
  check_scalar("eps", eps, low=0.0)
  _eligibility.check_where("dense", dense)
  if not (chunks is None or callable(chunks) or isinstance(chunks, (tuple, list))
          or (isinstance(chunks, (int, np.integer)) and not isinstance(chunks, bool))):
    raise ValueError(f"chunks must be None, an int, a tuple of ints or a callable "
                     f"(path, leaf) -> None | int | tuple; got {chunks!r}.")
  backend = kernels.resolve_backend(backend, name="backend")
  b1_32, b2_32 = jnp.float32(b1), jnp.float32(b2)

  def _static_density(value, name):
    # Eagerly, so that init also runs under jax.jit (a sharded init) or jax.eval_shape.
    # The compressed state's size must be static: a number, or a schedule evaluated at step 0
    # at trace time (also under jax.jit); a traced value (inject_hyperparams under jit) cannot.
    if isinstance(value, (int, float)):
      return float(value)
    try:
      with jax.ensure_compile_time_eval():
        return float(evaluate(value, jnp.zeros([], jnp.int32)))
    except Exception:  # noqa: BLE001 - a tracer.
      raise ValueError(
          f"{name} is traced at init ({value!r}), but it sizes the compressed state; pass a "
          f"number as max_density (and list it in static_args of optax.inject_hyperparams)."
      ) from None

  def init_fn(params):
    _validation.check_float_params(params)
    flags = _eligibility.eligible_tree(_default_dense if dense is None else dense, params, "dense")
    if max_density is not None:
      rho_max = _static_density(max_density, "max_density")
    else:
      rho_max = _static_density(density, "density")
    if not 0.0 < rho_max <= 1.0:
      raise ValueError(f"max_density (or density at step 0) must be in (0, 1]; got {rho_max}.")

    def leaf_init(path, p, is_dense):
      if p is None:
        return None
      if is_dense:
        # Two distinct buffers, so that the state can be donated.
        return NanoAdamDenseMoments(jnp.zeros(p.shape, jnp.float32),
                                    jnp.zeros(p.shape, jnp.float32))
      grid = _grid_of(chunks, path, p)
      n = p.size if grid is None else p.size // math.prod(grid)
      k_max = min(max(1, round(rho_max * n)), n)
      lead = () if grid is None else grid
      slots = jnp.broadcast_to(n + jnp.arange(k_max, dtype=jnp.int32), (*lead, k_max))
      return NanoAdamSubsetMoments(
          indices=slots + 0,
          mu=jnp.zeros((*lead, k_max), jnp.float32),
          nu=jnp.zeros((*lead, k_max), jnp.float32),
          valid=jnp.zeros([], jnp.int32),
      )

    moments = jax.tree_util.tree_map_with_path(leaf_init, params, flags,
                                               is_leaf=lambda x: x is None)
    return NanoAdamState(count=jnp.zeros([], jnp.int32), moments=moments,
                         skipped_leaves=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(base.NO_PARAMS_MSG)
    _validation.check_grads(updates, params)
    count = state.count
    lr = evaluate(learning_rate, count)
    rho = evaluate(density, count)
    t1 = (count + 1).astype(jnp.float32)
    due = count % refresh_every == 0

    def dense_step(g, mom, leaf_ok):
      g = jnp.where(leaf_ok, g.astype(jnp.float32), 0.0)
      mu = b1 * mom.mu + (1.0 - b1) * g
      nu = b2 * mom.nu + (1.0 - b2) * g * g
      mu_hat = mu / (1.0 - b1**t1)
      nu_hat = nu / (1.0 - b2**t1)
      u = -lr * mu_hat / (jnp.sqrt(nu_hat) + eps)
      ok = leaf_ok & jnp.all(jnp.isfinite(u))
      return jnp.where(ok, u, 0.0), NanoAdamDenseMoments(
          jnp.where(ok, mu, mom.mu), jnp.where(ok, nu, mom.nu))

    if bias_correction:
      c1, c2 = 1.0 - b1_32**t1, 1.0 - b2_32**t1
    else:
      c1, c2 = jnp.float32(1.0), jnp.float32(1.0)

    def slot_adam(g_sel, used, mom, leaf_ok):
      # The Adam maths on the slots (the kernel's float32 operations in the same order); a
      # non-finite step skips the leaf.
      g_sel = jnp.where(used, g_sel.astype(jnp.float32), 0.0)
      mu = b1_32 * mom.mu + (1.0 - b1_32) * g_sel
      nu = b2_32 * mom.nu + (1.0 - b2_32) * g_sel * g_sel
      step = -lr * (mu / c1) / (jnp.sqrt(nu / c2) + eps)
      ok = leaf_ok & jnp.all(jnp.isfinite(step))
      return jnp.where(ok, step, 0.0), mu, nu, ok

    def subset_step(g, p, mom, leaf_ok):
      n = p.size
      k = _k_of(rho, n, mom.indices.shape[0], mom.valid)
      g = jnp.where(leaf_ok, g, jnp.zeros_like(g))
      old = mom
      mom = jax.lax.cond(
          leaf_ok & (due | (k != mom.valid)),
          lambda m: _refresh(jnp.abs(p.astype(jnp.float32)), m, k, backend),
          lambda m: m,
          mom,
      )
      used = mom.indices < n
      if backend == "pallas":
        # The kernel gathers, runs the Adam maths on the k slots and scatters; the sentinels
        # n + slot are out of range, hence unused slots. The non-finite guard stays here.
        u, mu, nu = kernels.compressed_adam_update(
            g, mom.indices, mom.mu, mom.nu, learning_rate=lr, b1=b1_32, b2=b2_32, eps=eps,
            bias_correction1=c1, bias_correction2=c2, dtype=jnp.float32, backend="pallas")
        u = u.reshape(-1)
        step = jnp.where(used, jnp.take(u, jnp.where(used, mom.indices, 0), mode="clip"), 0.0)
        ok = leaf_ok & jnp.all(jnp.isfinite(step))
        u = jnp.where(ok, u, 0.0)
      else:
        # The kernel's float32 operations in the same order (bit-identical results).
        # Gather and scatter address the leaf in its own shape (a multi-index per slot): on a
        # mesh each device reads / writes the slots in its shard, and the k slot values are
        # all-reduced; a flat view would gather the whole gradient.
        # On one device the slots address the flat view (a bitcast): the same values without
        # the per-slot multi-index arithmetic.
        shape = (n,) if _one_device() else (p.shape or (1,))
        where_ = _unravel(mom.indices, shape)
        g_sel = g.reshape(shape).at[where_].get(mode="fill", fill_value=0)
        step, mu, nu, ok = slot_adam(g_sel, used, mom, leaf_ok)
        u = jnp.zeros(shape, jnp.float32).at[where_].set(
            step, mode="drop", indices_are_sorted=True, unique_indices=True)
      new = mom._replace(mu=jnp.where(ok, mu, mom.mu), nu=jnp.where(ok, nu, mom.nu))
      # A skipped leaf keeps its whole state, its selection included.
      new = jax.tree.map(lambda a, b: jnp.where(leaf_ok, a, b), new, old)
      return u.reshape(p.shape), new

    def tiled_step(g, p, mom, leaf_ok):
      # Chunks (docs/sharding.md): the same maths per tile, indices within the tile. The grid
      # axes are batch axes of every operation, so on a mesh whose shards are the tiles each
      # device reads and writes its own slots only.
      grid = mom.indices.shape[:-1]
      g = jnp.where(leaf_ok, g, jnp.zeros_like(g))
      g_t = _tile_view(g, grid)
      t = g_t.shape[-1]
      k = _k_of(rho, t, mom.indices.shape[-1], mom.valid)
      old = mom
      mom = jax.lax.cond(
          leaf_ok & (due | (k != mom.valid)),
          lambda m: _refresh_tiles(_tile_view(jnp.abs(p.astype(jnp.float32)), grid), m, k),
          lambda m: m,
          mom,
      )
      used = mom.indices < t
      g_sel = jnp.take_along_axis(g_t, jnp.minimum(mom.indices, t - 1), axis=-1)
      step, mu, nu, ok = slot_adam(g_sel, used, mom, leaf_ok)
      scatter = _per_tile(
          lambda i, v: jnp.zeros((t,), jnp.float32).at[i].set(
              v, mode="drop", indices_are_sorted=True, unique_indices=True), len(grid))
      u = _untile(scatter(mom.indices, step), grid, p.shape)
      new = mom._replace(mu=jnp.where(ok, mu, mom.mu), nu=jnp.where(ok, nu, mom.nu))
      new = jax.tree.map(lambda a, b: jnp.where(leaf_ok, a, b), new, old)
      return u, new

    def leaf_step(g, p, mom):
      if g is None or mom is None:
        return None, mom, jnp.zeros([], jnp.int32)
      # Non-finite policy (docs/nonfinite.md): any NaN/Inf in the leaf's gradient or parameter
      # skips the leaf (zero update, state kept), counted.
      leaf_ok = _nonfinite.finite(g) & _nonfinite.finite(p)
      if isinstance(mom, NanoAdamDenseMoments):
        u, mom = dense_step(g, mom, leaf_ok)
      elif mom.indices.ndim > 1:
        u, mom = tiled_step(g, p, mom, leaf_ok)
      else:
        u, mom = subset_step(g, p, mom, leaf_ok)
      u = jnp.where(leaf_ok, u, 0.0)
      return u.astype(p.dtype), mom, (~leaf_ok).astype(jnp.int32)

    g_leaves, treedef = jax.tree.flatten(updates, is_leaf=lambda x: x is None)
    p_leaves = treedef.flatten_up_to(params)
    m_leaves = treedef.flatten_up_to(state.moments)
    out = [leaf_step(g, p, m) for g, p, m in zip(g_leaves, p_leaves, m_leaves, strict=True)]
    new_updates = treedef.unflatten([u for u, _, _ in out])
    new_moments = treedef.unflatten([m for _, m, _ in out])
    skipped = sum((s for _, _, s in out), jnp.zeros([], jnp.int32))
    return new_updates, NanoAdamState(optax.safe_increment(count), new_moments,
                                      state.skipped_leaves + skipped)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
