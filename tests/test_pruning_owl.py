"""Tests of `optax_sparse.pruning.owl`: outlier ratios and layer densities against a NumPy
reference of the official code, the exact mean, and use as a distribution of `osp.sparse`.
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


def _np_owl(scores, sparsity, m, lam):
  """Reference: ``prune_wanda_outlier`` of the official code, one ratio per layer (percent)."""
  ratios = np.array([100.0 * np.mean(s > np.mean(s) * m) for s in scores])
  ratios = (ratios - ratios.min()) * (1 / (ratios.max() - ratios.min()) * lam * 2)
  return ratios - np.mean(ratios) + (1 - sparsity)


def _scores(shapes):
  """Heavy-tailed scores with a different tail per layer."""
  return {f"l{i}": jnp.asarray(np.abs(RNG.standard_t(2 + i, shape)), jnp.float32)
          for i, shape in enumerate(shapes)}


def test_equal_layers_match_the_official_formula():
  scores = _scores([(32, 16)] * 4)
  dist = pruning.owl(scores, m=3.0, lam=0.08)
  d = dist.densities(scores, 0.6)
  ref = _np_owl([np.asarray(scores[f"l{i}"]) for i in range(4)], 0.6, 3.0, 0.08)
  np.testing.assert_allclose([float(d[f"l{i}"]) for i in range(4)], ref, rtol=1e-5)
  ratios = pruning.outlier_ratios(scores, 3.0)
  for i in range(4):
    s = np.asarray(scores[f"l{i}"])
    assert ratios[f"l{i}"] == pytest.approx(np.mean(s > 3.0 * s.mean()))


def test_unequal_layers_keep_the_total_exact_and_the_spread():
  scores = _scores([(32, 16), (16, 8), (64, 16)])
  sizes = np.array([512, 128, 1024])
  dist = pruning.owl(scores, m=3.0, lam=0.1)
  d = np.array([float(x) for x in jax.tree.leaves(dist.densities(scores, 0.5))])
  assert np.sum(d * sizes) == pytest.approx(0.5 * sizes.sum(), rel=1e-6)
  ratios = np.array(jax.tree.leaves(pruning.outlier_ratios(scores, 3.0)))
  spread = (ratios - ratios.min()) / (ratios.max() - ratios.min()) * 0.2
  np.testing.assert_allclose(d - d[0], spread - spread[0], atol=1e-6)


def test_clipping_redistributes_and_keeps_the_mean():
  scores = _scores([(32, 16), (16, 8), (64, 16)])
  sizes = np.array([512, 128, 1024])
  dist = pruning.owl(scores, m=3.0, lam=0.45)
  d = np.array([float(x) for x in jax.tree.leaves(dist.densities(scores, 0.2))])
  assert d.max() == 1.0 and d.min() >= 0.0
  assert np.sum(d * sizes) == pytest.approx(0.8 * sizes.sum(), rel=1e-5)


def test_groups_share_one_ratio_and_density():
  scores = {"b0": _scores([(16, 8), (8, 16)]), "b1": _scores([(16, 8), (8, 16)])}
  dist = pruning.owl(scores, lam=0.1, m=3.0, layer_of=lambda path: path[0].key)
  d = dist.densities(scores, 0.5)
  assert float(d["b0"]["l0"]) == float(d["b0"]["l1"])
  assert float(d["b0"]["l0"]) + float(d["b1"]["l0"]) == pytest.approx(1.0, abs=1e-6)
  joint = np.concatenate([np.asarray(x).ravel() for x in jax.tree.leaves(scores["b0"])])
  assert pruning.outlier_ratios(scores, 3.0, layer_of=lambda p: p[0].key)["b0"]["l1"] == (
      pytest.approx(np.mean(joint > 3.0 * joint.mean())))


def test_owl_wanda_inside_sparse_exact_counts_and_traced_sparsity():
  params = {"a": jnp.asarray(RNG.standard_normal((32, 16)), jnp.float32),
            "b": jnp.asarray(RNG.standard_normal((16, 8)), jnp.float32)}
  norms = {"a": jnp.asarray(np.exp(RNG.standard_normal(32)), jnp.float32),
           "b": jnp.asarray(np.exp(3 * RNG.standard_normal(16)), jnp.float32)}
  dist = osp.owl(pruning.wanda_scores(params, norms), lam=0.1)
  tx = osp.sparse(optax.sgd(0.1), osp.wanda(norms), sparsity=0.5, distribution=dist)
  masks = osp.get_masks(tx.init(params))
  d = dist.densities(params, 0.5)
  for key, fan_in in (("a", 32), ("b", 16)):
    per_column = int(osp.count_for_density(fan_in, d[key]))
    assert np.all(np.asarray(masks[key]).sum(axis=0) == per_column)
  ref = pruning.wanda_masks(params, norms, densities=d)
  for key in params:
    np.testing.assert_array_equal(np.asarray(masks[key]), np.asarray(ref[key]))
  traced = jax.jit(lambda s: dist.densities(params, s))(0.5)
  assert float(traced["a"]) == pytest.approx(float(d["a"]), abs=1e-6)


def test_bad_input_raises_naming_the_argument():
  scores = _scores([(8, 8)])
  with pytest.raises(ValueError, match="m must be"):
    pruning.owl(scores, m=0.0)
  with pytest.raises(ValueError, match="lam must be"):
    pruning.owl(scores, lam=-0.1)
  dist = pruning.owl(scores)
  with pytest.raises(ValueError, match="sparsity must be in"):
    dist.densities(scores, 1.0)
  with pytest.raises(ValueError, match=r"no outlier ratio for the eligible leaf \['x'\]"):
    dist.densities({"l0": scores["l0"], "x": jnp.ones((2, 2))}, 0.5)
  partial = pruning.owl({"l0": scores["l0"], "x": None})
  d = partial.densities({"l0": scores["l0"], "x": jnp.ones((2, 2))}, 0.5,
                        eligible={"l0": True, "x": False})
  assert d["x"] is None and float(d["l0"]) == pytest.approx(0.5)
