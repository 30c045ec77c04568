"""Tests of `optax_sparse.masks.rules`: each rule against a small NumPy reference, plus invariants.

Rule functions are pure, so most checks call them directly with a hand-made `Target`; the
integration with `sparse()` (projection, moment reset, compilation) is in test_masks_sparse.py.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sparse as osp
from optax_sparse.masks import rules

KEY = jax.random.PRNGKey(0)


def _target(params, sparsity, eligible=None):
  """A uniform-density target (every eligible leaf at density 1 - s)."""
  if eligible is None:
    eligible = jax.tree.map(lambda p: p.ndim >= 2, params)
  densities = lambda s: jax.tree.map(  # noqa: E731
      lambda e, p: 1.0 - jnp.asarray(s, jnp.float32) if e else None,
      eligible, params)
  return rules.Target(sparsity=jnp.asarray(sparsity, jnp.float32), densities=densities,
                      eligible=eligible)


@functools.cache
def _init_fn(rule):
  """``rule.init_masks`` jitted once per rule (eager selection is slow)."""
  return jax.jit(lambda params, key, s: rule.init_masks(params, _target(params, s), key))


def _init(rule, params, sparsity, key=KEY):
  return _init_fn(rule)(params, key, jnp.float32(sparsity))


@functools.cache
def _update_fn(rule):
  def update(masks, params, grads, count, key, s):
    new, _ = rule.update_masks(masks, params, grads, count, key, _target(params, s),
                               optax.EmptyState())
    return new

  return jax.jit(update)


def _update(rule, masks, params, grads, count, sparsity, key=KEY):
  return _update_fn(rule)(masks, params, grads, jnp.int32(count), key, jnp.float32(sparsity))


def _np_top_k(scores, k, allowed=None):
  """Reference: the k largest scores (ties by lower flat index) among `allowed`."""
  flat = np.asarray(scores, np.float64).ravel()
  if allowed is not None:
    flat = np.where(np.asarray(allowed).ravel(), flat, -np.inf)
  order = sorted(range(flat.size), key=lambda i: (-flat[i], i))
  out = np.zeros(flat.size, bool)
  out[order[:k]] = True
  return out.reshape(np.shape(scores))


def _k(n, density):
  return max(1, round(n * density))


# ------------------------------------------------------------------------------------------------
# One-shot, gradual, global magnitude


def test_one_shot_magnitude_matches_numpy_top_k_per_leaf():
  params = {"a": jax.random.normal(KEY, (5, 7)), "b": jax.random.normal(KEY, (3, 3)),
            "bias": jnp.ones(4)}
  rule = osp.one_shot_magnitude()
  masks = _init(rule, params, 0.7, KEY)
  for name in ("a", "b"):
    p = np.asarray(params[name])
    np.testing.assert_array_equal(masks[name], _np_top_k(np.abs(p), _k(p.size, 0.3)))
  assert masks["bias"] is None
  assert not bool(rule.is_update_step(jnp.int32(0)))


def test_one_shot_magnitude_at_later_step():
  params = {"w": jnp.arange(1.0, 10.0).reshape(3, 3)}
  rule = osp.one_shot_magnitude(at_step=5)
  masks = _init(rule, params, 0.5, KEY)
  assert bool(jnp.all(masks["w"]))
  steps = [int(t) for t in range(10) if rule.is_update_step(jnp.int32(t))]
  assert steps == [5]
  new = _update(rule, masks, params, params, 5, 0.5)
  expected = _np_top_k(np.arange(1.0, 10.0).reshape(3, 3), _k(9, 0.5))  # round(4.5) = 4
  np.testing.assert_array_equal(new["w"], expected)
  assert int(new["w"].sum()) == 4


@pytest.mark.parametrize("t", [0, 3, 50, 99, 100, 140])
def test_gradual_sparsity_matches_cubic_formula(t):
  s_i, s_f, t0, t1 = 0.1, 0.9, 3, 103
  progress = min(max((t - t0) / (t1 - t0), 0.0), 1.0)
  expected = s_f + (s_i - s_f) * (1.0 - progress) ** 3
  np.testing.assert_allclose(float(osp.gradual_sparsity(t, s_i, s_f, t0, t1)), expected,
                             rtol=1e-6)


def test_gradual_magnitude_events_counts_and_pruned_stay_pruned():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(10, 10)).astype(np.float32)
  params = {"w": jnp.asarray(w)}
  s_i, s_f, t0, t1, freq = 0.2, 0.9, 10, 40, 7
  rule = osp.gradual_magnitude(s_i, begin_step=t0, end_step=t1, frequency=freq)
  masks = _init(rule, params, s_f)
  assert int(masks["w"].sum()) == _k(100, 1 - s_i)
  events = [t for t in range(60) if bool(rule.is_update_step(jnp.int32(t)))]
  assert events == [10, 17, 24, 31, 38, 40]
  for t in events:
    # Weights that change sign and size between events: pruning must stay among active ones.
    p = {"w": jnp.asarray(np.where(masks["w"], w * (1 + 0.1 * t) - 0.05 * t, 0.0))}
    new = _update(rule, masks, p, p, t, s_f)
    s_t = s_f + (s_i - s_f) * (1.0 - (t - t0) / (t1 - t0)) ** 3
    expected = _np_top_k(np.abs(p["w"]), _k(100, 1 - s_t), allowed=masks["w"])
    np.testing.assert_array_equal(new["w"], expected)
    assert not bool(jnp.any(new["w"] & ~masks["w"])), "a pruned entry came back"
    masks = new
  assert int(masks["w"].sum()) == _k(100, 1 - s_f)


@pytest.mark.parametrize("normalize", [False, True])
def test_global_magnitude_matches_numpy(normalize):
  rng = np.random.default_rng(1)
  params = {"a": jnp.asarray(rng.normal(size=(6, 5)) * 3, jnp.float32),
            "b": jnp.asarray(rng.normal(size=(4, 4)), jnp.float32), "c": jnp.ones(3)}
  rule = osp.global_magnitude(normalize=normalize)
  assert rule.scope == "global"
  masks = _init(rule, params, 0.6, KEY)
  scores = [np.abs(np.asarray(params[n])) for n in ("a", "b")]
  if normalize:
    scores = [s / np.linalg.norm(s) for s in scores]
  flat = np.concatenate([s.ravel() for s in scores])
  ref = _np_top_k(flat, _k(46, 0.4))
  got = np.concatenate([np.asarray(masks["a"]).ravel(), np.asarray(masks["b"]).ravel()])
  np.testing.assert_array_equal(got, ref)
  assert masks["c"] is None


# ------------------------------------------------------------------------------------------------
# Static random, SET, RigL


def test_static_random_exact_counts_seeded_and_never_updated():
  params = {"a": jnp.ones((8, 8)), "b": jnp.ones((3, 5))}
  rule = osp.static_random()
  m1 = _init(rule, params, 0.75, jax.random.PRNGKey(3))
  m2 = _init(rule, params, 0.75, jax.random.PRNGKey(3))
  m3 = _init(rule, params, 0.75, jax.random.PRNGKey(4))
  assert int(m1["a"].sum()) == 16 and int(m1["b"].sum()) == _k(15, 0.25)
  np.testing.assert_array_equal(m1["a"], m2["a"])
  assert bool(jnp.any(m1["a"] != m3["a"]))
  assert not any(bool(rule.is_update_step(jnp.int32(t))) for t in range(0, 500, 50))


def _handmade():
  """A 4x4 example with distinct magnitudes: 8 active entries, known drop and grow sets."""
  theta = np.array([[0.9, -0.1, 0.0, 0.5],
                    [0.0, 0.3, -0.7, 0.0],
                    [0.2, 0.0, 0.0, -0.4],
                    [0.0, 0.8, 0.0, 0.0]], np.float32)
  mask = theta != 0
  grads = np.array([[0.1, 0.2, 5.0, 0.3],
                    [4.0, 0.1, 0.2, 0.6],
                    [0.3, 3.0, -0.5, 9.0],  # 9.0 at an entry that is dropped, then regrown
                    [0.05, 0.1, -2.0, 0.01]], np.float32)
  return theta, mask, grads


def _np_rigl(theta, mask, grads, fraction):
  n_active = int(mask.sum())
  n_drop = int(math.floor(n_active * fraction))
  kept = _np_top_k(np.abs(theta), n_active - n_drop, allowed=mask)
  grown = _np_top_k(np.abs(grads), n_drop, allowed=~kept)
  return kept, grown


# One rule object for the hand-made checks: its update is compiled once.
RIGL_HALF = osp.rigl(drop_fraction=0.5, every=10, noise_std=0.0)  # no end_step: constant 0.5


def test_rigl_drop_grow_sets_match_numpy_reference():
  theta, mask, grads = _handmade()
  rule = RIGL_HALF
  params = {"w": jnp.asarray(theta)}
  new = _update(rule, {"w": jnp.asarray(mask)}, params, {"w": jnp.asarray(grads)}, 10, 0.5)
  kept, grown = _np_rigl(theta, mask, grads, 0.5)
  np.testing.assert_array_equal(new["w"], kept | grown)
  # By hand: drop |θ| 0.1, 0.2, 0.3, 0.4; grow |g| 9.0, 5.0, 4.0, 3.0 among all the others,
  # the just-dropped -0.4 (|g| = 9.0) included.
  expected = np.zeros((4, 4), bool)
  expected[[0, 0, 1, 3], [0, 3, 2, 1]] = True  # kept 0.9, 0.5, -0.7, 0.8
  expected[[2, 0, 1, 2], [3, 2, 0, 1]] = True  # grown
  np.testing.assert_array_equal(new["w"], expected)
  assert int(new["w"].sum()) == int(mask.sum())
  # Several leaves of one size but different shapes: each leaf matches its own reference.
  shapes = {"v": (2, 8), "u": (8, 2)}
  tree = lambda a, f: {"w": jnp.asarray(a), **{n: jnp.asarray(f(a)).reshape(s)  # noqa: E731
                                                for n, s in shapes.items()}}
  flip = lambda a: np.ascontiguousarray(a.T)  # noqa: E731
  new = _update(rule, tree(mask, flip), tree(theta, flip), tree(grads, flip), 10, 0.5)
  np.testing.assert_array_equal(new["w"], expected)
  for name, shape in shapes.items():
    kept, grown = _np_rigl(flip(theta).reshape(shape), flip(mask).reshape(shape),
                           flip(grads).reshape(shape), 0.5)
    np.testing.assert_array_equal(new[name], kept | grown)


def test_rigl_tie_break_noise_is_small_and_keyed():
  theta, mask, grads = _handmade()
  params = {"w": jnp.asarray(theta)}
  rule = osp.rigl(drop_fraction=0.5, every=1)  # default noise std 1e-5 << magnitude gaps
  new = _update(rule, {"w": jnp.asarray(mask)}, params, {"w": jnp.asarray(grads)}, 3, 0.5)
  kept, grown = _np_rigl(theta, mask, grads, 0.5)
  np.testing.assert_array_equal(new["w"], kept | grown)
  # Equal magnitudes: the noise decides, and it is a function of the key.
  flat = {"w": jnp.ones((4, 4))}
  ones = {"w": jnp.ones((4, 4), bool).at[:, 2:].set(False)}
  zero_g = {"w": jnp.zeros((4, 4))}
  outs = [_update(rule, ones, flat, zero_g, 1, 0.5, jax.random.PRNGKey(s))["w"]
          for s in (1, 1, 2, 3)]
  np.testing.assert_array_equal(outs[0], outs[1])
  # Regrowth by index refills some dropped entries, so two keys can give one mask by chance.
  assert any(bool(jnp.any(outs[0] != o)) for o in outs[2:])


def test_rigl_cosine_drop_fraction_and_end_step():
  rule = osp.rigl(drop_fraction=0.3, every=10, end_step=100, noise_std=0.0)
  steps = [t for t in range(0, 200) if bool(rule.is_update_step(jnp.int32(t)))]
  assert steps == list(range(0, 101, 10))
  theta = np.linspace(1.0, 2.0, 64, dtype=np.float32).reshape(8, 8)
  mask = np.zeros((8, 8), bool)
  mask[:, :5] = True  # 40 active
  params = {"w": jnp.asarray(theta)}
  # Gradients only on inactive entries: the dropped ones are never regrown here.
  grads = {"w": jnp.asarray(np.where(mask, 0.0, 1.0))}
  for t in (0, 30, 60, 150):
    new = _update(rule, {"w": jnp.asarray(mask)}, params, grads, t, 0.375)
    f = 0.15 * (1 + math.cos(math.pi * min(t, 100) / 100))
    n_drop = math.floor(40 * f)
    assert int(jnp.sum(mask & ~np.asarray(new["w"]))) == n_drop
    assert int(new["w"].sum()) == 40


def test_drop_fraction_schedules():
  cosine = rules.dynamic._drop_fraction_schedule("drop_fraction", 0.3, 100)
  constant = rules.dynamic._drop_fraction_schedule("drop_fraction", 0.3, None)
  given = rules.dynamic._drop_fraction_schedule(
      "drop_fraction", optax.linear_schedule(0.5, 0.0, 10), 50)
  for t in (0, 25, 50, 100, 130):
    np.testing.assert_allclose(float(cosine(t)), 0.15 * (1 + math.cos(math.pi * min(t, 100) / 100)),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(constant(t)), 0.3, rtol=1e-6)
    np.testing.assert_allclose(float(given(t)), max(0.0, 0.5 - 0.05 * t), rtol=1e-5, atol=1e-7)


def test_rigl_non_finite_gradients_rank_lowest_for_growth():
  theta, mask, grads = _handmade()
  grads = grads.copy()
  grads[0, 2] = np.nan
  grads[1, 0] = np.inf
  params = {"w": jnp.asarray(theta)}
  rule = RIGL_HALF
  new = _update(rule, {"w": jnp.asarray(mask)}, params, {"w": jnp.asarray(grads)}, 1, 0.5)
  assert not bool(new["w"][0, 2]) and not bool(new["w"][1, 0])
  assert int(new["w"].sum()) == 8
  # All gradients NaN: still an exact count, and kept entries are never "grown" twice.
  nan = {"w": jnp.full((4, 4), jnp.nan)}
  new = _update(rule, {"w": jnp.asarray(mask)}, params, nan, 1, 0.5)
  assert int(new["w"].sum()) == 8


def test_set_drops_smallest_and_regrows_among_inactive_at_random():
  theta, mask, grads = _handmade()
  params = {"w": jnp.asarray(theta)}
  rule = osp.set_(drop_fraction=0.5, every=5)
  assert [t for t in range(12) if bool(rule.is_update_step(jnp.int32(t)))] == [0, 5, 10]
  outs = []
  for seed in (0, 0, 1, 2, 3):
    new = _update(rule, {"w": jnp.asarray(mask)}, params, {"w": jnp.asarray(grads)}, 5, 0.5,
                  jax.random.PRNGKey(seed))
    new = np.asarray(new["w"])
    kept = _np_top_k(np.abs(theta), 4, allowed=mask)
    np.testing.assert_array_equal(new & mask & kept, kept)
    assert int(new.sum()) == 8 and int((new & ~kept).sum()) == 4
    outs.append(new)
  np.testing.assert_array_equal(outs[0], outs[1])
  assert any(bool(np.any(outs[0] != o)) for o in outs[2:]), "growth must depend on the key"


# ------------------------------------------------------------------------------------------------
# AC/DC


def _np_acdc_sparse(t, tw, ls, ld, ta, tf):
  return (tw <= t < ta and (t - tw) % (ls + ld) < ls) or t >= tf


def test_acdc_phases_match_reference_and_masks():
  cfg = dict(warmup_steps=10, sparse_steps=5, dense_steps=5, alternate_until=75,
             final_sparse_from=85)  # the paper's 100-epoch schedule, one step per epoch
  rule = osp.acdc(**cfg)
  ref = [_np_acdc_sparse(t, 10, 5, 5, 75, 85) for t in range(101)]
  switches = [t for t in range(100) if ref[t + 1] != ref[t]]
  assert switches == [9, 14, 19, 24, 29, 34, 39, 44, 49, 54, 59, 64, 69, 74, 84]
  assert [t for t in range(100) if bool(rule.is_update_step(jnp.int32(t)))] == switches
  params = {"a": jnp.arange(1.0, 13.0).reshape(3, 4), "b": -jnp.arange(1.0, 5.0).reshape(2, 2)}
  masks = _init(rule, params, 0.5)
  assert all(bool(jnp.all(m)) for m in jax.tree.leaves(masks))  # dense warm-up
  masks = _update(rule, masks, params, params, 9, 0.5)
  flat = np.concatenate([np.arange(1.0, 13.0), np.arange(1.0, 5.0)])
  got = np.concatenate([np.asarray(masks["a"]).ravel(), np.asarray(masks["b"]).ravel()])
  np.testing.assert_array_equal(got, _np_top_k(flat, 8))  # global, not per leaf
  masks = _update(rule, masks, params, params, 14, 0.5)
  assert all(bool(jnp.all(m)) for m in jax.tree.leaves(masks))


# ------------------------------------------------------------------------------------------------
# N:M and SR-STE


def test_nm_rule_exact_per_group():
  params = {"w": jax.random.normal(KEY, (8, 3))}
  rule = osp.nm(2, 4)
  masks = _init(rule, params, 0.0, KEY)
  groups = np.asarray(masks["w"]).reshape(2, 4, 3)
  np.testing.assert_array_equal(groups.sum(axis=1), 2)
  a = np.abs(np.asarray(params["w"])).reshape(2, 4, 3)
  for g in range(2):
    for c in range(3):
      np.testing.assert_array_equal(groups[g, :, c], _np_top_k(a[g, :, c], 2))


def _np_nm(w, n, m):
  """Reference N:M along axis -2 of a 2-D array."""
  out = np.zeros(w.shape, bool)
  for c in range(w.shape[1]):
    for g in range(w.shape[0] // m):
      out[g * m:(g + 1) * m, c] = _np_top_k(np.abs(w[g * m:(g + 1) * m, c]), n)
  return out


@pytest.mark.parametrize("decay", [None, 0.25])
def test_sr_ste_matches_numpy_reference(decay):
  rng = np.random.default_rng(2)
  w0 = rng.normal(size=(8, 3)).astype(np.float32)
  b0 = rng.normal(size=(3,)).astype(np.float32)
  lr, lam = 0.3, 0.05
  tx = osp.sr_ste(optax.sgd(lr), 2, 4, refine=lam, mask_decay=decay)
  params = {"w": jnp.asarray(w0), "b": jnp.asarray(b0)}
  state = tx.init(params)
  e = _np_nm(w0, 2, 4)
  np.testing.assert_array_equal(state.masks["w"], e)
  w = w0.copy()
  b = 0.0 if decay is None else decay
  update = jax.jit(tx.update)
  for _ in range(3):
    g = {"w": rng.normal(size=(8, 3)).astype(np.float32),
         "b": rng.normal(size=(3,)).astype(np.float32)}
    updates, state = update(jax.tree.map(jnp.asarray, g), state, params)
    params = optax.apply_updates(params, updates)
    w = w - lr * (g["w"] + lam * (1 - e) * w)
    e = _np_nm(w, 2, 4)
    np.testing.assert_allclose(state.dense["w"], w, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(state.masks["w"], e)
    np.testing.assert_allclose(params["w"], w * np.where(e, 1.0, b), rtol=1e-5, atol=1e-6)
    if decay is None:
      assert bool(jnp.all(params["w"][~e] == 0.0))
  b_ref = b0 - lr * 0  # the bias is dense: plain SGD
  del b_ref
  assert state.dense["b"] is None and state.masks["b"] is None


def test_sr_ste_state_found_by_get_masks():
  tx = optax.chain(optax.clip(1.0), osp.sr_ste(optax.sgd(0.1), 1, 2))
  masks = osp.get_masks(tx.init({"w": jnp.array([[1.0, 2.0], [3.0, 1.0]])}))
  np.testing.assert_array_equal(masks["w"], [[False, True], [True, False]])


# ------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize("build,name", [
    (lambda: osp.gradual_magnitude(begin_step=10, end_step=10), "end_step"),
    (lambda: osp.gradual_magnitude(begin_step=0, end_step=10, frequency=0), "frequency"),
    (lambda: osp.gradual_magnitude(1.0, begin_step=0, end_step=10), "initial_sparsity"),
    (lambda: osp.rigl(drop_fraction=1.5), "drop_fraction"),
    (lambda: osp.rigl(every=0), "every"),
    (lambda: osp.set_(end_step=-1), "end_step"),
    (lambda: osp.rigl(noise_std=-1.0), "noise_std"),
    (lambda: osp.one_shot_magnitude(at_step=-2), "at_step"),
    (lambda: osp.nm(5, 4), "n"),
    (lambda: osp.nm(1, 0), "m"),
    (lambda: osp.acdc(warmup_steps=10, sparse_steps=5, dense_steps=5, alternate_until=5,
                      final_sparse_from=85), "alternate_until"),
    (lambda: osp.acdc(warmup_steps=0, sparse_steps=0, dense_steps=5, alternate_until=5,
                      final_sparse_from=85), "sparse_steps"),
    (lambda: osp.sr_ste(optax.sgd(0.1), refine=-1.0), "refine"),
    (lambda: osp.sr_ste(optax.sgd(0.1), mask_decay=2.0), "mask_decay"),
])
def test_bad_arguments_raise_naming_them(build, name):
  with pytest.raises(ValueError, match=name):
    build()


def test_nm_indivisible_axis_raises_at_init():
  tx = osp.sparse(optax.sgd(0.1), osp.nm(2, 4), None)
  with pytest.raises(ValueError, match="divisible"):
    tx.init({"w": jnp.ones((6, 3))})
