"""Tests of `optax_sparse.pruning.wanda` and the Flax calibration helpers.

Each function is checked against a small NumPy reference of the paper's rule (score |W|·||X||,
lowest pruned within each output neuron, or N:M along the fan-in), plus invariants: exact counts
per output column, pruned parameters exactly 0, dtype kept, errors naming the argument.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sparse as osp
from optax_sparse import pruning

RNG = np.random.default_rng(0)


def _np_wanda(w, norm, sparsity=None, n=None, m=None):
  """Reference, in the paper's (out, in) layout: prune the lowest |W|·||X|| of every row."""
  score = (np.abs(np.asarray(w, np.float64)) * np.asarray(norm, np.float64)[:, None]).T
  keep = np.zeros(score.shape, bool)
  fan_in = score.shape[1]
  for row in range(score.shape[0]):
    if n is None:
      k = max(1, round(fan_in * (1.0 - sparsity)))
      order = sorted(range(fan_in), key=lambda j, r=row: (-score[r, j], j))
      keep[row, order[:k]] = True
    else:
      for g in range(0, fan_in, m):
        order = sorted(range(g, g + m), key=lambda j, r=row: (-score[r, j], j))
        keep[row, order[:n]] = True
  return keep.T


def _case(shape=(32, 16)):
  w = RNG.standard_normal(shape).astype(np.float32)
  norm = np.exp(RNG.standard_normal(shape[0])).astype(np.float32)
  return jnp.asarray(w), jnp.asarray(norm)


@pytest.mark.parametrize("sparsity", [0.5, 0.3])
def test_unstructured_matches_numpy_and_counts_per_column(sparsity):
  w, norm = _case()
  mask = pruning.wanda_masks({"w": w}, {"w": norm}, sparsity)["w"]
  np.testing.assert_array_equal(np.asarray(mask), _np_wanda(w, norm, sparsity))
  k = max(1, round(32 * (1 - sparsity)))
  assert np.all(np.asarray(mask).sum(axis=0) == k)


def test_nm_matches_numpy_along_fan_in():
  w, norm = _case()
  mask = np.asarray(pruning.wanda_masks({"w": w}, {"w": norm}, n=2, m=4)["w"])
  np.testing.assert_array_equal(mask, _np_wanda(w, norm, n=2, m=4))
  assert np.all(mask.reshape(8, 4, 16).sum(axis=1) == 2)


def test_ties_go_to_lower_input_index_and_non_finite_ranks_lowest():
  w = jnp.array([[1.0, jnp.nan], [1.0, 2.0], [1.0, jnp.inf], [1.0, 1.0]])
  mask = pruning.wanda_masks({"w": w}, {"w": jnp.ones(4)}, 0.5)["w"]
  assert mask.T.tolist() == [[True, True, False, False], [False, True, False, True]]


def test_multi_axis_kernel_is_read_as_fan_in_by_fan_out():
  w, _ = _case((4, 8, 16))
  norm = jnp.asarray(np.exp(RNG.standard_normal((4, 8))), jnp.float32)
  mask = pruning.wanda_masks({"w": w}, {"w": norm}, 0.5)["w"]
  flat = pruning.wanda_masks({"w": w.reshape(32, 16)}, {"w": norm.reshape(32)}, 0.5)["w"]
  assert mask.shape == (4, 8, 16)
  np.testing.assert_array_equal(np.asarray(mask).reshape(32, 16), np.asarray(flat))


def test_scores_are_weight_magnitude_times_input_norm():
  w, norm = _case()
  scores = pruning.wanda_scores({"w": w, "b": jnp.ones(3)}, {"w": norm, "b": None})
  assert scores["b"] is None
  np.testing.assert_allclose(scores["w"], np.abs(w) * np.asarray(norm)[:, None], rtol=1e-6)


def test_traced_sparsity_gives_the_same_masks():
  w, norm = _case()
  fn = jax.jit(lambda s: pruning.wanda_masks({"w": w}, {"w": norm}, s)["w"])
  for s in (0.5, 0.75):
    np.testing.assert_array_equal(np.asarray(fn(s)), _np_wanda(w, norm, s))


def test_rule_inside_sparse_prunes_exactly_and_keeps_dtype():
  w, norm = _case()
  params = {"w": w.astype(jnp.bfloat16), "b": jnp.ones(16, jnp.bfloat16)}
  norms = {"w": norm, "b": None}
  for rule, kwargs in ((pruning.wanda(norms), {"sparsity": 0.5}),
                       (osp.wanda(norms, n=2, m=4), {"sparsity": None})):
    tx = osp.sparse(optax.sgd(0.1), rule, **kwargs)
    state = tx.init(params)
    mask = np.asarray(osp.get_masks(state)["w"])
    ref = _np_wanda(params["w"], norm, **({"sparsity": 0.5} if kwargs["sparsity"] else
                                           {"n": 2, "m": 4}))
    np.testing.assert_array_equal(mask, ref)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, state = jax.jit(tx.update)(grads, state, params)
    new = optax.apply_updates(params, updates)
    assert new["w"].dtype == jnp.bfloat16
    assert np.all(np.asarray(new["w"], np.float32)[~mask] == 0.0)
    assert np.all(np.asarray(new["w"], np.float32)[mask] != 0.0)


