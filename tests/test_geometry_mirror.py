"""Tests of `optax_sparse.geometry.mirror`: mirror descent against NumPy and its invariants."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sparse as osp


def _tree():
  rng = np.random.default_rng(2)
  return {"w": rng.normal(size=(3, 4)).astype(np.float32),
          "b": rng.normal(size=(4,)).astype(np.float32)}


def test_quadratic_is_sgd_exactly():
  params = _tree()
  grads = jax.tree.map(lambda x: np.tanh(x) * 0.7, params)
  tx = osp.mirror_descent(0.03, osp.potentials.quadratic())
  sgd = optax.sgd(0.03)
  u, _ = tx.update(grads, tx.init(params), params)
  u_sgd, _ = sgd.update(grads, sgd.init(params), params)
  for a, b in zip(jax.tree.leaves(u), jax.tree.leaves(u_sgd), strict=True):
    np.testing.assert_array_equal(a, b)


def test_hypentropy_step_matches_reference_and_other_leaves():
  params = _tree()
  grads = jax.tree.map(lambda x: np.cos(x).astype(np.float32), params)
  a, lr = 0.2, 0.05
  tx = osp.mirror_descent(lr, osp.potentials.hyperbolic_entropy(a))
  u, state = tx.update(grads, tx.init(params), params)
  w = params["w"].astype(np.float64)
  expected = a * np.sinh(np.arcsinh(w / a) - np.clip(lr * grads["w"], -5, 5))
  np.testing.assert_allclose(params["w"] + u["w"], expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(u["b"], -lr * grads["b"], rtol=1e-6)  # SGD on 1-D leaves
  assert int(state.count) == 1
  tx = osp.mirror_descent(lr, osp.potentials.hyperbolic_entropy(a), other_leaves="keep")
  u, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(u["b"], np.zeros(4, np.float32))


def test_learning_rate_schedule_uses_count():
  params = {"w": np.ones((2, 2), np.float32)}
  grads = {"w": np.ones((2, 2), np.float32)}
  tx = osp.mirror_descent(lambda c: 0.1 * c, osp.potentials.ham_log(2.0))
  state = tx.init(params)
  u0, state = tx.update(grads, state, params)
  u1, state = tx.update(grads, state, params)
  np.testing.assert_array_equal(u0["w"], np.zeros((2, 2), np.float32))
  w = np.log1p(2.0) - 2.0 * 0.1
  np.testing.assert_allclose(1.0 + u1["w"], np.expm1(w) / 2.0, rtol=1e-6)


def test_entropy_converges_on_positive_orthant_and_keeps_non_positive():
  target = jnp.array([[0.5, 2.0], [1.5, 0.1]])
  tx = osp.mirror_descent(0.1, osp.potentials.entropy())
  params = jnp.ones((2, 2))

  def body(p, _):
    g = 2.0 * (p - target)
    u, _ = tx.update(g, tx.init(p), p)
    return p + u, None

  params, _ = jax.lax.scan(body, params, length=400)
  np.testing.assert_allclose(params, target, rtol=1e-3)
  p = jnp.array([[0.0, -1.0]])
  u, _ = tx.update(jnp.ones((1, 2)), tx.init(p), p)
  np.testing.assert_array_equal(u, np.zeros((1, 2), np.float32))


def test_non_finite_input_keeps_leaf():
  params = _tree()
  grads = jax.tree.map(np.ones_like, params)
  grads["w"][0, 0] = np.nan
  tx = osp.mirror_descent(0.1, osp.potentials.hyperbolic_entropy(0.1))
  u, state = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(u["w"], np.zeros_like(params["w"]))
  assert int(state.skipped_leaves) == 1


def test_after_adam_direction_in_chain():
  params = _tree()
  grads = jax.tree.map(lambda x: 3.0 * x, params)
  tx = optax.chain(optax.scale_by_adam(), osp.mirror_descent(0.01, osp.potentials.ham_log(10.0)))
  u, _ = tx.update(grads, tx.init(params), params)
  adam = optax.scale_by_adam()
  d, _ = adam.update(grads, adam.init(params), params)
  pot = osp.potentials.ham_log(10.0)
  expected = pot.step(jnp.asarray(params["w"]), d["w"], 0.01, 0)
  np.testing.assert_allclose(params["w"] + u["w"], expected, rtol=1e-6)


@pytest.mark.parametrize("call,name,value", [
    (lambda: osp.mirror_descent(-0.1, osp.potentials.quadratic()), "learning_rate", "-0.1"),
    (lambda: osp.mirror_descent(0.1, "hypentropy"), "potential", "hypentropy"),
    (lambda: osp.mirror_descent(0.1, osp.potentials.quadratic(), other_leaves="drop"),
     "other_leaves", "drop"),
])
def test_bad_arguments(call, name, value):
  with pytest.raises(ValueError, match=name) as info:
    call()
  assert value in str(info.value)
