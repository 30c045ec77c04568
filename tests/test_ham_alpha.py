"""Tests of HAM's alpha diagnostics against a NumPy reference of the step's exponent."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import optax_sparse as osp


def _tree(seed=0):
  rng = np.random.default_rng(seed)
  params = {"w": rng.normal(size=(8, 5)).astype(np.float32) * 0.1,
            "b": np.zeros(5, np.float32)}
  grads = {"w": rng.normal(size=(8, 5)).astype(np.float32) * 0.05,
           "b": np.ones(5, np.float32)}
  params["w"][0, 0] = 0.0
  return params, grads


def test_diagnostics_match_numpy_reference():
  params, grads = _tree()
  lr, alpha, beta = 0.3, 40.0, 1e-2
  d = osp.ham_diagnostics(params, grads, lr, alpha, beta)
  assert d["b"] is None  # 1-D leaves take no hyperbolic step
  w, g = params["w"], grads["w"]
  e = np.abs(lr * (alpha * np.sign(w) * g + beta))
  np.testing.assert_allclose(d["w"].multiplier_median, np.median(1 + alpha * np.abs(w)), rtol=1e-6)
  np.testing.assert_allclose(d["w"].multiplier_max, np.max(1 + alpha * np.abs(w)), rtol=1e-6)
  np.testing.assert_allclose(d["w"].exponent_median, np.median(e), rtol=1e-5)
  np.testing.assert_allclose(d["w"].exponent_max, np.max(e), rtol=1e-5)
  assert float(d["w"].clipped_fraction) == 0.0
  big = osp.ham_diagnostics(params, grads, 100.0, alpha, beta)
  np.testing.assert_allclose(big["w"].clipped_fraction, np.mean(e * 100 / lr >= 5.0), rtol=1e-6)


def test_diagnostics_schedule_is_evaluated_at_step():
  params, grads = _tree()
  sched = lambda c: 0.1 * (c + 1)  # noqa: E731
  d3 = osp.ham_diagnostics(params, grads, sched, 10.0, 0.0, step=3)
  d0 = osp.ham_diagnostics(params, grads, 0.4, 10.0, 0.0)
  np.testing.assert_allclose(d3["w"].exponent_max, d0["w"].exponent_max, rtol=1e-6)


def test_suggest_alpha_hits_the_target_quantile():
  params, grads = _tree(1)
  lr = 0.05
  alpha = osp.suggest_ham_alpha(params, grads, lr, target_exponent=0.02, quantile=0.9)
  ref = 0.02 / (lr * np.quantile(np.abs(grads["w"]).ravel(), 0.9))
  np.testing.assert_allclose(alpha, ref, rtol=1e-5)
  # The biases' large gradient is ignored: only eligible leaves count.
  assert alpha > 0.02 / (lr * 1.0)
  # Half the learning rate, twice the alpha: the exponent scale is eta * alpha * |g|.
  np.testing.assert_allclose(
      osp.suggest_ham_alpha(params, grads, lr / 2, target_exponent=0.02, quantile=0.9),
      2 * alpha, rtol=1e-5)


@pytest.mark.parametrize("kwargs, match", [
    ({"target_exponent": 0.0}, "target_exponent"),
    ({"quantile": 1.5}, "quantile"),
    ({"learning_rate": -1.0}, "learning_rate"),
    ({"learning_rate": 0.0}, "learning_rate"),
])
def test_suggest_alpha_rejects_bad_input(kwargs, match):
  params, grads = _tree()
  args = {"learning_rate": 0.1, **kwargs}
  with pytest.raises(ValueError, match=match):
    osp.suggest_ham_alpha(params, grads, **args)


def test_suggest_alpha_rejects_zero_gradient():
  params = {"w": jnp.ones((2, 2))}
  with pytest.raises(ValueError, match="quantile"):
    osp.suggest_ham_alpha(params, {"w": jnp.zeros((2, 2))}, 0.1)
