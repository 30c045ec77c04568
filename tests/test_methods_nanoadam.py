"""NanoAdam against a NumPy reference of Algorithm 1, plus its invariants."""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sparse as osp

nanoadam_module = importlib.import_module("optax_sparse.methods.nanoadam")


def _reference(params, grads_seq, lr, density_fn, every, b1=0.9, b2=0.999, eps=1e-8,
               bias_correction=False):
  """NumPy NanoAdam on one matrix: stable bottom-k, moments carried by flat index."""
  p = np.asarray(params, np.float64).copy()
  n = p.size
  moments: dict[int, tuple[float, float]] = {}
  k_prev = None
  updates = []
  for t, g in enumerate(grads_seq):
    k = int(np.clip(round(density_fn(t) * n), 1, n))
    if t % every == 0 or k != k_prev:
      sel = np.argsort(np.abs(p.reshape(-1)).astype(np.float32), kind="stable")[:k]
      moments = {int(i): moments.get(int(i), (0.0, 0.0)) for i in sel}
      k_prev = k
    u = np.zeros(n)
    gf = np.asarray(g, np.float64).reshape(-1)
    for i, (mu, nu) in list(moments.items()):
      mu = b1 * mu + (1 - b1) * gf[i]
      nu = b2 * nu + (1 - b2) * gf[i] ** 2
      moments[i] = (mu, nu)
      if bias_correction:
        mu, nu = mu / (1 - b1 ** (t + 1)), nu / (1 - b2 ** (t + 1))
      u[i] = -lr * mu / (np.sqrt(nu) + eps)
    updates.append(u.reshape(p.shape))
    p = p + u.reshape(p.shape)
  return p, updates


def _density(t):
  return 0.5 if t < 7 else 0.25


@pytest.mark.parametrize("bias_correction", [False, True])
def test_matches_numpy_reference(bias_correction):
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(6, 5)).astype(np.float32)
  grads = [rng.normal(size=(6, 5)).astype(np.float32) for _ in range(14)]
  lr = 0.05
  sched = optax.piecewise_constant_schedule(0.5, {7: 0.5})
  tx = osp.nanoadam(lr, sched, refresh_every=4, bias_correction=bias_correction)
  params = {"w": jnp.asarray(w0)}
  state = tx.init(params)
  step = jax.jit(tx.update)
  ref_p, ref_u = _reference(w0, grads, lr, _density, 4, bias_correction=bias_correction)
  for g, u_ref in zip(grads, ref_u, strict=True):
    u, state = step({"w": jnp.asarray(g)}, state, params)
    np.testing.assert_allclose(u["w"], u_ref, rtol=2e-5, atol=1e-5)
    params = optax.apply_updates(params, u)
  np.testing.assert_allclose(params["w"], ref_p, rtol=1e-5, atol=2e-5)
  # State shapes are those of the maximum density; the valid count follows the schedule.
  mom = state.moments["w"]
  assert mom.indices.shape == (15,) and mom.indices.dtype == jnp.int32
  assert int(mom.valid) == 8
  np.testing.assert_array_equal(mom.indices[8:], 30 + np.arange(8, 15))


def test_radix_selection_path_matches_reference(monkeypatch):
  # Large leaves select with the radix threshold: force that path on a small leaf with ties.
  monkeypatch.setattr(nanoadam_module, "TOP_K_MAX_SIZE", 0)
  rng = np.random.default_rng(5)
  w0 = np.round(rng.normal(size=(6, 5)), 1).astype(np.float32)  # rounded: many |w| ties
  grads = [rng.normal(size=(6, 5)).astype(np.float32) for _ in range(9)]
  sched = optax.piecewise_constant_schedule(0.5, {7: 0.5})
  tx = osp.nanoadam(0.05, sched, refresh_every=4)
  params = {"w": jnp.asarray(w0)}
  state = tx.init(params)
  step = jax.jit(tx.update)
  _, ref_u = _reference(w0, grads, 0.05, _density, 4)
  for g, u_ref in zip(grads, ref_u, strict=True):
    u, state = step({"w": jnp.asarray(g)}, state, params)
    np.testing.assert_allclose(u["w"], u_ref, rtol=2e-5, atol=1e-5)
    params = optax.apply_updates(params, u)


