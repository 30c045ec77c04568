"""Mask rules: when and how the masks owned by :func:`optax_sparse.sparse` change.

A rule is a :class:`MaskRule`, a frozen tuple of pure functions that ``sparse()`` calls inside
``init`` and ``update`` (under ``jit``; a traced count, a traced sparsity):

* ``init_masks(params, target, key) -> masks``: the masks at ``init``.
* ``is_update_step(count) -> bool[]``: whether the update with this count changes the masks
  (traced; ``sparse()`` runs ``update_masks`` under ``lax.cond``, so a mask-update step and a plain
  step share one compilation).
* ``update_masks(masks, params, grads, count, key, target, rule_state) -> (masks, rule_state)``:
  the new masks from the parameters *before* this step's update (``params`` is θ_t) and the
  raw dense gradient g_t of this step (the official RigL order).

``masks`` is a pytree like the parameters: a bool array for each eligible leaf, ``None`` for each
dense leaf. ``target`` (:class:`Target`) carries the target sparsity evaluated at the count and a
function from a sparsity to per-leaf densities (the layer-wise distribution: uniform, ER, ERK).
Each mask change keeps an exact count: k = max(1, round(n·density)) per leaf
(``select.count_for_density``) or the same total over all eligible leaves for global rules. All
selections go through ``optax_sparse.masks.select`` (no sort; ties by lower flat index).

Rules and their papers (METHODS.md §12):

* :func:`one_shot_magnitude` (§12.1): M = top-k(|θ|) per leaf at ``at_step``; fixed afterwards.
* :func:`gradual_magnitude` (§12.2, Zhu & Gupta, arXiv 1710.01878):
  s_t = s_f + (s_i − s_f)(1 − (t − t₀)/(t_end − t₀))³ at t ∈ {t₀, t₀ + Δt, …, t_end}; pruning by
  |θ| among the active entries only (pruned stay pruned). Library decision (open point 13):
  s_i = 0, Δt = 100 steps, ``begin_step``/``end_step`` required; ``end_step`` itself is always an
  event so that s_f is reached even when Δt does not divide the window.
* :func:`global_magnitude` (§12.3): one top-k over all eligible leaves; optional per-leaf L2
  normalization of the scores (jaxpruner's default), off by default (open point 14).
* :func:`static_random` (§12.5): a random mask at init, never updated (pruning at
  initialization; jaxpruner ``static_sparse``).
* :func:`set_` (§12.6, Mocanu et al., arXiv 1707.04780): every ΔT steps drop the fraction ζ_t of
  active weights with the smallest |θ|, regrow as many uniformly at random among the inactive.
* :func:`rigl` (§12.7, Evci et al., arXiv 1911.11134): every ΔT steps while t ≤ T_end, per leaf
  k = ⌊f(t)·n_active⌋ (n_active = (1 − s_l)n_l), f(t) = (ζ/2)(1 + cos(πt/T_end)); drop the k
  active weights with the smallest |θ| (+ N(0, 10⁻⁵) tie-break noise, as the official code), grow
  the k inactive-after-drop entries with the largest |g| of the raw dense gradient (entries kept
  after the drop are lifted out of the grow ranking).
* :func:`acdc` (§12.8, Peste et al., arXiv 2106.12379): alternating dense / sparse phases; each
  compression is a global magnitude top-k to the target; at decompression every weight is active
  again and the pruned ones restart from exactly 0.
* :func:`nm` (§12.9): one-shot N:M magnitude pattern (n kept in every m consecutive entries
  along ``axis``, default −2 = fan-in of Flax kernels, open point 17).
* :func:`sr_ste` (§12.9, Zhou et al., arXiv 2102.04010; MDGF, Bambhaniya et al., arXiv
  2402.04744): dynamic N:M needs dense shadow weights, so it is its own transformation wrapping an
  inner optimizer (not a ``sparse()`` rule): see its docstring.

Library decisions common to all rules:

* Step counting: the update with count t (0 for the first ``update``) may change the masks from
  θ_t and g_t; the new masks decide the parameters θ_{t+1} this same update lands on and govern
  every later step.
* Grown entries start at exactly 0 and ``sparse()`` zeroes the inner optimizer's per-parameter
  state there; an entry dropped and regrown in the same update keeps its value (RigL
  ``reinit_when_same=False``).
* Non-finite scores: a non-finite |θ| ranks lowest (dropped first); a non-finite gradient ranks
  lowest for growth (below every finite candidate, above entries that are already active), so a
  NaN/Inf gradient can never change the number of active entries.
* The official RigL/SET code and jaxpruner skip the optimizer step on mask-update iterations;
  ``sparse()`` applies both the optimizer step and the mask change in the same update by default
  (entries whose mask changes see a zero gradient on that step) and follows the official code
  with ``skip_update_on_mask_step=True``.
* The first mask update of SET/RigL happens at t = 0 when ``0 % every == 0`` (the official
  ``is_update_iter``: ``step % update_freq == 0 and step <= last_update_step``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_sparse import _eligibility, _hyperparams
from optax_sparse.masks import select

__all__ = [
    "MaskRule",
    "SrSteState",
    "Target",
    "acdc",
    "global_magnitude",
    "gradual_magnitude",
    "gradual_sparsity",
    "nm",
    "one_shot_magnitude",
    "rigl",
    "set_",
    "sr_ste",
    "static_random",
]


class Target(NamedTuple):
  """What a rule knows about the sparsity target at the current count.

  Attributes:
    sparsity: the target sparsity evaluated at the count (a float32 scalar; for
      :func:`gradual_magnitude` the final sparsity s_f).
    densities: ``densities(sparsity)``: a pytree like the parameters with a float32 density
      for each eligible leaf and ``None`` for dense leaves (the layer-wise distribution).
    eligible: a pytree of Python bools, one per parameter leaf.
  """

  sparsity: Any
  densities: Callable[[Any], Any]
  eligible: Any


class MaskRule(NamedTuple):
  """A mask rule: pure functions called by :func:`optax_sparse.sparse` (see the module doc).

  Attributes:
    name: the rule's name, for messages.
    init_masks: ``(params, target, key) -> masks``.
    is_update_step: ``(count) -> bool[]``, traced.
    update_masks: ``(masks, params, grads, count, key, target, rule_state) -> (masks,
      rule_state)``.
    init_state: ``(params) -> rule_state``, a pytree of arrays (``optax.EmptyState()`` when the
      rule keeps nothing).
    scope: ``"layer"`` (per-leaf densities from the distribution), ``"global"`` (one total over
      all eligible leaves; no distribution) or ``"pattern"`` (the rule fixes its own sparsity,
      e.g. N:M; ``sparse()`` takes no sparsity).
  """

  name: str
  init_masks: Callable[..., Any]
  is_update_step: Callable[[Any], Any]
  update_masks: Callable[..., Any]
  init_state: Callable[[Any], Any] = lambda params: optax.EmptyState()
  scope: str = "layer"


# ----------------------------------------------------------------------------------------------
# Small helpers (pytrees with None for dense leaves)


def _is_none(x: Any) -> bool:
  return x is None


def _leafwise(f: Callable[..., Any], masks: Any, *trees: Any) -> Any:
  """``f(mask, *leaves)`` on eligible leaves (``masks`` leaf not None), None elsewhere."""
  return jax.tree.map(
      lambda m, *xs: None if m is None else f(m, *xs), masks, *trees, is_leaf=_is_none)


def _template(eligible: Any, params: Any) -> Any:
  """The parameters' leaves where eligible, None elsewhere (a masks-shaped template)."""
  return jax.tree.map(
      lambda e, p: p if (e and p is not None) else None, eligible, params, is_leaf=_is_none)


