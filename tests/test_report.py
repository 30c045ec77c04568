"""The sparsity report, the connectivity image (empirical graphon) and the report figure."""

from __future__ import annotations

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sparse as osp


def _params(seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  return {
      "conv": jnp.asarray(rng.normal(size=(3, 3, 4, 8)), jnp.float32),
      "dense": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32),
      "bias": jnp.asarray(rng.normal(size=(8,)), jnp.float32),
  }


@functools.cache
def _rigl_run():
  """Parameters and states of a sparse run before and after a mask update (built once)."""
  params = _params()
  tx = osp.sparse(optax.sgd(0.1), osp.rigl(drop_fraction=0.5, every=1, end_step=10),
                  sparsity=0.75)
  state0 = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.asarray(np.random.default_rng(5).normal(size=p.shape),
                                             p.dtype), params)
  updates, state1 = jax.jit(tx.update)(grads, state0, params)
  return params, state0, optax.apply_updates(params, updates), state1


def test_report_matches_numpy_counts_for_a_sparse_state():
  p0, s0, p1, s1 = _rigl_run()
  report = osp.sparsity_report(p1, s1, previous=s0, reference=p0, positions={"conv": 36})
  rows = {r.name: r for r in report.leaves}
  assert list(rows) == ["bias", "conv", "dense"]  # the parameters' leaf order
  masks0, masks1 = osp.get_masks(s0), osp.get_masks(s1)
  for name in ("conv", "dense"):
    x, m, m0 = np.asarray(p1[name]), np.asarray(masks1[name]), np.asarray(masks0[name])
    r = rows[name]
    assert r.shape == x.shape and r.size == x.size and r.dtype == "float32"
    assert r.nonzeros == np.count_nonzero(x) and r.density == np.count_nonzero(x) / x.size
    assert r.mask_active == m.sum() and r.outside_mask == 0
    assert r.kept == pytest.approx((m & m0).sum() / m0.sum())
    assert r.grown == (m & ~m0).sum() and r.dropped == (m0 & ~m).sum()
    assert 0 < r.grown == r.dropped  # RigL moved the mask and kept the count
    flips = ((np.sign(x) * np.sign(np.asarray(p0[name]))) < 0) & m
    assert r.sign_flips == flips.sum()
  assert rows["bias"].mask_active is None and rows["bias"].kind is None
  assert rows["bias"].dense_flops is None and rows["bias"].kept is None
  # FLOPs: 2 multiply-adds per weight per application; a conv applied at 36 output positions.
  assert rows["conv"].kind == "conv" and rows["dense"].kind == "dense"
  assert rows["conv"].dense_flops == 2 * 3 * 3 * 4 * 8 * 36
  assert rows["conv"].sparse_flops == 2 * rows["conv"].nonzeros * 36
  assert rows["dense"].dense_flops == 2 * 16 * 8
  total = report.total
  assert total["size"] == sum(x.size for x in jax.tree.leaves(p1))
  assert total["nonzeros"] == sum(int(np.count_nonzero(x)) for x in jax.tree.leaves(p1))
  masked = [np.asarray(p1[k]) for k in ("conv", "dense")]
  assert total["masked_sparsity"] == pytest.approx(
      1 - sum(np.count_nonzero(x) for x in masked) / sum(x.size for x in masked))
  assert total["flops_ratio"] == pytest.approx(
      (rows["conv"].sparse_flops + rows["dense"].sparse_flops)
      / (rows["conv"].dense_flops + rows["dense"].dense_flops))
  m0_total = sum(int(np.asarray(masks0[k]).sum()) for k in ("conv", "dense"))
  kept = sum(int((np.asarray(masks0[k]) & np.asarray(masks1[k])).sum()) for k in ("conv", "dense"))
  assert total["kept"] == pytest.approx(kept / m0_total)


def test_churn_against_parameters_and_mask_trees_without_a_state():
  p0, s0, p1, _ = _rigl_run()
  by_params = osp.sparsity_report(p1, previous=p0)  # p0 is dense: nothing grown
  assert all(r.grown == 0 for r in by_params.leaves)
  by_masks = osp.sparsity_report(p1, previous=osp.get_masks(s0))
  dense = {r.name: r for r in by_masks.leaves}["dense"]
  m0, x = np.asarray(osp.get_masks(s0)["dense"]), np.asarray(p1["dense"])
  assert dense.kept == pytest.approx((m0 & (x != 0)).sum() / m0.sum())
  assert {r.name: r for r in by_masks.leaves}["bias"].kept is None  # no mask for the bias


def test_nm_conformity_counts_groups():
  w = np.asarray(osp.nm_mask(jnp.asarray(np.random.default_rng(0).normal(size=(8, 6))), 2, 4),
                 np.float32)
  report = osp.sparsity_report({"w": jnp.asarray(w)}, nm=(2, 4))
  assert report.leaves[0].nm_conformity == 1.0 and report.total["nm_conformity"] == 1.0
  w[:4, 0] = 1.0  # one of the 2 x 6 groups now has 4 nonzeros
  report = osp.sparsity_report({"w": jnp.asarray(w), "b": jnp.ones(3)}, nm=(2, 4))
  assert report.leaves[1].nm_conformity == pytest.approx(11 / 12)
  assert report.leaves[0].nm_conformity is None  # 3 entries: no group of 4
  assert "2:4 ok" in report.to_markdown()
  assert osp.sparsity_report({"w": jnp.ones((6, 4))}, nm=(2, 4)).leaves[0].nm_conformity is None


