"""Fine-tuning that keeps the mask: the zeros of a pruned model stay exactly zero.

A pruned checkpoint fine-tuned with a plain optimizer loses its zeros on the first step (every
gradient entry is dense). :func:`keep_mask` wraps any optax optimizer so that

.. math::
  M = (θ_0 ≠ 0) \\text{ (or a saved mask)}, \\qquad
  ĝ = M ⊙ g, \\qquad u, s' = \\mathrm{inner}(ĝ, s, θ), \\qquad u' = M ⊙ (θ + u) − θ

with M fixed for the whole run: after every ``optax.apply_updates`` the pruned entries are
exactly 0.0 and the zero pattern never changes.

Two ways to hold the inner optimizer's state:

* default: the inner state has the parameters' shapes; the masked gradient keeps every
  per-parameter statistic exactly 0 at the pruned entries (Adam moments, momentum traces), so
  they carry nothing and a compressed export stores nothing for them;
* ``compact_state=True``: the inner optimizer runs on the active entries only (gathered into one
  vector per masked leaf), so its state holds ``density · n`` entries per leaf instead of ``n``
  (at 90% sparsity Adam keeps 2 × 10% of the parameter count instead of 2 × 100%, plus the int32
  indices of the active entries). Use it with elementwise optimizers (SGD, momentum, Adam,
  AdamW, Lion, ...); an optimizer that uses the shape of a leaf (Adafactor's factored moments,
  Muon's matrix step) would see a vector instead of the matrix.

The default is :func:`optax_sparse.sparse` with the :func:`fixed_mask` rule and
``sparse_gradients=True``; the compact form is its own transformation with state
:class:`KeepMaskState`. :func:`merge_masked` is the matching merge for adapters (LoRA-style
low-rank factors trained next to a frozen sparse model): the merged update is projected onto the
mask, so merging does not densify the model.

Library decisions:

* The mask is ``θ ≠ 0`` at ``init`` (NaN counts as active) unless ``masks`` is given; only
  leaves selected by ``where`` (default: ``ndim >= 2``) are masked; biases and normalization
  scales stay dense.
* ``compact_state=True`` needs concrete masks at ``init`` (the number of active entries fixes
  the state's shapes): call ``init`` outside ``jax.jit``, or give ``masks``.

References:
  The field's answer to "how do I keep the sparsity while fine-tuning": store ``θ ≠ 0`` as the
  mask and re-apply it after every optimizer step (SparseGPT, Frantar & Alistarh, arXiv
  2301.00774, official repository); llm-compressor's ``ConstantPruningModifier``.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_sparse import _eligibility, _nonfinite, _validation
from optax_sparse.masks import rules as rules_lib
from optax_sparse.masks.sparse import _check_masks, sparse

__all__ = ["KeepMaskState", "fixed_mask", "keep_mask", "merge_masked"]


def _is_none(x: Any) -> bool:
  return x is None


def _nonzero_masks(params: Any, eligible: Any) -> Any:
  return jax.tree.map(
      lambda e, p: jnp.asarray(p != 0) if (e and p is not None) else None,
      eligible, params, is_leaf=_is_none)


def fixed_mask() -> rules_lib.MaskRule:
  """A mask rule that takes the masks from the parameters' nonzeros at ``init`` and keeps them.

  .. math::
    M = (θ_0 ≠ 0) \\text{ on eligible leaves, fixed for every step}

  With ``sparse(..., initial_masks=masks)`` the given masks are used instead. The rule fixes its
  own sparsity (``scope="pattern"``): ``sparse()`` takes ``sparsity=None``.

  Returns:
    A :class:`~optax_sparse.masks.rules.MaskRule` for :func:`optax_sparse.sparse`.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> tx = osp.sparse(optax.sgd(0.1), osp.fixed_mask(), None)
    >>> osp.get_masks(tx.init({"w": jnp.array([[0.0, 2.0]])}))["w"].tolist()
    [[False, True]]
  """

  def init_masks(params, target, key):
    del key
    return _nonzero_masks(params, target.eligible)

  def is_update_step(count):
    del count
    return jnp.asarray(False)

  def update_masks(masks, params, grads, count, key, target, rule_state):
    del params, grads, count, key, target
    return masks, rule_state

  return rules_lib.MaskRule(
      name="fixed_mask", init_masks=init_masks, is_update_step=is_update_step,
      update_masks=update_masks, scope="pattern")


class KeepMaskState(NamedTuple):
  """State of :func:`keep_mask` with ``compact_state=True``.

  Attributes:
    count: int32 number of updates so far.
    masks: a bool array per masked leaf, ``None`` per dense leaf.
    indices: the int32 flat indices of the active entries of each masked leaf (``None`` per
      dense leaf).
    inner_state: the inner optimizer's state over the compact parameters (one vector of the
      active entries per masked leaf, dense leaves unchanged).
    skipped_leaves: int32 number of (leaf, step) pairs skipped under the non-finite policy
      (``docs/nonfinite.md``): a leaf whose gradient or parameter holds a NaN or an infinity
      gets a zero update and keeps its inner state.
  """

  count: jax.Array
  masks: Any
  indices: Any
  inner_state: optax.OptState
  skipped_leaves: jax.Array


def _pack(tree: Any, indices: Any) -> Any:
  return jax.tree.map(
      lambda x, i: x if i is None else jnp.ravel(x)[i], tree, indices, is_leaf=_is_none)


def keep_mask(
    inner: optax.GradientTransformation,
    masks: Any = None,
    *,
    where: _eligibility.Where = None,
    compact_state: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Fine-tunes with any optimizer while the zero pattern of the parameters stays fixed.

  .. math::
    M = (θ_0 ≠ 0), \\quad u, s' = \\mathrm{inner}(M ⊙ g, s, θ), \\quad u' = M ⊙ (θ + u) − θ

  After every ``optax.apply_updates`` the entries outside M are exactly 0.0. Like
  :func:`optax_sparse.sparse`, it must be the outermost transformation that changes the update.

  Args:
    inner: any optax transformation.
    masks: the masks to keep (a pytree like the parameters, a bool array per masked leaf and
      None for dense leaves, e.g. ``osp.get_masks(state)`` of the training run, or the masks
      of ``optax_sparse.export.load_compressed``); default: ``params != 0`` at ``init``.
    where: which leaves are masked when ``masks`` is None (None: ``ndim >= 2``; a predicate
      ``(path, leaf) -> bool`` or a static pytree of bools).
    compact_state: run ``inner`` on the active entries only, so that its state is
      ``density`` times the size (for elementwise optimizers; see the module docstring).

  Returns:
    An ``optax.GradientTransformationExtraArgs``; its state is a
    :class:`~optax_sparse.masks.sparse.SparseState` (default) or a :class:`KeepMaskState`
    (``compact_state=True``); ``osp.get_masks(state)`` gives the masks in both cases.

  Raises:
    ValueError: ``compact_state`` not a bool; masks not matching the parameters (at ``init``);
      ``compact_state=True`` with masks that are not concrete at ``init``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> params = {"w": jnp.array([[0.0, 1.0], [2.0, 0.0]]), "b": jnp.zeros(2)}
    >>> tx = osp.keep_mask(optax.adam(0.1), compact_state=True)
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
    >>> updates, state = tx.update(grads, state, params)
    >>> new = optax.apply_updates(params, updates)
    >>> (new["w"] != 0).tolist(), state.inner_state[0].mu["w"].shape
    ([[False, True], [True, False]], (2,))

  References:
    Frantar & Alistarh, *SparseGPT: Massive Language Models Can Be Accurately Pruned in
    One-Shot*, arXiv 2301.00774 (keep ``θ ≠ 0`` as the mask while fine-tuning).
  """
  if not isinstance(compact_state, bool):
    raise ValueError(f"compact_state must be a bool; got {compact_state!r}.")
  _eligibility.check_where("where", where)
  if not compact_state:
    return sparse(
        inner, fixed_mask(), None, where=where, initial_masks=masks, sparse_gradients=True)
  inner = optax.with_extra_args_support(inner)

  def init_fn(params):
    count = jnp.zeros([], jnp.int32)
    skipped = jnp.zeros([], jnp.int32)
    if not jax.tree.leaves(params):
      # optax.tree.map_params's placeholders: nothing to mask or pack.
      none = jax.tree.map(lambda p: None, params)
      return KeepMaskState(count, none, none, inner.init(params), skipped)
    _validation.check_float_params(params)
    eligible = _eligibility.eligible_tree(where, params)
    if masks is None:
      leaf_masks = _nonzero_masks(params, eligible)
    else:
      leaf_masks = _check_masks(masks, params, eligible)

    def indices(m):
      if m is None:
        return None
      try:
        concrete = np.asarray(m)
      except jax.errors.TracerArrayConversionError as err:
        raise ValueError(
            "keep_mask(compact_state=True) needs concrete masks at init (their number of active "
            "entries fixes the state's shapes): call init outside jax.jit or pass masks=.") from err
      return jnp.asarray(np.flatnonzero(concrete), jnp.int32)

    idx = jax.tree.map(indices, leaf_masks, is_leaf=_is_none)
    return KeepMaskState(count, leaf_masks, idx, inner.init(_pack(params, idx)), skipped)

  def update_fn(grads, state, params=None, **extra_args):
    if params is None:
      raise ValueError(optax._src.base.NO_PARAMS_MSG)
    _validation.check_grads(grads, params)
    extra_args.pop("masks", None)
    # Non-finite policy (docs/nonfinite.md), decided on the full gradient and parameter of each
    # leaf: a skipped leaf gives the inner optimizer zeros, gets a zero update and keeps its
    # compact inner state.
    ok = _nonfinite.ok_tree(grads, params)
    packed_updates, inner_state = _nonfinite.guard(
        inner, _pack(grads, state.indices), state.inner_state, _pack(params, state.indices),
        ok, masks=state.masks, **extra_args)

    def unpack(u, i, m, p, k):
      if i is None:
        return u
      full = jnp.zeros(p.size, u.dtype).at[i].set(u, unique_indices=True, indices_are_sorted=True)
      out = jnp.where(m, full.reshape(p.shape), -p)
      return jnp.where(k, out, jnp.zeros_like(out)).astype(p.dtype)

    updates = jax.tree.map(
        unpack, packed_updates, state.indices, state.masks, params, ok, is_leaf=_is_none)
    return updates, KeepMaskState(
        optax.safe_increment(state.count), state.masks, state.indices, inner_state,
        state.skipped_leaves + _nonfinite.n_skipped(ok))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def merge_masked(params: Any, delta: Any, masks: Any = None) -> Any:
  """Merges an update into sparse parameters without densifying them: θ + M ⊙ Δ.

  .. math::
    θ' = θ + M ⊙ Δ, \\qquad M = (θ ≠ 0) \\text{ by default}

  For adapters trained next to a frozen sparse model (LoRA-style factors, Δ = A B): the dense
  product is projected onto the mask, so the merged model keeps exactly the zeros of θ.

  Args:
    params: the sparse parameters.
    delta: a pytree like ``params`` (``None`` for leaves without an adapter).
    masks: the masks (a bool array or None per leaf); default ``params != 0`` for every leaf
      that has a delta.

  Returns:
    The merged parameters, each leaf in the dtype of ``params``.

  Raises:
    ValueError: when a delta's shape differs from its parameter's.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> w = jnp.array([[0.0, 1.0], [2.0, 0.0]])
    >>> a, b = jnp.ones((2, 1)), jnp.ones((1, 2))
    >>> osp.merge_masked({"w": w}, {"w": a @ b})["w"].tolist()
    [[0.0, 2.0], [3.0, 0.0]]
  """
  if masks is None:
    masks = jax.tree.map(lambda p: None, params)

  def leaf(p, d, m):
    if d is None:
      return p
    if jnp.shape(d) != jnp.shape(p):
      raise ValueError(f"delta of shape {jnp.shape(d)} for a parameter of shape {jnp.shape(p)}.")
    m = (p != 0) if m is None else jnp.asarray(m, bool)
    return jnp.where(m, p + d.astype(p.dtype), jnp.zeros_like(p)).astype(p.dtype)

  return jax.tree.map(leaf, params, delta, masks, is_leaf=_is_none)
