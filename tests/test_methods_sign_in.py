"""Sign-In against a NumPy reference of the m⊙w step and split, plus its invariants."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sparse as osp
from optax_sparse.methods import _factors


def _np_split(theta, gamma):
  m = np.sqrt((gamma + np.sqrt(gamma**2 + 4 * theta**2)) / 2)
  return m, theta / m


def test_split_matches_formula_and_invariants():
  theta = np.array([-3.0, -0.5, 0.0, 1e-6, 0.25, 7.0], np.float32)
  for gamma in (1.0, 0.1):
    m, w = _factors.split(jnp.asarray(theta), gamma)
    m_ref, w_ref = _np_split(theta.astype(np.float64), gamma)
    np.testing.assert_allclose(m, m_ref, rtol=1e-6)
    np.testing.assert_allclose(w, w_ref, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(m * w, theta, rtol=2e-7, atol=0)  # theta = m * w to an ulp
    np.testing.assert_allclose(m**2 - w**2, gamma, rtol=1e-5)  # m^2 - w^2 = gamma
    assert float(m[2]) == pytest.approx(np.sqrt(gamma)) and float(w[2]) == 0.0


def test_matches_numpy_reference_with_resets():
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(4, 3)).astype(np.float32)
  b0 = rng.normal(size=(3,)).astype(np.float32)
  lr, gamma, every = 0.05, 0.7, 3
  tx = osp.sign_in(optax.sgd(lr), reset_every=every, gamma=gamma)
  params = {"w": jnp.asarray(w0), "b": jnp.asarray(b0)}
  state = tx.init(params)
  step = jax.jit(tx.update)
  m, w = _np_split(w0.astype(np.float64), gamma)
  theta, bias = w0.astype(np.float64), b0.astype(np.float64)
  for t in range(8):
    g = rng.normal(size=(4, 3))
    gb = rng.normal(size=(3,))
    if t > 0 and t % every == 0:
      m, w = _np_split(theta, gamma)
    m, w = m - lr * w * g, w - lr * m * g
    theta, bias = m * w, bias - lr * gb
    u, state = step({"w": jnp.asarray(g, jnp.float32), "b": jnp.asarray(gb, jnp.float32)},
                    state, params)
    params = optax.apply_updates(params, u)
    np.testing.assert_allclose(params["w"], theta, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(params["b"], bias, rtol=2e-5, atol=2e-6)
  assert state.w["b"] is None and state.m["b"] is None


def test_reset_keeps_params_and_restores_gamma():
  # Weight decay on the factors shrinks m^2 - w^2; the reset restores it without moving theta.
  rng = np.random.default_rng(1)
  params = {"w": jnp.asarray(rng.normal(size=(5, 5)), jnp.float32)}
  tx = osp.sign_in(optax.sgd(0.1, momentum=0.9), reset_every=6, gamma=1.0)
  with_decay = osp.sign_in(optax.chain(optax.add_decayed_weights(0.5), optax.sgd(0.1)),
                           reset_every=6, gamma=1.0)
  for t in (tx, with_decay):
    state = t.init(params)
    step = jax.jit(t.update)
    for _ in range(6):
      g = {"w": jnp.asarray(rng.normal(size=(5, 5)), jnp.float32)}
      u, state = step(g, state, params)
      params = optax.apply_updates(params, u)
    if t is with_decay:
      assert float(jnp.max(state.m["w"] ** 2 - state.w["w"] ** 2)) < 0.6
  # Step 6 resets. With a zero gradient and no decay the parameters do not move.
  state = with_decay.init(params)
  state = state._replace(count=jnp.asarray(6, jnp.int32),
                         m=jax.tree.map(lambda x: 0.5 * x, state.m))
  plain = osp.sign_in(optax.sgd(0.1), reset_every=6, gamma=1.0)
  state = plain.init(params)._replace(count=jnp.asarray(6, jnp.int32), m=state.m)
  u, state = jax.jit(plain.update)({"w": jnp.zeros((5, 5))}, state, params)
  new = optax.apply_updates(params, u)
  spacing = np.spacing(np.abs(np.asarray(params["w"])))
  assert np.all(np.abs(np.asarray(new["w"]) - np.asarray(params["w"])) <= spacing)
  np.testing.assert_allclose(state.m["w"] ** 2 - state.w["w"] ** 2, 1.0, rtol=1e-5)
  np.testing.assert_allclose(state.m["w"] * state.w["w"], params["w"], rtol=2e-7)


def test_masks_zero_update_and_grown_weight_starts_at_split_of_zero():
  params = {"w": jnp.array([[0.5, -1.0], [2.0, 0.0]])}
  masks = {"w": jnp.array([[True, False], [True, True]])}
  tx = osp.sign_in(optax.sgd(0.1, momentum=0.9), reset_every=10, gamma=0.25)
  state = tx.init(params)
  u, state = jax.jit(tx.update)({"w": jnp.ones((2, 2))}, state, params, masks=masks)
  assert float(u["w"][0, 1]) == 0.0
  assert float(state.m["w"][0, 1]) == 0.5 and float(state.w["w"][0, 1]) == 0.0
  assert float(u["w"][1, 1]) == pytest.approx(-0.1 * 0.25 * 1.0, rel=1e-4)  # P(0) = gamma
  assert bool(jnp.all(u["w"][masks["w"]] != 0))


def test_count_sign_flips_reference():
  rng = np.random.default_rng(3)
  a = {"x": rng.normal(size=(6, 7)).astype(np.float32), "b": None}
  b = {"x": rng.normal(size=(6, 7)).astype(np.float32), "b": None}
  a["x"][0, :3] = 0.0
  mask = {"x": rng.random((6, 7)) < 0.5, "b": None}
  ref = np.sum(a["x"] * b["x"] < 0)
  assert int(osp.count_sign_flips(a, b)) == ref
  assert int(osp.count_sign_flips(a, b, mask)) == np.sum((a["x"] * b["x"] < 0) & mask["x"])


def test_flips_more_signs_than_plain_training_under_random_mask():
  # Underdetermined masked regression: both runs (nearly) interpolate; the m*w geometry
  # reaches a different interpolant whose signs differ from the init more often.
  d, h, n, lr, steps = 32, 16, 4, 0.01, 300

  def train(tx, x, y, mask, p0):
    def loss(p):
      return 0.5 * jnp.mean(jnp.sum((x @ p["w"] - y) ** 2, -1))

    def body(c, _):
      p, s = c
      g = {"w": jax.grad(loss)(p)["w"] * mask["w"]}
      u, s = tx.update(g, s, p, masks=mask)
      return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(body, (p0, tx.init(p0)), length=steps)
    return osp.count_sign_flips(p0, p, mask), loss(p)

  plain = optax.with_extra_args_support(optax.sgd(lr, momentum=0.9))
  ours = osp.sign_in(optax.sgd(lr, momentum=0.9), reset_every=20)
  run_plain = jax.jit(lambda *a: train(plain, *a))
  run_ours = jax.jit(lambda *a: train(ours, *a))
  totals = np.zeros(2)
  for seed in range(3):
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
    mask = {"w": jnp.asarray(rng.random((d, h)) < 0.5)}
    y = x @ (jnp.asarray(rng.normal(size=(d, h)), jnp.float32) * mask["w"])
    p0 = {"w": jnp.asarray(rng.normal(size=(d, h)), jnp.float32) * mask["w"]}
    (f_plain, l_plain), (f_ours, l_ours) = run_plain(x, y, mask, p0), run_ours(x, y, mask, p0)
    assert float(l_plain) < 1e-3 and float(l_ours) < 1e-3
    assert int(f_ours) >= int(f_plain) + 5, (seed, int(f_ours), int(f_plain))
    totals += [int(f_plain), int(f_ours)]
  assert totals[1] >= 1.15 * totals[0], totals


def test_inside_sparse_masks_are_respected():
  rng = np.random.default_rng(4)
  params = {"w": jnp.asarray(rng.normal(size=(8, 6)), jnp.float32),
            "b": jnp.zeros((6,), jnp.float32)}
  try:
    tx = osp.sparse(osp.sign_in(optax.sgd(0.05, momentum=0.9), reset_every=2),
                    osp.static_random(), sparsity=0.5)
    state = jax.jit(tx.init)(params)
  except (AttributeError, ImportError) as e:  # the masks package is still being assembled
    pytest.skip(f"optax_sparse.sparse is not usable: {e}")
  step = jax.jit(tx.update)
  for _ in range(4):
    g = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
    u, state = step(g, state, params)
    params = optax.apply_updates(params, u)
  mask = osp.get_masks(state)["w"]
  assert int(jnp.sum(mask)) == 24
  np.testing.assert_array_equal(params["w"][~mask], 0.0)
  assert bool(jnp.all(params["w"][mask] != 0))


@pytest.mark.parametrize("kwargs,name", [
    ({"reset_every": 0}, "reset_every"),
    ({"reset_every": 1.5}, "reset_every"),
    ({"gamma": 0.0}, "gamma"),
    ({"where": [3]}, "where"),
    ({"base": "sgd"}, "base"),
])
def test_bad_arguments(kwargs, name):
  args = {"base": optax.sgd(0.1), "reset_every": 10, **kwargs}
  with pytest.raises(ValueError, match=name):
    osp.sign_in(**args)

