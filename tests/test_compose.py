"""Tests of `optax_sparse.compose`: operator composition against a NumPy reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sparse as osp

P = np.array([[1.0, -2.0, 0.5], [3.0, 0.0, -1.5]], np.float32)
G = np.array([[0.3, 1.0, -2.0], [0.5, 4.0, 1.0]], np.float32)


def _reference(p, g, lr1, lr2, wd):
  """Step 1: sgd(lr1). Step 2: weight decay wd on the iterate, then sgd(lr2). Same raw g."""
  u1 = -lr1 * g
  u2 = -lr2 * (g + wd * (p + u1))
  return u1 + u2


def _two_steps(lr1=0.1, lr2=0.3, wd=0.5):
  return osp.compose(optax.sgd(lr1), optax.chain(optax.add_decayed_weights(wd), optax.sgd(lr2)))


def test_matches_numpy_reference_and_second_step_sees_iterate():
  tx = _two_steps()
  state = tx.init(P)
  p = P
  step = jax.jit(tx.update)
  for _ in range(2):
    updates, state = step(G, state, p)
    np.testing.assert_allclose(updates, _reference(p, G, 0.1, 0.3, 0.5), rtol=1e-6, atol=1e-7)
    p = optax.apply_updates(p, updates)
  assert isinstance(state, osp.ComposeState) and len(state.inner_states) == 2
  # The order matters: with the decay first, it sees the raw parameters.
  other = osp.compose(optax.chain(optax.add_decayed_weights(0.5), optax.sgd(0.3)),
                      optax.sgd(0.1))
  u, _ = other.update(G, other.init(P), P)
  np.testing.assert_allclose(u, -0.3 * (G + 0.5 * P) - 0.1 * G, rtol=1e-6)
  assert not np.allclose(u, _reference(P, G, 0.1, 0.3, 0.5))


def _shift_step():
  """A step that emits the extra argument ``shift`` and counts its calls."""

  def init_fn(params):
    del params
    return jnp.zeros([], jnp.int32)

  def update_fn(updates, state, params=None, *, shift, **extra_args):
    del params, extra_args
    return jax.tree.map(lambda g: jnp.full_like(g, shift), updates), state + 1

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def test_extra_args_forwarded_to_every_step():
  tx = osp.compose(_shift_step(), optax.sgd(1.0), _shift_step())
  updates, state = tx.update(G, tx.init(P), P, shift=2.0)
  np.testing.assert_allclose(updates, 4.0 - G)
  assert int(state.inner_states[0]) == 1 and int(state.inner_states[2]) == 1


def test_inside_chain_after_clipping():
  tx = optax.chain(optax.clip_by_global_norm(1.0), _two_steps())
  updates, _ = jax.jit(tx.update)(G, tx.init(P), P)
  clipped = G / np.linalg.norm(G)
  np.testing.assert_allclose(updates, _reference(P, clipped, 0.1, 0.3, 0.5), rtol=1e-5,
                             atol=1e-7)


def test_multi_steps_and_inject_hyperparams():
  tx = optax.MultiSteps(_two_steps(), every_k_schedule=2)
  state = tx.init(P)
  u, state = tx.update(G, state, P)
  np.testing.assert_array_equal(u, np.zeros_like(P))
  u, state = tx.update(3.0 * G, state, P)
  np.testing.assert_allclose(u, _reference(P, 2.0 * G, 0.1, 0.3, 0.5), rtol=1e-6, atol=1e-6)
  injected = optax.inject_hyperparams(_two_steps)(lr1=0.1, lr2=0.3, wd=0.5)
  u, state = injected.update(G, injected.init(P), P)
  np.testing.assert_allclose(u, _reference(P, G, 0.1, 0.3, 0.5), rtol=1e-6, atol=1e-7)
  assert float(state.hyperparams["lr2"]) == pytest.approx(0.3)


def test_none_leaves_and_bfloat16():
  params = {"w": jnp.asarray(P, jnp.bfloat16), "skip": None}
  grads = {"w": jnp.asarray(G, jnp.bfloat16), "skip": None}
  tx = osp.compose(optax.sgd(0.1), optax.sgd(0.2))
  updates, _ = tx.update(grads, tx.init(params), params)
  assert updates["skip"] is None and updates["w"].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(updates["w"], np.float32), -0.3 * G, rtol=2e-2)


def test_errors():
  with pytest.raises(ValueError, match="at least one step"):
    osp.compose()
  with pytest.raises(ValueError, match=r"steps\[1\].*'sgd'"):
    osp.compose(optax.sgd(0.1), "sgd")
  tx = _two_steps()
  with pytest.raises(ValueError, match="params"):
    tx.update(G, tx.init(P))
  # A single step needs no parameters when the step itself does not.
  single = osp.compose(optax.sgd(0.1))
  u, _ = single.update(G, single.init(P))
  np.testing.assert_allclose(u, -0.1 * G, rtol=1e-6)
