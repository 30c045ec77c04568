"""Compressed export: values plus packed masks (or N:M indices) through Orbax, bit-identical
round trips, the bytes saved, and conversion to ``jax.experimental.sparse``."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sparse as osp


def _bits(x) -> np.ndarray:
  x = np.asarray(x)
  return x.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[x.dtype.itemsize])


def _assert_bit_identical(a, b):
  leaves_a, def_a = jax.tree.flatten(a)
  leaves_b, def_b = jax.tree.flatten(b)
  assert def_a == def_b
  for x, y in zip(leaves_a, leaves_b, strict=True):
    assert np.asarray(x).dtype == np.asarray(y).dtype and np.shape(x) == np.shape(y)
    np.testing.assert_array_equal(_bits(x), _bits(y))


@functools.cache
def _sparse_model(sparsity=0.9):
  """A model trained one step by sparse(adam, one-shot magnitude): masks in the state (once)."""
  rng = np.random.default_rng(0)
  params = {"w1": jnp.asarray(rng.normal(size=(32, 16)), jnp.float32),
            "b1": jnp.asarray(rng.normal(size=(16,)), jnp.float32),
            "w2": jnp.asarray(rng.normal(size=(16, 8)), jnp.bfloat16)}
  tx = osp.sparse(optax.adam(1e-2), osp.one_shot_magnitude(), sparsity=sparsity)
  state = tx.init(params)
  updates, state = tx.update(jax.tree.map(jnp.ones_like, params), state, params)
  return optax.apply_updates(params, updates), osp.get_masks(state)


def test_orbax_round_trip_is_bit_identical_with_masks(tmp_path):
  params, masks = _sparse_model()
  written = osp.save_compressed(tmp_path / "ckpt", params, masks)
  kinds = {r["name"]: r["kind"] for r in written.meta["leaves"]}
  assert kinds == {"b1": "dense", "w1": "bitmask", "w2": "bitmask"}
  restored, restored_masks = osp.load_compressed(tmp_path / "ckpt", like=params)
  _assert_bit_identical(restored, params)
  assert restored_masks["b1"] is None
  for k in ("w1", "w2"):
    np.testing.assert_array_equal(restored_masks[k], masks[k])
  # Without a template: nested dicts by leaf name.
  by_name, _ = osp.load_compressed(tmp_path / "ckpt")
  _assert_bit_identical(by_name, params)


def test_bit_pattern_keeps_negative_zero_nan_and_nested_names():
  w = np.zeros((4, 8), np.float32)
  w[0, 1], w[1, 2], w[2, 3], w[3, 7] = -0.0, np.nan, 3.5, -np.inf
  params = {"layer": {"kernel": jnp.asarray(w), "scale": jnp.ones(8)}, "emb": jnp.zeros((2, 8))}
  c = osp.compress(params)
  record = {r["name"]: r for r in c.meta["leaves"]}
  assert record["layer/kernel"]["nnz"] == 4  # -0.0 is stored (its sign bit is data)
  assert record["emb"]["nnz"] == 0 and set(c.arrays["00000"]) == {"bits"}  # all zero: bits only
  restored, masks = osp.decompress(c)
  _assert_bit_identical(restored, params)
  assert masks["layer"]["scale"] is None and int(masks["layer"]["kernel"].sum()) == 4


def test_bytes_match_the_formula_at_each_sparsity():
  n_in, n_out = 64, 48
  n = n_in * n_out
  rng = np.random.default_rng(1)
  w = rng.normal(size=(n_in, n_out)).astype(np.float32)
  for sparsity in (0.8, 0.9, 0.95):
    keep = osp.select_top_k(jnp.asarray(np.abs(w)), round((1 - sparsity) * n))
    params = {"w": jnp.where(keep, w, 0.0)}
    c = osp.compress(params)
    z = int(np.count_nonzero(params["w"]))
    assert c.nbytes == z * 4 + math.ceil(n / 8)
    assert c.dense_nbytes == n * 4
  mask_24 = osp.nm_mask(jnp.asarray(np.abs(w)), 2, 4)
  params = {"w": jnp.where(mask_24, w, 0.0)}
  c = osp.compress(params, nm=(2, 4))
  assert c.meta["leaves"][0]["kind"] == "nm"
  assert c.nbytes == (n // 2) * 4 + math.ceil((n // 2) * 2 / 8)  # 2-bit positions
  assert c.nbytes == osp.compress(params).nbytes  # the same size as the bitmask at 2:4


def test_nm_format_pads_short_groups_and_falls_back_when_not_conforming():
  w = np.zeros((8, 3), np.float32)
  w[0, 0], w[2, 0] = 1.0, -2.0  # column 0, first group: 2 active
  w[5, 1] = 4.0  # column 1, second group: 1 active (padded with a stored zero)
  w[6, 2] = -0.0  # a negative zero in a slot
  params = {"w": jnp.asarray(w)}
  c = osp.compress(params, nm=(2, 4))
  assert c.meta["leaves"][0]["kind"] == "nm"
  assert c.arrays["00000"]["values"].shape == (6, 2)
  restored, masks = osp.decompress(c, like=params)
  _assert_bit_identical(restored, params)
  groups = np.asarray(masks["w"]).T.reshape(3, 2, 4).sum(-1)
  np.testing.assert_array_equal(groups, 2)  # the loaded mask is the slot pattern
  w[1, 0] = 5.0  # three active entries in one group: not 2:4, stored as a bitmask
  c = osp.compress({"w": jnp.asarray(w)}, nm=(2, 4))
  assert c.meta["leaves"][0]["kind"] == "bitmask"
  _assert_bit_identical(osp.decompress(c)[0], {"w": jnp.asarray(w)})


def test_dense_kernels_stay_dense_and_empty_leaves_round_trip(tmp_path):
  params = {"w": jnp.ones((8, 8)), "e": jnp.zeros((0, 4))}
  c = osp.save_compressed(tmp_path / "ckpt", params)
  assert [r["kind"] for r in c.meta["leaves"]] == ["empty", "dense"]
  assert c.nbytes == c.dense_nbytes == 256
  restored, _ = osp.load_compressed(tmp_path / "ckpt", like=params)
  _assert_bit_identical(restored, params)


def test_bad_inputs_raise():
  params = {"w": jnp.array([[1.0, 2.0], [0.0, 3.0]])}
  with pytest.raises(ValueError, match="outside its mask"):
    osp.compress(params, {"w": jnp.array([[True, False], [False, True]])})
  with pytest.raises(ValueError, match="structure"):
    osp.compress(params, {"v": jnp.ones((2, 2), bool)})
  with pytest.raises(ValueError, match="shape"):
    osp.compress(params, {"w": jnp.ones((2, 3), bool)})
  for bad in ((0, 4), (5, 4), (2,), "2:4"):
    with pytest.raises(ValueError, match="nm must be"):
      osp.compress(params, nm=bad)
  c = osp.compress(params)
  with pytest.raises(ValueError, match="like"):
    osp.decompress(c, like={"w": jnp.ones((2, 2), jnp.bfloat16)})
  with pytest.raises(ValueError, match="format"):
    osp.decompress(osp.CompressedParams(c.arrays, {"format": "other", "leaves": []}))


def test_to_bcoo_and_bcsr_match_the_dense_matmul():
  params, masks = _sparse_model()
  w = params["w1"]
  x = jnp.asarray(np.random.default_rng(2).normal(size=(5, 32)), jnp.float32)
  sparse_params = osp.to_bcoo(params, masks)
  assert sparse_params["b1"] is params["b1"]
  assert sparse_params["w1"].nse == int(np.asarray(masks["w1"]).sum())
  np.testing.assert_allclose(x @ sparse_params["w1"], x @ w, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(sparse_params["w1"].todense(), w)
  bcsr = osp.to_bcsr({"w1": w})["w1"]
  np.testing.assert_allclose(bcsr @ x[:, :16].T, w @ x[:, :16].T, rtol=1e-5, atol=1e-5)
  # A mask entry whose value is 0 is still a stored element (the mask survives).
  m = np.asarray(masks["w1"]).copy()
  m[np.unravel_index(np.argmin(m), m.shape)] = True
  assert osp.to_bcoo({"w1": w}, {"w1": jnp.asarray(m)})["w1"].nse == m.sum()
  with pytest.raises(ValueError, match="2-D"):
    osp.to_bcsr({"k": jnp.ones((2, 2, 2))})


def test_finetune_a_loaded_checkpoint_keeps_its_mask(tmp_path):
  params, masks = _sparse_model()
  osp.save_compressed(tmp_path / "ckpt", params, masks)
  loaded, loaded_masks = osp.load_compressed(tmp_path / "ckpt", like=params)
  tx = osp.keep_mask(optax.adam(1e-2), loaded_masks)
  state = tx.init(loaded)
  step = jax.jit(tx.update)
  p = loaded
  for _ in range(3):
    updates, state = step(jax.tree.map(jnp.ones_like, p), state, p)
    p = optax.apply_updates(p, updates)
  for k in ("w1", "w2"):
    assert np.all(np.asarray(p[k])[~np.asarray(masks[k])] == 0)
    assert not np.array_equal(np.asarray(p[k], np.float32), np.asarray(loaded[k], np.float32))
