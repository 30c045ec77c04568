"""Pallas kernels (interpret mode on CPU) against the jnp path, through the public functions.

``backend="pallas"`` must give the same result as ``backend="xla"``: identical masks for the
selection functions (same count, same tie-break) and identical NanoAdam parameters after several
steps including a refresh, on odd shapes, bf16 and f32. Shapes are tiny: interpret mode is slow.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_sparse as osp

SHAPES = [(1, 1), (7, 129), (3, 3, 17, 33)]


def _scores(shape, seed=0):
  """Scores with ties, +-inf, NaN and a signed zero wherever the shape has room."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=shape).astype(np.float32)
  flat = x.reshape(-1)
  n = flat.size
  if n == 1:
    return x
  flat[: n // 2] = np.round(flat[: n // 2] * 2) / 2  # many ties among the first half
  special = [-np.inf, np.inf, np.nan, -0.0, 0.0, np.nan, -np.inf]
  pos = rng.choice(n, size=min(n, len(special)), replace=False)
  flat[pos] = special[: len(pos)]
  return x


def _stable_top(scores, k):
  """NumPy reference: first k of a stable descending order, NaN last (ties by flat index)."""
  s = np.asarray(scores, np.float32).reshape(-1).copy()
  s[s == 0] = 0.0
  nan = np.isnan(s)
  order = np.lexsort((np.arange(s.size), np.where(nan, 0.0, -s), nan))
  mask = np.zeros(s.size, bool)
  mask[order[: max(0, min(k, s.size))]] = True
  return mask.reshape(np.shape(scores))


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_select_pallas_matches_xla(shape):
  x32 = jnp.asarray(_scores(shape))
  x16 = x32.astype(jnp.bfloat16)

  def run(backend):
    return jax.jit(lambda a, b, k: [
        osp.select_top_k(a, k, backend=backend),
        osp.select_bottom_k(a, k, backend=backend),
        osp.select_top_k(b, k, backend=backend),
        osp.select_bottom_k(b, k, backend=backend),
    ])

  pallas, xla = run("pallas"), run("xla")
  n = x32.size
  for k in sorted({0, 1, n // 3, n // 2, n - 1, n}):
    got = [np.asarray(m) for m in pallas(x32, x16, k)]
    want = [np.asarray(m) for m in xla(x32, x16, k)]
    for g, w in zip(got, want, strict=True):
      np.testing.assert_array_equal(g, w)
      assert g.sum() == k
    np.testing.assert_array_equal(got[0], _stable_top(x32, k))
    np.testing.assert_array_equal(got[2], _stable_top(x16.astype(jnp.float32), k))


def test_select_global_and_block_pallas_match_xla():
  tree = {"a": jnp.asarray(_scores((1, 1), 1)), "b": None,
          "c": jnp.asarray(_scores((7, 129), 2)).astype(jnp.bfloat16),
          "d": jnp.asarray(_scores((3, 5, 9), 3))}
  block_in = jnp.asarray(_scores((7, 13), 4))

  def run(backend):
    return jax.jit(lambda t, b, k: (osp.select_top_k_global(t, k, backend=backend),
                                   osp.block_mask(b, (2, 3), k // 40, backend=backend)))

  pallas, xla = run("pallas"), run("xla")
  n = 1 + 7 * 129 + 3 * 5 * 9
  for k in (0, 1, 500, n - 1):
    got, want = pallas(tree, block_in, k), xla(tree, block_in, k)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
      np.testing.assert_array_equal(np.asarray(g), np.asarray(w))
    assert sum(int(m.sum()) for m in jax.tree.leaves(got[0])) == k
    assert got[0]["b"] is None


@pytest.mark.parametrize("fn", [osp.select_top_k, osp.select_bottom_k])
def test_select_rejects_bad_backend(fn):
  with pytest.raises(ValueError, match="backend.*'cuda'"):
    fn(jnp.ones((2, 2)), 1, backend="cuda")


def test_select_global_and_block_reject_bad_backend():
  with pytest.raises(ValueError, match="backend.*'triton'"):
    osp.select_top_k_global({"a": jnp.ones(3)}, 1, backend="triton")
  with pytest.raises(ValueError, match="backend.*None"):
    osp.block_mask(jnp.ones((4, 4)), (2, 2), 1, backend=None)


@pytest.mark.parametrize("bias_correction", [False, True])
def test_nanoadam_pallas_matches_xla(bias_correction):
  rng = np.random.default_rng(5)
  shapes = {"a": (1, 1), "b": (7, 129), "c": (3, 3, 17, 33)}
  params = {}
  for name, shape in shapes.items():
    w = rng.normal(size=shape).astype(np.float32)
    w.reshape(-1)[: w.size // 3] = np.round(w.reshape(-1)[: w.size // 3])  # ties in |w|
    params[name + "32"] = jnp.asarray(w)
    params[name + "16"] = jnp.asarray(w, jnp.bfloat16)
  params["bias"] = jnp.asarray(rng.normal(size=(129,)), jnp.float32)
  grads = []
  for t in range(7):
    g = {k: jnp.asarray(rng.normal(size=v.shape), v.dtype) for k, v in params.items()}
    if t == 4:  # a non-finite gradient: that leaf is skipped, the others move
      g["b16"] = g["b16"].at[0, 0].set(jnp.nan)
      g["c32"] = g["c32"].at[1, 2, 3, 4].set(jnp.inf)
    grads.append(g)

  def density(t):
    return jnp.where(t < 5, 0.3, 0.2)  # k changes at step 5: a refresh

  def run(backend):
    tx = osp.nanoadam(0.05, density, refresh_every=3, bias_correction=bias_correction,
                      max_density=0.3, backend=backend)

    @jax.jit
    def step(p, s, g):
      u, s = tx.update(g, s, p)
      return jax.tree.map(lambda a, b: (a + b).astype(a.dtype), p, u), s

    p, s = params, tx.init(params)
    for g in grads:
      p, s = step(p, s, g)
    return p, s

  (p_pallas, s_pallas), (p_xla, s_xla) = run("pallas"), run("xla")
  # XLA on CPU compiles the same float32 expression differently in different fusions (the
  # kernel's interpreted body vs the jnp step), so results agree to a few ulps, not bitwise:
  # f32 parameters within 1e-6 (about 8 ulps of 1), bf16 within one bf16 ulp (a rounding flip).
  for name in params:
    got, want = np.asarray(p_pallas[name], np.float32), np.asarray(p_xla[name], np.float32)
    rtol = 2.0**-6 if params[name].dtype == jnp.bfloat16 else 1e-6
    np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-6, err_msg=name)
    assert p_pallas[name].dtype == params[name].dtype
    assert not np.array_equal(np.asarray(p_pallas[name]), np.asarray(params[name])), name
  # Same selections (indices, valid counts, step count); moments within a few ulps.
  for a, b in zip(jax.tree.leaves(s_pallas), jax.tree.leaves(s_xla), strict=True):
    if a.dtype == jnp.int32:
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    else:
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


def test_nanoadam_rejects_bad_backend():
  with pytest.raises(ValueError, match="backend.*'gpu'"):
    osp.nanoadam(0.1, 0.5, backend="gpu")