def _leaf_keys(key: jax.Array, tree: Any) -> Any:
  """One independent key per leaf of ``tree`` (None leaves get None)."""
  leaves, treedef = jax.tree.flatten(tree, is_leaf=_is_none)
  keys = jax.random.split(key, max(len(leaves), 1))
  return jax.tree.unflatten(
      treedef, [None if x is None else keys[i] for i, x in enumerate(leaves)])


def _magnitude(x: jax.Array) -> jax.Array:
  """|x| in float32 with non-finite values mapped to -inf (rank lowest, above excluded)."""
  a = jnp.abs(jnp.asarray(x, jnp.float32))
  return jnp.where(jnp.isfinite(a), a, -jnp.inf)


def _exclude(scores: jax.Array, allowed: jax.Array) -> jax.Array:
  """Entries not ``allowed`` get NaN, which ``select`` ranks below every number and -inf."""
  return jnp.where(allowed, scores, jnp.nan)


def _check_step(name: str, value: Any, low: int = 0) -> None:
  if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
    raise ValueError(f"{name} must be an integer >= {low}; got {value!r}.")


def _layer_magnitude_masks(params: Any, target: Any, densities: Any, masks: Any = None) -> Any:
  """Per-leaf top-k of |θ| at ``densities``; restricted to ``masks`` when given."""
  template = _template(target.eligible, params)

  def leaf(p, d, m):
    scores = _magnitude(p)
    if m is not None:
      scores = _exclude(scores, m)
    return select.select_top_k(scores, select.count_for_density(p.size, d))

  if masks is None:
    return _leafwise(lambda p, d: leaf(p, d, None), template, densities)
  return _leafwise(lambda p, d, m: leaf(p, d, m), template, densities, masks)


def _global_count(template: Any, sparsity: Any) -> jax.Array:
  n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(template))
  return select.count_for_density(n, 1.0 - jnp.asarray(sparsity, jnp.float32))


def _global_magnitude_masks(params: Any, target: Target, normalize: bool) -> Any:
  template = _template(target.eligible, params)

  def score(p):
    s = _magnitude(p)
    if normalize:
      finite = jnp.where(jnp.isfinite(s), s, 0.0)
      s = s / jnp.maximum(jnp.sqrt(jnp.sum(finite * finite)), jnp.finfo(jnp.float32).tiny)
    return s

  scores = jax.tree.map(lambda p: None if p is None else score(p), template, is_leaf=_is_none)
  return select.select_top_k_global(scores, _global_count(template, target.sparsity))


