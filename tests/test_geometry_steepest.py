"""Tests of `optax_sparse.geometry.steepest` against the elementwise NumPy formula."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sparse as osp


def _tree():
  rng = np.random.default_rng(3)
  g = rng.normal(size=(3, 4)).astype(np.float32)
  g[0, 0] = 0.0
  return {"w": g, "b": rng.normal(size=(4,)).astype(np.float32)}


@pytest.mark.parametrize("q", [1.0, 1.25, 1.5, 2.0])
def test_steepest_descent_matches_reference(q):
  params = _tree()
  grads = jax.tree.map(lambda x: np.sin(2.0 * x).astype(np.float32), params)
  lr, wd = 0.05, 0.1
  tx = osp.steepest_descent(lr, q, weight_decay=wd)
  u, _ = tx.update(grads, tx.init(params), params)
  for k in params:
    g = grads[k].astype(np.float64)
    expected = -lr * (np.sign(g) * np.abs(g) ** (q - 1.0) + wd * params[k])
    np.testing.assert_allclose(u[k], expected, rtol=1e-5, atol=1e-8)


def test_limits_are_sign_sgd_and_sgd():
  params = _tree()
  grads = jax.tree.map(lambda x: 2.0 * x, params)
  for q, ref in ((1.0, optax.sign_sgd(0.1)), (2.0, optax.sgd(0.1))):
    tx = osp.steepest_descent(0.1, q)
    u, _ = tx.update(grads, tx.init(params), params)
    r, _ = ref.update(grads, ref.init(params), params)
    for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(r), strict=True):
      np.testing.assert_array_equal(a, b)
  # q = 1 at g = 0 is sign(0) = 0, never 0**0.
  u, _ = osp.scale_by_steepest(1.0).update(jnp.zeros(3), optax.EmptyState())
  np.testing.assert_array_equal(u, np.zeros(3, np.float32))


@pytest.mark.parametrize("normalization", ["per_leaf", "global"])
def test_normalization(normalization):
  grads = _tree()
  q = 1.5
  u, _ = osp.scale_by_steepest(q, normalization=normalization).update(grads, optax.EmptyState())
  total = sum(np.sum(np.abs(g.astype(np.float64)) ** q) for g in grads.values())
  for k, g in grads.items():
    g = g.astype(np.float64)
    norm_q = (np.sum(np.abs(g) ** q) if normalization == "per_leaf" else total) ** (1.0 / q)
    expected = np.sign(g) * np.abs(g) ** (q - 1.0) * norm_q ** (2.0 - q)
    np.testing.assert_allclose(u[k], expected, rtol=1e-5)


def test_scheduled_decay_and_no_params_without_decay():
  params = {"w": np.ones((2, 2), np.float32)}
  grads = {"w": np.zeros((2, 2), np.float32)}
  tx = osp.steepest_descent(0.1, 1.5, weight_decay=osp.decay_switch_off(0.5, off_step=1))
  state = tx.init(params)
  u0, state = tx.update(grads, state, params)
  u1, state = tx.update(grads, state, params)
  np.testing.assert_allclose(u0["w"], -0.05, rtol=1e-6)
  np.testing.assert_array_equal(u1["w"], np.zeros((2, 2), np.float32))
  tx = osp.steepest_descent(0.1, 1.5)
  u, _ = tx.update(grads, tx.init(params))
  np.testing.assert_array_equal(u["w"], np.zeros((2, 2), np.float32))


@pytest.mark.parametrize("call,name,value", [
    (lambda: osp.steepest_descent(0.1, 0.5), "q", "0.5"),
    (lambda: osp.steepest_descent(0.1, 2.5), "q", "2.5"),
    (lambda: osp.scale_by_steepest(3.0), "q", "3.0"),
    (lambda: osp.steepest_descent(-1.0, 1.5), "learning_rate", "-1.0"),
    (lambda: osp.steepest_descent(0.1, 1.5, weight_decay=-0.1), "weight_decay", "-0.1"),
    (lambda: osp.scale_by_steepest(1.5, normalization="l2"), "normalization", "l2"),
])
def test_bad_arguments(call, name, value):
  with pytest.raises(ValueError, match=name) as info:
    call()
  assert value in str(info.value)
