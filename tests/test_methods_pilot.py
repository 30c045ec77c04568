"""PILoT against NumPy references of the factor step and of Algorithm 1, plus its behaviour."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sparse as osp


def _np_split(theta, gamma):
  m = np.sqrt((gamma + np.sqrt(gamma**2 + 4 * theta**2)) / 2)
  return m, theta / m


def test_init_split_invariants():
  theta = jnp.array([[-2.0, -0.1, 0.0], [0.3, 1.0, 5.0]])
  state = osp.pilot(0.1, steps_per_epoch=10, total_epochs=4, beta=0.5).init({"w": theta})
  m, w = state.m["w"], state.w["w"]
  m_ref, w_ref = _np_split(np.asarray(theta, np.float64), 0.5)
  np.testing.assert_allclose(m, m_ref, rtol=1e-6)
  np.testing.assert_allclose(w, w_ref, rtol=1e-6, atol=1e-12)
  np.testing.assert_allclose(m * w, theta, rtol=2e-7)
  np.testing.assert_allclose(m**2 - w**2, 0.5, rtol=1e-5)
  assert bool(jnp.all(jnp.abs(w) <= m))


def test_factor_step_matches_numpy_reference():
  rng = np.random.default_rng(0)
  w0 = rng.normal(size=(3, 4)).astype(np.float32)
  b0 = rng.normal(size=(4,)).astype(np.float32)
  lr, lam, mom = 0.05, 0.02, 0.9
  tx = osp.pilot(lr, steps_per_epoch=100, total_epochs=10, lambda_init=lam)
  params = {"w": jnp.asarray(w0), "b": jnp.asarray(b0)}
  state = tx.init(params)
  step = jax.jit(tx.update)
  m, w = _np_split(w0.astype(np.float64), 1.0)
  tm, tw, tb = np.zeros_like(m), np.zeros_like(w), np.zeros(4)
  bias = b0.astype(np.float64)
  for _ in range(6):
    g, gb = rng.normal(size=(3, 4)), rng.normal(size=(4,))
    tm, tw = mom * tm + (w * g + lam * m), mom * tw + (m * g + lam * w)
    tb = mom * tb + gb
    m, w, bias = m - lr * tm, w - lr * tw, bias - lr * tb
    u, state = step({"w": jnp.asarray(g, jnp.float32), "b": jnp.asarray(gb, jnp.float32)},
                    state, params)
    params = optax.apply_updates(params, u)
  np.testing.assert_allclose(params["w"], m * w, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(params["b"], bias, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(state.m["w"], m, rtol=1e-5)


def _np_schedule(accs, l1s, lam, delta, k_floor, total):
  best, out = -np.inf, []
  for k, (acc, l1) in enumerate(zip(accs, l1s, strict=True), start=1):
    if acc is None:
      lam = lam if k <= total / 2 else lam / delta
    else:
      lam = lam * delta if (acc > best and l1 >= k_floor and k <= total / 2) else lam / delta
      best = max(best, acc)
    out.append(lam)
  return out


@pytest.mark.parametrize("form", ["factors", "mirror"])
def test_adaptive_schedule_matches_algorithm_1(form):
  spe, total, delta, lam0 = 3, 8, 1.5, 1e-3
  factory = osp.pilot if form == "factors" else osp.pilot_mirror
  params = {"w": jnp.array([[2.0, -1.0]])}  # ||theta||_1 = 3 and zero gradients keep it there
  accs = [0.5, 0.6, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99]
  for k_floor, expect_l1 in ((0.0, 3.0), (10.0, 3.0)):
    tx = factory(0.1, steps_per_epoch=spe, total_epochs=total, lambda_init=lam0, delta=delta,
                 target_l1=k_floor)
    state = tx.init(params)
    step = jax.jit(tx.update)
    lams = []
    for t in range(spe * total):
      # The accuracy is only read at boundaries: other steps pass a value that must be ignored.
      acc = accs[t // spe] if (t + 1) % spe == 0 else 2.0
      _, state = step({"w": jnp.zeros((1, 2))}, state, params, train_accuracy=acc)
      if (t + 1) % spe == 0:
        lams.append(float(state.schedule.lam))
    ref = _np_schedule(accs, [expect_l1] * total, lam0, delta, k_floor, total)
    np.testing.assert_allclose(lams, ref, rtol=1e-5)
  # The deterministic fallback: constant to T/2, then geometric decay.
  tx = factory(0.1, steps_per_epoch=spe, total_epochs=total, lambda_init=lam0, delta=delta)
  state = tx.init(params)
  step = jax.jit(tx.update)
  lams = []
  for t in range(spe * total):
    _, state = step({"w": jnp.zeros((1, 2))}, state, params)
    if (t + 1) % spe == 0:
      lams.append(float(state.schedule.lam))
  np.testing.assert_allclose(lams, _np_schedule([None] * total, [0] * total, lam0, delta, 0,
                                                total), rtol=1e-5)


@pytest.mark.parametrize("lam", [0.0, 0.05])
def test_factor_and_mirror_forms_track_each_other(lam):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(16, 6)), jnp.float32)
  y = jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)
  p0 = {"w": jnp.asarray(rng.normal(size=(6, 3)), jnp.float32)}

  def loss(p):
    return 0.5 * jnp.mean(jnp.sum((x @ p["w"] - y) ** 2, -1))

  kw = {"steps_per_epoch": 1000, "total_epochs": 10, "lambda_init": lam}
  lr, steps = 2e-3, 300

  def run(tx):
    def body(c, _):
      p, s = c
      u, s = tx.update(jax.grad(loss)(p), s, p)
      return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(body, (p0, tx.init(p0)), length=steps)
    return p["w"]

  a = jax.jit(lambda: run(osp.pilot(lr, base=optax.identity(), **kw)))()
  b = jax.jit(lambda: run(osp.pilot_mirror(lr, **kw)))()
  moved = float(jnp.linalg.norm(a - p0["w"]))
  assert moved > 0.3  # the comparison is not between two idle runs
  rel = float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a - p0["w"]))
  assert rel < 1e-2, rel


def test_drives_l1_down_on_sparse_regression():
  rng = np.random.default_rng(0)
  d, n = 40, 20
  x = jnp.asarray(rng.normal(size=(n, d)), jnp.float32)
  target = np.zeros((d, 1))
  target[:5, 0] = 2 * rng.normal(size=5)
  y = x @ jnp.asarray(target, jnp.float32)
  p0 = {"w": jnp.asarray(0.5 * rng.normal(size=(d, 1)), jnp.float32)}

  def loss(p):
    return 0.5 * jnp.mean((x @ p["w"] - y) ** 2)

  def run(tx):
    def body(c, _):
      p, s = c
      u, s = tx.update(jax.grad(loss)(p), s, p)
      return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(body, (p0, tx.init(p0)), length=2000)
    return p

  ours = jax.jit(lambda: run(osp.pilot(1e-2, steps_per_epoch=100, total_epochs=20,
                                       lambda_init=1e-2)))()
  plain = jax.jit(lambda: run(optax.sgd(1e-2, momentum=0.9)))()
  l1 = lambda p: float(jnp.sum(jnp.abs(p["w"])))  # noqa: E731
  assert float(loss(ours)) < 1e-3 and float(loss(plain)) < 1e-3
  assert l1(ours) < 0.6 * l1(p0), (l1(ours), l1(p0))
  assert l1(ours) < 0.6 * l1(plain), (l1(ours), l1(plain))


def test_non_finite_gradient_keeps_factors():
  params = {"w": jnp.array([[1.0, 2.0]])}
  tx = osp.pilot(0.1, steps_per_epoch=10, total_epochs=2)
  state = tx.init(params)
  u, new = jax.jit(tx.update)({"w": jnp.array([[jnp.inf, 1.0]])}, state, params)
  np.testing.assert_array_equal(u["w"], 0.0)
  np.testing.assert_array_equal(new.m["w"], state.m["w"])


@pytest.mark.parametrize("kwargs,name", [
    ({"beta": 0.0}, "beta"),
    ({"lambda_init": -1.0}, "lambda_init"),
    ({"delta": 0.5}, "delta"),
    ({"target_l1": -1.0}, "target_l1"),
    ({"steps_per_epoch": 0}, "steps_per_epoch"),
    ({"total_epochs": 2.5}, "total_epochs"),
    ({"where": ["x"]}, "where"),
])
@pytest.mark.parametrize("factory", [osp.pilot, osp.pilot_mirror])
def test_bad_arguments(factory, kwargs, name):
  args = {"learning_rate": 0.1, "steps_per_epoch": 10, "total_epochs": 5, **kwargs}
  with pytest.raises(ValueError, match=name):
    factory(**args)


def test_bad_base():
  with pytest.raises(ValueError, match="base"):
    osp.pilot(0.1, steps_per_epoch=1, total_epochs=1, base="sgd")