def test_unselected_entries_bit_identical_and_dense_leaves_are_adam():
  rng = np.random.default_rng(1)
  params = {"w": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(8,)), jnp.float32)}
  tx = osp.nanoadam(0.1, 0.25, refresh_every=3)
  adam = optax.adam(0.1)
  state, a_state = tx.init(params), adam.init(params["b"])
  w0 = np.asarray(params["w"])
  chosen = np.zeros(64, bool)
  for _ in range(2):
    # Selection is refreshed only at step 0 (and 3): check this window's selection.
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    u, state = jax.jit(tx.update)(grads, state, params)
    ua, a_state = adam.update(grads["b"], a_state)
    np.testing.assert_allclose(u["b"], ua, rtol=1e-6, atol=1e-8)
    chosen[np.asarray(state.moments["w"].indices)] = True
    params = optax.apply_updates(params, u)
  smallest = np.argsort(np.abs(w0).reshape(-1), kind="stable")[:16]
  assert set(np.flatnonzero(chosen)) == set(smallest)
  w1 = np.asarray(params["w"]).reshape(-1)
  np.testing.assert_array_equal(w1[~chosen], w0.reshape(-1)[~chosen])  # bit-identical
  assert np.all(w1[chosen] != w0.reshape(-1)[chosen])


def test_state_bytes_at_most_0p3_of_adam():
  params = {"w1": jnp.zeros((256, 128)), "w2": jnp.zeros((128, 64)), "b": jnp.zeros((128,))}
  params = jax.tree.map(lambda x: x + jnp.linspace(-1, 1, x.size).reshape(x.shape), params)

  def nbytes(state):
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))

  ours = nbytes(osp.nanoadam(1e-3, 0.1).init(params))
  theirs = nbytes(optax.adam(1e-3).init(params))
  assert ours <= 0.3 * theirs, (ours, theirs)


def test_max_density_sizes_state_and_refresh_keeps_moments():
  rng = np.random.default_rng(2)
  params = {"w": jnp.asarray(rng.normal(size=(10, 10)), jnp.float32)}
  tx = osp.nanoadam(1e-3, 0.1, refresh_every=2, max_density=0.3)
  state = tx.init(params)
  assert state.moments["w"].indices.shape == (30,)
  g = {"w": jnp.ones((10, 10))}
  update = jax.jit(tx.update)
  _, state = update(g, state, params)
  idx0 = np.asarray(state.moments["w"].indices[:10])
  _, state = update(g, state, params)  # no refresh: moments advance
  _, state = update(g, state, params)  # refresh on the same params: same set, moments kept
  mom = state.moments["w"]
  np.testing.assert_array_equal(mom.indices[:10], idx0)
  np.testing.assert_allclose(mom.mu[:10], 1 - 0.9**3, rtol=1e-6)
  np.testing.assert_array_equal(mom.mu[10:], 0.0)


def test_non_finite_gradient_skips_leaf():
  params = {"w": jnp.arange(1.0, 10.0).reshape(3, 3)}
  tx = osp.nanoadam(0.1, 1.0)
  state = tx.init(params)
  u, new = jax.jit(tx.update)({"w": jnp.full((3, 3), jnp.nan)}, state, params)
  np.testing.assert_array_equal(u["w"], 0.0)
  np.testing.assert_array_equal(new.moments["w"].mu, 0.0)


@pytest.mark.parametrize("kwargs,name", [
    ({"density": 0.0}, "density"),
    ({"density": 1.5}, "density"),
    ({"refresh_every": 0}, "refresh_every"),
    ({"b1": 1.0}, "b1"),
    ({"b2": -0.1}, "b2"),
    ({"eps": -1.0}, "eps"),
    ({"max_density": 2.0}, "max_density"),
    ({"dense": [1]}, "dense"),
])
def test_bad_arguments(kwargs, name):
  args = {"learning_rate": 0.1, "density": 0.1, **kwargs}
  with pytest.raises(ValueError, match=name):
    osp.nanoadam(**args)



