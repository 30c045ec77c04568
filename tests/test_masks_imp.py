"""Tests of IMP with weight / learning-rate rewinding inside `sparse()` (the rule's restart hook).

A full run of the lottery-ticket loop against a NumPy reference of each round: the masks (top-k of
|θ| among the active entries at s_r = 1 − (1 − s)^{r/R}), the landing θ = M ⊙ θ_k, a fresh inner
state, and the learning rate replayed from the rewind step.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sparse as osp


def _np_top(scores, k, allowed):
  s = np.where(allowed, np.abs(np.asarray(scores, np.float64)), -np.inf).ravel()
  order = sorted(range(s.size), key=lambda i: (-s[i], i))
  out = np.zeros(s.size, bool)
  out[order[:k]] = True
  return out.reshape(np.shape(scores))


def _np_tau(t, T, k):
  return t if t <= T else k + (t - T - 1) % (T - k + 1)


def test_imp_step_matches_numpy():
  for T, k in ((4, 0), (4, 1), (5, 3)):
    got = [int(osp.imp_step(t, T, k)) for t in range(30)]
    assert got == [_np_tau(t, T, k) for t in range(30)]


def test_imp_weight_rewinding_lands_on_masked_rewind_point_each_round():
  T, k, R, s = 4, 1, 2, 0.75
  lr = optax.linear_schedule(0.1, 0.02, T)
  tx = osp.sparse(optax.sgd(osp.imp_schedule(lr, train_steps=T, rewind_step=k), momentum=0.9),
                  osp.imp(train_steps=T, rounds=R, rewind_step=k), sparsity=s)
  key = jax.random.PRNGKey(0)
  params = {"w": jax.random.normal(key, (4, 6)), "b": jnp.linspace(-1.0, 1.0, 6)}
  c = {"w": 0.3 * jax.random.normal(jax.random.PRNGKey(1), (4, 6)), "b": jnp.zeros(6)}
  state = tx.init(params)
  step = jax.jit(tx.update)
  history = [params]
  masks_np = np.ones((4, 6), bool)
  seen = []
  for t in range(T + R * (T - k + 1)):
    theta = history[-1]
    grads = jax.tree.map(lambda p, q: p - q, theta, c)
    updates, state = step(grads, state, theta)
    new = optax.apply_updates(theta, updates)
    history.append(new)
    if t >= T and (t - T) % (T - k + 1) == 0:  # a pruning round
      r = (t - T) // (T - k + 1) + 1
      seen.append(r)
      n_keep = max(1, round(24 * (1 - s) ** (r / R)))
      masks_np = _np_top(theta["w"], n_keep, masks_np)
      np.testing.assert_array_equal(np.asarray(osp.get_masks(state)["w"]), masks_np)
      rewind = history[k]
      want_w = np.asarray(theta["w"]) + (np.where(masks_np, rewind["w"], 0.0).astype(np.float32)
                                         - np.asarray(theta["w"]))
      np.testing.assert_array_equal(np.asarray(new["w"]), want_w)
      np.testing.assert_allclose(np.asarray(new["w"]), np.where(masks_np, rewind["w"], 0.0),
                                 rtol=1e-6, atol=1e-7)
      assert (np.asarray(new["w"])[~masks_np] == 0.0).all()
      np.testing.assert_allclose(np.asarray(new["b"]), np.asarray(rewind["b"]), rtol=1e-6)
      assert not np.any(np.asarray(optax.tree.get(state, "trace")["w"]))
    elif t > T:
      # A fresh momentum after the round and the learning rate of the rewound step.
      tau = _np_tau(t, T, k)
      if _np_tau(t - 1, T, k) == T:  # the first step after a round: trace = g
        g = np.asarray(grads["w"])
        want = np.where(masks_np, np.asarray(theta["w"]) - np.float32(lr(tau)) * g, 0.0)
        np.testing.assert_allclose(np.asarray(new["w"]), want, rtol=1e-5, atol=1e-7)
        seen.append(-tau)
  assert seen == [1, -k, 2, -k]
  assert np.asarray(osp.get_masks(state)["w"]).sum() == 6
  assert new["w"].dtype == jnp.float32


def test_imp_lr_rewinding_keeps_trained_weights_and_state_is_empty():
  T, R = 3, 1
  tx = osp.sparse(optax.adam(osp.imp_schedule(0.05, train_steps=T)),
                  osp.imp(train_steps=T, rounds=R, rewind="lr"), sparsity=0.5)
  params = {"w": jnp.arange(1.0, 9.0).reshape(2, 4)}
  state = tx.init(params)
  assert isinstance(state.rule_state, optax.EmptyState)
  step = jax.jit(tx.update)
  for _ in range(T):
    updates, state = step(jax.tree.map(jnp.ones_like, params), state, params)
    params = optax.apply_updates(params, updates)
  theta = np.asarray(params["w"])
  updates, state = step(jax.tree.map(jnp.ones_like, params), state, params)
  new = np.asarray(optax.apply_updates(params, updates)["w"])
  keep = _np_top(theta, 4, np.ones_like(theta, bool))
  np.testing.assert_array_equal(new, np.where(keep, theta, 0.0))
  assert not np.any(np.asarray(optax.tree.get(state, "mu")["w"]))


@pytest.mark.parametrize("kwargs,name", [
    ({"train_steps": 0, "rounds": 1}, "train_steps"),
    ({"train_steps": 4, "rounds": 0}, "rounds"),
    ({"train_steps": 4, "rounds": 1, "rewind_step": 4}, "rewind_step"),
    ({"train_steps": 4, "rounds": 1, "rewind": "both"}, "rewind"),
])
def test_imp_bad_arguments_raise_naming_them(kwargs, name):
  with pytest.raises(ValueError, match=name):
    osp.imp(**kwargs)