def _random_masks(params: Any, target: Target, key: jax.Array) -> Any:
  template = _template(target.eligible, params)
  keys = _leaf_keys(key, template)
  densities = target.densities(target.sparsity)

  def leaf(p, k, d):
    u = jax.random.uniform(k, p.shape, jnp.float32)
    return select.select_top_k(u, select.count_for_density(p.size, d))

  return _leafwise(leaf, template, keys, densities)


def _all_true(params: Any, target: Target) -> Any:
  return _leafwise(lambda p: jnp.ones(p.shape, bool), _template(target.eligible, params))


def _no_update(count: Any) -> jax.Array:
  del count
  return jnp.asarray(False)


def _keep(masks, params, grads, count, key, target, rule_state):
  del params, grads, count, key, target
  return masks, rule_state


# ----------------------------------------------------------------------------------------------
# Magnitude pruning


def one_shot_magnitude(at_step: int = 0) -> MaskRule:
  """One-shot magnitude pruning: M = top-k(|θ|) per leaf once, fixed afterwards.

  .. math::
    M_l = \\operatorname{top}_{k_l}(|θ_l|), \\quad k_l = \\max(1, \\operatorname{round}(n_l ρ_l))

  With ``at_step = 0`` the masks come from the initial parameters at ``init`` (dense training
  never happens); with ``at_step = t₀ > 0`` training is dense until the update with count t₀,
  which prunes by the parameters θ_{t₀} it receives and lands on the pruned masks.

  Args:
    at_step: the update count at which to prune (an int >= 0).

  Returns:
    A :class:`MaskRule` for :func:`optax_sparse.sparse`.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> tx = osp.sparse(optax.sgd(0.1), osp.one_shot_magnitude(), sparsity=0.5)
    >>> state = tx.init({"w": jnp.array([[1.0, -3.0], [0.5, 2.0]])})
    >>> osp.get_masks(state)["w"].tolist()
    [[False, True], [False, True]]

  References:
    Zhu, Gupta, *To prune, or not to prune*, arXiv 1710.01878.
  """
  _check_step("at_step", at_step)

  def init_masks(params, target, key):
    del key
    if at_step == 0:
      return _layer_magnitude_masks(params, target, target.densities(target.sparsity))
    return _all_true(params, target)

  def is_update_step(count):
    return jnp.asarray(at_step > 0) & (count == at_step)

  def update_masks(masks, params, grads, count, key, target, rule_state):
    del masks, grads, count, key
    return _layer_magnitude_masks(params, target, target.densities(target.sparsity)), rule_state

  return MaskRule("one_shot_magnitude", init_masks, is_update_step, update_masks)


def gradual_sparsity(
    step: Any, initial_sparsity: Any, final_sparsity: Any, begin_step: int, end_step: int
) -> jax.Array:
  """Zhu & Gupta's cubic sparsity schedule s_t (clamped to the window).

  .. math::
    s_t = s_f + (s_i - s_f)\\left(1 - \\frac{t - t_0}{t_{end} - t_0}\\right)^3

  Args:
    step: the step t (traced OK).
    initial_sparsity: s_i.
    final_sparsity: s_f.
    begin_step: t₀.
    end_step: t_end > t₀.

  Returns:
    A float32 scalar.

  Examples:
    >>> import optax_sparse as osp
    >>> round(float(osp.gradual_sparsity(50, 0.0, 0.8, 0, 100)), 4)
    0.7
  """
  t = jnp.asarray(step, jnp.float32)
  progress = jnp.clip((t - begin_step) / float(end_step - begin_step), 0.0, 1.0)
  s_i = jnp.asarray(initial_sparsity, jnp.float32)
  s_f = jnp.asarray(final_sparsity, jnp.float32)
  return s_f + (s_i - s_f) * (1.0 - progress) ** 3


