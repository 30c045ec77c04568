"""Tests of `optax_sparse.masks.groups` and of every rule with a grouping, against NumPy references.

Each check compares the group scores or the masks with a small NumPy computation of the formula
and asserts the invariants: exact group counts, masks constant over each group (whole groups) or an
equal count in every group (within groups), pruned entries exactly 0.0 after ``apply_updates``.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sparse as osp
from optax_sparse.masks import groups as G
from optax_sparse.masks import rules

KEY = jax.random.PRNGKey(0)


def _target(params, sparsity):
  eligible = jax.tree.map(lambda p: p.ndim >= 2, params)
  densities = lambda s: jax.tree.map(  # noqa: E731
      lambda e, p: 1.0 - jnp.asarray(s, jnp.float32) if e else None, eligible, params)
  return rules.Target(sparsity=jnp.asarray(sparsity, jnp.float32), densities=densities,
                      eligible=eligible)


@functools.cache
def _init_fn(rule):
  return jax.jit(lambda params, key, s: rule.init_masks(params, _target(params, s), key))


@functools.cache
def _update_fn(rule):
  def update(masks, params, grads, count, key, s):
    return rule.update_masks(masks, params, grads, count, key, _target(params, s),
                             optax.EmptyState())[0]

  return jax.jit(update)


def _np_groups(x, axis_keep):
  """NumPy: (G, K) with one row per index of `axis_keep` (moved first), members in C order."""
  moved = np.moveaxis(np.asarray(x, np.float64), axis_keep, 0)
  return moved.reshape(moved.shape[0], -1)


def _np_top(scores, k, allowed=None):
  s = np.asarray(scores, np.float64).copy()
  if allowed is not None:
    s = np.where(allowed, s, -np.inf)
  order = sorted(range(s.size), key=lambda i: (-s[i], i))
  out = np.zeros(s.size, bool)
  out[order[:k]] = True
  return out


def _k(n, d):
  return max(1, round(n * d))


# ------------------------------------------------------------------------------------------------
# Groupings


@pytest.mark.parametrize("reduce", ["l1", "l2", "mean"])
def test_neuron_and_channel_units_match_numpy_reductions(reduce):
  x = np.asarray(jax.random.normal(KEY, (3, 2, 4, 6)), np.float32)
  for grouping, axis in ((G.neurons(reduce=reduce), -1), (G.channels(reduce=reduce), -2)):
    rows = _np_groups(x, axis)
    want = {"l1": np.abs(rows).sum(1), "l2": np.sqrt((rows ** 2).sum(1)),
            "mean": rows.mean(1)}[reduce]
    got = np.asarray(G.units(grouping, jnp.asarray(x)))
    assert got.shape == grouping.unit_shape(x.shape) and got.size == rows.shape[0]
    np.testing.assert_allclose(got.ravel(), want, rtol=1e-5)
    back = np.asarray(G.expand(grouping, jnp.arange(rows.shape[0])[None], x.shape))
    idx = np.moveaxis(np.broadcast_to(np.arange(rows.shape[0]), np.moveaxis(x, axis, -1).shape),
                      -1, axis)
    np.testing.assert_array_equal(back, idx)


def test_heads_blocks_and_fan_in_layouts_match_numpy():
  x = np.arange(8 * 12, dtype=np.float32).reshape(8, 12)
  # 3 heads along the last axis: head h is columns 4h..4h+3.
  got = np.asarray(G.units(G.heads(3), jnp.asarray(x))).ravel()
  np.testing.assert_allclose(got, [np.abs(x[:, 4 * h:4 * h + 4]).sum() for h in range(3)])
  # 1-D blocks of 4 along axis -2 (fan-in) and 2x3 tiles.
  got = np.asarray(G.units(G.blocks(4), jnp.asarray(x))).ravel()
  want = np.abs(x).reshape(2, 4, 12).sum(1).ravel()
  np.testing.assert_allclose(got, want)
  got = np.asarray(G.units(G.blocks((2, 3)), jnp.asarray(x))).ravel()
  np.testing.assert_allclose(got, np.abs(x).reshape(4, 2, 4, 3).sum((1, 3)).ravel())
  # fan_in: one row per output column, the column's entries as members.
  u = np.asarray(G.units(G.fan_in(), jnp.asarray(x)))
  np.testing.assert_array_equal(u, x.T)
  np.testing.assert_array_equal(np.asarray(G.expand(G.fan_in(), jnp.asarray(u), x.shape)), x)
  # A non-finite entry makes its group rank lowest.
  bad = x.copy()
  bad[0, 0] = np.inf
  s = np.where(np.isfinite(np.abs(bad)), np.abs(bad), -np.inf)
  assert np.asarray(G.units(G.neurons(), jnp.asarray(s))).ravel()[0] == -np.inf


def test_select_units_rows_exact_counts_and_ties():
  scores = jnp.asarray([[1.0, 3.0, 3.0, 0.5], [2.0, 2.0, 2.0, 2.0], [np.nan, 1.0, 0.0, 4.0]])
  got = np.asarray(G.select_units(scores, jnp.asarray([2, 3, 2])))
  want = np.array([_np_top(np.asarray(r), k) for r, k in zip(
      np.nan_to_num(np.asarray(scores), nan=-np.inf), [2, 3, 2], strict=True)])
  np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("bad", [
    lambda: G.neurons(reduce="max"), lambda: G.heads(0), lambda: G.blocks(0),
    lambda: G.blocks(()), lambda: G.neurons(axis=1.5)])
def test_bad_grouping_arguments_raise(bad):
  with pytest.raises(ValueError):
    bad()


def test_indivisible_group_raises_at_init_and_global_within_refused():
  params = {"w": jnp.ones((6, 5))}
  with pytest.raises(ValueError, match="divisible"):
    osp.sparse(optax.sgd(0.1), osp.one_shot_magnitude(groups=G.heads(2)), sparsity=0.5).init(
        params)
  with pytest.raises(ValueError, match="layer rule"):
    osp.sparse(optax.sgd(0.1), osp.global_magnitude(groups=G.fan_in()), sparsity=0.5).init(
        params)
  with pytest.raises(ValueError, match="groups"):
    osp.rigl(groups="rows")


# ------------------------------------------------------------------------------------------------
# Every rule with a grouping


def test_one_shot_and_gradual_keep_top_groups_by_reduced_magnitude():
  params = {"w": jax.random.normal(KEY, (6, 8)), "c": jax.random.normal(KEY, (4, 6))}
  rule = rules.one_shot_magnitude(groups=G.neurons(reduce="l2"))
  masks = _init_fn(rule)(params, KEY, jnp.float32(0.6))
  for name in ("w", "c"):
    cols = _np_groups(params[name], -1)
    keep = _np_top(np.sqrt((cols ** 2).sum(1)), _k(cols.shape[0], 0.4))
    np.testing.assert_array_equal(np.asarray(masks[name]),
                                  np.broadcast_to(keep, params[name].shape))
  # Gradual, channels: prunes among the active channels only; pruned stay pruned.
  rule = rules.gradual_magnitude(begin_step=0, end_step=10, frequency=5, groups=G.channels())
  m0 = {"w": jnp.ones((6, 8), bool).at[0].set(False), "c": jnp.ones((4, 6), bool)}
  masks = _update_fn(rule)(m0, params, params, jnp.int32(10), KEY, jnp.float32(0.5))
  rows = np.abs(np.asarray(params["w"])).sum(1)
  keep = _np_top(rows, _k(6, 0.5), allowed=np.asarray(m0["w"])[:, 0])
  np.testing.assert_array_equal(np.asarray(masks["w"]), np.broadcast_to(keep[:, None], (6, 8)))


def test_global_magnitude_and_acdc_count_groups_over_leaves():
  params = {"a": jax.random.normal(KEY, (4, 6)), "b": 3.0 * jax.random.normal(KEY, (6, 4))}
  for rule in (rules.global_magnitude(groups=G.neurons()),
               rules.acdc(warmup_steps=0, sparse_steps=1, dense_steps=1, alternate_until=4,
                          final_sparse_from=4, groups=G.neurons())):
    masks = _init_fn(rule)(params, KEY, jnp.float32(0.5))
    scores = np.concatenate([np.abs(_np_groups(params[n], -1)).sum(1) for n in ("a", "b")])
    keep = _np_top(scores, _k(scores.size, 0.5))
    np.testing.assert_array_equal(np.asarray(masks["a"]), np.broadcast_to(keep[:6], (4, 6)))
    np.testing.assert_array_equal(np.asarray(masks["b"]), np.broadcast_to(keep[6:], (6, 4)))


def test_static_random_and_set_select_whole_groups_exactly():
  params = {"w": jnp.ones((4, 12))}
  rule = rules.static_random(groups=G.heads(6))
  masks = np.asarray(_init_fn(rule)(params, KEY, jnp.float32(0.5))["w"])
  heads_on = masks.reshape(4, 6, 2)
  assert (heads_on == heads_on[:1, :, :1]).all()  # constant over each head
  assert heads_on[0, :, 0].sum() == 3
  rule = rules.set_(0.5, every=1, noise_std=0.0, groups=G.blocks(2))
  theta = jax.random.normal(KEY, (4, 12))
  m0 = _init_fn(rule)({"w": theta}, KEY, jnp.float32(0.5))
  m1 = np.asarray(_update_fn(rule)(m0, {"w": theta}, {"w": theta}, jnp.int32(0), KEY,
                                   jnp.float32(0.5))["w"])
  u0 = np.asarray(m0["w"]).reshape(2, 2, 12)[:, 0]
  u1 = m1.reshape(2, 2, 12)
  assert (u1 == u1[:, :1]).all() and u1[:, 0].sum() == u0.sum() == 12
  # The kept blocks are the active ones with the largest L1 norm (drop ⌊0.5·12⌋ = 6).
  l1 = np.abs(np.asarray(theta)).reshape(2, 2, 12).sum(1).ravel()
  kept = _np_top(l1, 6, allowed=u0.ravel())
  assert (u1[:, 0].ravel() >= kept).all()


def test_rigl_groups_drop_by_magnitude_and_grow_by_dense_gradient():
  theta = jax.random.normal(KEY, (5, 8))
  grads = jax.random.normal(jax.random.PRNGKey(1), (5, 8))
  rule = rules.rigl(0.5, every=1, noise_std=0.0, groups=G.neurons())
  m0 = {"w": jnp.asarray(np.broadcast_to(np.arange(8) % 2 == 0, (5, 8)))}
  m1 = np.asarray(_update_fn(rule)(m0, {"w": theta}, {"w": grads}, jnp.int32(0), KEY,
                                   jnp.float32(0.5))["w"])
  active = np.arange(8) % 2 == 0
  kept = _np_top(np.abs(np.asarray(theta)).sum(0), 2, allowed=active)
  grown = _np_top(np.abs(np.asarray(grads)).sum(0), 2, allowed=~kept)
  np.testing.assert_array_equal(m1, np.broadcast_to(kept | grown, (5, 8)))


def test_rigl_fan_in_keeps_a_constant_fan_in_and_matches_numpy():
  theta = np.asarray(jax.random.normal(KEY, (8, 3)))
  grads = np.asarray(jax.random.normal(jax.random.PRNGKey(2), (8, 3)))
  rule = rules.rigl(0.5, every=1, noise_std=0.0, groups=G.fan_in())
  params = {"w": jnp.asarray(theta)}
  m0 = np.asarray(_init_fn(rule)(params, KEY, jnp.float32(0.5))["w"])
  assert (m0.sum(0) == 4).all()
  m1 = np.asarray(_update_fn(rule)({"w": jnp.asarray(m0)}, params, {"w": jnp.asarray(grads)},
                                   jnp.int32(0), KEY, jnp.float32(0.5))["w"])
  for j in range(3):
    kept = _np_top(np.abs(theta[:, j]), 2, allowed=m0[:, j])
    grown = _np_top(np.abs(grads[:, j]), 2, allowed=~kept)
    np.testing.assert_array_equal(m1[:, j], kept | grown)
  assert (m1.sum(0) == 4).all()


def test_sparse_rigl_neurons_with_erk_lands_whole_neurons_at_zero():
  params = {"a": jax.random.normal(KEY, (8, 16)), "b": jax.random.normal(KEY, (16, 4)),
            "bias": jnp.ones(4)}
  dist = osp.erk()
  tx = osp.sparse(optax.adam(1e-2), osp.rigl(every=2, end_step=10, groups=G.neurons()),
                  sparsity=0.5, distribution=dist)
  state = tx.init(params)
  step = jax.jit(tx.update)
  dens = dist.densities(params, 0.5)
  for _ in range(3):
    grads = jax.tree.map(lambda p: jnp.cos(p) + 0.1, params)
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
  masks = osp.get_masks(state)
  for name in ("a", "b"):
    m = np.asarray(masks[name])
    cols = m.any(0)
    assert (m == cols[None, :]).all()
    assert cols.sum() == _k(m.shape[1], float(dens[name]))
    p = np.asarray(params[name])
    assert (p[:, ~cols] == 0.0).all() and p.dtype == np.float32


def test_begin_step_delays_set_and_rigl_updates():
  for build in (rules.rigl, rules.set_):
    rule = build(every=5, begin_step=10, end_step=30)
    got = [bool(rule.is_update_step(jnp.int32(t))) for t in range(0, 36)]
    assert got == [t % 5 == 0 and 10 <= t <= 30 for t in range(0, 36)]
  with pytest.raises(ValueError, match="begin_step"):
    rules.rigl(begin_step=-1)
