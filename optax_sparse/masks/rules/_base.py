"""The rule interface (:class:`MaskRule`, :class:`Target`) and helpers shared by every rule."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

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

