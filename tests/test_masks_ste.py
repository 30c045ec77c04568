"""Tests of the unstructured straight-through estimators against a NumPy reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_sparse as osp


def _np_top(scores, k):
  s = np.abs(np.asarray(scores, np.float64)).ravel()
  order = sorted(range(s.size), key=lambda i: (-s[i], i))
  out = np.zeros(s.size, bool)
  out[order[:k]] = True
  return out.reshape(np.shape(scores))


def test_magnitude_ste_matches_numpy_with_a_sparsity_schedule():
  sched = optax.linear_schedule(0.0, 0.75, 4)
  tx = osp.magnitude_ste(optax.sgd(0.1), sched)
  w = np.asarray(jax.random.normal(jax.random.PRNGKey(0), (4, 6)), np.float32)
  b = np.ones(6, np.float32)
  params = {"w": jnp.asarray(w), "b": jnp.asarray(b)}
  state = tx.init(params)
  step = jax.jit(tx.update)
  mask = _np_top(w, 24)
  theta = {"w": jnp.asarray(w * mask), "b": params["b"]}
  for t in range(5):
    g = np.cos(np.asarray(theta["w"])) + 0.5
    updates, state = step({"w": jnp.asarray(g), "b": jnp.ones(6)}, state, theta)
    theta = optax.apply_updates(theta, updates)
    w = w - np.float32(0.1) * g  # the dense weights get the straight-through gradient
    b = b - np.float32(0.1)
    mask = _np_top(w, max(1, round(24 * (1 - float(sched(t + 1))))))
    np.testing.assert_array_equal(np.asarray(osp.get_masks(state)["w"]), mask)
    np.testing.assert_allclose(np.asarray(state.dense["w"]), w, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(theta["w"]), np.where(mask, w, 0.0), rtol=1e-6, atol=1e-6)
    assert (np.asarray(theta["w"])[~mask] == 0.0).all()
    np.testing.assert_allclose(np.asarray(theta["b"]), b, rtol=1e-6)
  assert mask.sum() == 6 and theta["w"].dtype == jnp.float32


def test_random_ste_redraws_exact_counts_keyed_by_step():
  tx = osp.random_ste(optax.adam(1e-2), 0.5, seed=3)
  params = {"w": jnp.ones((4, 8))}
  state = tx.init(params)
  step = jax.jit(tx.update)
  seen = []
  for _ in range(3):
    updates, state = step(jax.tree.map(jnp.ones_like, params), state, params)
    params = optax.apply_updates(params, updates)
    m = np.asarray(osp.get_masks(state)["w"])
    assert m.sum() == 16 and (np.asarray(params["w"])[~m] == 0.0).all()
    seen.append(m)
  assert not np.array_equal(seen[0], seen[1])
  again = osp.random_ste(optax.adam(1e-2), 0.5, seed=3).init({"w": jnp.ones((4, 8))})
  np.testing.assert_array_equal(np.asarray(again.masks["w"]),
                                np.asarray(tx.init({"w": jnp.ones((4, 8))}).masks["w"]))
