"""Tests of `optax_sparse.pruning.sparsegpt`: a NumPy reference of the paper's algorithm, the
reconstruction error against magnitude and Wanda on the same layer, exact counts, the driver.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_sparse import pruning

FAN_IN, FAN_OUT = 32, 16


def _np_sparsegpt(w, h, sparsity=None, n=None, m=None, block_size=128, damp=0.01):
  """Reference: the official ``fasterprune`` loop, float64, in its (out, in) layout.

  Differences kept in line with the library (documented in the module): ``n`` counts kept
  entries, and the block selection prunes exactly ``numel - max(1, round(numel (1 - s)))``.
  """
  W = np.asarray(w, np.float64).T.copy()  # (rows = out, columns = in)
  H = np.asarray(h, np.float64).copy()
  rows, columns = W.shape
  dead = np.diag(H) == 0
  H[dead, dead] = 1
  W[:, dead] = 0
  H[np.diag_indices(columns)] += damp * np.mean(np.diag(H))
  Hinv = np.linalg.cholesky(np.linalg.inv(H)).T  # upper: Hinv^-1... H^-1 = U^T U
  pruned = np.zeros(W.shape, bool)
  for i1 in range(0, columns, block_size):
    i2 = min(i1 + block_size, columns)
    count = i2 - i1
    W1 = W[:, i1:i2].copy()
    Q1, Err1 = np.zeros_like(W1), np.zeros_like(W1)
    Hinv1 = Hinv[i1:i2, i1:i2]
    d = np.diag(Hinv1)
    if n is None:
      tmp = (W1 ** 2 / d[None, :] ** 2).T.ravel()  # our flat (in, out) order for equal scores
      k = max(1, round(tmp.size * (1 - sparsity)))
      order = np.argsort(-tmp, kind="stable")
      keep = np.zeros(tmp.size, bool)
      keep[order[:k]] = True
      mask1 = ~keep.reshape(count, rows).T
    else:
      mask1 = np.zeros_like(W1, dtype=bool)
    for i in range(count):
      w_col = W1[:, i]
      if n is not None and i % m == 0:
        tmp = W1[:, i:i + m] ** 2 / d[i:i + m][None, :] ** 2
        for r in range(rows):
          order = sorted(range(m), key=lambda j, r=r: (tmp[r, j], -j))  # lowest first
          mask1[r, i + np.array(order[:m - n], int)] = True
      q = w_col.copy()
      q[mask1[:, i]] = 0
      Q1[:, i] = q
      err1 = (w_col - q) / d[i]
      W1[:, i:] -= np.outer(err1, Hinv1[i, i:])
      Err1[:, i] = err1
    W[:, i1:i2] = Q1
    pruned[:, i1:i2] = mask1
    W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
  return W.T, ~pruned.T


def _layer(seed=0):
  """A layer whose inputs have correlated features of very different scales (as in LLMs)."""
  rng = np.random.default_rng(seed)
  mix = rng.standard_normal((FAN_IN, FAN_IN)) * 0.3 + np.eye(FAN_IN)
  scale = np.exp(1.5 * rng.standard_normal(FAN_IN))
  x = (rng.standard_normal((256, FAN_IN)) @ mix) * scale
  w = rng.standard_normal((FAN_IN, FAN_OUT))
  return jnp.asarray(w, jnp.float32), jnp.asarray(x, jnp.float32)


def _gram(x):
  x64 = np.asarray(x, np.float64)
  return jnp.asarray(x64.T @ x64, jnp.float32)


def _error(x, w, w_hat):
  x = np.asarray(x, np.float64)
  dense = x @ np.asarray(w, np.float64)
  return float(np.sum((dense - x @ np.asarray(w_hat, np.float64)) ** 2) / np.sum(dense ** 2))


@pytest.mark.parametrize("kwargs", [{"sparsity": 0.5, "block_size": 8},
                                    {"n": 2, "m": 4, "block_size": 8}])
def test_matches_numpy_reference_of_the_paper(kwargs):
  w, x = _layer()
  h = _gram(x)
  out = pruning.sparsegpt(w, h, **kwargs)
  ref_w, ref_mask = _np_sparsegpt(w, h, **kwargs)
  np.testing.assert_array_equal(np.asarray(out.mask), ref_mask)
  np.testing.assert_allclose(np.asarray(out.weights), ref_w, rtol=2e-3, atol=2e-4)
  assert np.all(np.asarray(out.weights)[~ref_mask] == 0.0)
  if "n" in kwargs:
    assert np.all(np.asarray(out.mask).reshape(8, 4, FAN_OUT).sum(axis=1) == 2)
  else:  # exactly half of every block of 8 input rows
    assert np.all(np.asarray(out.mask).reshape(4, 8 * FAN_OUT).sum(axis=1) == 4 * FAN_OUT)


def test_reconstruction_error_below_magnitude_and_wanda():
  w, x = _layer(1)
  h = _gram(x)
  norms = jnp.sqrt(jnp.diagonal(h))
  for pattern in ({"sparsity": 0.5}, {"n": 2, "m": 4}):
    gpt = pruning.sparsegpt(w, h, **pattern).weights
    wanda = jnp.where(pruning.wanda_masks({"w": w}, {"w": norms}, **pattern)["w"], w, 0.0)
    magnitude = jnp.where(
        pruning.wanda_masks({"w": w}, {"w": jnp.ones(FAN_IN)}, **pattern)["w"], w, 0.0)
    errors = {name: _error(x, w, v) for name, v in
              (("sparsegpt", gpt), ("wanda", wanda), ("magnitude", magnitude))}
    assert errors["sparsegpt"] < errors["wanda"] < errors["magnitude"], (pattern, errors)


def test_jit_traced_sparsity_dtype_and_dead_inputs():
  w, x = _layer(2)
  x = x.at[:, 3].set(0.0)  # an input that is never active
  h = _gram(x)
  fn = jax.jit(lambda w, h, s: pruning.sparsegpt(w, h, s, block_size=16))
  out = fn(w.astype(jnp.bfloat16), h, 0.75)
  assert out.weights.dtype == jnp.bfloat16
  assert int(out.mask.sum()) == 2 * max(1, round(16 * FAN_OUT * 0.25))
  assert np.all(np.asarray(out.weights[3], np.float32) == 0.0)
  ref_w, ref_mask = _np_sparsegpt(np.asarray(w.astype(jnp.bfloat16), np.float32), h, 0.75,
                                  block_size=16)
  np.testing.assert_array_equal(np.asarray(out.mask), ref_mask)
  assert fn._cache_size() == 1
  fn(w.astype(jnp.bfloat16), h, 0.5)
  assert fn._cache_size() == 1  # a new sparsity does not recompile


def test_multi_axis_kernel_and_bad_input():
  w, x = _layer(3)
  h = _gram(x)
  out = pruning.sparsegpt(w.reshape(4, 8, FAN_OUT), h, n=2, m=4)
  flat = pruning.sparsegpt(w, h, n=2, m=4)
  np.testing.assert_array_equal(np.asarray(out.mask).reshape(FAN_IN, FAN_OUT), flat.mask)
  with pytest.raises(ValueError, match="h must be a square"):
    pruning.sparsegpt(w, h[:3], 0.5)
  with pytest.raises(ValueError, match="no leading input dimensions of size 32"):
    pruning.sparsegpt(w.T, h, 0.5)
  with pytest.raises(ValueError, match="block_size"):
    pruning.sparsegpt(w, h, 0.5, block_size=0)
  with pytest.raises(ValueError, match="damp"):
    pruning.sparsegpt(w, h, 0.5, damp=0.0)
  with pytest.raises(ValueError, match="divisible by m = 4"):
    pruning.sparsegpt(w, h, n=2, m=4, block_size=6)
  with pytest.raises(ValueError, match="sparsity must be in"):
    pruning.sparsegpt(w, h, 1.5)


def test_layerwise_driver_on_nnx_and_linen():
  import flax.linen as nn
  from flax import nnx

  rng = np.random.default_rng(4)
  batches = [jnp.asarray(rng.standard_normal((16, 8)), jnp.float32) for _ in range(2)]
  model = nnx.Sequential(nnx.Linear(8, 16, rngs=nnx.Rngs(0)), nnx.relu,
                         nnx.Linear(16, 4, rngs=nnx.Rngs(1)))
  dense_out = [np.asarray(model(b)) for b in batches]
  errors = {}
  for method in ("magnitude", "sparsegpt"):
    copy = nnx.clone(model)
    params, masks = pruning.prune_layerwise(copy, batches, n=2, m=4, method=method)
    for i, (fan_in, fan_out) in ((0, (8, 16)), (2, (16, 4))):
      mask = np.asarray(masks["layers"][i]["kernel"])
      assert np.all(mask.reshape(fan_in // 4, 4, fan_out).sum(axis=1) == 2)
      np.testing.assert_array_equal(np.asarray(copy.layers[i].kernel[...]) != 0, mask)
    errors[method] = sum(float(np.sum((np.asarray(copy(b)) - d) ** 2))
                         for b, d in zip(batches, dense_out, strict=True))
  assert errors["sparsegpt"] < errors["magnitude"]

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      return nn.Dense(4)(nn.relu(nn.Dense(16)(x)))

  net = Net()
  variables = net.init(jax.random.PRNGKey(0), batches[0])
  params, masks = pruning.prune_layerwise(net, batches, 0.5, variables=variables,
                                          method="wanda")
  assert int(masks["Dense_1"]["kernel"].sum()) == 4 * 16  # (8, 16): 4 kept per column
  assert masks["Dense_1"]["bias"] is None
  assert float(jnp.mean(params["Dense_0"]["kernel"] == 0)) == 0.5
