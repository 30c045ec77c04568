"""Tests of the balanced distribution, Adam-Fisher scores and iterative N:M against NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sparse as osp


def test_balanced_gives_every_leaf_the_same_nonzeros_and_rebalances_full_leaves():
  params = {"a": jnp.zeros((10, 10)), "b": jnp.zeros((10, 40)), "c": jnp.zeros((20, 30)),
            "bias": jnp.zeros(5)}
  d = osp.balanced().densities(params, 0.8)
  n = {k: v.size for k, v in params.items() if v.ndim >= 2}
  budget = 0.2 * sum(n.values())
  for k in n:  # 220 nonzeros each: no leaf is full
    np.testing.assert_allclose(float(d[k]) * n[k], budget / 3, rtol=1e-5)
  assert d["bias"] is None
  # At 50% the small leaf would need density > 1: it is made dense, the rest share the remainder.
  d = osp.balanced().densities(params, 0.5)
  assert float(d["a"]) == 1.0
  rest = (0.5 * sum(n.values()) - 100) / 2
  np.testing.assert_allclose([float(d["b"]) * 400, float(d["c"]) * 600], [rest, rest], rtol=1e-5)


def test_adam_fisher_scores_match_theta_squared_nu_and_find_nu_anywhere():
  params = {"w": jax.random.normal(jax.random.PRNGKey(0), (3, 4)), "b": jnp.ones(4)}
  tx = optax.chain(optax.clip(1.0), osp.sparse(optax.adamw(1e-3), osp.static_random(), 0.5))
  state = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.sin(3.0 * p), params)
  _, state = tx.update(grads, state, params)
  got = osp.adam_fisher_scores(params, state)
  for k in params:
    g = np.clip(np.asarray(grads[k]), -1.0, 1.0)  # clip(1.0) clips each entry
    np.testing.assert_allclose(np.asarray(got[k]), np.asarray(params[k]) ** 2 * 0.001 * g ** 2,
                               rtol=1e-5)
  with pytest.raises(ValueError, match="opt_state"):
    osp.adam_fisher_scores(params, optax.sgd(0.1).init(params))


def test_iterative_nm_grows_to_the_nm_pattern_containing_it_at_every_event():
  rule = osp.iterative_nm(2, 4, begin_step=0, end_step=4, frequency=2)
  tx = osp.sparse(optax.sgd(0.05), rule, sparsity=None)
  params = {"w": jax.random.normal(jax.random.PRNGKey(0), (8, 3))}
  state = tx.init(params)
  assert np.asarray(osp.get_masks(state)["w"]).all()
  step = jax.jit(tx.update)
  prev = np.ones((8, 3), bool)
  for t in range(5):
    theta = np.asarray(params["w"])
    updates, state = step(jax.tree.map(jnp.sin, params), state, params)
    params = optax.apply_updates(params, updates)
    m = np.asarray(osp.get_masks(state)["w"])
    if t in (0, 2, 4):
      s_t = 0.5 * (1 - (1 - t / 4) ** 3)
      assert m.sum() == max(1, round(24 * (1 - s_t)))
      # Every group of 4 along axis -2 keeps its 2 largest active |θ|.
      a = np.where(prev, np.abs(theta), -1.0).reshape(2, 4, 3)
      top2 = np.argsort(-a, axis=1, kind="stable")[:, :2]
      for g in range(2):
        for j in range(3):
          assert m.reshape(2, 4, 3)[g, top2[g, :, j], j].all()
    assert not (m & ~prev).any()  # pruned stay pruned
    prev = m
  assert (m.reshape(2, 4, 3).sum(1) == 2).all()
  assert (np.asarray(params["w"])[~m] == 0.0).all()
