"""``sparse()``: the combinator that owns the masks of sparse training.

One ``update`` of ``sparse(inner, rule, sparsity)`` with count t, raw gradient g, parameters θ
and masks M (bool per eligible leaf; ``None`` for dense leaves):

1. M' = rule.update_masks(M, θ, g, t, key_t, target) if ``rule.is_update_step(t)`` else M (a
   traced bool, under ``lax.cond``: a mask-update step and a plain step share one compilation;
   only the masks and the rule's small state leave the conditional). The rule sees the current
   parameters θ = θ_t and the raw dense gradient g = g_t of this step (the official RigL order:
   drop by |θ_t|, grow by |g_t| at the current sparse point);
2. every per-parameter leaf of the inner state (anything shaped like the parameters: moments,
   traces, …, found structurally with ``optax.tree.map_params``, never a list of known optimizer
   types) is zeroed at the entries whose mask changes (M ≠ M'), *before* the inner update;
3. ĝ = (M ∧ M')⊙g if ``sparse_gradients`` else g zeroed where the mask changes (M ≠ M');
4. (u, s) = inner.update(ĝ, s, θ, masks=M', ``**extra_args``) — the masks that govern this step are
   forwarded to the inner transformation as the extra argument ``masks``;
5. projection (emit-to-land, the ``optax.keep_params_nonnegative`` idiom, :doc:`/methods/sparse`):
   u' = (M ∧ M')⊙(θ + u) − θ, computed as ``where(M ∧ M', u, −θ)`` so that θ + u' is exactly 0
   where an entry is pruned or newly grown and exactly θ + u elsewhere (entries dropped and
   regrown in the same update are kept: RigL ``reinit_when_same=False``).

6. restart (only for rules with a ``restart`` hook, e.g. IMP with rewinding): on a mask-update
   step where ``rule.restart(t, rule_state)`` returns ``(True, θ*)`` the update lands the
   parameters on M' ⊙ θ* (θ* = θ where the rule gives ``None``: LR rewinding), u' = M' ⊙ θ* − θ,
   instead of the inner step, and every per-parameter leaf of the inner state is zeroed (a fresh
   optimizer; counts, and so schedules, go on). θ + u' equals M' ⊙ θ* exactly wherever the
   subtraction is exact (always for pruned entries, which land at 0; otherwise within one
   rounding of the parameter dtype).

With ``skip_update_on_mask_step=True`` (the official RigL/SET code, jaxpruner's
``skip_gradients``) a mask-update step emits only the projection (u = 0: kept weights unchanged,
dropped ones land at 0) and keeps the old inner state with step 2's reset applied.

The key of step t is ``fold_in(key, t)``; the sparsity (and the rule's drop fraction) may be
optax schedules evaluated on the count, or traced values under ``optax.inject_hyperparams``.

Library decisions:

* The rule sees θ_t and the raw dense gradient g_t (never the masked one), as the official RigL
  code, whose mask update runs on the iterate before that step's optimizer update.
* Default ``skip_update_on_mask_step=False``: on a mask-update step the optimizer step and the mask
  change happen in the same update; grown entries land at exactly 0 and the inner transformation
  sees a zero gradient from a zeroed state at every entry whose mask changes (grown or newly
  pruned), so their per-parameter state stays zero for the statistics of momentum / Adam / Lion-type
  optimizers (a zero gradient from a zero state), and their first nonzero gradient enters on the
  next step, as in the official code. The official skip is ``skip_update_on_mask_step=True``
  (its old inner state is kept by the same in-place select as the non-finite guard, so its plain
  step costs the same).
* The non-finite guard's select of the old state happens where the inner transformation writes
  each state leaf (``optax_sparse._select_in_place``): the moments of a donated state are
  updated in place, as by optax itself, instead of being copied first
  (``docs/benchmarks/masks.md``, Root cause).
* Zeroing the inner state where a mask changes covers both directions: grown entries restart
  with zero moments (RigL zeroes the optimizer slots), and newly masked entries lose theirs
  (AC/DC, :doc:`/methods/acdc`). For dropped entries of RigL/SET this is harmless: they would be
  reset when regrown anyway.
* Masks are bool arrays (one byte per entry), or bits with ``packed_masks=True``
  (``optax_sparse.masks.sparse.PackedMask``, one bit per entry); they stay in the state, so a
  checkpoint of the optimizer state carries them.
* Non-finite gradients or parameters never change the number of active entries: their scores
  rank lowest (see ``rules``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_sparse import _eligibility, _hyperparams, _nonfinite, _select_in_place, _validation
from optax_sparse.masks import rules as rules_lib

__all__ = ["PackedMask", "SparseState", "get_masks", "sparse"]


class SparseState(NamedTuple):
  """State of :func:`sparse`.

  Attributes:
    count: int32 number of updates so far (the step t of the next update).
    masks: a pytree like the parameters: a bool array per eligible leaf (a
      ``optax_sparse.masks.sparse.PackedMask`` with ``packed_masks=True``), ``None`` per dense
      leaf.
    key: the PRNG key (uint32[2]) of the rule; step t uses ``fold_in(key, t)``.
    rule_state: the rule's own state (``optax.EmptyState()`` for the built-in rules).
    inner_state: the inner transformation's state.
    skipped_leaves: int32 number of (leaf, step) pairs skipped under the non-finite policy
      (``docs/nonfinite.md``).
    mask_update_pending: bool scalar: a scheduled mask update was postponed (a skipped leaf or
      a NaN sparsity on its step); it happens on the next step without one.
  """

  count: jax.Array
  masks: Any
  key: jax.Array
  rule_state: Any
  inner_state: optax.OptState
  skipped_leaves: jax.Array
  mask_update_pending: jax.Array


def _is_none(x: Any) -> bool:
  return x is None


_BITS = 8


@jax.tree_util.register_pytree_with_keys_class
class PackedMask:
  """A bool mask stored as bits (``sparse(..., packed_masks=True)``): 8 entries per byte.

  ``bits`` is a uint8 array of shape ``shape[:-1] + (ceil(shape[-1] / 8),)``: entry ``j`` of the
  last axis is bit ``j % 8`` (least significant first) of byte ``j // 8``; the leading axes are
  those of the mask, so a packed mask shards like its parameter along them. A 0-d mask is stored
  as one byte. ``shape`` (the mask's shape) is static pytree data, so a packed mask saves and
  restores with any pytree checkpointer. ``unpack()`` returns the bool mask.

  Attributes:
    bits: the uint8 bits.
    shape: the shape of the bool mask.
  """

  def __init__(self, bits: Any, shape: tuple[int, ...]):
    self.bits = bits
    self.shape = tuple(int(s) for s in shape)

  def tree_flatten_with_keys(self):
    return ((jax.tree_util.GetAttrKey("bits"), self.bits),), self.shape

  @classmethod
  def tree_unflatten(cls, shape, children):
    return cls(children[0], shape)

  def __repr__(self) -> str:
    return f"PackedMask(shape={self.shape}, bits={self.bits!r})"

  @classmethod
  def pack(cls, mask: Any) -> PackedMask:
    """Packs a bool mask (any shape) along its last axis."""
    m = jnp.asarray(mask, bool)
    shape = m.shape
    if m.ndim == 0:
      m = m.reshape(1)
    n = m.shape[-1]
    nb = -(-n // _BITS)
    if nb * _BITS != n:
      m = jnp.pad(m, [(0, 0)] * (m.ndim - 1) + [(0, nb * _BITS - n)])
    m = m.reshape(m.shape[:-1] + (nb, _BITS)).astype(jnp.uint8)
    weights = jnp.left_shift(jnp.uint8(1), jnp.arange(_BITS, dtype=jnp.uint8))
    return cls(jnp.sum(m * weights, axis=-1, dtype=jnp.uint8), shape)

  def unpack(self) -> jax.Array:
    """The bool mask."""
    bits = jnp.asarray(self.bits)
    shifts = jnp.arange(_BITS, dtype=jnp.uint8)
    m = jnp.right_shift(bits[..., None], shifts) & jnp.uint8(1)
    m = m.reshape(bits.shape[:-1] + (bits.shape[-1] * _BITS,))
    n = self.shape[-1] if self.shape else 1
    if m.shape[-1] != n:
      m = m[..., :n]
    return m.astype(bool).reshape(self.shape)


def _is_mask_leaf(x: Any) -> bool:
  return x is None or isinstance(x, PackedMask)


def _unpack_tree(masks: Any) -> Any:
  return jax.tree.map(lambda x: x.unpack() if isinstance(x, PackedMask) else x, masks,
                      is_leaf=_is_mask_leaf)


def _pack_tree(masks: Any) -> Any:
  return jax.tree.map(lambda x: None if x is None else PackedMask.pack(x), masks,
                      is_leaf=_is_none)


def get_masks(state: optax.OptState) -> Any:
  """The masks of the :func:`sparse` state inside any wrapper (chain, MultiSteps, ...).

  Args:
    state: an optimizer state that contains exactly one :class:`SparseState` (or another state
      with a single field named ``masks``).

  Returns:
    The masks, a bool array per eligible leaf and ``None`` per dense leaf (bit-packed masks,
    ``sparse(..., packed_masks=True)``, are unpacked).

  Raises:
    ValueError: when no ``masks`` field is found.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> tx = optax.chain(optax.clip(1.0),
    ...                  osp.sparse(optax.adam(1e-3), osp.one_shot_magnitude(), sparsity=0.5))
    >>> osp.get_masks(tx.init({"w": jnp.array([[1.0, -2.0]])}))["w"].tolist()
    [[False, True]]
  """
  sentinel = object()
  masks = optax.tree.get(state, "masks", sentinel)
  if masks is sentinel:
    raise ValueError("get_masks: no field named 'masks' in the optimizer state.")
  return _unpack_tree(masks)


def _check_masks(masks: Any, params: Any, eligible: Any) -> Any:
  """Validates user masks against the parameters; returns them as bool arrays."""
  m_def = jax.tree.structure(masks, is_leaf=_is_none)
  p_def = jax.tree.structure(params, is_leaf=_is_none)
  if m_def != p_def:
    raise ValueError(
        f"initial_masks must have the structure of the parameters (None for dense leaves); got "
        f"{m_def} for parameters {p_def}.")

  def leaf(m, p, e):
    if m is None:
      return None
    if not e:
      raise ValueError("initial_masks has a mask for a leaf that `where` keeps dense.")
    if jnp.shape(m) != jnp.shape(p):
      raise ValueError(
          f"initial_masks: a mask of shape {jnp.shape(m)} for a parameter of shape "
          f"{jnp.shape(p)}.")
    return jnp.asarray(m, bool)

  out = jax.tree.map(leaf, masks, params, eligible, is_leaf=_is_none)
  missing = jax.tree.map(
      lambda m, e: bool(e) and m is None, masks, eligible, is_leaf=_is_none)
  if any(jax.tree.leaves(missing)):
    raise ValueError("initial_masks must give a mask for every eligible leaf (see `where`).")
  return out


def _reset_tree(changed: Any, params: Any) -> Any:
  """Params-shaped tree: the changed-entries mask per eligible leaf, a scalar False elsewhere."""
  return jax.tree.map(
      lambda c, p: (p if _validation.is_empty(p) else jnp.zeros((), bool)) if c is None else c,
      changed, params, is_leaf=_is_none)


def _safe_sparsity(s: Any) -> tuple[Any, Any]:
  """(clip(s, 0, 1) with NaN read as 0, whether s is not NaN): the sparsity a rule sees."""
  s = jnp.asarray(s, jnp.float32)
  ok = ~jnp.isnan(s)
  return jnp.clip(jnp.where(ok, s, 0.0), 0.0, 1.0), ok


def _concrete(fn: Any) -> float | None:
  """``float(fn())`` evaluated at trace time when possible, else None (a traced value)."""
  try:
    with jax.ensure_compile_time_eval():
      return float(fn())
  except Exception:  # noqa: BLE001 - a tracer (inject_hyperparams under jit): unknown here.
    return None


def _check_initial_counts(given: Any, reference: Any, scope: str, sparsity: Any) -> None:
  """``ValueError`` when user masks keep other counts than the rule's own masks at init."""
  paths = jax.tree_util.tree_flatten_with_path(given, is_leaf=_is_none)[0]
  ref = jax.tree.leaves(reference, is_leaf=_is_none)
  try:
    counts = [(jax.tree_util.keystr(p), int(jnp.sum(g)), int(jnp.sum(r)), int(jnp.size(g)))
              for (p, g), r in zip(paths, ref, strict=True) if g is not None]
  except Exception:  # noqa: BLE001 - traced masks (init under jit): not checkable here.
    return
  if scope == "global":
    got, want = sum(c[1] for c in counts), sum(c[2] for c in counts)
    if got != want:
      raise ValueError(
          f"initial_masks keep {got} entries in total, but sparsity={sparsity!r} gives {want} "
          f"at init for this global rule; give masks with that count or change sparsity.")
    return
  for name, got, want, n in counts:
    if got != want:
      raise ValueError(
          f"initial_masks keep {got} of the {n} entries of {name}, but sparsity={sparsity!r} "
          f"(with the distribution) gives {want} at init; give masks with that count or "
          f"change sparsity.")


def _restart(rule, inner, flag, rule_state, count, new_masks, updates, params, raw_params,
             inner_state):
  """Step 6 of the module doc: the rule's restart hook (land on M' ⊙ θ*, fresh inner state)."""
  wants, target = rule.restart(count, rule_state)
  flag = flag & wants
  if target is None:
    target = jax.tree.map(lambda p: None, params, is_leaf=_is_none)

  def land(n, u, p, q):
    if p is None:
      return u
    value = p if q is None else jnp.asarray(q, p.dtype)
    if n is not None:
      value = jnp.where(n, value, jnp.zeros_like(value))
    return jnp.where(flag, value - p, u).astype(p.dtype)

  updates = jax.tree.map(land, new_masks, updates, params, target, is_leaf=_is_none)
  reset = jax.tree.map(lambda p: None if p is None else flag, params, is_leaf=_is_none)
  return updates, reset_inner_state(inner, inner_state, reset, raw_params)


def _zero_where(value: Any, reset: Any) -> Any:
  if value is None or reset is None or not hasattr(value, "shape"):
    return value
  if jnp.ndim(reset) and jnp.shape(value) != jnp.shape(reset):
    return value  # a factored or otherwise reshaped statistic: not per-entry.
  return jnp.where(reset, jnp.zeros_like(value), value)


def _is_param_tree_leaf(x: Any) -> bool:
  return x is None or isinstance(x, optax.MaskedNode)


def reset_inner_state(inner: Any, inner_state: Any, reset: Any, params: Any) -> Any:
  """Zeroes every per-parameter leaf of ``inner_state`` where ``reset`` is True.

  Per-parameter leaves are found structurally with ``optax.tree.map_params`` (any optax
  optimizer, chain or wrapper); when ``inner``'s ``init`` cannot run on placeholders, every
  sub-tree of the state with the parameters' structure and shapes is used instead.
  """
  reset_full = _reset_tree(reset, params)
  try:
    return optax.tree.map_params(
        inner, _zero_where, inner_state, reset_full, is_leaf=_is_param_tree_leaf)
  except Exception:  # noqa: BLE001 - init on placeholders failed: structural walk instead.
    pass
  p_def = jax.tree.structure(params, is_leaf=_is_none)
  p_shapes = [jnp.shape(x) for x in jax.tree.leaves(params)]

  def params_like(x):
    if hasattr(x, "shape"):
      return False
    try:
      same = jax.tree.structure(x, is_leaf=_is_none) == p_def
    except Exception:  # noqa: BLE001
      return False
    return same and [jnp.shape(v) for v in jax.tree.leaves(x)] == p_shapes

  def visit(x):
    if params_like(x):
      return jax.tree.map(_zero_where, x, reset_full, is_leaf=_is_none)
    return x

  return jax.tree.map(visit, inner_state, is_leaf=params_like)


def sparse(
    inner: optax.GradientTransformation,
    rule: rules_lib.MaskRule,
    sparsity: optax.ScalarOrSchedule | None,
    distribution: Any = None,
    *,
    where: _eligibility.Where = None,
    sparse_gradients: bool = False,
    initial_masks: Any = None,
    seed: int = 0,
    skip_update_on_mask_step: bool = False,
    backend: str = "auto",
    packed_masks: bool = False,
) -> optax.GradientTransformationExtraArgs:
  """Sparse training: masks in the state, projection after ``inner``, rule-driven mask updates.

  .. math::
    M' = \\mathrm{rule}(M, θ, g, t) \\text{ on scheduled steps (else } M' = M) \\\\
    u' = (M ∧ M') ⊙ (θ + u) − θ, \\quad u, s' = \\mathrm{inner}(ĝ, s_0, θ), \\quad
    s_0 = s \\text{ zeroed where } M ≠ M'

  Grown entries land at 0 with zeroed inner state.

  See the module docstring for the full step and the library decisions. After every
  ``optax.apply_updates`` the pruned entries are exactly 0.0. ``sparse`` must be the outermost
  parameter-moving transformation (like ``optax.keep_params_nonnegative``): wrap the whole
  optimizer, do not chain anything after it that changes the update.

  Args:
    inner: any optax transformation (receives ``masks=`` as an extra argument).
    rule: a :class:`~optax_sparse.masks.rules.MaskRule` (``rigl(...)``, ``set_(...)``, ...).
    sparsity: the target sparsity s in [0, 1) or a schedule of the count; ``None`` for rules
      that fix their own (N:M).
    distribution: the layer-wise distribution (``uniform()``, ``er()``, ``erk()``; default
      uniform) for layer rules; must be None for global rules.
    where: which leaves are masked (None: ndim >= 2; a predicate ``(path, leaf) -> bool`` or a
      static pytree of bools).
    sparse_gradients: mask the gradient before ``inner`` (the rule still sees the dense one).
    initial_masks: masks to start from instead of the rule's (a pytree like the parameters,
      bool arrays for eligible leaves, None for dense leaves).
    seed: seed of the rule's PRNG key.
    skip_update_on_mask_step: on mask-update steps emit no optimizer step (only the projection
      onto the new masks) and keep the inner state (zeroed where the mask changed), as the
      official RigL/SET code and jaxpruner's ``skip_gradients``; default False (both happen in
      the same update, grown entries see a zero gradient on that step; see the module doc).
    backend: ``"auto"``, ``"xla"`` or ``"pallas"`` (validated with
      ``optax_sparse.kernels.resolve_backend``). Every backend runs the projection as the
      elementwise ``where(M, u, −θ)``, which XLA fuses with the inner transformation's pass: the
      fused kernel ``kernels.hyperbolic_mask_update`` at α = β = 0 (factor exp(0) = 1) computes
      where(M, θ + u, 0) − θ instead, whose update differs from u in the last bit for about half
      of the entries, and after a few Adam steps the parameters differed by one ulp in 3 of 64
      entries, so it is not used here.
    packed_masks: keep the masks in the state as bits
      (``optax_sparse.masks.sparse.PackedMask``: uint8, 8 entries per byte along the last axis,
      leading axes unchanged), 8x less mask memory than the default bool arrays (one byte per
      entry). The masks, the trajectory and every count
      are identical; :func:`get_masks`, :func:`~optax_sparse.sparsity_report` and the exporters
      see the unpacked bool masks. A step unpacks the bits in its fused passes and packs them
      again after a mask update (the cost is in ``docs/benchmarks/masks.md``).

  Returns:
    An ``optax.GradientTransformationExtraArgs`` with state :class:`SparseState`.

  Raises:
    ValueError: sparsity outside [0, 1), an unknown ``backend``, a global or N:M rule given a
      distribution or a sparsity it cannot use, ``where`` or ``initial_masks`` not matching the
      parameters, a distribution that cannot meet the target (at ``init``).

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> tx = osp.sparse(optax.adam(1e-2), osp.rigl(every=2, end_step=10), sparsity=0.75)
    >>> params = {"w": jnp.ones((4, 4)), "b": jnp.zeros((4,))}
    >>> state = tx.init(params)
    >>> update = jax.jit(tx.update)
    >>> for _ in range(3):
    ...   grads = jax.tree.map(jnp.ones_like, params)
    ...   updates, state = update(grads, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> int(jnp.sum(params["w"] != 0)), osp.get_masks(state)["b"] is None
    (4, True)

  References:
    Evci et al., *Rigging the Lottery: Making All Tickets Winners*, arXiv 1911.11134 (masks in
    the optimizer, moment reset, dense-gradient growth); each rule's docstring names its paper.
  """
  _validation.check_transformation("inner", inner)
  if not isinstance(rule, rules_lib.MaskRule):
    raise ValueError(f"rule must be a MaskRule (e.g. osp.rigl()); got {rule!r}.")
  _validation.check_seed(seed)
  from optax_sparse.masks import distributions as _dist  # noqa: PLC0415 - sibling module.

  if (distribution is not None and rule.scope == "layer"
      and not isinstance(distribution, _dist.LayerDistribution)):
    raise _validation.ArgumentTypeError(
        f"distribution must be a LayerDistribution (osp.uniform(), osp.er(), osp.erk()) or "
        f"None; got {distribution!r}.")
  for flag_name, flag in (("sparse_gradients", sparse_gradients),
                          ("skip_update_on_mask_step", skip_update_on_mask_step),
                          ("packed_masks", packed_masks)):
    if not isinstance(flag, bool):
      raise _validation.ArgumentTypeError(f"{flag_name} must be a bool; got {flag!r}.")
  if rule.scope == "pattern":
    if sparsity is not None:
      raise ValueError(
          f"sparsity must be None for the {rule.name} rule, whose pattern fixes it; got "
          f"{sparsity!r}.")
  else:
    if sparsity is None:
      raise ValueError(f"sparsity is required for the {rule.name} rule; got None.")
    _hyperparams.check_scalar("sparsity", sparsity, low=0.0, high=1.0, high_open=True)
  if distribution is not None and rule.scope != "layer":
    raise ValueError(
        f"distribution must be None for the {rule.scope} rule {rule.name}; got {distribution!r}.")
  _eligibility.check_where("where", where)
  from optax_sparse import kernels  # noqa: PLC0415 - sibling package, imported on use.

  kernels.resolve_backend(backend, name="backend")  # the projection is jnp on every backend.
  if distribution is None and rule.scope == "layer":
    from optax_sparse.masks import distributions  # noqa: PLC0415 - sibling module.

    distribution = distributions.uniform()
  inner = optax.with_extra_args_support(inner)

  def target_at(params, eligible, count):
    # Whatever a schedule returns, the rule sees a sparsity in [0, 1] (NaN read as 0; a mask
    # update whose sparsity is NaN does not happen, see update_fn).
    s = None if sparsity is None else _safe_sparsity(_hyperparams.evaluate(sparsity, count))[0]
    if distribution is None:
      densities = lambda s_: None  # noqa: E731 - global and pattern rules use no densities.
    else:
      densities = lambda s_: distribution.densities(params, s_, eligible)  # noqa: E731
    return rules_lib.Target(sparsity=s, densities=densities, eligible=eligible)

  @jax.jit
  def initial_masks_jit(params, key):
    # One program for the whole selection (eager dispatch of it is slow); compiled once per
    # parameter shapes for this transformation.
    eligible = _eligibility.eligible_tree(where, params)
    return rule.init_masks(params, target_at(params, eligible, jnp.zeros([], jnp.int32)), key)

  def init_fn(params):
    _validation.check_float_params(params)
    inner_state = inner.init(params)
    params = _validation.to_none(params)  # MaskedNode (optax.masked): a dense leaf, mask None.
    eligible = _eligibility.eligible_tree(where, params)
    count = jnp.zeros([], jnp.int32)
    if sparsity is not None and callable(sparsity):
      s0 = _concrete(lambda: _hyperparams.evaluate(sparsity, count))
      if s0 is not None and not 0.0 <= s0 < 1.0:
        raise ValueError(
            f"sparsity must be in [0, 1); the schedule gives {s0!r} at step 0.")
    if distribution is not None and isinstance(sparsity, (int, float)) and jax.tree.leaves(params):
      distribution.check_target(params, sparsity, eligible)
    key = jax.random.PRNGKey(seed)
    if not jax.tree.leaves(params):
      # No array leaf (e.g. optax.tree.map_params's placeholder): nothing to mask.
      masks = jax.tree.map(lambda p: None, params)
    elif initial_masks is not None:
      masks = _check_masks(_validation.to_none(initial_masks), params, eligible)
      if rule.scope != "pattern":
        _check_initial_counts(masks, initial_masks_jit(params, key), rule.scope, sparsity)
    else:
      masks = initial_masks_jit(params, key)
    if packed_masks:
      masks = _pack_tree(masks)
    return SparseState(
        count=count, masks=masks, key=key, rule_state=rule.init_state(params),
        inner_state=inner_state, skipped_leaves=jnp.zeros([], jnp.int32),
        mask_update_pending=jnp.zeros([], bool))

  def update_fn(grads, state, params=None, **extra_args):
    if params is None:
      raise ValueError(optax._src.base.NO_PARAMS_MSG)
    _validation.check_grads(grads, params)
    raw_grads, raw_params = grads, params
    # Non-finite policy (docs/nonfinite.md): a leaf with a NaN/Inf gradient or parameter is
    # skipped; on a step with a skipped leaf, or a NaN sparsity, the masks do not change and
    # a scheduled mask update is postponed to the next step without one (never lost).
    ok = _nonfinite.ok_tree(raw_grads, raw_params)
    grads, params = _validation.to_none(grads), _validation.to_none(params)
    eligible = _eligibility.eligible_tree(where, params)
    stored_masks, count = state.masks, state.count
    masks = _unpack_tree(stored_masks) if packed_masks else stored_masks
    scheduled = rule.is_update_step(count) | state.mask_update_pending
    can_update = _nonfinite.all_ok(ok)
    if sparsity is not None:
      can_update = can_update & _safe_sparsity(_hyperparams.evaluate(sparsity, count))[1]
    is_mask_step = scheduled & can_update

    def change(rule_state):
      # Only the masks (and the rule's small state) leave the conditional; the parameters and
      # the gradient are only read inside it.
      key_t = jax.random.fold_in(state.key, count)
      # Packed masks are unpacked here too, so that only the bits enter the conditional (the
      # unpacking outside fuses into the passes that read the masks).
      old = _unpack_tree(stored_masks) if packed_masks else stored_masks
      new_masks, rule_state = rule.update_masks(
          old, params, grads, count, key_t, target_at(params, eligible, count), rule_state)
      new_masks = jax.tree.map(
          lambda m, n: None if m is None else jnp.asarray(n, bool), old, new_masks,
          is_leaf=_is_none)
      return (_pack_tree(new_masks) if packed_masks else new_masks), rule_state

    def keep(rule_state):
      return stored_masks, rule_state

    new_stored, rule_state = jax.lax.cond(is_mask_step, change, keep, state.rule_state)
    new_masks = _unpack_tree(new_stored) if packed_masks else new_stored
    changed = jax.tree.map(
        lambda m, n: None if m is None else m != n, masks, new_masks, is_leaf=_is_none)
    # The reset is applied to the state *before* the inner update (all False on plain steps), so
    # that it fuses into the inner transformation's elementwise pass.
    inner_state = reset_inner_state(inner, state.inner_state, changed, raw_params)

    def inner_grad(m, n, g):
      if m is None:
        return g
      if sparse_gradients:
        return jnp.where(m & n, g, jnp.zeros_like(g))
      if not skip_update_on_mask_step:
        # Entries whose mask changes (grown or newly pruned) see no gradient on this step.
        return jnp.where(m != n, jnp.zeros_like(g), g)
      return g

    inner_grads = jax.tree.map(inner_grad, masks, new_masks, raw_grads, is_leaf=_is_none)
    extra_args.pop("masks", None)
    guard_ok = ok
    if skip_update_on_mask_step:
      # The official RigL / SET step: no optimizer step on a mask-update iteration (only the
      # projection onto the new masks); the inner state is kept, with the reset applied. The
      # guard does it for the update and the per-parameter state (every leaf skipped on that
      # step, its select where the state is written); the other state leaves are kept here.
      guard_ok = jax.tree.map(lambda k: k & ~is_mask_step, ok)
    # The non-finite guard (docs/nonfinite.md), with its state select at the equation that
    # writes each state leaf, so that donated moments are updated in place (_select_in_place).
    updates, new_inner_state = _select_in_place.guard(
        inner, inner_grads, inner_state, raw_params, guard_ok, masks=new_masks, **extra_args)
    if skip_update_on_mask_step:
      flags = _nonfinite._state_flags(inner, inner_state, ok, raw_params)  # noqa: SLF001
      new_inner_state = jax.tree.map(
          lambda f, old, new: jnp.where(is_mask_step, old, new) if f is True else new,
          flags, inner_state, new_inner_state)
    ok_n = _validation.to_none(ok)
    updates = jax.tree.map(
        lambda m, n, u, p, k: u if m is None
        else jnp.where(k, jnp.where(m & n, u, -p), jnp.zeros_like(u)).astype(p.dtype),
        masks, new_masks, updates, params, ok_n, is_leaf=_is_none)
    if rule.restart is not None:
      updates, new_inner_state = _restart(
          rule, inner, is_mask_step, rule_state, count, new_masks, updates, params, raw_params,
          new_inner_state)
    return updates, SparseState(
        count=optax.safe_increment(count), masks=new_stored, key=state.key,
        rule_state=rule_state, inner_state=new_inner_state,
        skipped_leaves=state.skipped_leaves + _nonfinite.n_skipped(ok),
        mask_update_pending=scheduled & ~can_update)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
