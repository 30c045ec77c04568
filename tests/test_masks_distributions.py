"""Tests for `optax_sparse.masks.distributions` against a NumPy port of RigL's ERK solve."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_sparse.masks import distributions


def _ref_rigl(shapes, sparsity, kind="erk", power=1.0, dense=()):
  """RigL `get_sparsities_erdos_renyi` loop (real budget instead of per-layer floors)."""
  sizes = {k: int(np.prod(s)) for k, s in shapes.items()}
  dense_layers = set(dense)
  while True:
    rhs, divisor, raw = 0.0, 0.0, {}
    for name, shape in shapes.items():
      n = sizes[name]
      if name in dense_layers:
        rhs -= n * sparsity
        continue
      rhs += n * (1.0 - sparsity)
      if kind == "erk":
        raw[name] = (np.sum(shape) / np.prod(shape)) ** power
      elif kind == "er":
        n_in, n_out = shape[-2:]
        raw[name] = (n_in + n_out) / (n_in * n_out)
      else:
        raw[name] = 1.0
      divisor += raw[name] * n
    eps = rhs / divisor
    max_prob = max(raw.values())
    if max_prob * eps > 1:
      dense_layers |= {name for name, p in raw.items() if p == max_prob}
    else:
      break
  return {k: 1.0 if k in dense_layers else eps * raw[k] for k in shapes}


SHAPES = {
    "conv1": (3, 3, 3, 16),
    "conv2": (3, 3, 16, 32),
    "fc1": (512, 128),
    "fc2": (128, 10),
    "tiny": (2, 3),
}


def _params(shapes=SHAPES):
  p = {k: jnp.zeros(s) for k, s in shapes.items()}
  p["bias"] = jnp.zeros(10)
  p["none"] = None
  return p


@pytest.mark.parametrize("kind", ["uniform", "er", "erk"])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.9, 0.99])
def test_matches_rigl_reference_and_meets_total(kind, sparsity):
  params = _params()
  dist = {"uniform": distributions.uniform(), "er": distributions.er(),
          "erk": distributions.erk()}[kind]
  got = dist.densities(params, sparsity)
  assert got["bias"] is None and got["none"] is None
  want = _ref_rigl(SHAPES, sparsity, kind)
  for name in SHAPES:
    assert got[name].dtype == jnp.float32 and got[name].shape == ()
    np.testing.assert_allclose(float(got[name]), want[name], rtol=2e-5, err_msg=name)
    assert 0.0 <= float(got[name]) <= 1.0
  n = sum(np.prod(s) for s in SHAPES.values())
  kept = sum(float(got[k]) * np.prod(s) for k, s in SHAPES.items())
  np.testing.assert_allclose(kept, (1 - sparsity) * n, rtol=1e-5)
  if kind == "uniform":
    for name in SHAPES:
      np.testing.assert_allclose(float(got[name]), 1 - sparsity, rtol=1e-6)


def test_erk_rebalancing_makes_small_layers_dense():
  got = distributions.erk().densities(_params(), 0.5)
  want = _ref_rigl(SHAPES, 0.5, "erk")
  assert want["tiny"] == 1.0 and want["conv1"] == 1.0  # the reference does rebalance here
  assert float(got["tiny"]) == 1.0 and float(got["conv1"]) == 1.0
  np.testing.assert_allclose(float(got["fc1"]), want["fc1"], rtol=2e-5)


def test_erk_power():
  got = distributions.erk(power=0.5).densities(_params(), 0.9)
  want = _ref_rigl(SHAPES, 0.9, "erk", power=0.5)
  for name in SHAPES:
    np.testing.assert_allclose(float(got[name]), want[name], rtol=2e-5)
  uni = distributions.erk(power=0.0).densities(_params(), 0.9)
  np.testing.assert_allclose(float(uni["fc1"]), 0.1, rtol=1e-6)


def test_traced_sparsity_matches_python_float():
  params = _params()
  dist = distributions.erk()
  f = jax.jit(lambda s: dist.densities(params, s))
  for s in (0.3, 0.5, 0.95):
    got, want = f(jnp.float32(s)), dist.densities(params, s)
    for name in SHAPES:
      np.testing.assert_allclose(float(got[name]), float(want[name]), rtol=1e-6)


def test_dense_leaves_consume_budget():
  params = _params()
  dense = lambda path, leaf: jax.tree_util.keystr(path) == "['conv1']"  # noqa: E731
  got = distributions.erk(dense=dense).densities(params, 0.9)
  assert float(got["conv1"]) == 1.0
  want = _ref_rigl(SHAPES, 0.9, "erk", dense=("conv1",))
  for name in SHAPES:
    np.testing.assert_allclose(float(got[name]), want[name], rtol=2e-5)
  # uniform with a dense leaf: the others share the rest at one density
  uni = distributions.uniform(dense=dense).densities(params, 0.9)
  n = {k: np.prod(s) for k, s in SHAPES.items()}
  rest = (0.1 * sum(n.values()) - n["conv1"]) / (sum(n.values()) - n["conv1"])
  np.testing.assert_allclose(float(uni["fc1"]), rest, rtol=1e-5)
  # a static bool tree works too
  tree = jax.tree.map(lambda _: False, params)
  tree["conv1"] = True
  same = distributions.erk(dense=tree).densities(params, 0.9)
  np.testing.assert_allclose(float(same["fc1"]), float(got["fc1"]))


def test_overrides_and_eligible():
  params = _params()
  got = distributions.erk(overrides={"['fc2']": 0.5}).densities(params, 0.9)
  assert float(got["fc2"]) == 0.5
  n = {k: np.prod(s) for k, s in SHAPES.items()}
  kept = sum(float(got[k]) * n[k] for k in SHAPES)
  np.testing.assert_allclose(kept, 0.1 * sum(n.values()), rtol=1e-5)
  eligible = jax.tree.map(lambda x: x is not None and x.ndim >= 2, params)
  eligible["tiny"] = False
  got = distributions.uniform().densities(params, 0.5, eligible)
  assert got["tiny"] is None and float(got["fc1"]) == 0.5


def test_errors():
  params = _params()
  for bad in (-0.1, 1.0, 1.5):
    with pytest.raises(ValueError, match="sparsity"):
      distributions.erk().densities(params, bad)
  with pytest.raises(ValueError, match="power"):
    distributions.erk(power=-1.0)
  with pytest.raises(ValueError, match="dense"):
    distributions.uniform(dense=[1, 2])
  big_dense = distributions.erk(dense=lambda p, x: jax.tree_util.keystr(p) == "['fc1']")
  with pytest.raises(ValueError, match=r"sparsity=0\.9 allows .* already hold 65536"):
    big_dense.check_target(params, 0.9)
  big_dense.check_target(params, 0.05)  # feasible
  zero = distributions.uniform(overrides={"['fc1']": 0.0})
  with pytest.raises(ValueError, match="other leaves only"):
    zero.check_target(params, 0.0)
  with pytest.raises(ValueError, match="overrides"):
    distributions.uniform(overrides={"['fc1']": 2.0}).densities(params, 0.5)
