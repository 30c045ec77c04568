"""Tests for `optax_sparse.masks.scores` against finite differences and NumPy on a tiny MLP."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optax_sparse.masks import scores as sc

RNG = np.random.default_rng(0)
P0 = {
    "w1": RNG.normal(size=(4, 5)),
    "b1": RNG.normal(size=5) * 0.1,
    "w2": RNG.normal(size=(5, 3)),
    "b2": RNG.normal(size=3) * 0.1,
}
X = RNG.normal(size=(6, 4))
Y = np.eye(3)[RNG.integers(0, 3, 6)]
NAMES = ("w1", "b1", "w2", "b2")


def _np_loss(p):
  h = np.tanh(X @ p["w1"] + p["b1"])
  z = h @ p["w2"] + p["b2"]
  z = z - z.max(1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(1, keepdims=True))
  return -(Y * logp).sum(1).mean()


def _jax_loss(p, batch):
  x, y = batch
  h = jnp.tanh(x @ p["w1"] + p["b1"])
  logp = jax.nn.log_softmax(h @ p["w2"] + p["b2"])
  return -jnp.mean(jnp.sum(y * logp, 1))


def _fd_grad(f, p, h=1e-6):
  g = {}
  for k in NAMES:
    g[k] = np.zeros_like(p[k])
    for i in np.ndindex(p[k].shape):
      plus = {kk: v.copy() for kk, v in p.items()}
      minus = {kk: v.copy() for kk, v in p.items()}
      plus[k][i] += h
      minus[k][i] -= h
      g[k][i] = (f(plus) - f(minus)) / (2 * h)
  return g


def _jparams():
  return {k: jnp.asarray(v, jnp.float32) for k, v in P0.items()}


def test_magnitude():
  s = sc.magnitude_scores({**_jparams(), "none": None})
  assert s["none"] is None
  np.testing.assert_allclose(s["w1"], np.abs(P0["w1"]), rtol=1e-6)


def test_snip_against_finite_differences():
  g = _fd_grad(_np_loss, P0)
  raw = {k: np.abs(P0[k] * g[k]) for k in NAMES}
  total = sum(v.sum() for v in raw.values())
  got = sc.snip_scores(_jax_loss, _jparams(), (jnp.asarray(X), jnp.asarray(Y)))
  for k in NAMES:
    np.testing.assert_allclose(got[k], raw[k] / total, rtol=2e-3, atol=1e-7)
  assert abs(sum(float(v.sum()) for v in got.values()) - 1.0) < 1e-5


def test_grasp_against_finite_difference_hessian_vector_product():
  g = _fd_grad(_np_loss, P0)
  h = 1e-4

  def shifted(sign):
    return {k: P0[k] + sign * h * g[k] for k in NAMES}

  g_plus = _fd_grad(_np_loss, shifted(1.0), h=1e-5)
  g_minus = _fd_grad(_np_loss, shifted(-1.0), h=1e-5)
  hg = {k: (g_plus[k] - g_minus[k]) / (2 * h) for k in NAMES}
  raw = {k: hg[k] * P0[k] for k in NAMES}
  norm = abs(sum(v.sum() for v in raw.values())) + 1e-6
  got = sc.grasp_scores(_jax_loss, _jparams(), (jnp.asarray(X), jnp.asarray(Y)))
  for k in NAMES:
    np.testing.assert_allclose(got[k], raw[k] / norm, rtol=5e-3, atol=1e-5)


def _relu_mlp(p, x):
  return jax.nn.relu(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def _np_synflow(p, masks):
  """Analytic SynFlow for the positive (hence linear) 2-layer ReLU net with one all-ones input."""
  a = {k: np.abs(p[k]) * (masks[k] if k in masks else 1.0) for k in NAMES}
  x = np.ones(4)
  hidden = x @ a["w1"] + a["b1"]
  up = a["w2"].sum(1)  # dR/dhidden
  grads = {"w1": np.outer(x, up), "b1": up, "w2": np.outer(hidden, np.ones(3)),
           "b2": np.ones(3)}
  return {k: np.abs(a[k] * grads[k]) for k in NAMES}


def test_synflow_single_round_against_reference():
  got = sc.synflow_scores(_relu_mlp, _jparams(), (1, 4))
  want = _np_synflow(P0, {})
  for k in NAMES:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5)
  # and against finite differences of R on |θ|
  r = lambda p: float(np.sum(np.maximum(np.ones(4) @ p["w1"] + p["b1"], 0) @ p["w2"] + p["b2"]))  # noqa: E731
  absp = {k: np.abs(v) for k, v in P0.items()}
  g = _fd_grad(r, absp)
  for k in NAMES:
    np.testing.assert_allclose(got[k], np.abs(absp[k] * g[k]), rtol=1e-4)


def _np_global_top(scores, density):
  flat = np.concatenate([scores[k].ravel() for k in ("w1", "w2")])
  k = max(1, round(flat.size * density))
  order = np.lexsort((np.arange(flat.size), -flat))
  keep = np.zeros(flat.size, bool)
  keep[order[:k]] = True
  return {"w1": keep[:20].reshape(4, 5), "w2": keep[20:].reshape(5, 3)}


def test_synflow_iterative_against_reference():
  sparsity, rounds = 0.8, 3
  masks = {"w1": np.ones((4, 5), bool), "w2": np.ones((5, 3), bool)}
  for e in range(rounds):
    s = _np_synflow(P0, masks)
    s = {k: np.where(masks[k], s[k], -np.inf) if k in masks else s[k] for k in NAMES}
    masks = _np_global_top(s, (1 - sparsity) ** ((e + 1) / rounds))
  got = sc.synflow_scores(_relu_mlp, _jparams(), (1, 4), rounds, sparsity=sparsity)
  got_masks = sc.masks_from_scores(got, sparsity)
  assert got_masks["b1"] is None
  for k in ("w1", "w2"):
    np.testing.assert_array_equal(got_masks[k], masks[k])
  assert sum(int(m.sum()) for m in (got_masks["w1"], got_masks["w2"])) == round(35 * 0.2)


def test_masks_from_scores_scopes_and_errors():
  s = {"a": jnp.arange(10.0).reshape(2, 5), "b": jnp.arange(10.0, 30.0).reshape(4, 5),
       "c": jnp.ones(3), "d": None}
  g = sc.masks_from_scores(s, 0.7)
  assert g["c"] is None and g["d"] is None
  assert int(g["a"].sum()) == 0 and int(g["b"].sum()) == 9  # the 9 largest are all in b
  layer = sc.masks_from_scores(s, 0.7, scope="layer")
  assert int(layer["a"].sum()) == 3 and int(layer["b"].sum()) == 6
  traced = jax.jit(lambda x: sc.masks_from_scores(s, x))(jnp.float32(0.7))
  np.testing.assert_array_equal(traced["b"], g["b"])
  with pytest.raises(ValueError, match="scope"):
    sc.masks_from_scores(s, 0.5, scope="block")
  with pytest.raises(ValueError, match="sparsity"):
    sc.masks_from_scores(s, 1.0)
  with pytest.raises(ValueError, match="iterations"):
    sc.synflow_scores(_relu_mlp, _jparams(), (1, 4), 0)
  with pytest.raises(ValueError, match="sparsity is required"):
    sc.synflow_scores(_relu_mlp, _jparams(), (1, 4), 3)
