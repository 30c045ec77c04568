"""The non-finite policy (docs/nonfinite.md), injected into every registered transformation.

A leaf whose gradient or parameter holds a NaN or an infinity is skipped for that step: its update
is exactly 0, every state leaf stays finite, mask counts never change and transformations with
a ``skipped_leaves`` counter count the skip. One jitted step per case (small shapes).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from common_cases import all_cases

# A registered chain whose first stage is a foreign optax optimizer (optax.scale_by_adam before
# osp.decoupled_weight_decay) feeds the raw gradient to that optimizer before any of ours sees
# it: outside the policy of this library (docs/nonfinite.md, "Where the policy ends"). It is
# injected wrapped in optax.apply_if_finite, the remedy the policy page gives for it.
FOREIGN_FIRST = {"decoupled_weight_decay_adam"}
CASES = all_cases()
PARAMS = [pytest.param(c, id=c.name) for c in CASES]


def _problem():
  params = {"w": jnp.linspace(-1.0, 1.0, 32, dtype=jnp.float32).reshape(4, 8),
            "b": jnp.array([0.5, -0.25, 0.1, 1.0], jnp.float32)}
  grads = {"w": jnp.linspace(0.3, -0.2, 32, dtype=jnp.float32).reshape(4, 8),
           "b": jnp.array([0.1, -0.2, 0.3, -0.4], jnp.float32)}
  return params, grads


def _float_leaves(tree):
  return [x for x in jax.tree.leaves(tree)
          if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]


def _skips(state):
  found = optax.tree.get_all_with_path(state, "skipped_leaves")
  return sum(int(v) for _, v in found), bool(found)


def _mask_counts(state):
  sentinel = object()
  masks = optax.tree.get(state, "masks", sentinel)
  if masks is sentinel:
    return None
  return [int(jnp.sum(m)) for m in jax.tree.leaves(masks)]


def _inject(kind, params, grads):
  g = dict(grads)
  p = dict(params)
  if kind == "nan_entry":
    g["w"] = g["w"].at[1, 2].set(jnp.nan)
  elif kind == "inf_entry":
    g["b"] = g["b"].at[0].set(jnp.inf)
  elif kind == "nan_leaf":
    g["w"] = jnp.full_like(g["w"], jnp.nan)
  elif kind == "nan_param":
    p["w"] = p["w"].at[0, 0].set(jnp.nan)
  bad = "b" if kind == "inf_entry" else "w"
  return p, g, bad


KINDS = ("nan_entry", "inf_entry", "nan_leaf", "nan_param")


@pytest.mark.parametrize("case", PARAMS)
def test_injection_keeps_state_finite_and_masks_exact(case):
  tx = case.build()
  if case.name in FOREIGN_FIRST:
    tx = optax.apply_if_finite(tx, max_consecutive_errors=10)
  params, grads = _problem()
  state = tx.init(params)
  step = jax.jit(lambda g, s, p: tx.update(g, s, p, **case.extra_args))
  for _ in range(2):
    u, state = step(grads, state, params)
    params = optax.apply_updates(params, u)
  for kind in KINDS:
    p_in, g_in, bad = _inject(kind, params, grads)
    counts = _mask_counts(state)
    skips, counted = _skips(state)
    u, new_state = step(g_in, state, p_in)
    # No state entry becomes non-finite (PILoT's best accuracy starts at -inf by design).
    for x, old in zip(_float_leaves(new_state), _float_leaves(state), strict=True):
      assert bool(jnp.all(jnp.isfinite(x) | ~jnp.isfinite(old))), (
          f"{case.name}/{kind}: a state leaf is not finite")
    for k, x in u.items():
      if k != bad:
        assert bool(jnp.all(jnp.isfinite(x))), f"{case.name}/{kind}: update {k} not finite"
    if counts is not None:
      assert _mask_counts(new_state) == counts, f"{case.name}/{kind}: mask counts changed"
    if counted:
      np.testing.assert_array_equal(u[bad], jnp.zeros_like(u[bad]))
      assert _skips(new_state)[0] == skips + 1, f"{case.name}/{kind}: skip not counted"
    if kind != "nan_param":
      new_params = optax.apply_updates(params, u)
      for x in jax.tree.leaves(new_params):
        assert bool(jnp.all(jnp.isfinite(x))), f"{case.name}/{kind}: params not finite"
    state = new_state
  if case.name in FOREIGN_FIRST:
    # The three non-finite gradients were skipped whole by optax.apply_if_finite.
    assert int(state.total_notfinite) == 3
  # And training goes on with finite values.
  u, state = step(grads, state, params)
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(u))


@pytest.mark.parametrize("name", ["sparse_rigl_adam", "sparse_acdc_adam", "ham_adamw"])
def test_inside_apply_if_finite(name):
  case = next(c for c in CASES if c.name == name)
  tx = optax.apply_if_finite(case.build(), max_consecutive_errors=5)
  params, grads = _problem()
  state = tx.init(params)
  step = jax.jit(tx.update)
  counts = _mask_counts(state)
  bad = dict(grads, w=grads["w"].at[0, 0].set(jnp.inf))
  for g in (grads, bad, grads):
    u, state = step(g, state, params)
    params = optax.apply_updates(params, u)
    for x in _float_leaves(state) + _float_leaves(params):
      assert bool(jnp.all(jnp.isfinite(x)))
    if counts is not None and name != "sparse_acdc_adam":
      assert _mask_counts(state) == counts
  # optax.apply_if_finite checks the incoming gradient: it skips the whole step, restores our
  # state (so our own counter stays 0) and counts the skip itself.
  assert int(state.total_notfinite) == 1 and _skips(state)[0] == 0


def test_acdc_global_compression_never_ranks_a_nan():
  rule = osp_acdc()
  tx = __import__("optax_sparse").sparse(optax.sgd(0.1), rule, sparsity=0.5)
  params, grads = _problem()
  state = tx.init(params)
  step = jax.jit(tx.update)
  totals = []
  for t in range(8):
    g = dict(grads, w=grads["w"].at[0, 0].set(jnp.nan)) if t == 1 else grads
    u, state = step(g, state, params)
    params = optax.apply_updates(params, u)
    totals.append(sum(int(jnp.sum(m)) for m in jax.tree.leaves(state.masks)))
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))
  # The phases alternate between the dense count (32) and the compressed one (16) only.
  assert set(totals) <= {32, 16} and 16 in totals


def osp_acdc():
  import optax_sparse as osp
  return osp.acdc(warmup_steps=1, sparse_steps=2, dense_steps=2, alternate_until=6,
                  final_sparse_from=7)


SCHEDULE_VALUES = (2.0, -1.0, float("nan"))


@pytest.mark.parametrize("value", SCHEDULE_VALUES, ids=["2", "-1", "nan"])
def test_out_of_range_schedules_keep_exact_counts(value):
  import optax_sparse as osp
  params = {"w": jnp.linspace(-1.0, 1.0, 200).reshape(10, 20)}
  grads = {"w": jnp.linspace(0.5, -0.5, 200).reshape(10, 20)}
  # RigL at 90%: a drop fraction out of range is clipped (NaN: nothing moves), never dense.
  rigl = osp.sparse(optax.sgd(0.1), osp.rigl(lambda t: jnp.float32(value), every=1), 0.9)
  # GMP whose sparsity schedule leaves its range after step 0: clipped (1 -> one entry), NaN
  # skips the event.
  gmp = osp.sparse(optax.sgd(0.1), osp.gradual_magnitude(begin_step=1, end_step=2, frequency=1),
                   lambda t: jnp.where(t == 0, 0.5, value).astype(jnp.float32))
  # SR-STE with a mask decay out of range: pruned entries emit at most 1·W, at least 0.
  ste = osp.sr_ste(optax.sgd(0.1), 1, 2, axis=-1, mask_decay=lambda t: jnp.float32(value))
  expected = {"rigl": 20, "gmp": {2.0: 1, -1.0: 200, }.get(value, 200)}
  for name, tx in (("rigl", rigl), ("gmp", gmp), ("ste", ste)):
    state = tx.init(params)
    step = jax.jit(tx.update)
    p = params
    for _ in range(3):
      u, state = step(grads, state, p)
      p = optax.apply_updates(p, u)
    masks = osp.get_masks(state)
    if name == "ste":
      w = state.dense["w"]
      b = min(max(0.0 if value != value else value, 0.0), 1.0)
      np.testing.assert_allclose(p["w"], jnp.where(masks["w"], w, b * w), rtol=1e-6)
      assert int(jnp.sum(masks["w"])) == 100
      continue
    assert int(jnp.sum(masks["w"])) == expected[name], (name, value)
    assert int(jnp.sum(p["w"] != 0)) <= expected[name]


def test_nan_sparsity_never_empties_a_mask():
  import optax_sparse as osp
  assert int(osp.count_for_density(50, jnp.float32(float("nan")))) == 1


@pytest.mark.parametrize("value,expected", [(2.0, 16), (-1.0, 1), (0.0, 1), (float("nan"), 8)],
                         ids=["2", "-1", "0", "nan"])
def test_nanoadam_density_schedule_out_of_range(value, expected):
  # k = clip(round(rho * n), 1, k_max) with k_max from max_density (0.5 of 32 entries = 16);
  # a NaN density keeps the current k (0.25 of 32 = 8 from step 0).
  import optax_sparse as osp
  params, grads = _problem()
  density = lambda t: jnp.where(t == 0, 0.25, value).astype(jnp.float32)  # noqa: E731
  tx = osp.nanoadam(0.01, density, refresh_every=1, max_density=0.5)
  state = tx.init(params)
  step = jax.jit(tx.update)
  for _ in range(3):
    u, state = step(grads, state, params)
    params = optax.apply_updates(params, u)
  assert int(state.moments["w"].valid) == expected
  assert int(jnp.sum(u["w"] != 0)) == expected
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in _float_leaves(state))


def test_zero_nans_chain_with_inf_keeps_rigl_finite_and_exact():
  # optax.zero_nans() replaces NaNs only: an Inf reaches sparse(adamw, rigl), which skips the
  # leaf (zero update, Adam moments kept, masks and their counts unchanged, skip counted).
  import optax_sparse as osp
  params = {"w": jnp.linspace(-1.0, 1.0, 16 * 64).reshape(16, 64), "b": jnp.zeros((64,))}
  grads = {"w": jnp.linspace(1.0, -0.5, 16 * 64).reshape(16, 64) + 0.01,
           "b": jnp.full((64,), 0.1)}
  tx = optax.chain(optax.zero_nans(),
                   osp.sparse(optax.adamw(0.01), osp.rigl(every=1), 0.9))
  state = tx.init(params)
  step = jax.jit(tx.update)
  counts = _mask_counts(state)
  for t in range(4):
    g = dict(grads, w=grads["w"].at[0, 0].set(jnp.inf)) if t == 1 else grads
    u, new_state = step(g, state, params)
    if t == 1:
      np.testing.assert_array_equal(u["w"], jnp.zeros_like(u["w"]))
      for x, old in zip(jax.tree.leaves(optax.tree.get(new_state, "mu")["w"]),
                        jax.tree.leaves(optax.tree.get(state, "mu")["w"]), strict=True):
        np.testing.assert_array_equal(x, old)
    state = new_state
    params = optax.apply_updates(params, u)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in _float_leaves((params, state)))
    assert _mask_counts(state) == counts
  assert _skips(state)[0] == 1


@pytest.mark.parametrize("rule", ["one_shot_magnitude", "global_magnitude", "gmp_last_event"])
def test_mask_update_on_a_skipped_step_is_postponed_not_lost(rule):
  # A one-shot pruning step (or GMP's last event) that meets a NaN gradient happens on the next
  # finite step, whole: the run ends at the requested count instead of staying dense.
  import optax_sparse as osp
  rules = {"one_shot_magnitude": osp.one_shot_magnitude(at_step=2),
           "global_magnitude": osp.global_magnitude(at_step=2),
           "gmp_last_event": osp.gradual_magnitude(begin_step=0, end_step=2, frequency=1)}
  tx = osp.sparse(optax.sgd(0.01), rules[rule], 0.5)
  params, grads = _problem()
  state = tx.init(params)
  step = jax.jit(tx.update)
  totals = []
  for t in range(5):
    g = dict(grads, w=grads["w"].at[0, 0].set(jnp.nan)) if t in (2, 3) else grads
    u, state = step(g, state, params)
    params = optax.apply_updates(params, u)
    totals.append(int(jnp.sum(osp.get_masks(state)["w"])))
  assert totals[2] == totals[3] == totals[1]  # nothing changes on the skipped steps
  assert totals[4] == 16 and bool(jnp.all(params["w"][~osp.get_masks(state)["w"]] == 0))
  assert not bool(state.mask_update_pending) and _skips(state)[0] == 2