def gradual_magnitude(
    initial_sparsity: float = 0.0,
    *,
    begin_step: int,
    end_step: int,
    frequency: int = 100,
) -> MaskRule:
  """Gradual magnitude pruning (GMP) with Zhu & Gupta's cubic schedule.

  .. math::
    s_t = s_f + (s_i - s_f)\\left(1 - \\frac{t - t_0}{t_{end} - t_0}\\right)^3, \\quad
    t \\in \\{t_0, t_0 + Δt, \\dots\\} \\cup \\{t_{end}\\}

  At each event every eligible leaf is pruned by |θ| *among its active entries* to the density
  of s_t (through the distribution); pruned entries stay pruned. s_f is the ``sparsity`` given
  to :func:`optax_sparse.sparse` (a schedule is evaluated at the count). Masks at init have
  sparsity s_i (all active when s_i = 0).

  Args:
    initial_sparsity: s_i in [0, 1) (default 0).
    begin_step: t₀ >= 0, the first pruning event.
    end_step: t_end > t₀, the last pruning event (always an event).
    frequency: Δt >= 1 steps between events (default 100).

  Returns:
    A :class:`MaskRule` for :func:`optax_sparse.sparse`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> rule = osp.gradual_magnitude(begin_step=0, end_step=10, frequency=5)
    >>> tx = osp.sparse(optax.sgd(0.1), rule, sparsity=0.75)
    >>> params = {"w": jnp.arange(1.0, 9.0).reshape(2, 4)}
    >>> state = tx.init(params)
    >>> update = jax.jit(tx.update)
    >>> for _ in range(11):
    ...   updates, state = update(params, state, params)
    ...   params = optax.apply_updates(params, updates)
    >>> int(osp.get_masks(state)["w"].sum())
    2

  References:
    Zhu, Gupta, *To prune, or not to prune: exploring the efficacy of pruning for model
    compression*, arXiv 1710.01878. Gale, Elsen, Hooker, *The State of Sparsity in Deep Neural
    Networks*, arXiv 1902.09574.
  """
  _hyperparams.check_scalar(
      "initial_sparsity", initial_sparsity, low=0.0, high=1.0, high_open=True,
      allow_schedule=False)
  _check_step("begin_step", begin_step)
  _check_step("end_step", end_step)
  _check_step("frequency", frequency, low=1)
  if end_step <= begin_step:
    raise ValueError(f"end_step must be > begin_step = {begin_step}; got {end_step!r}.")

  def init_masks(params, target, key):
    del key
    densities = target.densities(jnp.asarray(initial_sparsity, jnp.float32))
    return _layer_magnitude_masks(params, target, densities)

  def is_update_step(count):
    in_window = (count >= begin_step) & (count <= end_step)
    return in_window & (((count - begin_step) % frequency == 0) | (count == end_step))

  def update_masks(masks, params, grads, count, key, target, rule_state):
    del grads, key
    s_t = gradual_sparsity(count, initial_sparsity, target.sparsity, begin_step, end_step)
    return _layer_magnitude_masks(params, target, target.densities(s_t), masks), rule_state

  return MaskRule("gradual_magnitude", init_masks, is_update_step, update_masks)


def global_magnitude(at_step: int = 0, *, normalize: bool = False) -> MaskRule:
  """One-shot global magnitude pruning: one top-k of |θ| over all eligible leaves.

  .. math::
    M = \\operatorname{top}_k\\big(\\{|θ_l| / c_l\\}_l\\big), \\quad
    k = \\max(1, \\operatorname{round}((1 - s) \\textstyle\\sum_l n_l)),
    \\quad c_l = \\lVert θ_l \\rVert_2 \\text{ if normalize else } 1

  The total count is exact; leaves share one threshold (ties by leaf order, then flat index).
  Takes no layer-wise distribution. ``at_step`` as in :func:`one_shot_magnitude`.

  Args:
    at_step: the update count at which to prune (0: at init from the initial parameters).
    normalize: divide each leaf's scores by its L2 norm first (jaxpruner's default); off by
      default (open point 14).

  Returns:
    A :class:`MaskRule` with ``scope="global"``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> tx = osp.sparse(optax.sgd(0.1), osp.global_magnitude(), sparsity=0.5)
    >>> state = tx.init({"a": jnp.array([[4.0, 3.0]]), "b": jnp.array([[1.0, 2.0]])})
    >>> [m.tolist() for m in osp.get_masks(state).values()]
    [[[True, True]], [[False, False]]]

  References:
    Gale, Elsen, Hooker, *The State of Sparsity in Deep Neural Networks*, arXiv 1902.09574.
  """
  _check_step("at_step", at_step)
  normalize = bool(normalize)

  def init_masks(params, target, key):
    del key
    if at_step == 0:
      return _global_magnitude_masks(params, target, normalize)
    return _all_true(params, target)

  def is_update_step(count):
    return jnp.asarray(at_step > 0) & (count == at_step)

  def update_masks(masks, params, grads, count, key, target, rule_state):
    del masks, grads, count, key
    return _global_magnitude_masks(params, target, normalize), rule_state

  return MaskRule("global_magnitude", init_masks, is_update_step, update_masks, scope="global")


def static_random() -> MaskRule:
  """Static random sparsity: a uniformly random mask per leaf at init, never updated.

  .. math::
    M_l = \\operatorname{top}_{k_l}(U_l), \\quad U_l \\sim \\mathcal{U}(0, 1)^{n_l}

  The key is ``sparse()``'s seed; per-leaf densities come from the distribution.

  Returns:
    A :class:`MaskRule` for :func:`optax_sparse.sparse`.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> tx = osp.sparse(optax.sgd(0.1), osp.static_random(), sparsity=0.75, seed=1)
    >>> int(osp.get_masks(tx.init({"w": jnp.ones((4, 4))}))["w"].sum())
    4

  References:
    Evci et al., *Rigging the Lottery: Making All Tickets Winners*, arXiv 1911.11134 (static
    baseline).
  """

  def init_masks(params, target, key):
    return _random_masks(params, target, key)

  return MaskRule("static_random", init_masks, _no_update, _keep)


# ----------------------------------------------------------------------------------------------
# Dynamic sparse training: SET and RigL