def _tiles(x, grid):
  """NumPy twin of the chunk layout: tile-major, row-major inside a tile (or flat chunks)."""
  if len(grid) != x.ndim:
    return x.reshape(*grid, -1)
  (a, b), (ga, gb) = x.shape, grid
  return x.reshape(ga, a // ga, gb, b // gb).transpose(0, 2, 1, 3).reshape(ga, gb, -1)


def _untiles(y, grid, shape):
  if len(grid) != len(shape):
    return y.reshape(shape)
  (a, b), (ga, gb) = shape, grid
  return y.reshape(ga, gb, a // ga, b // gb).transpose(0, 2, 1, 3).reshape(shape)


@pytest.mark.parametrize("chunks,grid", [((2, 5), (2, 5)), (3, (3, 1)), (5, (5,))])
def test_chunks_match_numpy_reference_per_chunk(chunks, grid):
  # Each chunk is a NanoAdam matrix of its own: its bottom-k (ties by lower index inside the
  # chunk), its moments; the density schedule changes k at step 7.
  rng = np.random.default_rng(7)
  w0 = np.round(rng.normal(size=(6, 10)), 1).astype(np.float32)  # ties in |w|
  grads = [rng.normal(size=(6, 10)).astype(np.float32) for _ in range(10)]
  sched = optax.piecewise_constant_schedule(0.5, {7: 0.5})
  tx = osp.nanoadam(0.05, sched, refresh_every=4, chunks=chunks)
  params = {"w": jnp.asarray(w0)}
  state = tx.init(params)
  assert state.moments["w"].indices.shape[:-1] == grid
  tiles_w = _tiles(w0, grid).reshape(-1, 60 // int(np.prod(grid)))
  tiles_g = [_tiles(g, grid).reshape(tiles_w.shape) for g in grads]
  ref = [_reference(tw, [tg[i] for tg in tiles_g], 0.05, _density, 4)[1]
         for i, tw in enumerate(tiles_w)]
  step = jax.jit(tx.update)
  for t, g in enumerate(grads):
    u, state = step({"w": jnp.asarray(g)}, state, params)
    u_ref = _untiles(np.stack([r[t] for r in ref]).reshape(*grid, -1), grid, (6, 10))
    np.testing.assert_allclose(u["w"], u_ref, rtol=2e-5, atol=1e-5)
    params = optax.apply_updates(params, u)


def test_chunks_sort_path_equals_top_k_path(monkeypatch):
  # On a mesh the per-chunk selection is a stable sort (partitioned along the chunks), on one
  # device a top_k: the same indices, hence the same state and updates, bit for bit.
  rng = np.random.default_rng(8)
  params = {"w": jnp.asarray(np.round(rng.normal(size=(8, 12)), 1), jnp.float32)}
  params["w"] = params["w"].at[0, :6].set(0.0)
  grads = [{"w": jnp.asarray(rng.normal(size=(8, 12)), jnp.float32)} for _ in range(5)]

  def run():
    tx = osp.nanoadam(0.1, 0.3, refresh_every=2, chunks=(2, 3))
    state, p, out = tx.init(params), params, []
    for g in grads:
      u, state = jax.jit(tx.update)(g, state, p)
      p = optax.apply_updates(p, u)
      out.append(np.asarray(u["w"]))
    return out, state

  u_top, s_top = run()
  monkeypatch.setattr(nanoadam_module, "_one_device", lambda: False)
  u_sort, s_sort = run()
  for a, b in zip(u_top, u_sort, strict=True):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(s_top.moments["w"].indices, s_sort.moments["w"].indices)


def test_whole_grid_chunk_equals_no_chunks():
  rng = np.random.default_rng(9)
  params = {"w": jnp.asarray(rng.normal(size=(8, 12)), jnp.float32)}
  g = {"w": jnp.asarray(rng.normal(size=(8, 12)), jnp.float32)}
  outs = []
  for chunks in (None, (1, 1), 1):
    tx = osp.nanoadam(0.1, 0.25, chunks=chunks)
    outs.append(np.asarray(tx.update(g, tx.init(params), params)[0]["w"]))
  np.testing.assert_array_equal(outs[0], outs[1])
  np.testing.assert_array_equal(outs[0], outs[2])


@pytest.mark.parametrize("chunks,match", [
    ((4, 5), r"chunks for the leaf \['w'\] of shape \(6, 10\).*\(4, 5\)"),
    (7, r"chunks for the leaf \['w'\].*7 chunks"),
    ((2,), r"one count per axis"),
    (lambda path, x: "rows", r"got 'rows'"),
])
def test_bad_chunks_name_the_leaf_and_value(chunks, match):
  tx = osp.nanoadam(0.1, 0.25, chunks=chunks)
  with pytest.raises(ValueError, match=match):
    tx.init({"w": jnp.ones((6, 10))})


def test_bad_chunks_type_at_construction():
  with pytest.raises(ValueError, match="chunks must be None, an int"):
    osp.nanoadam(0.1, 0.25, chunks=2.5)
