"""Tests of `optax_sparse.geometry.decay`: scheduled decay, paper-form AdamW, switch-off."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sparse as osp


def _numpy_adamw_paper(params, grads_seq, alpha, etas, lam, b1=0.9, b2=0.999, eps=1e-8):
  """Algorithm 2 of Loshchilov & Hutter in NumPy (float64)."""
  theta = params.astype(np.float64)
  m = np.zeros_like(theta)
  v = np.zeros_like(theta)
  for t, (g, eta) in enumerate(zip(grads_seq, etas, strict=True), start=1):
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1**t), v / (1 - b2**t)
    theta = theta - eta * (alpha * m_hat / (np.sqrt(v_hat) + eps) + lam * theta)
  return theta


def test_adamw_paper_matches_algorithm_2():
  rng = np.random.default_rng(4)
  params = rng.normal(size=(3, 3)).astype(np.float32)
  grads_seq = [rng.normal(size=(3, 3)).astype(np.float32) for _ in range(4)]
  schedule = optax.linear_schedule(1.0, 0.25, 3)
  etas = [float(schedule(t)) for t in range(4)]
  alpha, lam = 0.01, 0.05
  tx = osp.adamw_paper(alpha, weight_decay=lam, multiplier=schedule)
  state = tx.init(params)
  p = jnp.asarray(params)
  for g in grads_seq:
    u, state = tx.update(jnp.asarray(g), state, p)
    p = optax.apply_updates(p, u)
  np.testing.assert_allclose(p, _numpy_adamw_paper(params, grads_seq, alpha, etas, lam),
                             rtol=1e-5, atol=1e-6)
  # Equal to optax.adamw(α·η_t, weight_decay=λ/α).
  ref = optax.adamw(lambda c: alpha * schedule(c), weight_decay=lam / alpha)
  s_ref = ref.init(params)
  q = jnp.asarray(params)
  for g in grads_seq:
    u, s_ref = ref.update(jnp.asarray(g), s_ref, q)
    q = optax.apply_updates(q, u)
  np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6)


def test_decoupled_weight_decay_follows_schedule():
  params = {"w": np.full((2, 2), 2.0, np.float32), "b": np.full((2,), -1.0, np.float32)}
  zeros = jax.tree.map(np.zeros_like, params)
  wd = optax.linear_schedule(0.4, 0.0, 4)
  tx = optax.chain(osp.decoupled_weight_decay(wd), optax.scale_by_learning_rate(0.5))
  state = tx.init(params)
  for t in range(5):
    u, state = tx.update(zeros, state, params)
    lam = max(0.4 * (1 - t / 4), 0.0)
    for k in params:
      np.testing.assert_allclose(u[k], -0.5 * lam * params[k], rtol=1e-6, atol=1e-8)
  tx = osp.decoupled_weight_decay(0.3, where={"w": True, "b": False})
  u, _ = tx.update(zeros, tx.init(params), params)
  np.testing.assert_allclose(u["w"], 0.3 * params["w"])
  np.testing.assert_array_equal(u["b"], np.zeros(2, np.float32))
  with pytest.raises(ValueError, match="params"):
    tx.update(zeros, tx.init(params))


@pytest.mark.parametrize("ramp", ["linear", "cosine"])
def test_decay_switch_off_reference(ramp):
  lam, t_off, n = 0.2, 10, 8
  sched = osp.decay_switch_off(lam, t_off, ramp_steps=n, ramp=ramp)
  for t in range(0, 25):
    s = np.clip((t - t_off) / n, 0.0, 1.0)
    r = 1.0 - s if ramp == "linear" else 0.5 * (1.0 + np.cos(np.pi * s))
    np.testing.assert_allclose(sched(t), lam * r, rtol=1e-6, atol=1e-8)
  hard = osp.decay_switch_off(lam, t_off)
  values = np.array([float(hard(t)) for t in range(20)])
  np.testing.assert_allclose(values, np.where(np.arange(20) < t_off, lam, 0.0), rtol=1e-7)
  # Works on a traced count inside jit.
  assert float(jax.jit(hard)(jnp.int32(3))) == pytest.approx(lam)


@pytest.mark.parametrize("call,name,value", [
    (lambda: osp.decoupled_weight_decay(-0.1), "weight_decay", "-0.1"),
    (lambda: osp.adamw_paper(0.0), "learning_rate", "0.0"),
    (lambda: osp.adamw_paper(1e-3, weight_decay=-1.0), "weight_decay", "-1.0"),
    (lambda: osp.adamw_paper(1e-3, b2=1.0), "b2", "1.0"),
    (lambda: osp.decay_switch_off(0.1, off_step=-5), "off_step", "-5"),
    (lambda: osp.decay_switch_off(0.1, 5, ramp_steps=-1), "ramp_steps", "-1"),
    (lambda: osp.decay_switch_off(0.1, 5, ramp="step"), "ramp", "step"),
])
def test_bad_arguments(call, name, value):
  with pytest.raises(ValueError, match=name) as info:
    call()
  assert value in str(info.value)
