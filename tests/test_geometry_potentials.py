"""Tests of `optax_sparse.geometry.potentials`: maps, inverses and steps against NumPy formulas."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import optax_sparse as osp

P = osp.potentials

SIGNED = {
    "quadratic": P.quadratic(),
    "hypentropy": P.hyperbolic_entropy(0.1),
    "hypentropy_normalized": P.hyperbolic_entropy(5e-3, normalized=True),
    "ham_log": P.ham_log(200.0),
    "power": P.power(0.5),
}

_floats = st.floats(-1e6, 1e6, width=32, allow_subnormal=False)
_values = hnp.arrays(np.float32, 13, elements=_floats).map(
    lambda x: np.concatenate([x, np.array([0.0, 1e6, -1e6], np.float32)]))


@pytest.mark.parametrize("name", list(SIGNED))
@settings(max_examples=30, deadline=None)
@given(theta=_values)
def test_inverse_inverts_mirror_map(name, theta):
  pot = SIGNED[name]
  back = np.asarray(pot.inverse_map(pot.mirror_map(jnp.asarray(theta), 0), 0))
  assert np.all(np.isfinite(back))
  np.testing.assert_allclose(back, theta, rtol=2e-5, atol=1e-6)


@settings(max_examples=30, deadline=None)
@given(theta=hnp.arrays(np.float32, 16,
                        elements=st.floats(float(np.float32(1e-6)), 1e6, width=32,
                                                 allow_subnormal=False)))
def test_entropy_inverse_on_positive_orthant(theta):
  pot = P.entropy()
  back = np.asarray(pot.inverse_map(pot.mirror_map(jnp.asarray(theta), 0), 0))
  np.testing.assert_allclose(back, theta, rtol=2e-5)


def _reference_step(name, theta, x, lr):
  """(∇φ)⁻¹(∇φ(θ) − clip(δ)) in float64, from the mirror-descent page's table."""
  t, x = theta.astype(np.float64), x.astype(np.float64)
  if name == "quadratic":
    return t - lr * x
  if name == "hypentropy":
    a = 0.1
    return a * np.sinh(np.arcsinh(t / a) - np.clip(lr * x, -5, 5))
  if name == "hypentropy_normalized":
    a = 5e-3
    return a * np.sinh(np.arcsinh(t / a) - np.clip(lr * x / a, -5, 5))
  if name == "ham_log":
    al = 200.0
    w = np.sign(t) * np.log1p(al * np.abs(t)) - np.clip(al * lr * x, -5, 5)
    return np.sign(w) * np.expm1(np.abs(w)) / al
  if name == "power":
    z = np.sign(t) * np.abs(t) ** 0.5 / 0.5 - lr * x
    return np.sign(z) * (0.5 * np.abs(z)) ** 2.0
  raise AssertionError(name)


@pytest.mark.parametrize("name", list(SIGNED))
def test_step_matches_reference(name):
  rng = np.random.default_rng(1)
  theta = np.concatenate([rng.normal(size=50), [0.0, 0.0, 3.0, -3.0]]).astype(np.float32)
  x = np.concatenate([rng.normal(size=50), [1.0, -1.0, 1e4, -1e4]]).astype(np.float32)
  lr = 0.01
  got = np.asarray(SIGNED[name].step(jnp.asarray(theta), jnp.asarray(x), lr, 0))
  np.testing.assert_allclose(got, _reference_step(name, theta, x, lr), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", list(SIGNED))
def test_step_is_finite_at_zero_and_large_values(name):
  theta = jnp.array([0.0, 0.0, 1e30, -1e30, 3e38, 1e-30], jnp.float32)
  x = jnp.array([1.0, 0.0, 1.0, -1e30, 1.0, 1e30], jnp.float32)
  got = np.asarray(SIGNED[name].step(theta, x, 1e-3, 0))
  if name == "power":  # the dual is not clamped: a huge input may overflow to ±inf, never NaN
    assert not np.any(np.isnan(got))
  else:
    assert np.all(np.isfinite(got)), got


def test_hypentropy_scale_schedule_and_limit():
  pot = P.hyperbolic_entropy(lambda count: jnp.where(count >= 1, 0.5, 0.1))
  theta, x = jnp.array([0.3, -0.2]), jnp.array([1.0, 2.0])
  for count, a in ((0, 0.1), (1, 0.5)):
    expected = a * np.sinh(np.arcsinh(np.asarray(theta, np.float64) / a) - 0.1 * np.asarray(x))
    np.testing.assert_allclose(pot.step(theta, x, 0.1, count), expected, rtol=1e-5)
  # a -> 0: HAM's multiplicative step θ·exp(−δ sign θ) (mirror-descent method page).
  tiny = P.hyperbolic_entropy(1e-8)
  np.testing.assert_allclose(tiny.step(theta, x, 0.1, 0),
                             np.asarray(theta) * np.exp(-0.1 * np.asarray(x) * np.sign(theta)),
                             rtol=1e-5)


def test_entropy_keeps_non_positive_entries():
  pot = P.entropy()
  theta = jnp.array([2.0, 0.0, -1.0])
  got = np.asarray(pot.step(theta, jnp.array([1.0, 1.0, 1.0]), 0.1, 0))
  np.testing.assert_allclose(got, [2.0 * np.exp(-0.1), 0.0, -1.0], rtol=1e-6)


@pytest.mark.parametrize("call,name,value", [
    (lambda: P.hyperbolic_entropy(0.0), "scale", "0.0"),
    (lambda: P.hyperbolic_entropy(-1.0), "scale", "-1.0"),
    (lambda: P.ham_log(-2.0), "alpha", "-2.0"),
    (lambda: P.power(1.0), "metric_exponent", "1.0"),
    (lambda: P.power(-0.5), "metric_exponent", "-0.5"),
])
def test_bad_parameters(call, name, value):
  with pytest.raises(ValueError, match=name) as info:
    call()
  assert value in str(info.value)