def test_outputs_markdown_rich_and_dict(capsys):
  p0, s0, p1, s1 = _rigl_run()
  report = osp.sparsity_report(p1, s1, previous=s0)
  text = report.to_markdown()
  lines = text.splitlines()
  assert lines[0].startswith("| leaf | shape | density | nonzeros | mask |")
  assert "sign flips" not in lines[0] and "2:4" not in lines[0]  # columns without data drop
  assert sum(line.startswith("| ") for line in lines) == 1 + 3 + 1  # header, leaves, total
  assert str(report) == text
  report.print(use_rich=False)
  assert capsys.readouterr().out.strip() == text
  report.print(use_rich=True)
  assert "sparsity report" in capsys.readouterr().out
  nested = report.to_dict()
  assert nested["leaves"]["dense"]["shape"] == [16, 8]
  flat = report.to_dict(flat=True)
  json.dumps(nested), json.dumps(flat)
  assert flat["dense/grown"] == nested["leaves"]["dense"]["grown"]
  assert flat["total/nonzeros"] == report.total["nonzeros"]
  assert all(isinstance(v, (int, float)) for v in flat.values())


def test_bad_arguments_raise():
  params = _params()
  for bad in ((3, 2), (2,), (2.0, 4), "2:4"):
    with pytest.raises(ValueError, match="nm must be"):
      osp.sparsity_report(params, nm=bad)
  with pytest.raises(ValueError, match="positions"):
    osp.sparsity_report(params, positions={"bias": 4})
  with pytest.raises(ValueError, match="positions"):
    osp.sparsity_report(params, positions={"conv": 0})
  with pytest.raises(ValueError, match="reference"):
    osp.sparsity_report(params, reference={"conv": params["conv"]})
  with pytest.raises(ValueError, match="resolution"):
    osp.connectivity_image(np.ones((4, 4)), resolution=0)
  with pytest.raises(ValueError, match="two dimensions"):
    osp.connectivity_image(np.ones(4))


def _graphon_reference(mask, resolution):
  """Loops: mean over leading axes, sort by degree (stable, decreasing), block means."""
  a = np.asarray(mask, float).reshape((-1,) + mask.shape[-2:]).mean(0)
  rows = sorted(range(a.shape[0]), key=lambda i: -a[i].sum())
  cols = sorted(range(a.shape[1]), key=lambda j: -a[:, j].sum())
  a = a[rows][:, cols]
  kr, kc = min(resolution, a.shape[0]), min(resolution, a.shape[1])
  edges_r = [int(np.floor(i * a.shape[0] / kr)) for i in range(kr + 1)]
  edges_c = [int(np.floor(j * a.shape[1] / kc)) for j in range(kc + 1)]
  return np.array([[a[edges_r[i]:edges_r[i + 1], edges_c[j]:edges_c[j + 1]].mean()
                    for j in range(kc)] for i in range(kr)])


@pytest.mark.parametrize("shape,resolution", [((10, 7), 3), ((3, 3, 9, 5), 4), ((6, 4), 16)])
def test_connectivity_image_against_loops(shape, resolution):
  mask = np.random.default_rng(1).random(shape) < 0.3
  image = osp.connectivity_image(mask, resolution)
  np.testing.assert_allclose(image, _graphon_reference(mask, resolution), rtol=1e-12)
  assert image.shape == (min(resolution, shape[-2]), min(resolution, shape[-1]))


def test_connectivity_image_tells_random_from_degree_favouring_masks():
  rng = np.random.default_rng(2)
  n = 256
  random_mask = rng.random((n, n)) < 0.1
  # Connection probability grows with both endpoints' "importance" (a smooth degree gradient).
  u = rng.random(n)
  favour = rng.random((n, n)) < 0.4 * np.outer(u, u[rng.permutation(n)])
  flat, graded = osp.connectivity_image(random_mask, 8), osp.connectivity_image(favour, 8)
  # Ordering by the empirical degree gives even a random mask a mild gradient (degree noise at
  # finite width); a degree-favouring mask has a far steeper one.
  assert abs(flat.mean() - random_mask.mean()) < 1e-12
  assert flat[0, 0] < 4 * flat[-1, -1] and graded[0, 0] > 20 * graded[-1, -1]
  assert graded.std() > 3 * flat.std()


def test_plot_report_writes_a_png(tmp_path):
  pytest.importorskip("matplotlib")
  from optax_sparse import report_plot

  _, _, p1, s1 = _rigl_run()
  fig = report_plot.plot_report(p1, s1, path=tmp_path / "r.png", resolution=4, title="rigl")
  assert (tmp_path / "r.png").stat().st_size > 5_000
  assert len(fig.axes) == 3  # density bars and one image per kernel
  with pytest.raises(ValueError, match="ndim >= 2"):
    report_plot.plot_report({"b": jnp.ones(3)})