def _drop_fraction_schedule(
    name: str, drop_fraction: optax.ScalarOrSchedule, end_step: int | None
) -> Callable[[Any], Any]:
  _hyperparams.check_scalar(name, drop_fraction, low=0.0, high=1.0)
  if callable(drop_fraction):
    return lambda t: _hyperparams.evaluate(drop_fraction, t)
  if end_step is None:
    return lambda t: jnp.asarray(drop_fraction, jnp.float32)

  def cosine(t):
    progress = jnp.minimum(jnp.asarray(t, jnp.float32), end_step) / float(end_step)
    return 0.5 * jnp.asarray(drop_fraction, jnp.float32) * (1.0 + jnp.cos(jnp.pi * progress))

  return cosine


def _periodic(every: int, end_step: int | None) -> Callable[[Any], Any]:
  def is_update_step(count):
    due = count % every == 0
    if end_step is not None:
      due = due & (count <= end_step)
    return due

  return is_update_step


def _drop_grow_leaf(
    mask: jax.Array, theta: jax.Array, grow_scores: jax.Array, fraction: Any,
    drop_noise: jax.Array | None,
) -> jax.Array:
  """Drops ⌊f·n_active⌋ smallest-|θ| active entries and grows as many by ``grow_scores``."""
  n_active = jnp.sum(mask, dtype=jnp.int32)
  n_drop = jnp.floor(n_active.astype(jnp.float32) * fraction).astype(jnp.int32)
  drop_scores = _magnitude(theta)
  if drop_noise is not None:
    drop_scores = drop_scores + drop_noise
  kept = select.select_top_k(_exclude(drop_scores, mask), n_active - n_drop)
  grow = jnp.where(jnp.isfinite(grow_scores), grow_scores, -jnp.inf)
  grown = select.select_top_k(_exclude(grow, ~kept), n_drop)
  return kept | grown


def _dynamic_rule(
    name: str, drop_fraction: Any, every: int, end_step: int | None, grow: str, noise_std: float
) -> MaskRule:
  _check_step("every", every, low=1)
  if end_step is not None:
    _check_step("end_step", end_step, low=1)
  _hyperparams.check_scalar("noise_std", noise_std, low=0.0, allow_schedule=False)
  fraction_at = _drop_fraction_schedule("drop_fraction", drop_fraction, end_step)

  def init_masks(params, target, key):
    return _random_masks(params, target, key)

  def update_masks(masks, params, grads, count, key, target, rule_state):
    fraction = fraction_at(count)
    leaf_keys = _leaf_keys(key, masks)

    def leaf(m, p, g, k):
      k_noise, k_grow = jax.random.split(k)
      noise = None
      if noise_std > 0.0:
        noise = noise_std * jax.random.normal(k_noise, m.shape, jnp.float32)
      if grow == "random":
        scores = jax.random.uniform(k_grow, m.shape, jnp.float32)
      else:
        scores = jnp.abs(jnp.asarray(g, jnp.float32))
      return _drop_grow_leaf(m, p, scores, fraction, noise)

    return _leafwise(leaf, masks, params, grads, leaf_keys), rule_state

  return MaskRule(name, init_masks, _periodic(every, end_step), update_masks)


def set_(
    drop_fraction: optax.ScalarOrSchedule = 0.3,
    every: int = 100,
    end_step: int | None = None,
    *,
    noise_std: float = 0.0,
) -> MaskRule:
  """SET: drop the smallest active weights, regrow as many uniformly at random.

  .. math::
    k_l = \\lfloor ζ_t \\, n_{active,l} \\rfloor,\\;
    M' = \\operatorname{top}_{n_{active}-k}(|θ| \\text{ on } M) \\cup
         \\operatorname{top}_{k}(U \\text{ on } ¬M_{kept})

  Every ``every`` steps (and while t ≤ ``end_step`` when given). Grown weights start at 0 and
  their optimizer state is zeroed by ``sparse()``. The random draws use ``sparse()``'s key folded
  with the count. Masks at init are uniformly random at the per-leaf densities.

  Args:
    drop_fraction: ζ in [0, 1] or a schedule of the count. A float with ``end_step`` follows the
      cosine decay ζ/2·(1 + cos(πt/T_end)) (as RigL); without ``end_step`` it is constant
      (jaxpruner's SET default).
    every: ΔT >= 1, steps between mask updates (default 100).
    end_step: T_end, last step with mask updates (None: never stops).
    noise_std: std of N(0, σ²) noise added to the drop scores to break ties (default 0; the
      RigL code's SET uses its ``noise_std`` flag).

  Returns:
    A :class:`MaskRule` for :func:`optax_sparse.sparse`.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> tx = osp.sparse(optax.sgd(0.1), osp.set_(every=1), sparsity=0.5)
    >>> params = {"w": jnp.ones((4, 4))}
    >>> state = tx.init(params)
    >>> updates, state = tx.update(params, state, params)
    >>> int(osp.get_masks(state)["w"].sum())
    8

  References:
    Mocanu et al., *Scalable Training of Artificial Neural Networks with Adaptive Sparse
    Connectivity Inspired by Network Science*, arXiv 1707.04780.
  """
  return _dynamic_rule("set", drop_fraction, every, end_step, "random", noise_std)


