"""The rule interface (:class:`MaskRule`, :class:`Target`) and helpers shared by every rule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from optax_sparse.masks import groups as groups_lib
from optax_sparse.masks import select

__all__ = ["MaskRule", "Target"]


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
    restart: None, or ``(count, rule_state) -> (bool[], θ*)``: on a mask-update step where it
      returns True, ``sparse()`` lands the parameters on M' ⊙ θ* (θ* a pytree like the
      parameters, ``None`` leaves or ``None`` for "keep θ") instead of the inner step and zeroes
      the inner optimizer's per-parameter state (used by :func:`imp` for rewinding). The
      ``rule_state`` given is the one after this step's ``update_masks``.
  """

  name: str
  init_masks: Callable[..., Any]
  is_update_step: Callable[[Any], Any]
  update_masks: Callable[..., Any]
  init_state: Callable[[Any], Any] = lambda params: optax.EmptyState()
  scope: str = "layer"
  restart: Callable[[Any, Any], tuple[Any, Any]] | None = None


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


def _groupings(groups: Any, params: Any, target: Target) -> Any:
  """The per-leaf groupings of a rule's ``groups`` argument (``groups.resolve``)."""
  return groups_lib.resolve(groups, params, target.eligible)


def _layer_select(grouping: Any, scores: jax.Array, density: Any, allowed: Any = None) -> jax.Array:
  """The entry mask keeping the top units of ``scores`` at ``density`` (among ``allowed``).

  The one selection path of every layer rule: unit scores (``groups.units``), exclusion of the
  units that are not allowed, exact top-k per row, expansion back to the entries.
  """
  u = groups_lib.units(grouping, scores)
  if allowed is not None:
    u = _exclude(u, groups_lib.unit_mask(grouping, allowed))
  keep = groups_lib.select_units(u, groups_lib.unit_counts(grouping, scores.shape, density))
  return groups_lib.expand(grouping, keep, scores.shape)


def _layer_magnitude_masks(
    params: Any, target: Any, densities: Any, masks: Any = None, groups: Any = None
) -> Any:
  """Per-leaf top-k of |θ| (per unit of ``groups``) at ``densities``; within ``masks`` if given."""
  template = _template(target.eligible, params)
  gtree = _groupings(groups, params, target)

  def leaf(p, d, g, m):
    return _layer_select(g, _magnitude(p), d, m)

  if masks is None:
    return _leafwise(lambda p, d, g: leaf(p, d, g, None), template, densities, gtree)
  return _leafwise(leaf, template, densities, gtree, masks)


def _check_global(gtree: Any) -> None:
  for g in jax.tree.leaves(gtree):
    if g.within:
      raise ValueError(
          "groups: a global rule selects whole groups; a grouping that selects within groups "
          f"({g!r}) needs a layer rule.")


def _global_count(template: Any, sparsity: Any, gtree: Any = None) -> jax.Array:
  if gtree is None:
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(template))
  else:
    n = sum(g.layout(x.shape)[0] for g, x in zip(
        jax.tree.leaves(gtree), jax.tree.leaves(template), strict=True))
  return select.count_for_density(n, 1.0 - jnp.asarray(sparsity, jnp.float32))


def _global_magnitude_masks(
    params: Any, target: Target, normalize: bool, groups: Any = None, masks: Any = None
) -> Any:
  """One top-k of the (group) magnitudes over all eligible leaves; within ``masks`` if given."""
  template = _template(target.eligible, params)
  gtree = _groupings(groups, params, target)
  _check_global(gtree)

  def score(p, g, m):
    s = groups_lib.units(g, _magnitude(p))[0]
    if normalize:
      finite = jnp.where(jnp.isfinite(s), s, 0.0)
      s = s / jnp.maximum(jnp.sqrt(jnp.sum(finite * finite)), jnp.finfo(jnp.float32).tiny)
    if m is not None:
      s = _exclude(s, groups_lib.unit_mask(g, m)[0])
    return s

  if masks is None:
    scores = _leafwise(lambda p, g: score(p, g, None), template, gtree)
  else:
    scores = _leafwise(score, template, gtree, masks)
  keep = select.select_top_k_global(scores, _global_count(template, target.sparsity, gtree))
  return _leafwise(lambda p, g, k: groups_lib.expand(g, k, p.shape), template, gtree, keep)


def _random_masks(params: Any, target: Target, key: jax.Array, groups: Any = None) -> Any:
  """Per-leaf uniformly random units at the distribution's densities."""
  template = _template(target.eligible, params)
  gtree = _groupings(groups, params, target)
  keys = _leaf_keys(key, template)
  densities = target.densities(target.sparsity)

  def leaf(p, k, d, g):
    u = jax.random.uniform(k, g.unit_shape(p.shape), jnp.float32)
    keep = groups_lib.select_units(u, groups_lib.unit_counts(g, p.shape, d))
    return groups_lib.expand(g, keep, p.shape)

  return _leafwise(leaf, template, keys, densities, gtree)


def _all_true(params: Any, target: Target) -> Any:
  return _leafwise(lambda p: jnp.ones(p.shape, bool), _template(target.eligible, params))


def _no_update(count: Any) -> jax.Array:
  del count
  return jnp.asarray(False)


def _keep(masks, params, grads, count, key, target, rule_state):
  del params, grads, count, key, target
  return masks, rule_state

