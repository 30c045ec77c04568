"""Tests for the radix selection core: keys, histograms (Pallas vs twin vs NumPy), threshold."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_sparse import kernels

SHAPES = [(1, 1), (7, 129), (3, 3, 17, 33)]


def _numpy_keys(x):
  bits = np.asarray(x, np.float32).ravel().view(np.uint32)
  return np.where(bits >> 31 == 1, ~bits, bits | np.uint32(0x80000000)).astype(np.uint32)


def _numpy_histogram(x, shift, bits, prefix, prefix_mask):
  keys = _numpy_keys(x)
  match = (keys & np.uint32(prefix_mask)) == np.uint32(prefix)
  digits = (keys[match] >> np.uint32(shift)) & np.uint32((1 << bits) - 1)
  return np.bincount(digits.astype(np.int64), minlength=1 << bits)


def _scores(shape, dtype, seed=0):
  x = np.random.default_rng(seed).normal(size=shape)
  x.flat[-1] = x.flat[0]  # a tie
  if x.size > 2:
    x.flat[1] = 0.0
  return jnp.asarray(x, dtype)


def test_keys_preserve_order_and_round_trip():
  x = np.array([-np.inf, -3.5, -1e-30, -0.0, 0.0, 1e-30, 2.0, np.inf], np.float32)
  keys = np.asarray(kernels.float_to_key(jnp.asarray(x)))
  assert keys.dtype == np.uint32 and np.all(np.diff(keys.astype(np.int64)) > 0)
  np.testing.assert_array_equal(keys, _numpy_keys(x))
  back = np.asarray(kernels.key_to_float(jnp.asarray(keys)))
  np.testing.assert_array_equal(back.view(np.uint32), x.view(np.uint32))


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_histogram_pallas_matches_twin_and_numpy(shape, dtype):
  x = _scores(shape, dtype)
  first = int(_numpy_keys(x)[0])
  # A second radix pass: prefix = the top byte of the first entry's key (the first pass, with no
  # prefix, runs in test_radix_threshold_pallas_jitted_traced_k).
  for shift, prefix, prefix_mask in ((16, first & 0xFF000000, 0xFF000000),):
    ref = _numpy_histogram(x, shift, 8, prefix, prefix_mask)
    twin = kernels.key_histogram(x, shift, 8, prefix, prefix_mask, backend="xla")
    pallas = kernels.key_histogram(x, shift, 8, prefix, prefix_mask, backend="pallas",
                                   interpret=True)
    assert twin.shape == pallas.shape == (256,) and pallas.dtype == jnp.int32
    np.testing.assert_array_equal(twin, ref)
    # Padding and NaN-filled out-of-bounds reads of the partial block are never counted.
    np.testing.assert_array_equal(pallas, ref)
  assert int(pallas[(first >> 16) & 0xFF]) >= min(2, x.size)  # the tie shares the digit


def test_histogram_validates_digit():
  x = jnp.ones(4)
  with pytest.raises(ValueError, match="bits"):
    kernels.key_histogram(x, 0, 17, backend="xla")
  with pytest.raises(ValueError, match="shift"):
    kernels.key_histogram(x, 28, 8, backend="xla")
  with pytest.raises(ValueError, match="bits"):
    kernels.radix_select_threshold(x, 1, bits=3, backend="xla")


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("shape", SHAPES)
def test_radix_threshold_matches_sorted_kth(shape, dtype):
  x = _scores(shape, dtype, seed=1)
  desc = np.sort(np.asarray(x, np.float32).ravel())[::-1]
  for k in sorted({1, 2, x.size // 3 + 1, x.size - 1, x.size} & set(range(1, x.size + 1))):
    t = kernels.radix_select_threshold(x, k, backend="xla")
    assert float(t.value) == desc[k - 1]
    assert int(t.key) == int(_numpy_keys(desc[k - 1 : k])[0])
    assert int(t.num_greater) == int(np.sum(desc > desc[k - 1])) < k


def test_radix_threshold_pallas_jitted_traced_k():
  x = _scores((3, 3, 17, 33), jnp.float32, seed=2).at[0, 0, 0, :5].set(7.0)  # 5-way tie on top
  desc = np.sort(np.asarray(x).ravel())[::-1]
  select = jax.jit(lambda x, k: kernels.radix_select_threshold(x, k, bits=8, backend="pallas",
                                                               interpret=True))
  for k in (3, 5, 6, 400):
    t = select(x, jnp.int32(k))
    assert float(t.value) == desc[k - 1]
    assert int(t.num_greater) == int(np.sum(desc > desc[k - 1]))
  # k outside [1, size] is clipped.
  assert float(select(x, jnp.int32(0)).value) == desc[0]
  assert float(select(x, jnp.int32(10**6)).value) == desc[-1]


def test_radix_threshold_other_digit_widths():
  x = _scores((7, 129), jnp.float32, seed=3)
  desc = np.sort(np.asarray(x).ravel())[::-1]
  for bits in (4, 16):
    assert float(kernels.radix_select_threshold(x, 100, bits=bits, backend="xla").value) == \
        desc[99]


def test_radix_threshold_with_pruned_minus_inf_scores():
  """Entries forced to -inf (already pruned) sort last; asking for more than the finite ones
  returns -inf, and ties at +0.0 / -0.0 are told apart by the key order."""
  x = jnp.array([-jnp.inf, 1.0, -jnp.inf, 0.0, -0.0, 2.0, -jnp.inf])
  values = [float(kernels.radix_select_threshold(x, k, backend="xla").value) for k in range(1, 8)]
  assert values[:3] == [2.0, 1.0, 0.0] and np.signbit(values[3]) and values[3] == 0.0
  assert values[4:] == [-np.inf] * 3
  t = kernels.radix_select_threshold(x, 6, backend="xla")
  assert int(t.num_greater) == 4