def rigl(
    drop_fraction: optax.ScalarOrSchedule = 0.3,
    every: int = 100,
    end_step: int | None = None,
    *,
    noise_std: float = 1e-5,
) -> MaskRule:
  """RigL: drop the smallest active weights, grow where the dense gradient is largest.

  .. math::
    k_l = \\lfloor f(t)\\, n_{active,l} \\rfloor, \\quad
    f(t) = \\tfrac{ζ}{2}\\big(1 + \\cos(πt / T_{end})\\big) \\\\
    M_{kept} = \\operatorname{top}_{n_{active}-k}(|θ| + ε \\text{ on } M), \\;
    M' = M_{kept} \\cup \\operatorname{top}_{k}(|g| \\text{ on } ¬M_{kept})

  Every ``every`` steps while t ≤ T_end. g is the *raw dense* gradient passed to ``update``
  (not masked, even with ``sparse_gradients=True``); θ the parameters θ_t this step starts from.
  ε ~ N(0, ``noise_std``²) from the state's key folded with the count (official code). Entries
  kept after the drop are lifted out of the grow ranking; a connection dropped and regrown in
  the same update keeps its value; grown weights start at 0 with zeroed optimizer state. The
  per-layer density never changes. Masks at init are uniformly random at the per-leaf densities
  (use ``distribution=osp.erk()`` for RigL's ERK).

  Args:
    drop_fraction: ζ in [0, 1] (default 0.3) or a schedule f(t) used as given. A float with
      ``end_step`` gives the cosine decay above; without ``end_step`` it stays constant (the
      official code's ``constant`` anneal).
    every: ΔT >= 1 (default 100).
    end_step: T_end, the last step with mask updates (paper: 0.75·T); None never stops.
    noise_std: tie-break noise std on the drop scores (default 1e-5; 0 disables it).

  Returns:
    A :class:`MaskRule` for :func:`optax_sparse.sparse`.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> tx = osp.sparse(optax.sgd(0.1), osp.rigl(every=1, end_step=100), sparsity=0.5)
    >>> params = {"w": jnp.ones((4, 4))}
    >>> state = tx.init(params)
    >>> updates, state = tx.update(params, state, params)
    >>> int(osp.get_masks(state)["w"].sum())
    8

  References:
    Evci, Gale, Menick, Castro, Elsen, *Rigging the Lottery: Making All Tickets Winners*,
    arXiv 1911.11134.
  """
  return _dynamic_rule("rigl", drop_fraction, every, end_step, "gradient", noise_std)


# ----------------------------------------------------------------------------------------------
# AC/DC


def acdc(
    *,
    warmup_steps: int,
    sparse_steps: int,
    dense_steps: int,
    alternate_until: int,
    final_sparse_from: int,
) -> MaskRule:
  """AC/DC: alternating compressed (sparse) and decompressed (dense) phases.

  Phase of step t (sparse ⇔ compressed):

  .. math::
    \\text{sparse}(t) = \\big[t_w \\le t < t_a \\wedge (t - t_w) \\bmod (L_s + L_d) < L_s\\big]
    \\vee t \\ge t_f

  At every switch to a sparse phase the masks become one *global* magnitude top-k to the target
  sparsity (all eligible leaves); at every switch to a dense phase all entries are active again
  and the pruned weights restart from exactly 0. ``sparse()`` zeroes the inner optimizer's
  per-parameter state of every entry whose mask changes: at compression the moments of newly
  masked entries (open point 16), at decompression those of the returning ones. The update with
  count t sets the masks for phase(t + 1); masks at init follow phase(0).

  The paper's ImageNet schedule (100 epochs, T steps): dense warm-up 10% (``warmup_steps =
  0.1T``), then sparse 5% / dense 5% (``sparse_steps = dense_steps = 0.05T``) until 75%
  (``alternate_until = 0.75T``; the last alternating phase is sparse, 70–75%), dense 75–85%,
  final sparse phase from 85% (``final_sparse_from = 0.85T``).

  Args:
    warmup_steps: t_w >= 0, dense warm-up length.
    sparse_steps: L_s >= 1, length of each alternating sparse phase.
    dense_steps: L_d >= 1, length of each alternating dense phase.
    alternate_until: t_a >= t_w, end of the alternation.
    final_sparse_from: t_f >= t_a, start of the final sparse phase.

  Returns:
    A :class:`MaskRule` with ``scope="global"``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> rule = osp.acdc(warmup_steps=1, sparse_steps=1, dense_steps=1, alternate_until=3,
    ...                 final_sparse_from=4)
    >>> tx = osp.sparse(optax.sgd(0.1), rule, sparsity=0.5)
    >>> params = {"w": jnp.arange(1.0, 5.0).reshape(2, 2)}
    >>> state = tx.init(params)
    >>> updates, state = tx.update(params, state, params)
    >>> int(osp.get_masks(state)["w"].sum())
    2

  References:
    Peste, Iofinova, Vladu, Alistarh, *AC/DC: Alternating Compressed/DeCompressed Training of
    Deep Neural Networks*, arXiv 2106.12379.
  """
  _check_step("warmup_steps", warmup_steps)
  _check_step("sparse_steps", sparse_steps, low=1)
  _check_step("dense_steps", dense_steps, low=1)
  _check_step("alternate_until", alternate_until, low=warmup_steps)
  _check_step("final_sparse_from", final_sparse_from, low=alternate_until)

  def is_sparse(t):
    t = jnp.asarray(t, jnp.int32)
    alternating = (t >= warmup_steps) & (t < alternate_until) & (
        (t - warmup_steps) % (sparse_steps + dense_steps) < sparse_steps)
    return alternating | (t >= final_sparse_from)

  def init_masks(params, target, key):
    del key
    dense = _all_true(params, target)
    sparse = _global_magnitude_masks(params, target, False)
    return _leafwise(lambda d, s: jnp.where(is_sparse(0), s, d), dense, sparse)

  def is_update_step(count):
    return is_sparse(count + 1) != is_sparse(count)

  def update_masks(masks, params, grads, count, key, target, rule_state):
    del grads, key
    compress = is_sparse(count + 1)
    sparse = _global_magnitude_masks(params, target, False)
    new = _leafwise(lambda m, s: jnp.where(compress, s, True), masks, sparse)
    return new, rule_state

  return MaskRule("acdc", init_masks, is_update_step, update_masks, scope="global")


