"""Tests of `optax_sparse.masks.sparse`: projection, generic state reset, schedules, errors.

Compilations are the cost here (every mask selection is a sizeable XLA program), so the generic
checks use a tiny hand-written rule (a roll of the mask) and only a few tests compile real rules.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax._src import test_utils

import optax_sparse as osp
from optax_sparse.masks import rules

KEY = jax.random.PRNGKey(0)


def _roll_rule(every: int = 2) -> rules.MaskRule:
  """A cheap rule for testing the combinator: masks roll by one entry every ``every`` steps."""

  def init_masks(params, target, key):
    del key
    return jax.tree.map(
        # Runs of two (TTFFTTFF...): a roll by one keeps, grows, drops and leaves entries.
        lambda e, p: (jnp.arange(p.size).reshape(p.shape) // 2 % 2 == 0) if e else None,
        target.eligible, params)

  def is_update_step(count):
    return count % every == 0

  def update_masks(masks, params, grads, count, key, target, rule_state):
    del params, grads, count, key, target
    return jax.tree.map(lambda m: jnp.roll(m, 1), masks), rule_state

  return rules.MaskRule("roll", init_masks, is_update_step, update_masks, scope="pattern")


def _problem(seed=0, shape=(4, 6)):
  rng = np.random.default_rng(seed)
  params = {"w": jnp.asarray(rng.normal(size=shape), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(shape[1],)), jnp.float32)}
  grads = [jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
           for _ in range(4)]
  return params, grads


def _param_leaves(inner, inner_state):
  """Every per-parameter array of an inner state (one per parameter leaf and copy)."""
  if isinstance(inner_state, _NormState):
    return jax.tree.leaves(inner_state.trace)
  found = []
  optax.tree.map_params(inner, lambda v: found.append(v) or v, inner_state,
                        is_leaf=lambda x: isinstance(x, optax.MaskedNode))
  return [v for v in found if not isinstance(v, optax.MaskedNode)]


class _NormState(NamedTuple):
  trace: Any
  initial_norm: jax.Array


def _inner_without_placeholder_init():
  """Momentum whose ``init`` reads a parameter leaf: ``map_params`` placeholders cannot run it."""

  def init(params):
    return _NormState(jax.tree.map(jnp.zeros_like, params), jnp.linalg.norm(params["w"]))

  def update(grads, state, params=None):
    del params
    trace = jax.tree.map(lambda t, g: 0.9 * t + g, state.trace, grads)
    return jax.tree.map(lambda t: -0.1 * t, trace), _NormState(trace, state.initial_norm)

  return optax.GradientTransformation(init, update)


INNERS = {
    "adam": lambda: optax.adam(0.1),
    "sgd_momentum": lambda: optax.sgd(0.1, momentum=0.9),
    "lion": lambda: optax.lion(0.1),
    "chain": lambda: optax.chain(optax.clip_by_global_norm(10.0), optax.adamw(0.1)),
    "inject": lambda: optax.inject_hyperparams(optax.adam)(learning_rate=0.1),
    "masked": lambda: optax.masked(optax.adam(0.1), {"w": True, "b": False}),
    "structural": _inner_without_placeholder_init,
}


@pytest.mark.parametrize("name", list(INNERS))
def test_projection_reset_and_schedule_for_any_inner(name):
  inner = INNERS[name]()
  tx = osp.sparse(inner, _roll_rule(every=2), None)
  params, grads = _problem()
  state = tx.init(params)
  step = jax.jit(tx.update)
  masks_before = state.masks
  for t in range(4):
    if t == 1:
      logs_ctx = test_utils.log_compilations()
      logs = logs_ctx.__enter__()
    updates, state = step(grads[t], state, params)
    new_params = optax.apply_updates(params, updates)
    m_old, m_new = np.asarray(masks_before["w"]), np.asarray(state.masks["w"])
    assert state.masks["b"] is None
    # Masks change exactly on the scheduled steps.
    assert bool(np.any(m_old != m_new)) == (t % 2 == 0)
    # Pruned entries are exactly zero; kept ones land where the inner step put them.
    w = np.asarray(new_params["w"])
    assert np.all(w[~m_new] == 0.0)
    kept = m_old & m_new
    np.testing.assert_array_equal(w[kept], np.asarray(params["w"] + updates["w"])[kept])
    grown = m_new & ~m_old
    assert np.all(w[grown] == 0.0)
    # Every per-parameter state leaf is zero where the mask changed, not elsewhere.
    changed = m_old != m_new
    leaves = _param_leaves(inner, state.inner_state)
    assert leaves, f"{name}: no per-parameter state found"
    for leaf in leaves:  # the "w" leaves are the ones shaped like the mask
      if jnp.shape(leaf) != m_new.shape:
        continue
      assert np.all(np.asarray(leaf)[changed] == 0.0), name
      if t == 0:
        assert np.any(np.asarray(leaf)[~changed] != 0.0), "the check must be able to fail"
    params, masks_before = new_params, state.masks
  logs_ctx.__exit__(None, None, None)
  assert not logs, "a mask-update step and a plain step must share one compilation"


@pytest.mark.parametrize("name", ["adam", "sgd_momentum", "lion"])
def test_skip_update_on_mask_step(name):
  inner = INNERS[name]()
  tx = osp.sparse(inner, _roll_rule(every=2), None, skip_update_on_mask_step=True)
  params, grads = _problem()
  state = tx.init(params)
  step = jax.jit(tx.update)
  for t in range(4):  # mask-update steps at t = 0 and t = 2
    old_masks, old_inner = np.asarray(state.masks["w"]), state.inner_state
    updates, state = step(grads[t], state, params)
    new = optax.apply_updates(params, updates)
    m = np.asarray(state.masks["w"])
    w = np.asarray(new["w"])
    assert np.all(w[~m] == 0.0)
    changed = m != old_masks
    if t % 2:  # a plain step: the inner optimizer moves every kept entry
      assert not np.any(changed)
      assert bool(jnp.any(updates["b"] != 0.0))
      continue
    assert np.any(changed)
    # The official step: no optimizer step (kept weights unchanged, dropped and grown at 0) ...
    np.testing.assert_array_equal(updates["b"], 0.0)
    np.testing.assert_array_equal(w[m & old_masks], np.asarray(params["w"])[m & old_masks])
    np.testing.assert_array_equal(w[m & ~old_masks], 0.0)
    # ... and the old inner state, zeroed where the mask changed.
    for old_leaf, new_leaf in zip(_param_leaves(inner, old_inner),
                                  _param_leaves(inner, state.inner_state), strict=True):
      old_leaf, new_leaf = np.asarray(old_leaf), np.asarray(new_leaf)
      if old_leaf.shape != m.shape:
        np.testing.assert_array_equal(new_leaf, old_leaf)
        continue
      np.testing.assert_array_equal(new_leaf[changed], 0.0)
      np.testing.assert_array_equal(new_leaf[~changed], old_leaf[~changed])
      if t == 2:
        assert np.any(old_leaf[changed] != 0.0), "the reset check must be able to fail"
    for leaf in jax.tree.leaves(state.inner_state):
      if jnp.shape(leaf) == () and jnp.issubdtype(leaf.dtype, jnp.integer):
        assert int(leaf) == t // 2  # the inner count did not advance on mask steps
    params = new


def test_projection_is_exact_in_bf16_and_f32():
  rng = np.random.default_rng(3)
  params = {"w32": jnp.asarray(rng.normal(size=(4, 4)), jnp.float32),
            "w16": jnp.asarray(rng.normal(size=(4, 4)), jnp.bfloat16)}
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), p.dtype), params)
  # Exactly half of each leaf: initial masks must keep the count the sparsity gives.
  masks = {"w32": jnp.asarray(rng.permutation(16).reshape(4, 4) < 8),
           "w16": jnp.asarray(rng.permutation(16).reshape(4, 4) < 8)}
  inner = optax.adamw(0.1, weight_decay=0.5)  # moves every entry, pruned ones included
  tx = osp.sparse(inner, osp.static_random(), 0.5, initial_masks=masks)
  state = tx.init(params)
  inner_state = inner.init(params)
  for _ in range(2):
    updates, state = jax.jit(tx.update)(grads, state, params)
    inner_updates, inner_state = inner.update(grads, inner_state, params)
    new = optax.apply_updates(params, updates)
    ref = optax.apply_updates(params, inner_updates)
    for k in params:
      assert updates[k].dtype == params[k].dtype
      m = np.asarray(masks[k])
      got = np.asarray(new[k].astype(jnp.float32))
      np.testing.assert_array_equal(got[~m], 0.0)
      np.testing.assert_allclose(got[m], np.asarray(ref[k].astype(jnp.float32))[m],
                                 rtol=1e-6 if k == "w32" else 1e-2)
    params = new
    inner_state = jax.tree.map(lambda x: x, state.inner_state)


def _handmade():
  theta = np.array([[0.9, -0.1, 0.0, 0.5],
                    [0.0, 0.3, -0.7, 0.0],
                    [0.2, 0.0, 0.0, -0.4],
                    [0.0, 0.8, 0.0, 0.0]], np.float32)
  grads = np.array([[0.1, 0.2, 5.0, 0.3],
                    [4.0, 0.1, 0.2, 0.6],
                    [0.3, 3.0, -0.5, 0.2],
                    [0.05, 0.1, -2.0, 0.01]], np.float32)
  return theta, theta != 0, grads


def _np_top_k(scores, k, allowed):
  flat = np.where(np.asarray(allowed).ravel(), np.asarray(scores, np.float64).ravel(), -np.inf)
  order = sorted(range(flat.size), key=lambda i: (-flat[i], i))
  out = np.zeros(flat.size, bool)
  out[order[:k]] = True
  return out.reshape(np.shape(scores))


def test_rigl_in_sparse_grows_from_raw_dense_gradient_and_keeps_regrown_values():
  theta0, mask0, g = _handmade()
  g = g.copy()
  g[0, 1] = -9.0  # θ_t = -0.1 is dropped (θ_{t+1} = 0.8 would be kept), then regrown by |g|
  lr = 0.1
  inner = optax.sgd(lr, momentum=0.9)
  tx = osp.sparse(inner, osp.rigl(0.5, every=2, noise_std=0.0), 0.5, sparse_gradients=True,
                  initial_masks={"w": jnp.asarray(mask0)})
  params = {"w": jnp.asarray(theta0)}
  state = tx.init(params)
  step = jax.jit(tx.update)
  updates, state = step({"w": jnp.asarray(g)}, state, params)
  new = np.asarray(optax.apply_updates(params, updates)["w"])
  # NumPy reference (official RigL order): drop by |θ_t| among active, grow by the raw dense
  # |g_t| among inactive-after-drop; then the inner step on the gradient masked by M ∧ M'.
  kept = _np_top_k(np.abs(theta0), 4, mask0)
  grown = _np_top_k(np.abs(g), 4, ~kept)
  mask1 = kept | grown
  np.testing.assert_array_equal(state.masks["w"], mask1)
  theta1 = theta0 - lr * np.where(mask0, g, 0.0)
  stale = _np_top_k(np.abs(np.where(mask0, theta1, 0.0)), 4, mask0)
  stale = stale | _np_top_k(np.abs(g), 4, ~stale)
  assert np.any(stale != mask1), "the example must tell θ_t from θ_{t+1}"
  # Grown from the raw gradient: entries where only the dense gradient is large.
  assert mask1[0, 2] and mask1[1, 0] and not mask0[0, 2] and not mask0[1, 0]
  regrown = mask0 & ~kept & grown
  assert regrown[0, 1], "the hand-made example must drop and regrow (0, 1)"
  both = mask1 & mask0
  step_ref = np.where(both, theta0 - lr * np.where(both, g, 0.0), 0.0)
  np.testing.assert_array_equal(new[both], step_ref[both].astype(np.float32))  # values kept
  assert new[0, 1] != 0.0
  np.testing.assert_array_equal(new[~both], 0.0)  # grown at 0, dropped at 0
  trace = np.asarray(state.inner_state[0].trace["w"])
  np.testing.assert_array_equal(trace[mask1 != mask0], 0.0)
  np.testing.assert_array_equal(trace[both], np.where(both, g, 0.0)[both])
  # sparse_gradients: the inner optimizer never saw the gradient of inactive entries.
  np.testing.assert_array_equal(trace[~mask0 & ~mask1], 0.0)
  # A plain step, then a mask step with non-finite gradients on inactive entries: masks keep an
  # exact count, never grow there, and parameters stay finite.
  params = {"w": jnp.asarray(new)}
  with test_utils.log_compilations() as logs:
    updates, state = step({"w": jnp.asarray(g)}, state, params)
    params = optax.apply_updates(params, updates)
    bad = np.where(state.masks["w"], 0.1, np.nan).astype(np.float32)
    bad[0, 0] = np.inf if not state.masks["w"][0, 0] else bad[0, 0]
    before = np.asarray(state.masks["w"])
    updates, state = step({"w": jnp.asarray(bad)}, state, params)
  assert not [x for x in logs if "jit(update_fn)" in x.getMessage()], "one compilation"
  after = np.asarray(state.masks["w"])
  assert after.sum() == 8
  assert not np.any(after & ~before), "non-finite gradients must not win the growth ranking"
  assert bool(jnp.all(jnp.isfinite(optax.apply_updates(params, updates)["w"])))


def test_acdc_in_sparse_compresses_globally_and_decompresses_to_zeros():
  params, grads = _problem(4, shape=(4, 4))
  rule = osp.acdc(warmup_steps=1, sparse_steps=2, dense_steps=1, alternate_until=4,
                  final_sparse_from=4)  # phases: dense, sparse, sparse, dense, sparse...
  inner = optax.sgd(0.1, momentum=0.9)
  tx = osp.sparse(inner, rule, 0.75, where=lambda path, p: True)  # the bias is pruned too
  state = tx.init(params)
  assert all(bool(jnp.all(m)) for m in jax.tree.leaves(state.masks))
  step = jax.jit(tx.update)
  n_total = 16 + 4
  for t in range(4):
    before = state.masks
    updates, state = step(grads[t], state, params)
    params = optax.apply_updates(params, updates)
    active = sum(int(m.sum()) for m in jax.tree.leaves(state.masks))
    compressed = t != 2  # the masks after update t follow the phase of step t + 1
    assert active == (round(0.25 * n_total) if compressed else n_total), t
    for k in params:
      m, b = np.asarray(state.masks[k]), np.asarray(before[k])
      trace = np.asarray(state.inner_state[0].trace[k])
      p = np.asarray(params[k])
      assert np.all(p[~m] == 0.0)
      np.testing.assert_array_equal(trace[m != b], 0.0)  # newly masked or returning entries
      if t == 2:
        np.testing.assert_array_equal(p[m & ~b], 0.0)  # weights return as zeros


def test_sparsity_schedule_is_evaluated_on_the_count():
  params = {"w": jnp.arange(1.0, 21.0).reshape(4, 5)}
  sparsity = optax.linear_schedule(0.0, 0.8, 4)  # 0.4 at step 2
  tx = osp.sparse(optax.sgd(0.0), osp.one_shot_magnitude(at_step=2), sparsity)
  state = tx.init(params)
  assert int(state.masks["w"].sum()) == 20  # s(0) = 0
  step = jax.jit(tx.update)
  for _ in range(3):
    updates, state = step(jax.tree.map(jnp.zeros_like, params), state, params)
    params = optax.apply_updates(params, updates)
  expected = max(1, round(20 * 0.6))
  assert int(state.masks["w"].sum()) == expected
  np.testing.assert_array_equal(
      np.asarray(state.masks["w"]).ravel(), np.arange(20) >= 20 - expected)


def test_erk_distribution_gives_exact_per_leaf_counts():
  params = {"a": jnp.ones((16, 16)), "c": jnp.ones((4, 4)), "bias": jnp.ones(4)}
  dist = osp.erk()
  tx = osp.sparse(optax.sgd(0.1), osp.static_random(), 0.8, distribution=dist)
  masks = tx.init(params).masks
  densities = dist.densities(params, 0.8)
  for k in ("a", "c"):
    assert int(masks[k].sum()) == int(osp.count_for_density(params[k].size, densities[k]))
  assert masks["bias"] is None
  total = sum(int(masks[k].sum()) for k in ("a", "c"))
  assert abs(total - 0.2 * (256 + 16)) <= 2
  assert int(masks["c"].sum()) > 0.2 * 16  # ERK: small layers denser than uniform


def test_distribution_that_cannot_meet_the_target_raises_at_init():
  params = {"a": jnp.ones((8, 8)), "b": jnp.ones((2, 2))}
  dist = osp.uniform(dense=lambda path, leaf: leaf.shape == (8, 8))  # 64 of 68 stay dense
  tx = osp.sparse(optax.sgd(0.1), osp.static_random(), 0.5, distribution=dist)
  with pytest.raises(ValueError, match="sparsity"):
    tx.init(params)


def test_seed_sets_the_key_and_masks_follow_it():
  params = {"w": jnp.ones((4, 4))}
  masks = {"w": jnp.arange(16).reshape(4, 4) < 8}
  tx = osp.sparse(optax.sgd(0.1), osp.set_(0.5, every=1), 0.5, initial_masks=masks, seed=7)
  state = tx.init(params)
  np.testing.assert_array_equal(state.key, jax.random.PRNGKey(7))
  np.testing.assert_array_equal(
      tx.init(params).key,
      osp.sparse(optax.sgd(0.1), osp.set_(0.5, every=1), 0.5, initial_masks=masks,
                 seed=7).init(params).key)
  step = jax.jit(tx.update)
  g = {"w": jnp.ones((4, 4))}
  out = [step(g, state, params)[1].masks["w"] for _ in range(2)]
  other = step(g, state._replace(key=jax.random.PRNGKey(8)), params)[1].masks["w"]
  np.testing.assert_array_equal(out[0], out[1])
  assert bool(jnp.any(out[0] != other))
  assert int(other.sum()) == 8


def test_get_masks_inside_wrappers():
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
  masks = {"w": jnp.array([[True, False], [False, True]]), "b": None}

  def make(sparsity=0.5):
    return osp.sparse(optax.adam(0.1), osp.static_random(), sparsity, initial_masks=masks)

  wrapped = [
      make(),
      optax.chain(optax.clip(1.0), make()),
      optax.MultiSteps(make(), every_k_schedule=2),
      optax.inject_hyperparams(make)(sparsity=0.5),
  ]
  for tx in wrapped:
    got = osp.get_masks(tx.init(params))
    np.testing.assert_array_equal(got["w"], masks["w"])
    assert got["b"] is None
  with pytest.raises(ValueError, match="masks"):
    osp.get_masks(optax.adam(0.1).init(params))


def test_ham_as_inner():
  params, grads = _problem(1, shape=(4, 4))
  inner = osp.ham(optax.sgd(0.05, momentum=0.9), learning_rate=0.05)
  tx = osp.sparse(inner, _roll_rule(every=2), None)
  state = tx.init(params)
  step = jax.jit(tx.update)
  for t in range(3):
    before = np.asarray(state.masks["w"])
    updates, state = step(grads[t], state, params)
    params = optax.apply_updates(params, updates)
    m = np.asarray(state.masks["w"])
    w = np.asarray(params["w"])
    assert m.sum() == 8
    assert np.all(w[~m] == 0.0) and np.all(w[m & ~before] == 0.0)
    assert np.all(np.isfinite(w))
    for leaf in jax.tree.leaves(state.inner_state):
      if jnp.shape(leaf) == m.shape and jnp.issubdtype(leaf.dtype, jnp.floating):
        np.testing.assert_array_equal(np.asarray(leaf)[m != before], 0.0)


# ------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("value", [1.0, -0.1, 1.5, math.nan])
def test_sparsity_out_of_range_raises(value):
  with pytest.raises(ValueError, match="sparsity"):
    osp.sparse(optax.sgd(0.1), osp.rigl(), value)


def test_construction_errors():
  with pytest.raises(ValueError, match="sparsity"):
    osp.sparse(optax.sgd(0.1), osp.rigl(), None)
  with pytest.raises(ValueError, match="sparsity"):
    osp.sparse(optax.sgd(0.1), osp.nm(2, 4), 0.5)
  with pytest.raises(ValueError, match="distribution"):
    osp.sparse(optax.sgd(0.1), osp.global_magnitude(), 0.5, distribution=object())
  with pytest.raises(ValueError, match="rule"):
    osp.sparse(optax.sgd(0.1), "rigl", 0.5)
  with pytest.raises(ValueError, match="where"):
    osp.sparse(optax.sgd(0.1), osp.rigl(), 0.5, where={"w": 1})
  with pytest.raises(ValueError, match="backend"):
    osp.sparse(optax.sgd(0.1), osp.rigl(), 0.5, backend="gpu")


def test_trees_not_matching_the_params_raise_at_init():
  params = {"w": jnp.ones((2, 2)), "b": jnp.ones(2)}
  tx = osp.sparse(optax.sgd(0.1), osp.static_random(), 0.5, where={"w": True})
  with pytest.raises(ValueError, match="where"):
    tx.init(params)
  for bad in ({"w": jnp.ones((2, 2), bool)},  # structure
              {"w": jnp.ones((2, 3), bool), "b": None},  # shape
              {"w": None, "b": None},  # an eligible leaf without a mask
              {"w": jnp.ones((2, 2), bool), "b": jnp.ones(2, bool)}):  # a mask on a dense leaf
    tx = osp.sparse(optax.sgd(0.1), osp.static_random(), 0.5, initial_masks=bad)
    with pytest.raises(ValueError, match="initial_masks"):
      tx.init(params)
  tx = osp.sparse(optax.sgd(0.1), osp.static_random(), 0.5)
  with pytest.raises(ValueError):
    tx.update(params, tx.init(params), None)
