"""Tests for `optax_sparse.masks.select` against a NumPy stable-argsort reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_sparse.masks import select


def _ref_top_k(s, k):
  """First k entries of a stable descending sort; NaN ranks last."""
  s = np.asarray(s, np.float32).ravel()
  nan = np.isnan(s)
  order = np.lexsort((np.arange(s.size), -np.where(nan, 0, s), nan))
  m = np.zeros(s.size, bool)
  m[order[: max(0, min(k, s.size))]] = True
  return m


def _ref_bottom_k(s, k):
  s = np.asarray(s, np.float32).ravel()
  nan = np.isnan(s)
  order = np.lexsort((np.arange(s.size), np.where(nan, 0, s), ~nan))
  m = np.zeros(s.size, bool)
  m[order[: max(0, min(k, s.size))]] = True
  return m


_top = jax.jit(select.select_top_k)
_bottom = jax.jit(select.select_bottom_k)


def _cases(seed=0):
  rng = np.random.default_rng(seed)
  for n in (1, 13, 2049):  # one compilation per length
    for kind in range(4):
      if kind == 0:
        s = rng.normal(size=n)
      elif kind == 1:
        s = rng.integers(-3, 3, n)  # many ties
      elif kind == 2:
        s = rng.normal(size=n)
        s[rng.integers(0, n, 5)] = np.nan
        s[rng.integers(0, n, 5)] = -np.inf
        s[rng.integers(0, n, 3)] = np.inf
      else:  # signed zeros share a key
        s = np.where(rng.random(n) < 0.5, 0.0, -0.0) + rng.integers(0, 2, n) * 1e-30
      for k in {0, n, int(rng.integers(0, n + 1)), int(rng.integers(0, n + 1))}:
        yield np.asarray(s, np.float32), k


@pytest.mark.parametrize("which", ["top", "bottom"])
def test_matches_stable_argsort_reference(which):
  fn, ref = (_top, _ref_top_k) if which == "top" else (_bottom, _ref_bottom_k)
  for s, k in _cases(seed=1 if which == "top" else 2):
    got = np.asarray(fn(jnp.asarray(s), k)).ravel()
    assert got.sum() == k
    np.testing.assert_array_equal(got, ref(s, k))


def test_exact_counts_edge_cases():
  s = jnp.ones((7, 5))
  for k in (0, 1, 17, 35):
    m = _top(s, k)
    assert m.shape == (7, 5) and m.dtype == jnp.bool_ and int(m.sum()) == k
    # all equal: the first k flat indices
    np.testing.assert_array_equal(np.asarray(m).ravel(), np.arange(35) < k)
  # k outside [0, n] is clamped
  assert int(_top(s, -3).sum()) == 0
  assert int(_top(s, 99).sum()) == 35
  # -inf ranks below every number, NaN below -inf
  x = jnp.array([-jnp.inf, jnp.nan, -1e30, 0.0])
  assert select.select_top_k(x, 2).tolist() == [False, False, True, True]
  assert select.select_top_k(x, 3).tolist() == [True, False, True, True]
  assert select.select_bottom_k(x, 1).tolist() == [False, True, False, False]
  assert select.select_top_k(jnp.zeros((0,)), 3).shape == (0,)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.int32])
def test_low_precision_and_integer_scores(dtype):
  rng = np.random.default_rng(3)
  s = jnp.asarray(rng.normal(size=(33, 17)) * 4, dtype)
  k = 100
  got = np.asarray(_top(s, k)).ravel()
  np.testing.assert_array_equal(got, _ref_top_k(np.asarray(s.astype(jnp.float32)), k))


def test_traced_k_does_not_recompile():
  traces = []

  @jax.jit
  def f(s, k):
    traces.append(1)
    return select.select_top_k(s, k)

  s = jnp.asarray(np.random.default_rng(0).normal(size=(64, 9)), jnp.float32)
  for k in (0, 5, 300, 576):
    assert int(f(s, jnp.int32(k)).sum()) == k
  assert len(traces) == 1


def test_count_for_density():
  assert int(select.count_for_density(10, 0.25)) == 2  # round half to even
  assert int(select.count_for_density(10, 0.35)) == 4
  assert int(select.count_for_density(10, 0.0)) == 1
  assert int(select.count_for_density(10, 1.0)) == 10
  assert int(select.count_for_density(0, 0.5)) == 0
  f = jax.jit(select.count_for_density, static_argnums=0)
  for d in (0.0, 0.1, 0.25, 0.5, 0.96, 1.0):
    assert int(f(1000, jnp.float32(d))) == int(select.count_for_density(1000, d))
  assert f(1000, jnp.float32(0.5)).dtype == jnp.int32


def test_global_top_k_exact_total_and_order():
  rng = np.random.default_rng(4)
  tree = {
      "a": jnp.asarray(rng.integers(0, 4, (30, 7)), jnp.float32),
      "b": None,
      "c": jnp.asarray(rng.integers(0, 4, (50,)), jnp.float32),
      "d": jnp.asarray(rng.normal(size=(3, 4, 5)), jnp.float32),
  }
  leaves = [tree["a"], tree["c"], tree["d"]]
  flat = np.concatenate([np.asarray(x).ravel() for x in leaves])
  f = jax.jit(select.select_top_k_global)
  for k in (0, 1, 77, 200, flat.size):
    m = f(tree, k)
    assert m["b"] is None
    got = np.concatenate([np.asarray(m[key]).ravel() for key in ("a", "c", "d")])
    assert got.sum() == k
    # ties by (leaf order, flat index) = index in the concatenation
    np.testing.assert_array_equal(got, _ref_top_k(flat, k))


def _ref_nm(s, n, m, axis):
  s = np.moveaxis(np.asarray(s, np.float32), axis, -1)
  g = s.reshape(s.shape[:-1] + (s.shape[-1] // m, m))
  out = np.zeros(g.shape, bool)
  for idx in np.ndindex(g.shape[:-1]):
    order = np.lexsort((np.arange(m), -g[idx]))
    out[idx + (order[:n],)] = True
  return np.moveaxis(out.reshape(s.shape), -1, axis)


@pytest.mark.parametrize("axis", [0, 1, -2, -1])
def test_nm_mask_exact_per_group(axis):
  rng = np.random.default_rng(5)
  s = rng.integers(0, 3, (8, 12, 4)).astype(np.float32)  # ties
  combos = ((2, 4), (0, 4), (4, 4), (1, 2)) if axis == -2 else ((2, 4),)
  for n, m in combos:
    got = np.asarray(select.nm_mask(jnp.asarray(s), n, m, axis=axis))
    np.testing.assert_array_equal(got, _ref_nm(s, n, m, axis))
    groups = np.moveaxis(got, axis, -1).reshape(-1, m)
    assert (groups.sum(-1) == n).all()


def test_nm_mask_large_groups_use_the_same_ranking():
  rng = np.random.default_rng(8)
  s = rng.integers(0, 4, (64, 3)).astype(np.float32)  # ties
  s[5, 1] = np.nan
  got = np.asarray(select.nm_mask(jnp.asarray(s), 5, 32, axis=0))
  nan_last = np.where(np.isnan(s), -np.inf, s)  # NaN ranks lowest, below the finite scores
  np.testing.assert_array_equal(got, _ref_nm(nan_last, 5, 32, 0))


def test_nm_mask_default_axis_is_fan_in():
  s = jnp.asarray(np.random.default_rng(6).normal(size=(3, 3, 8, 5)), jnp.float32)
  m = np.asarray(select.nm_mask(s, 2, 4))
  assert (m.reshape(3, 3, 2, 4, 5).sum(axis=3) == 2).all()


def test_nm_mask_errors():
  s = jnp.ones((8, 4))
  with pytest.raises(ValueError, match="n must"):
    select.nm_mask(s, 5, 4)
  with pytest.raises(ValueError, match="n must"):
    select.nm_mask(s, -1, 4)
  with pytest.raises(ValueError, match="m must"):
    select.nm_mask(s, 0, 0)
  with pytest.raises(ValueError, match="not divisible by m = 3"):
    select.nm_mask(s, 1, 3)
  with pytest.raises(ValueError, match="axis"):
    select.nm_mask(s, 1, 2, axis=2)


def test_block_mask():
  rng = np.random.default_rng(7)
  s = rng.normal(size=(6, 7)).astype(np.float32)
  m = np.asarray(select.block_mask(jnp.asarray(s), (2, 3), 4))
  # reference: mean |s| over (partial) blocks, stable descending order
  scores = np.array(
      [[np.abs(s[i:i + 2, j:j + 3]).mean() for j in range(0, 7, 3)] for i in range(0, 6, 2)]
  )
  keep = _ref_top_k(scores, 4).reshape(scores.shape)
  want = np.repeat(np.repeat(keep, 2, 0), 3, 1)[:6, :7]
  np.testing.assert_array_equal(m, want)
  m2 = select.block_mask(jnp.asarray(s), (3,), density=0.5)  # leading dims are size-1 blocks
  assert m2.shape == (6, 7)
  with pytest.raises(ValueError, match="exactly one"):
    select.block_mask(jnp.asarray(s), (2, 2))
  with pytest.raises(ValueError, match="block_shape"):
    select.block_mask(jnp.asarray(s), (0, 2), 1)