# ----------------------------------------------------------------------------------------------
# N:M


def _check_nm(n: Any, m: Any) -> None:
  if not isinstance(m, (int, np.integer)) or isinstance(m, bool) or m < 1:
    raise ValueError(f"m must be an integer >= 1; got {m!r}.")
  if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 1 <= n <= m:
    raise ValueError(f"n must be an integer with 1 <= n <= m = {m}; got {n!r}.")


def nm(n: int = 2, m: int = 4, axis: int = -2, *, at_step: int = 0) -> MaskRule:
  """One-shot N:M magnitude pruning: keep the n largest |θ| of every m consecutive entries.

  .. math::
    M = \\operatorname{top}_n(|θ|) \\text{ within each group of } m \\text{ along } axis

  The sparsity is 1 − n/m, fixed by the pattern: ``sparse()`` takes ``sparsity=None``. Every
  eligible leaf must have an ``axis`` length divisible by m (``ValueError`` at init). Default
  axis −2, the fan-in of Flax kernels ``(in, out)`` / ``(kh, kw, in, out)`` that 2:4 sparse
  tensor cores need (open point 17). With a fixed mask the pruned weights are 0, so re-ranking
  them is meaningless: N:M *training* with a mask that moves needs dense shadow weights, which
  :func:`sr_ste` keeps.

  Args:
    n: kept entries per group (1 <= n <= m).
    m: group size.
    axis: grouping axis.
    at_step: the update count at which to prune (0: at init from the initial parameters).

  Returns:
    A :class:`MaskRule` with ``scope="pattern"``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> tx = osp.sparse(optax.sgd(0.1), osp.nm(2, 4), sparsity=None)
    >>> masks = osp.get_masks(tx.init({"w": jnp.array([[1.0], [4.0], [3.0], [2.0]])}))
    >>> masks["w"].ravel().tolist()
    [False, True, True, False]

  References:
    Zhou et al., *Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch*,
    arXiv 2102.04010.
  """
  _check_nm(n, m)
  _check_step("at_step", at_step)

  def pattern(params, target):
    template = _template(target.eligible, params)
    return _leafwise(lambda p: select.nm_mask(_magnitude(p), n, m, axis), template)

  def init_masks(params, target, key):
    del key
    return pattern(params, target) if at_step == 0 else _all_true(params, target)

  def is_update_step(count):
    return jnp.asarray(at_step > 0) & (count == at_step)

  def update_masks(masks, params, grads, count, key, target, rule_state):
    del masks, grads, count, key
    return pattern(params, target), rule_state

  return MaskRule("nm", init_masks, is_update_step, update_masks, scope="pattern")


class SrSteState(NamedTuple):
  """State of :func:`sr_ste`.

  Attributes:
    count: int32 step counter (for ``mask_decay`` and schedules).
    masks: the current N:M masks E (bool, None for dense leaves).
    dense: the dense shadow weights W (None for dense leaves, whose weights are the params).
    inner_state: the inner optimizer's state (on W).
  """

  count: jax.Array
  masks: Any
  dense: Any
  inner_state: optax.OptState


