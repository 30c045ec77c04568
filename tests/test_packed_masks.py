"""Bit-packed masks (``sparse(..., packed_masks=True)``), the in-place non-finite guard of
``sparse()`` and the tie-break noise of RigL: exact semantics and the structure of the step.

Speed is measured in ``benchmarks/masks.py``; here the compiled step's structure is checked
(no copy of a parameter-sized float buffer), never its time.
"""

from __future__ import annotations

import pathlib
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sparse as osp
from optax_sparse import _nonfinite, _select_in_place
from optax_sparse.masks.rules import dynamic
from optax_sparse.masks.sparse import PackedMask

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
import checkpointing  # noqa: E402


def _params(seed: int = 0, three_d: bool = False) -> dict:
  rng = np.random.default_rng(seed)
  params = {
      "w": jnp.asarray(rng.normal(size=(12, 21)), jnp.float32),
      "b": jnp.zeros((21,), jnp.float32),
  }
  if three_d:
    params["v"] = jnp.asarray(rng.normal(size=(3, 4, 13)), jnp.float32)
  return params


def _grads(params: dict, i: int) -> dict:
  return jax.tree.map(lambda x: jnp.sin(x * (i + 1.0)) + 0.1 * i, params)


@pytest.mark.parametrize("shape", [(), (1,), (7,), (8,), (5, 13), (2, 3, 16), (4, 1), (3, 0)])
def test_pack_unpack_round_trip_keeps_leading_axes(shape):
  rng = np.random.default_rng(len(shape))
  mask = rng.random(shape) < 0.4
  packed = PackedMask.pack(mask)
  assert packed.bits.dtype == jnp.uint8 and packed.shape == shape
  last = shape[-1] if shape else 1
  assert packed.bits.shape == (shape[:-1] if shape else ()) + (-(-last // 8),)
  np.testing.assert_array_equal(np.asarray(packed.unpack()), mask)
  # Bit j of the last axis is bit j % 8 (least significant first) of byte j // 8.
  if shape and last:
    flat = np.asarray(packed.bits).reshape(-1, packed.bits.shape[-1])
    ref = np.asarray(mask).reshape(-1, last)
    for j in range(last):
      np.testing.assert_array_equal((flat[:, j // 8] >> (j % 8)) & 1, ref[:, j])


def _run(tx, params, steps: int):
  state = tx.init(params)
  update = jax.jit(tx.update)
  for i in range(steps):
    updates, state = update(_grads(params, i), state, params)
    params = optax.apply_updates(params, updates)
  return params, state


def test_packed_and_bool_masks_give_the_same_trajectory():
  params = _params()
  runs = []
  for packed in (False, True):
    tx = osp.sparse(optax.adamw(1e-2), osp.rigl(0.5, every=2), 0.75, packed_masks=packed)
    runs.append((osp.get_masks(tx.init(params)), *_run(tx, params, 4)))
  (m0, p_bool, s_bool), (m0_packed, p_packed, s_packed) = runs
  assert checkpointing.trees_identical(m0, m0_packed)
  assert checkpointing.trees_identical(p_bool, p_packed)
  assert checkpointing.trees_identical(s_bool.inner_state, s_packed.inner_state)
  m_bool, m_packed = osp.get_masks(s_bool), osp.get_masks(s_packed)
  assert checkpointing.trees_identical(m_bool, m_packed)
  assert m_packed["b"] is None and m_packed["w"].dtype == jnp.bool_
  assert isinstance(s_packed.masks["w"], PackedMask)
  # RigL moved the masks during the run, so the comparison is not vacuous.
  assert not checkpointing.trees_identical(m_bool, m0)


def test_packed_masks_are_eight_times_smaller():
  params = {"w": jnp.ones((64, 128)), "k": jnp.ones((3, 3, 16, 32)), "b": jnp.zeros((128,))}

  def mask_bytes(packed):
    state = jax.eval_shape(osp.sparse(optax.adam(1e-3), osp.rigl(), 0.9,
                                      packed_masks=packed).init, params)
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state.masks))

  assert mask_bytes(False) == 64 * 128 + 3 * 3 * 16 * 32
  assert mask_bytes(False) == 8 * mask_bytes(True)


def test_packed_state_works_with_reports_wrappers_and_checkpoints(tmp_path):
  params = _params(1)
  tx = optax.chain(optax.clip(1.0), osp.sparse(optax.adam(1e-2), osp.rigl(0.5, every=2), 0.75,
                                               packed_masks=True))
  params, state = _run(tx, params, 3)
  masks = osp.get_masks(state)
  report = osp.sparsity_report(params, state)
  ref = osp.sparsity_report(params, masks=masks)
  assert report.to_markdown() == ref.to_markdown()
  dense_again, _ = osp.decompress(osp.compress(params, masks=masks))
  assert checkpointing.trees_identical(dense_again, params)
  checkpointing.save(tmp_path / "ckpt", (params, state))
  restored = checkpointing.restore(tmp_path / "ckpt", (params, tx.init(params)))
  assert checkpointing.trees_identical(restored, (params, state))
  assert jax.tree.structure(restored) == jax.tree.structure((params, state))
  assert checkpointing.trees_identical(osp.get_masks(restored[1]), masks)


def test_packed_masks_must_be_a_bool():
  with pytest.raises(ValueError, match="packed_masks"):
    osp.sparse(optax.adam(1e-3), osp.rigl(), 0.5, packed_masks=1)


def _entry_copies(tx, params) -> list[str]:
  """The ``copy`` instructions of float32 arrays in the compiled, donated step's entry."""
  grads = jax.tree.map(jnp.ones_like, params)

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  text = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), grads).compile()
  text = text.as_text()
  entry = text[text.index("\nENTRY"):]
  return re.findall(r"= f32\[[0-9,]+\][^ ]* copy\(", entry)


@pytest.mark.parametrize("packed", [False, True])
def test_donated_sparse_step_updates_the_moments_in_place(packed):
  """No copy of a moment: the guard's select happens where Adam writes its moments."""
  params = {"w": jnp.ones((64, 96))}
  for rule in (osp.static_random(), osp.rigl(every=2)):
    tx = osp.sparse(optax.adamw(1e-3), rule, 0.9, packed_masks=packed)
    assert _entry_copies(tx, params) == []
  # The plain guard, for contrast, copies every moment before it is overwritten.
  assert _entry_copies(_PlainGuardSparse(), params)


def _PlainGuardSparse():  # noqa: N802 - a factory named like the transformation it builds.
  inner = optax.adamw(1e-3)

  def update(grads, state, params):
    ok = _nonfinite.ok_tree(grads, params)
    return _nonfinite.guard(inner, grads, state, params, ok)

  return optax.GradientTransformation(inner.init, update)


@pytest.mark.parametrize("inner", [
    lambda: optax.chain(optax.clip_by_global_norm(0.5), optax.adam(1e-2, b1=0.8)),
    lambda: optax.adam(1e-2, nesterov=True),
    lambda: optax.amsgrad(1e-2),
    lambda: optax.sgd(1e-2, momentum=0.9),  # the update is the new trace itself
    lambda: optax.lion(1e-3),
])
def test_in_place_guard_is_the_policy_and_bit_identical_to_optax(inner):
  """Finite steps: exactly optax's own update and state; a skipped leaf: 0 and its old state."""
  tx = optax.with_extra_args_support(inner())
  params = _params(2, three_d=True)
  state = tx.init(params)
  guarded = jax.jit(lambda g, s, p, k: _select_in_place.guard(tx, g, s, p, k))
  plain = jax.jit(lambda g, s, p: tx.update(g, s, p))
  for i in range(3):
    grads = _grads(params, i)
    if i == 1:
      grads = {**grads, "v": grads["v"].at[0, 0, 0].set(jnp.nan)}
    ok = _nonfinite.ok_tree(grads, params)
    updates, new_state = guarded(grads, state, params, ok)
    # The policy's reference: inner sees the skipped leaf as a zero gradient and parameter.
    ref_updates, ref_state = plain(_nonfinite.zero_bad(grads, ok), state,
                                   _nonfinite.zero_bad(params, ok))
    # XLA CPU may round a fused expression differently in another program (FMA contraction):
    # equal to a few ulp, and exactly the policy where a leaf is skipped.
    for name in ("w", "b") if i == 1 else ("w", "b", "v"):
      np.testing.assert_allclose(np.asarray(updates[name]), np.asarray(ref_updates[name]),
                                 rtol=2e-6, atol=1e-9)
    kept = _nonfinite.keep_state(tx, ref_state, state, ok, params)
    for a, b in zip(jax.tree.leaves(new_state), jax.tree.leaves(kept), strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-6, atol=1e-9)
    if i == 1:
      assert bool(jnp.all(updates["v"] == 0))
      old_v = [x for x in jax.tree.leaves(state) if jnp.shape(x) == (3, 4, 13)]
      new_v = [x for x in jax.tree.leaves(new_state) if jnp.shape(x) == (3, 4, 13)]
      assert checkpointing.trees_identical(new_v, old_v)
    state = new_state
    params = optax.apply_updates(params, updates)
  assert bool(jnp.all(updates["w"] != 0))


def test_tie_noise_is_uniform_with_the_given_std_and_keyed():
  shape = (1, 256, 512)
  a = dynamic._tie_noise(jax.random.PRNGKey(0), shape, 1e-5)
  b = dynamic._tie_noise(jax.random.PRNGKey(0), shape, 1e-5)
  c = dynamic._tie_noise(jax.random.PRNGKey(1), shape, 1e-5)
  assert a.shape == shape and a.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert float(jnp.mean(a != c)) > 0.99
  half_width = 1e-5 * 3.0 ** 0.5
  assert float(jnp.max(jnp.abs(a))) <= half_width
  assert abs(float(jnp.std(a)) - 1e-5) < 1e-7
  assert abs(float(jnp.mean(a))) < 1e-7
  # Uniform: each tenth of the range holds about a tenth of the draws.
  counts = np.histogram(np.asarray(a).ravel(), bins=10, range=(-half_width, half_width))[0]
  np.testing.assert_allclose(counts / a.size, 0.1, atol=0.005)
