"""Tests for the fused HAM + mask kernel: Pallas (interpret) vs jnp twin vs a NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from pallas_jaxpr import pallas_calls

from optax_sparse import kernels

SHAPES = [(1, 1), (7, 129), (3, 3, 17, 33)]
LR, ALPHA, BETA = 0.3, 2.0, 0.05


def _numpy_reference(theta, g, u_base, mask, lr, alpha, beta):
  """HAM (HYP*) step of the HAM method page followed by the mask projection, in float64."""
  theta, g, u_base = (np.asarray(a, np.float64) for a in (theta, g, u_base))
  h = theta + u_base
  e = np.clip(-lr * (alpha * np.sign(h) * g + beta), -5.0, 5.0)
  h_new = np.where(h != 0, h * np.exp(e), h)
  if mask is not None:
    h_new = np.where(mask, h_new, 0.0)
  return h_new - theta


def _inputs(shape, dtype, seed=0):
  rng = np.random.default_rng(seed)
  theta = rng.normal(size=shape)
  theta.flat[0] = 0.0  # an exact zero that the base step keeps at zero
  u_base = 0.1 * rng.normal(size=shape)
  u_base.flat[0] = 0.0
  g = 3.0 * rng.normal(size=shape)  # large enough that the exponent clip is active somewhere
  mask = rng.random(shape) < 0.6
  return (jnp.asarray(theta, dtype), jnp.asarray(g, dtype), jnp.asarray(u_base, dtype),
          jnp.asarray(mask))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_pallas_matches_twin_and_reference(shape, dtype):
  theta, g, u_base, mask = _inputs(shape, dtype)
  kwargs = dict(learning_rate=LR, alpha=ALPHA, beta=BETA)
  pallas = kernels.hyperbolic_mask_update(theta, g, u_base, mask, backend="pallas",
                                          interpret=True, **kwargs)
  twin = kernels.hyperbolic_mask_update(theta, g, u_base, mask, backend="xla", **kwargs)
  assert pallas.shape == twin.shape == shape
  assert pallas.dtype == twin.dtype == dtype
  # Identical float32 maths: bitwise equal (also in bf16, both cast the same float32 value).
  np.testing.assert_array_equal(np.asarray(pallas, np.float32), np.asarray(twin, np.float32))
  ref = _numpy_reference(theta, g, u_base, np.asarray(mask), LR, ALPHA, BETA)
  tol = 1e-5 if dtype == jnp.float32 else 1e-2
  np.testing.assert_allclose(np.asarray(twin, np.float32), ref, rtol=tol, atol=tol)
  # Pruned entries land exactly on zero, the exact zero stays zero.
  landed = np.asarray(theta, np.float32) + np.asarray(pallas, np.float32)
  assert np.all(landed[~np.asarray(mask)] == 0)
  assert landed.flat[0] == 0


def test_clip_and_zero_entries_against_closed_form():
  theta = jnp.array([[1.0, -1.0, 0.0, 2.0]])
  g = jnp.array([[100.0, 100.0, 5.0, -1.0]])
  u = kernels.hyperbolic_mask_update(theta, g, jnp.zeros_like(theta), None, learning_rate=1.0,
                                     alpha=1.0, beta=0.0, backend="pallas", interpret=True)
  expected = np.array([[np.exp(-5.0) - 1.0, -(np.exp(5.0) - 1.0), 0.0, 2.0 * (np.e - 1.0)]])
  np.testing.assert_allclose(np.asarray(u), expected, rtol=1e-6)


def test_non_finite_entries_stay_local():
  """The kernel is elementwise: a NaN gradient entry cannot reach other entries (the per-leaf
  guard of HAM lives in the calling transformation)."""
  theta, g, u_base, mask = _inputs((7, 129), jnp.float32, seed=1)
  g = g.at[3, 100].set(jnp.nan)
  kwargs = dict(learning_rate=LR, alpha=ALPHA, beta=BETA, backend="pallas", interpret=True)
  u = np.asarray(kernels.hyperbolic_mask_update(theta, g, u_base, None, **kwargs))
  assert np.isnan(u[3, 100])
  assert np.isfinite(np.delete(u.ravel(), 3 * 129 + 100)).all()


def test_output_aliased_to_base_updates_and_traced_scalars():
  theta, g, u_base, mask = _inputs((4, 128), jnp.float32, seed=2)

  def step(theta, g, u_base, mask, lr):
    return kernels.hyperbolic_mask_update(theta, g, u_base, mask, learning_rate=lr,
                                          alpha=ALPHA, beta=BETA, backend="pallas",
                                          interpret=True)

  jaxpr = jax.make_jaxpr(step)(theta, g, u_base, mask, LR)
  calls = list(pallas_calls(jaxpr.jaxpr))
  assert len(calls) == 1
  # Operands are (scalars, theta, grads, base_updates, mask): base_updates -> output 0.
  assert tuple(calls[0].params["input_output_aliases"]) == ((3, 0),)
  stepped = jax.jit(step, donate_argnums=2)
  lowered = stepped.lower(theta, g, u_base, mask, LR).as_text()
  assert "tf.aliasing_output = 0" in lowered
  expected = kernels.hyperbolic_mask_update_xla(theta, g, u_base, mask, learning_rate=LR,
                                                alpha=ALPHA, beta=BETA)
  donated = jnp.array(u_base, copy=True)
  np.testing.assert_array_equal(stepped(theta, g, donated, mask, LR), expected)
  assert donated.is_deleted()  # the runtime took the buffer for the output


def test_non_bool_mask_is_truthiness():
  theta, g, u_base, _ = _inputs((3, 5), jnp.float32, seed=4)
  mask = jnp.asarray(np.random.default_rng(4).choice([0.0, 0.5, 2.0], size=(3, 5)), jnp.float32)
  kwargs = dict(learning_rate=LR, alpha=ALPHA, beta=BETA)
  pallas = kernels.hyperbolic_mask_update(theta, g, u_base, mask, backend="pallas",
                                          interpret=True, **kwargs)
  twin = kernels.hyperbolic_mask_update(theta, g, u_base, mask != 0, backend="xla", **kwargs)
  np.testing.assert_array_equal(pallas, twin)