def test_rule_at_step_prunes_from_the_parameters_it_receives():
  w, norm = _case()
  tx = osp.sparse(optax.identity(), pruning.wanda({"w": norm}, at_step=1), sparsity=0.5)
  params = {"w": w}
  state = tx.init(params)
  assert bool(jnp.all(osp.get_masks(state)["w"]))
  update = jax.jit(tx.update)
  params2 = {"w": -2.0 * w[::-1]}
  _, state = update(params, state, params)
  _, state = update(params2, state, params2)
  np.testing.assert_array_equal(np.asarray(osp.get_masks(state)["w"]),
                                _np_wanda(params2["w"], norm, 0.5))


def test_bad_input_raises_naming_the_argument():
  w, norm = _case()
  with pytest.raises(ValueError, match="n and m"):
    pruning.wanda({"w": norm}, n=2)
  with pytest.raises(ValueError, match="n must be"):
    pruning.wanda({"w": norm}, n=5, m=4)
  with pytest.raises(ValueError, match="at_step"):
    pruning.wanda({"w": norm}, at_step=-1)
  with pytest.raises(ValueError, match="sparsity"):
    pruning.wanda_masks({"w": w}, {"w": norm}, 1.0)
  with pytest.raises(ValueError, match=r"norms\['w'\] has shape \(16,\)"):
    pruning.wanda_masks({"w": w}, {"w": jnp.ones(16)}, 0.5)
  with pytest.raises(ValueError, match=r"an entry at \('v',\), which is not a parameter"):
    pruning.wanda_masks({"w": w}, {"w": norm, "v": norm}, 0.5)
  with pytest.raises(ValueError, match="not divisible by m = 3"):
    pruning.wanda_masks({"w": w}, {"w": norm}, n=1, m=3)
  tx = osp.sparse(optax.sgd(0.1), pruning.wanda({"w": norm, "e": None}), sparsity=0.5)
  with pytest.raises(ValueError, match=r"no input norm for the eligible leaf \['e'\]"):
    tx.init({"w": w, "e": jnp.ones((3, 3))})


# ----------------------------------------------------------------------------------------------
# Calibration helpers


def test_nnx_input_statistics_match_numpy():
  from flax import nnx

  class Net(nnx.Module):
    def __init__(self, rngs):
      self.up = nnx.Linear(4, 8, rngs=rngs)
      self.attn = nnx.MultiHeadAttention(2, 8, decode=False, rngs=rngs)

    def __call__(self, x):
      h = self.up(x)
      return self.attn(h) + h

  model = Net(nnx.Rngs(0))
  batches = [jnp.asarray(RNG.standard_normal((2, 3, 4)), jnp.float32) for _ in range(2)]
  norms = pruning.input_norms(model, batches)
  grams, order = pruning.record_inputs(model, batches, "gram")
  x = np.concatenate([np.asarray(b).reshape(-1, 4) for b in batches])
  np.testing.assert_allclose(norms["up"]["kernel"], np.sqrt((x ** 2).sum(0)), rtol=1e-5)
  np.testing.assert_allclose(grams["up"]["kernel"], x.T @ x, rtol=1e-5, atol=1e-5)
  assert norms["up"]["bias"] is None
  assert norms["attn"]["out"]["kernel"].shape == (2, 4)  # (heads, head_dim) of the out kernel
  h = np.concatenate([np.asarray(model.up(b)).reshape(-1, 8) for b in batches])
  np.testing.assert_allclose(norms["attn"]["query"]["kernel"], np.sqrt((h ** 2).sum(0)),
                             rtol=1e-5)
  assert order[0] == ("up", "kernel") and len(order) == 5
  assert type(model.up) is nnx.Linear  # the user's model is left as it was


def test_linen_input_norms_match_numpy():
  import flax.linen as nn

  class Net(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = nn.relu(nn.Dense(8)(x))
      return nn.Dense(3)(h)

  x = jnp.asarray(RNG.standard_normal((5, 4)), jnp.float32)
  net = Net()
  variables = net.init(jax.random.PRNGKey(0), x)
  norms = pruning.input_norms(net, [x], variables=variables)
  np.testing.assert_allclose(norms["Dense_0"]["kernel"], np.sqrt((np.asarray(x) ** 2).sum(0)),
                             rtol=1e-5)
  k0, b0 = variables["params"]["Dense_0"]["kernel"], variables["params"]["Dense_0"]["bias"]
  hidden = np.maximum(np.asarray(x) @ np.asarray(k0) + np.asarray(b0), 0)
  np.testing.assert_allclose(norms["Dense_1"]["kernel"], np.sqrt((hidden ** 2).sum(0)),
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="statistic"):
    pruning.record_inputs(net, [x], "mean", variables=variables)
  with pytest.raises(TypeError, match="model must be"):
    pruning.input_norms(object(), [x])