def sr_ste(
    inner: optax.GradientTransformation,
    n: int = 2,
    m: int = 4,
    axis: int = -2,
    *,
    refine: optax.ScalarOrSchedule = 2e-4,
    mask_decay: optax.ScalarOrSchedule | None = None,
    where: _eligibility.Where = None,
) -> optax.GradientTransformationExtraArgs:
  """SR-STE N:M training: dense shadow weights W in the state, parameters θ = W⊙E.

  .. math::
    g_W = g + λ_W (1 - E)⊙W, \\quad (u_W, s') = \\mathrm{inner}(g_W, s, W), \\quad
    W' = W + u_W \\\\
    E' = \\mathrm{N{:}M}(|W'|), \\quad θ' = W' ⊙ (E' + (1 - E') b_t), \\quad u = θ' − θ

  g is the gradient at the masked parameters θ, used for W as a straight-through estimate. The
  N:M mask is recomputed from |W'| every step. With ``mask_decay`` = b_t (MDGF, a schedule
  decaying from 1 to 0) pruned weights enter the forward with weight b_t instead of 0; MDGF
  uses plain STE, i.e. ``refine=0``: exponential b_t = exp(−ct) is
  ``optax.exponential_decay(1.0, 1, math.exp(-c))`` and linear b_t = max(0, 1 − ct) is
  ``optax.linear_schedule(1.0, 0.0, round(1 / c))`` (paper: exponential, c = 1e-4 per step).

  Library decisions: this is a transformation wrapping ``inner`` (not a ``sparse()`` rule)
  because it owns dense shadow weights; the inner optimizer's state lives on W; the first
  ``update`` starts from W = the initial (dense) parameters, so only the first forward is dense;
  the inner transformation receives the masks E as the extra argument ``masks``; leaves outside
  ``where`` (default ndim >= 2) are updated by ``inner`` alone. ``get_masks`` finds E.

  Args:
    inner: the optimizer of the dense weights W.
    n: kept entries per group (2).
    m: group size (4); every eligible leaf's ``axis`` length must be divisible by m.
    axis: grouping axis (−2, the fan-in of Flax kernels).
    refine: λ_W >= 0, the sparse-refined decay of the pruned weights (2e-4, the paper's and
      praxis's default); a schedule is evaluated at the count.
    mask_decay: b_t in [0, 1] (a schedule, MDGF) or None for b_t = 0 (SR-STE).
    where: eligible leaves (None: ndim >= 2; a predicate or a static tree of bools).

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> tx = osp.sr_ste(optax.sgd(0.1), 2, 4)
    >>> params = {"w": jnp.array([[1.0], [4.0], [3.0], [2.0]])}
    >>> state = tx.init(params)
    >>> grads = {"w": jnp.zeros((4, 1))}
    >>> updates, state = tx.update(grads, state, params)
    >>> optax.apply_updates(params, updates)["w"].ravel().tolist()
    [0.0, 4.0, 3.0, 0.0]

  References:
    Zhou et al., *Learning N:M Fine-grained Structured Sparse Neural Networks From Scratch*,
    arXiv 2102.04010. Bambhaniya et al., *Progressive Gradient Flow for Robust N:M Sparsity
    Training in Transformers*, arXiv 2402.04744.
  """
  _check_nm(n, m)
  _hyperparams.check_scalar("refine", refine, low=0.0)
  if mask_decay is not None:
    _hyperparams.check_scalar("mask_decay", mask_decay, low=0.0, high=1.0)
  _eligibility.check_where("where", where)
  inner = optax.with_extra_args_support(inner)

  def pattern(w):
    return select.nm_mask(_magnitude(w), n, m, axis)

  def init_fn(params):
    eligible = _eligibility.eligible_tree(where, params)
    template = _template(eligible, params)
    masks = jax.jit(lambda t: _leafwise(pattern, t))(template)
    dense = _leafwise(lambda p: p, template)
    return SrSteState(
        count=jnp.zeros([], jnp.int32), masks=masks, dense=dense,
        inner_state=inner.init(params))

  def update_fn(grads, state, params=None, **extra_args):
    if params is None:
      raise ValueError(optax._src.base.NO_PARAMS_MSG)
    lam = _hyperparams.evaluate(refine, state.count)
    b_t = (jnp.zeros([], jnp.float32) if mask_decay is None
           else _hyperparams.evaluate(mask_decay, state.count))
    masks = state.masks
    # The full weights the inner optimizer acts on: W on eligible leaves, params elsewhere.
    weights = jax.tree.map(
        lambda d, p: p if d is None else d, state.dense, params, is_leaf=_is_none)

    def refined(e, g, w):
      g32 = jnp.asarray(g, jnp.float32) + lam * jnp.where(e, 0.0, jnp.asarray(w, jnp.float32))
      return g32.astype(g.dtype)

    g_w = jax.tree.map(
        lambda e, g, w: g if e is None else refined(e, g, w), masks, grads, weights,
        is_leaf=_is_none)
    extra_args.pop("masks", None)
    u_w, inner_state = inner.update(g_w, state.inner_state, weights, masks=masks, **extra_args)
    new_w = jax.tree.map(
        lambda e, w, u: None if e is None else (jnp.asarray(w, jnp.float32) + u).astype(w.dtype),
        masks, weights, u_w, is_leaf=_is_none)
    new_masks = _leafwise(pattern, new_w)

    def emit(e, u, p, w):
      if e is None:
        return u
      value = jnp.asarray(w, jnp.float32) * jnp.where(e, 1.0, b_t)
      return (value - jnp.asarray(p, jnp.float32)).astype(p.dtype)

    updates = jax.tree.map(emit, new_masks, u_w, params, new_w, is_leaf=_is_none)
    return updates, SrSteState(
        count=optax.safe_increment(state.count), masks=new_masks, dense=new_w,
        inner_state=inner_state)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)

