"""Tests for optax_sparse.kernels.dispatch: backend resolution and the row layout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_sparse import kernels
from optax_sparse.kernels import dispatch


def test_resolve_backend_auto_follows_platform():
  expected = "xla" if jax.default_backend() == "cpu" else "pallas"
  assert kernels.resolve_backend("auto") == expected
  assert kernels.resolve_backend("xla") == "xla"
  assert kernels.resolve_backend("pallas") == "pallas"


@pytest.mark.parametrize("bad", ["gpu", "Pallas", "", None, 1])
def test_resolve_backend_rejects_unknown(bad):
  with pytest.raises(ValueError, match="backend.*" + (repr(bad) if bad else "")):
    kernels.resolve_backend(bad)


def test_public_functions_reject_unknown_backend():
  x = jnp.ones((2, 3))
  with pytest.raises(ValueError, match="backend"):
    kernels.hyperbolic_mask_update(x, x, x, learning_rate=0.1, alpha=1.0, beta=0.0,
                                   backend="triton")
  with pytest.raises(ValueError, match="backend"):
    kernels.compressed_adam_update(x, jnp.zeros(1, jnp.int32), jnp.zeros(1), jnp.zeros(1),
                                   learning_rate=0.1, backend="cuda")
  with pytest.raises(ValueError, match="backend"):
    kernels.key_histogram(x, 24, 8, backend="numpy")
  with pytest.raises(ValueError, match="backend"):
    kernels.radix_select_threshold(x, 2, backend="tpu")


def test_resolve_interpret():
  assert dispatch.resolve_interpret(True) is True
  assert dispatch.resolve_interpret(False) is False
  assert dispatch.resolve_interpret(None) is (jax.default_backend() == "cpu")


@pytest.mark.parametrize("shape", [(1,), (128,), (7, 129), (3, 3, 17, 33)])
def test_rows_round_trip(shape):
  x = jnp.arange(np.prod(shape), dtype=jnp.float32).reshape(shape)
  rows = dispatch.to_rows(x, fill=-7)
  assert rows.shape[1] == dispatch.LANES
  assert rows.shape[0] == -(-x.size // dispatch.LANES)
  np.testing.assert_array_equal(rows.reshape(-1)[x.size:], -7)
  np.testing.assert_array_equal(dispatch.from_rows(rows, shape), x)


@pytest.mark.parametrize("rows,block", [(1, 32), (32, 32), (33, 64), (200, 256), (5000, 256)])
def test_row_block_is_tile_multiple(rows, block):
  assert dispatch.row_block(rows) == block
  assert block % dispatch.ROW_UNIT == 0


@pytest.mark.parametrize("target,marker", [("cuda", "triton"), ("tpu", "tpu_custom_call")])
def test_kernels_lower_for_accelerators(target, marker, monkeypatch):
  """Without the hardware, cross-lower each kernel: the Pallas front end (block shapes, scalar
  reads, primitives) must produce a Triton (GPU) or Mosaic (TPU) custom call."""
  monkeypatch.setattr(dispatch, "platform", lambda: "gpu" if target == "cuda" else target)
  x = jnp.ones((7, 129), jnp.bfloat16)
  idx = jnp.arange(10, dtype=jnp.int32)
  calls = [
      (lambda a, m: kernels.hyperbolic_mask_update(
          a, a, a, m, learning_rate=0.1, alpha=1.0, beta=0.0, backend="pallas"), (x, x > 0)),
      (lambda g, i: kernels.compressed_adam_update(
          g, i, jnp.zeros(10), jnp.zeros(10), learning_rate=0.1, backend="pallas"), (x, idx)),
      (lambda s: kernels.key_histogram(s, 16, 8, 7, 0xFF000000, backend="pallas"), (x,)),
  ]
  jax.clear_caches()  # traces are cached per function, not per platform
  try:
    for fn, args in calls:
      text = jax.jit(fn).trace(*args).lower(lowering_platforms=(target,)).as_text()
      assert marker in text
  finally:
    jax.clear_caches()
