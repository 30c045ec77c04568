"""Fine-tuning that keeps the mask: `keep_mask`, the `fixed_mask` rule and `merge_masked`."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sparse as osp

STEPS = 12


def _pruned_checkpoint(sparsity: float = 0.9, seed: int = 0) -> dict:
  """A 90% sparse two-layer model: exact zeros in the kernels, dense biases."""
  rng = np.random.default_rng(seed)
  params = {}
  for name, shape in (("w1", (16, 12)), ("w2", (12, 4))):
    w = rng.normal(size=shape).astype(np.float32)
    keep = np.zeros(w.size, bool)
    keep[rng.permutation(w.size)[: int(round((1 - sparsity) * w.size))]] = True
    params[name] = jnp.asarray(np.where(keep.reshape(shape), w, 0.0))
  params["b1"] = jnp.asarray(rng.normal(size=(12,)), jnp.float32)
  return params


def _loss(params, x, y):
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.mean((h @ params["w2"] - y) ** 2)


def _data():
  rng = np.random.default_rng(1)
  return (jnp.asarray(rng.normal(size=(32, 16)), jnp.float32),
          jnp.asarray(rng.normal(size=(32, 4)), jnp.float32))


def _finetune(tx, params, steps=STEPS):
  x, y = _data()

  @jax.jit
  def step(params, state):
    grads = jax.grad(_loss)(params, x, y)
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  return params, state


OPTIMIZERS = {
    "adamw": lambda: optax.adamw(1e-2, weight_decay=1e-2),
    "sgd_momentum": lambda: optax.sgd(1e-2, momentum=0.9),
    "lion_clipped": lambda: optax.chain(optax.clip_by_global_norm(1.0), optax.lion(1e-3)),
}


@pytest.mark.parametrize("compact", [False, True])
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_finetuning_a_90_percent_sparse_checkpoint_keeps_the_zero_pattern(name, compact):
  params0 = _pruned_checkpoint()
  params, state = _finetune(osp.keep_mask(OPTIMIZERS[name](), compact_state=compact), params0)
  grads = jax.grad(_loss)(params0, *_data())
  for key in ("w1", "w2"):
    before, after = np.asarray(params0[key]), np.asarray(params[key])
    np.testing.assert_array_equal(after != 0, before != 0)
    assert np.all(after[before == 0] == 0.0) and after.dtype == before.dtype
    # Every active entry with a gradient was fine-tuned (a frozen model would pass otherwise).
    trained = (before != 0) & (np.asarray(grads[key]) != 0)
    assert trained.sum() >= 5 and np.all(after[trained] != before[trained])
    np.testing.assert_array_equal(osp.get_masks(state)[key], before != 0)
  assert osp.get_masks(state)["b1"] is None
  assert not np.array_equal(params["b1"], params0["b1"])  # biases stay dense and train


def test_compact_state_matches_the_dense_state_and_is_density_sized():
  params0 = _pruned_checkpoint()
  full, full_state = _finetune(osp.keep_mask(optax.adam(1e-2)), params0)
  compact, compact_state = _finetune(osp.keep_mask(optax.adam(1e-2), compact_state=True), params0)
  for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(compact), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  mu_full = full_state.inner_state[0].mu
  mu_compact = compact_state.inner_state[0].mu
  for key in ("w1", "w2"):
    nnz = int(np.count_nonzero(params0[key]))
    assert mu_compact[key].shape == (nnz,) and compact_state.indices[key].dtype == jnp.int32
    assert mu_full[key].shape == params0[key].shape
    # The default form's moments are exactly zero at the pruned entries (masked gradients).
    assert np.all(np.asarray(mu_full[key])[np.asarray(params0[key]) == 0] == 0.0)
    flat = np.asarray(mu_full[key]).ravel()[np.asarray(compact_state.indices[key])]
    np.testing.assert_allclose(mu_compact[key], flat, rtol=1e-6, atol=1e-8)
  assert mu_compact["b1"].shape == (12,)


@pytest.mark.parametrize("compact", [False, True])
def test_one_sgd_step_against_numpy(compact):
  w = np.array([[0.0, 1.5, -2.0], [0.5, 0.0, 0.0]], np.float32)
  b = np.array([0.0, 1.0, 2.0], np.float32)
  g_w = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
  g_b = np.array([1.0, 1.0, 1.0], np.float32)
  params = {"w": jnp.asarray(w), "b": jnp.asarray(b)}
  tx = osp.keep_mask(optax.sgd(0.1), compact_state=compact)
  state = tx.init(params)
  updates, _ = tx.update({"w": jnp.asarray(g_w), "b": jnp.asarray(g_b)}, state, params)
  new = optax.apply_updates(params, updates)
  np.testing.assert_array_equal(new["w"], np.where(w != 0, w - np.float32(0.1) * g_w, 0.0))
  np.testing.assert_array_equal(new["b"], b - np.float32(0.1) * g_b)  # dense: the zero moves


@pytest.mark.parametrize("compact", [False, True])
def test_a_saved_mask_is_kept_instead_of_the_zeros(compact):
  # The saved mask has an active entry whose value is exactly 0 (it may grow) and leaves a
  # nonzero entry outside (it lands at 0 on the first step).
  w = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)
  mask = np.array([[True, True], [False, True]])
  params = {"w": jnp.asarray(w)}
  tx = osp.keep_mask(optax.sgd(0.5), {"w": jnp.asarray(mask)}, compact_state=compact)
  state = tx.init(params)
  updates, state = tx.update({"w": jnp.ones((2, 2))}, state, params)
  new = np.asarray(optax.apply_updates(params, updates)["w"])
  np.testing.assert_array_equal(new, np.where(mask, w - 0.5, 0.0))
  np.testing.assert_array_equal(osp.get_masks(state)["w"], mask)


def test_fixed_mask_rule_in_sparse_never_changes_the_masks():
  params = _pruned_checkpoint()
  tx = osp.sparse(optax.adam(1e-2), osp.fixed_mask(), None)
  _, state = _finetune(tx, params, steps=3)
  np.testing.assert_array_equal(osp.get_masks(state)["w1"], np.asarray(params["w1"]) != 0)
  with pytest.raises(ValueError, match="sparsity must be None"):
    osp.sparse(optax.adam(1e-2), osp.fixed_mask(), 0.5)


def test_bad_arguments_raise():
  with pytest.raises(ValueError, match="compact_state"):
    osp.keep_mask(optax.sgd(0.1), compact_state=1)
  with pytest.raises(ValueError, match="where"):
    osp.keep_mask(optax.sgd(0.1), where=[1])
  tx = osp.keep_mask(optax.sgd(0.1), compact_state=True)
  with pytest.raises(ValueError, match="concrete masks"):
    jax.jit(tx.init)({"w": jnp.ones((2, 2))})
  with pytest.raises(ValueError, match="shape"):
    osp.keep_mask(optax.sgd(0.1), {"w": jnp.ones((3, 2), bool)}).init({"w": jnp.ones((2, 2))})


def test_merge_masked_lora_does_not_densify():
  params = _pruned_checkpoint()
  rng = np.random.default_rng(3)
  a = jnp.asarray(rng.normal(size=(16, 2)), jnp.float32)
  b = jnp.asarray(rng.normal(size=(2, 12)), jnp.float32)
  delta = {"w1": a @ b, "w2": None, "b1": None}
  merged = osp.merge_masked(params, delta)
  w1 = np.asarray(params["w1"])
  np.testing.assert_array_equal(np.asarray(merged["w1"]) != 0, w1 != 0)
  np.testing.assert_array_equal(
      merged["w1"], np.where(w1 != 0, w1 + np.asarray(a @ b), 0.0).astype(np.float32))
  assert merged["w2"] is params["w2"]
  # The plain merge densifies: this is what merge_masked prevents.
  assert np.mean(np.asarray(params["w1"] + a @ b) != 0) > 0.99
  with pytest.raises(ValueError, match="shape"):
    osp.merge_masked({"w": jnp.ones((2, 2))}, {"w": jnp.ones((2, 3))})
