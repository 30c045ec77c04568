"""Tests for the NanoAdam compressed-state kernel: Pallas (interpret) vs twin vs NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pallas_jaxpr import pallas_calls

from optax_sparse import kernels

CASES = [((1, 1), 1), ((7, 129), 300), ((3, 3, 17, 33), 77)]
HP = dict(learning_rate=0.01, b1=0.8, b2=0.99, eps=1e-6, bias_correction1=1 - 0.8**3,
          bias_correction2=1 - 0.99**3)


def _numpy_reference(g, idx, mu, nu, learning_rate, b1, b2, eps, bias_correction1,
                     bias_correction2):
  """Algorithm 1 steps 3-4 of NanoAdam (its method page), float64; -1 slots are unused."""
  flat = np.asarray(g, np.float64).ravel()
  valid = idx >= 0
  g_sel = np.where(valid, flat[np.where(valid, idx, 0)], 0.0)
  mu = np.where(valid, b1 * mu + (1 - b1) * g_sel, 0.0)
  nu = np.where(valid, b2 * nu + (1 - b2) * g_sel**2, 0.0)
  step = -learning_rate * (mu / bias_correction1) / (np.sqrt(nu / bias_correction2) + eps)
  dense = np.zeros(flat.size)
  dense[idx[valid]] = step[valid]
  return dense.reshape(np.shape(g)), mu, nu


def _inputs(shape, k, dtype, seed=0):
  rng = np.random.default_rng(seed)
  g = rng.normal(size=shape)
  idx = rng.permutation(int(np.prod(shape)))[:k].astype(np.int32)
  if k > 2:
    idx[-2:] = -1  # unused slots of a compressed state allocated at the maximum density
  mu = 0.1 * rng.normal(size=k)
  nu = 0.1 * rng.random(size=k)
  return (jnp.asarray(g, dtype), jnp.asarray(idx), jnp.asarray(mu, jnp.float32),
          jnp.asarray(nu, jnp.float32))


def _close(a, b, rtol):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * max(1.0, np.abs(b).max()))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape,k", CASES)
def test_pallas_matches_twin_and_reference(shape, k, dtype):
  g, idx, mu, nu = _inputs(shape, k, dtype)
  u_p, mu_p, nu_p = kernels.compressed_adam_update(g, idx, mu, nu, backend="pallas",
                                                   interpret=True, **HP)
  u_x, mu_x, nu_x = kernels.compressed_adam_update(g, idx, mu, nu, backend="xla", **HP)
  assert u_p.shape == u_x.shape == shape and u_p.dtype == u_x.dtype == dtype
  assert mu_p.shape == nu_p.shape == (k,) and mu_p.dtype == jnp.float32
  # Same float32 maths; XLA may contract a multiply-add differently inside and outside the
  # kernel, so allow a few ulp.
  for a, b in ((u_p, u_x), (mu_p, mu_x), (nu_p, nu_x)):
    _close(a, b, 1e-6 if dtype == jnp.float32 else 8e-3)
  u_r, mu_r, nu_r = _numpy_reference(np.asarray(g, np.float32), np.asarray(idx),
                                     np.asarray(mu, np.float64), np.asarray(nu, np.float64), **HP)
  _close(u_x, u_r, 1e-5 if dtype == jnp.float32 else 8e-3)
  _close(mu_x, mu_r, 1e-5)
  _close(nu_x, nu_r, 1e-5)
  # Zeros off the index set; unused slots hold no state.
  off = np.ones(np.prod(shape), bool)
  off[np.asarray(idx)[np.asarray(idx) >= 0]] = False
  assert np.all(np.asarray(u_p, np.float32).ravel()[off] == 0)
  unused = np.asarray(idx) < 0
  assert np.all(np.asarray(mu_p)[unused] == 0) and np.all(np.asarray(nu_p)[unused] == 0)


def test_first_step_is_scaled_sign():
  """From zero moments without bias correction the step is -(1-b1)/sqrt(1-b2) * lr * sign(g)
  (up to eps), the derivation on the NanoAdam method page."""
  g = jnp.array([[0.5, -3.0, 2.0]])
  idx = jnp.array([0, 1, 2], jnp.int32)
  u, _, _ = kernels.compressed_adam_update(g, idx, jnp.zeros(3), jnp.zeros(3), learning_rate=1.0,
                                           eps=0.0, backend="pallas", interpret=True)
  np.testing.assert_allclose(np.asarray(u), -0.1 / np.sqrt(0.001) * np.sign(g), rtol=1e-5)


def test_moments_aliased_in_place():
  g, idx, mu, nu = _inputs((4, 64), 128, jnp.float32, seed=3)
  fn = lambda g, idx, mu, nu: kernels.compressed_adam_update(  # noqa: E731
      g, idx, mu, nu, backend="pallas", interpret=True, **HP)
  jaxpr = jax.make_jaxpr(fn)(g, idx, mu, nu)
  (call,) = pallas_calls(jaxpr.jaxpr)
  # Operands are (scalars, g_sel, idx, mu, nu); outputs (step, mu, nu).
  assert tuple(call.params["input_output_aliases"]) == ((3, 1), (4, 2))


def test_out_of_range_index_is_dropped_not_wrapped():
  g = jnp.arange(1.0, 7.0).reshape(2, 3)
  idx = jnp.array([5, 6, -1], jnp.int32)  # 6 is past the end, -1 unused
  u, mu, _ = kernels.compressed_adam_update(g, idx, jnp.zeros(3), jnp.zeros(3),
                                            learning_rate=1.0, backend="xla")
  assert np.count_nonzero(np.asarray(u)) == 1 and float(u[1, 2]) < 0
  np.testing.assert_array_equal(np.asarray(mu)[1:], 0.0)
