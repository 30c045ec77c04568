"""Tests of `optax_sparse.geometry.hyperbolic`: HAM against a NumPy reference and its invariants."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sparse as osp


def _ham_reference(theta_half, grad, lr, alpha, beta, cap):
  """HAM step 2-3 written from the HAM method page (official HYP* code) in NumPy."""
  h = np.asarray(theta_half, np.float32)
  e = np.clip(-lr * (alpha * np.sign(h) * grad + beta), -5.0, 5.0)
  new = np.where(h != 0, h * np.exp(e), h)
  norm = np.linalg.norm(new)
  if cap is not None and norm > cap:
    new = new * cap / norm
  return new


def _tree():
  rng = np.random.default_rng(0)
  w = rng.normal(size=(4, 5)).astype(np.float32)
  w[0, :2] = 0.0
  return {"w": w, "b": rng.normal(size=(5,)).astype(np.float32)}


def test_hyperbolic_step_matches_reference():
  params = _tree()
  grads = jax.tree.map(lambda x: np.cos(3.0 * x) * 0.5, params)
  tx = osp.hyperbolic_step(0.05, alpha=30.0, beta=0.1, max_weight_norm=None)
  updates, state = tx.update(grads, tx.init(params), params)
  expected = _ham_reference(params["w"], grads["w"], 0.05, 30.0, 0.1, None)
  np.testing.assert_allclose(params["w"] + updates["w"], expected, rtol=1e-6, atol=1e-7)
  # 1-D leaves are not eligible: untouched by the hyperbolic step.
  np.testing.assert_array_equal(updates["b"], np.zeros(5, np.float32))
  assert int(state.count) == 1 and int(state.skipped_leaves) == 0


def test_hyperbolic_factor_matches_reference_and_keeps_zeros():
  w = _tree()["w"]
  g = np.cos(3.0 * w) * 40.0  # large enough that some exponents hit the ±5 clip
  out = osp.hyperbolic_factor(jnp.asarray(w), jnp.asarray(g), 0.05, 30.0, 0.1)
  np.testing.assert_allclose(out, _ham_reference(w, g, 0.05, 30.0, 0.1, None), rtol=1e-6)
  np.testing.assert_array_equal(np.asarray(out)[0, :2], np.zeros(2, np.float32))


def test_exponent_clip_and_cap():
  params = {"w": np.full((3, 3), 2.0, np.float32)}
  grads = {"w": np.full((3, 3), 1.0, np.float32)}
  # Unclipped exponent would be -100: clipped to -5.
  tx = osp.hyperbolic_step(1.0, alpha=100.0, beta=0.0, max_weight_norm=None)
  u, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_allclose(params["w"] + u["w"], 2.0 * np.exp(-5.0), rtol=1e-6)
  # Growth by exp(5) then a per-tensor norm cap, on the 2-D and on the 1-D leaf alike.
  params = {"w": np.full((3, 3), 2.0, np.float32), "b": np.full((4,), 10.0, np.float32)}
  grads = {"w": np.full((3, 3), -1.0, np.float32), "b": np.zeros((4,), np.float32)}
  tx = osp.hyperbolic_step(1.0, alpha=100.0, beta=0.0, max_weight_norm=5.0)
  u, _ = tx.update(grads, tx.init(params), params)
  for k in params:
    new = params[k] + u[k]
    np.testing.assert_allclose(np.linalg.norm(new), 5.0, rtol=1e-5)
  expected = _ham_reference(params["w"], grads["w"], 1.0, 100.0, 0.0, 5.0)
  np.testing.assert_allclose(params["w"] + u["w"], expected, rtol=1e-5)


def test_pruned_zeros_stay_exactly_zero_under_ham():
  params = _tree()
  tx = osp.ham(optax.sgd(0.0), learning_rate=0.1, alpha=200.0, beta=1e-3)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  step = jax.jit(tx.update)
  for _ in range(3):
    updates, state = step(grads, state, params)
    params = optax.apply_updates(params, updates)
  w = np.asarray(params["w"])
  assert np.all(w[0, :2] == 0.0)
  assert np.all(w[0, 2:] != 0.0)


@pytest.mark.parametrize("cap", [1000.0, None])
def test_non_finite_gradient_never_corrupts_params(cap):
  params = _tree()
  grads = jax.tree.map(lambda x: np.full_like(x, 0.1), params)
  grads["w"][1, 1] = np.nan
  tx = osp.hyperbolic_step(0.1, alpha=200.0, max_weight_norm=cap)
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  # The whole leaf keeps its value; the skip is counted.
  np.testing.assert_array_equal(updates["w"], np.zeros_like(params["w"]))
  assert int(state.skipped_leaves) == 1
  grads["w"][1, 1] = np.inf
  updates, state = jax.jit(tx.update)(grads, state, params)
  assert int(state.skipped_leaves) == 2
  # HAM guards its base too: the parameters and the base state stay finite.
  grads["w"][1, 1] = np.nan
  tx = osp.ham(optax.sgd(0.1, momentum=0.9), learning_rate=0.1)
  state = tx.init(params)
  updates, state = jax.jit(tx.update)(grads, state, params)
  new = optax.apply_updates(params, updates)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(new))


@pytest.mark.parametrize("cap", [10.0, None])
def test_overflowing_result_reverts_entry(cap):
  params = {"w": np.array([[1e38, 1.0]], np.float32)}
  grads = {"w": np.full((1, 2), -1.0, np.float32)}
  tx = osp.hyperbolic_step(1.0, alpha=100.0, beta=0.0, max_weight_norm=cap)
  updates, state = tx.update(grads, tx.init(params), params)
  new = params["w"] + np.asarray(updates["w"])
  # The overflowing entry keeps its value, the other one takes the step; a norm that overflows
  # float32 leaves the leaf uncapped rather than zeroed.
  assert new[0, 0] == np.float32(1e38)
  np.testing.assert_allclose(new[0, 1], np.exp(5.0), rtol=1e-6)
  assert int(state.skipped_leaves) == 0


def test_skipped_leaf_is_untouched_even_above_the_cap():
  # The library's non-finite policy (docs/nonfinite.md): a skipped leaf emits exactly 0, the
  # norm cap included; the next finite step caps it.
  params = {"w": np.full((2, 2), 10.0, np.float32)}
  grads = {"w": np.array([[np.nan, 0.0], [0.0, 0.0]], np.float32)}
  tx = osp.hyperbolic_step(0.1, max_weight_norm=5.0)
  updates, state = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(updates["w"], np.zeros((2, 2), np.float32))
  assert int(state.skipped_leaves) == 1
  updates, state = tx.update({"w": np.zeros((2, 2), np.float32)}, state, params)
  np.testing.assert_allclose(params["w"] + updates["w"], np.full((2, 2), 2.5), rtol=1e-6)
  assert int(state.skipped_leaves) == 1


def test_where_selects_leaves():
  params = _tree()
  grads = jax.tree.map(lambda x: np.full_like(x, 0.3), params)
  tx = osp.hyperbolic_step(0.1, alpha=5.0, max_weight_norm=None, where={"w": False, "b": True})
  updates, _ = tx.update(grads, tx.init(params), params)
  np.testing.assert_array_equal(updates["w"], np.zeros_like(params["w"]))
  expected = _ham_reference(params["b"], grads["b"], 0.1, 5.0, 1e-3, None)
  np.testing.assert_allclose(params["b"] + updates["b"], expected, rtol=1e-6)


@pytest.mark.parametrize("base_factory", [optax.sgd, lambda s: optax.adamw(s, weight_decay=0.0)],
                         ids=["sgd", "adamw"])
def test_schedule_in_lockstep_with_base(base_factory):
  # A schedule that is 0 after step 0: from step 1 on, base and HAM factor are both identity.
  schedule = optax.piecewise_constant_schedule(0.1, {1: 0.0})
  params = {"w": np.full((2, 3), 0.5, np.float32)}
  grads = {"w": np.full((2, 3), 0.2, np.float32)}
  tx = osp.ham(base_factory(schedule), learning_rate=schedule, alpha=10.0, beta=0.0,
               max_weight_norm=None)
  state = tx.init(params)
  step = jax.jit(tx.update)
  updates, state = step(grads, state, params)
  assert np.all(np.asarray(updates["w"]) < 0)
  params = optax.apply_updates(params, updates)
  for _ in range(2):
    updates, state = step(grads, state, params)
    np.testing.assert_array_equal(updates["w"], np.zeros((2, 3), np.float32))
  # The other order (a schedule that starts at 0) moves only from step 1 on.
  schedule = optax.piecewise_constant_schedule(0.0, {1: 1.0e6})
  tx = osp.hyperbolic_step(lambda c: jnp.where(c >= 1, 0.1, 0.0), alpha=10.0, beta=0.0,
                           max_weight_norm=None)
  state = tx.init(params)
  u0, state = tx.update(grads, state, params)
  u1, state = tx.update(grads, state, params)
  np.testing.assert_array_equal(u0["w"], np.zeros((2, 3), np.float32))
  expected = _ham_reference(params["w"], grads["w"], 0.1, 10.0, 0.0, None)
  np.testing.assert_allclose(params["w"] + u1["w"], expected, rtol=1e-6)


def test_ham_equals_compose_and_uses_raw_gradient():
  params = _tree()
  grads = jax.tree.map(lambda x: np.sin(x).astype(np.float32), params)
  base = optax.adamw(0.01)
  tx = osp.ham(base, learning_rate=0.01, alpha=50.0, beta=1e-2)
  updates, _ = tx.update(grads, tx.init(params), params)
  base_u, _ = base.update(grads, base.init(params), params)
  half = optax.apply_updates(params, base_u)
  # The hyperbolic step uses the raw gradient and the sign of the half step.
  expected = _ham_reference(half["w"], grads["w"], 0.01, 50.0, 1e-2, 1000.0)
  np.testing.assert_allclose(params["w"] + updates["w"], expected, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(params["b"] + updates["b"], half["b"], rtol=1e-6)


@pytest.mark.parametrize("order", ["adamw_first", "mirror_first"])
def test_hyperbolic_adamw_order(order):
  params = _tree()
  grads = jax.tree.map(lambda x: np.sin(x).astype(np.float32), params)
  tx = osp.hyperbolic_adamw(0.01, weight_decay=0.1, alpha=50.0, beta=1e-2, order=order,
                            max_weight_norm=None)
  updates, _ = tx.update(grads, tx.init(params), params)
  adamw = optax.adamw(0.01, weight_decay=0.1)
  if order == "adamw_first":
    au, _ = adamw.update(grads, adamw.init(params), params)
    expected = _ham_reference(params["w"] + au["w"], grads["w"], 0.01, 50.0, 1e-2, None)
  else:
    mid = dict(params)
    mid["w"] = _ham_reference(params["w"], grads["w"], 0.01, 50.0, 1e-2, None)
    au, _ = adamw.update(grads, adamw.init(mid), mid)
    expected = mid["w"] + au["w"]
  np.testing.assert_allclose(params["w"] + updates["w"], expected, rtol=1e-5, atol=1e-7)
  # With a potential the mirror step is mirror descent (biases left to AdamW).
  tx = osp.hyperbolic_adamw(0.01, potential=osp.potentials.ham_log(50.0), order=order)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert all(bool(jnp.all(jnp.isfinite(u))) for u in jax.tree.leaves(updates))


def test_keeps_bfloat16():
  params = {"w": jnp.ones((2, 2), jnp.bfloat16)}
  tx = osp.hyperbolic_step(0.1)
  updates, _ = tx.update({"w": jnp.ones((2, 2), jnp.bfloat16)}, tx.init(params), params)
  assert updates["w"].dtype == jnp.bfloat16


def test_none_leaves_and_missing_params():
  params = {"w": jnp.ones((2, 2)), "skip": None}
  tx = osp.hyperbolic_step(0.1)
  updates, _ = tx.update({"w": jnp.ones((2, 2)), "skip": None}, tx.init(params), params)
  assert updates["skip"] is None
  with pytest.raises(ValueError, match="params"):
    tx.update({"w": jnp.ones((2, 2))}, tx.init(params))


@pytest.mark.parametrize("kwargs,name", [
    ({"learning_rate": -0.1}, "learning_rate"),
    ({"learning_rate": 0.1, "beta": -1.0}, "beta"),
    ({"learning_rate": 0.1, "alpha": float("nan")}, "alpha"),
    ({"learning_rate": 0.1, "max_weight_norm": 0.0}, "max_weight_norm"),
    ({"learning_rate": 0.1, "where": {"w": 1}}, "where"),
])
def test_bad_arguments(kwargs, name):
  with pytest.raises(ValueError, match=name) as info:
    osp.hyperbolic_step(**kwargs)
  bad = next(v for k, v in kwargs.items() if k == name)
  assert str(bad) in str(info.value) or name == "where"


def test_bad_ham_and_order_arguments():
  with pytest.raises(ValueError, match="base"):
    osp.ham("sgd", learning_rate=0.1)
  with pytest.raises(ValueError, match="order.*'sideways'"):
    osp.hyperbolic_adamw(0.1, order="sideways")


_ODD_SHAPES = {"a": (1, 1), "b": (7, 129), "c": (3, 3, 17, 33), "bias": (129,)}


def _odd_tree(dtype):
  rng = np.random.default_rng(1)
  params = {k: jnp.asarray(rng.normal(size=s) * 0.5, dtype) for k, s in _ODD_SHAPES.items()}
  grads = {k: jnp.asarray(rng.normal(size=s), dtype) for k, s in _ODD_SHAPES.items()}
  masks = {k: (None if len(s) < 2 else jnp.asarray(rng.random(s) < 0.7))
           for k, s in _ODD_SHAPES.items()}
  return params, grads, masks


def _run(tx, params, grads, masks, steps=3):
  state = tx.init(params)
  step = jax.jit(lambda g, s, p, m: tx.update(g, s, p, **({} if m is None else {"masks": m})))
  for _ in range(steps):
    updates, state = step(grads, state, params, masks)
    params = optax.apply_updates(params, updates)
  return params, state


@pytest.mark.parametrize("dtype,with_masks", [
    (jnp.float32, False), (jnp.float32, True), (jnp.bfloat16, True)],
    ids=["f32-dense", "f32-masks", "bf16-masks"])
def test_pallas_backend_matches_xla(dtype, with_masks):
  params, grads, masks = _odd_tree(dtype)
  masks = masks if with_masks else None
  bases = {"sgd": lambda: optax.sgd(0.05, momentum=0.9),
           "adamw": lambda: optax.adamw(0.05, weight_decay=0.1)}
  for name, base in bases.items():
    # A cap of 3 binds on the larger leaves, so the cap after the kernel is exercised too.
    out = {backend: _run(osp.ham(base(), 0.05, alpha=20.0, beta=0.1, max_weight_norm=3.0,
                                 backend=backend), params, grads, masks)
           for backend in ("xla", "pallas")}
    for k in _ODD_SHAPES:
      x = np.asarray(out["xla"][0][k], np.float32)
      y = np.asarray(out["pallas"][0][k], np.float32)
      # float32: the kernel returns θ'' − θ and the step adds θ back (one rounding of θ's size);
      # bfloat16: the kernel does not round θ½ to bfloat16 first.
      tol = 1e-6 if dtype == jnp.float32 else 2e-2
      np.testing.assert_allclose(y, x, rtol=tol, atol=tol * np.abs(x).max(), err_msg=name + k)
      assert out["pallas"][0][k].dtype == dtype
      if with_masks and masks[k] is not None:
        assert np.all(x[~np.asarray(masks[k])] == 0) and np.all(y[~np.asarray(masks[k])] == 0)
        if dtype == jnp.float32:  # bfloat16 rounding may land a kept entry on 0.
          assert np.all(x[np.asarray(masks[k])] != 0)
      assert np.linalg.norm(x) <= 3.0 * (1 + tol)
    assert out["xla"][1].inner_states[1].count == out["pallas"][1].inner_states[1].count == 3


def test_masks_and_backend_of_hyperbolic_step():
  params, grads, masks = _odd_tree(jnp.float32)
  tx = osp.hyperbolic_step(0.1, alpha=5.0, max_weight_norm=None)
  new, _ = _run(tx, params, grads, masks, steps=1)
  for k, m in masks.items():
    expected = _ham_reference(params[k], grads[k], 0.1, 5.0, 1e-3, None)
    if m is None:  # 1-D: not eligible, untouched.
      np.testing.assert_array_equal(new[k], params[k])
      continue
    np.testing.assert_allclose(new[k], np.where(m, expected, 0.0), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("factory", [
    lambda b: osp.hyperbolic_step(0.1, backend=b),
    lambda b: osp.ham(optax.sgd(0.1), 0.1, backend=b),
    lambda b: osp.hyperbolic_adamw(0.1, backend=b),
], ids=["hyperbolic_step", "ham", "hyperbolic_adamw"])
def test_bad_backend(factory):
  with pytest.raises(ValueError, match="backend.*'cuda'"):
    factory("cuda")
