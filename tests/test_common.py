"""The common acceptance suite: every registered transformation must pass all of it.

Modelled on optax's contrib suite: unexpected extra arguments without recompiling, convergence on
small targets, ``inject_hyperparams``, dtypes kept, ``MultiSteps``, state stable through
``lax.cond`` and schedules accepted wherever a rate is a ``ScalarOrSchedule``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from common_cases import all_cases
from optax._src import test_utils

CASES = all_cases()
IDS = [c.name for c in CASES]


def _parabola(dtype):
  init = jnp.array([-1.0, 10.0, 1.0], dtype)
  final = jnp.array([1.0, -1.0, 1.0], dtype)
  return init, final, lambda p: jnp.sum((p - final) ** 2)


def _rosenbrock(dtype):
  init = jnp.array([0.0, 0.0], dtype)
  final = jnp.array([1.0, 1.0], dtype)
  return init, final, lambda p: (1.0 - p[0]) ** 2 + 100.0 * (p[1] - p[0] ** 2) ** 2


def _mixed(dtype):
  # One 1-D leaf and one 2-D leaf: geometries that act on ndim >= 2 only are exercised on both.
  # The matrix's optimum has entries of both signs up to 4 (like optax's contrib suite's matrix
  # target): a geometry whose step grows with |θ| (HAM, hypentropy) must stay stable there.
  f1 = jnp.array([1.0, -1.0, 2.0], dtype)
  f2 = jnp.array([[3.0, -2.0], [0.5, 4.0]], dtype)
  init = {"b": jnp.zeros((3,), dtype), "w": jnp.full((2, 2), 0.1, dtype)}
  final = {"b": f1, "w": f2}
  return init, final, lambda p: jnp.sum((p["b"] - f1) ** 2) + jnp.sum((p["w"] - f2) ** 2)


TARGETS = {"parabola": _parabola, "rosenbrock": _rosenbrock, "mixed": _mixed}
CONVERGENCE = [(c, t) for c in CASES for t in c.targets]


def _small_problem(dtype=jnp.float32):
  params = {"w": jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32).reshape(3, 4).astype(dtype),
            "b": jnp.array([0.5, -0.25, 0.0, 1.0], dtype)}
  grads = {"w": jnp.linspace(0.3, -0.2, 12, dtype=jnp.float32).reshape(3, 4).astype(dtype),
           "b": jnp.array([0.1, -0.2, 0.3, -0.4], dtype)}
  return params, grads


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_accepts_extra_args_without_recompiling(case):
  tx = case.build()
  params, _, objective = _rosenbrock(jnp.float32)

  @jax.jit
  def step(params, state):
    grads = jax.grad(objective)(params)
    updates, state = tx.update(grads, state, params, unexpected_extra_arg=1, **case.extra_args)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  params, state = step(params, state)
  with test_utils.log_compilations() as logs:
    params, state = step(params, state)
  assert not logs, f"{case.name} recompiles on the second call"
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))


@pytest.mark.parametrize("case,target", CONVERGENCE,
                         ids=[f"{c.name}-{t}" for c, t in CONVERGENCE])
def test_converges(case, target):
  tx = case.build()
  params, final, objective = TARGETS[target](jnp.float32)
  state = tx.init(params)
  # A no-op map over the parameter-shaped leaves of the state must work.
  state = optax.tree.map_params(tx, lambda v: v, state)

  def body(carry, _):
    params, state = carry
    grads = jax.grad(objective)(params)
    updates, state = tx.update(grads, state, params, **case.extra_args)
    return (optax.apply_updates(params, updates), state), None

  (params, state), _ = jax.jit(lambda c: jax.lax.scan(body, c, length=case.steps))((params, state))
  test_utils.assert_trees_all_close(params, final, rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_inject_hyperparams(case):
  tx = case.build()
  tx_inject = optax.inject_hyperparams(case.factory, static_args=case.static_args)(**case.kwargs)
  params, grads = _small_problem()
  # optax's contrib suite jits init: hyperparameters are traced there.
  init = jax.jit if case.jit_init else (lambda f: f)
  state = init(tx.init)(params)
  state_inject = init(tx_inject.init)(params)
  for _ in range(2):
    updates, state = jax.jit(tx.update)(grads, state, params, **case.extra_args)
    updates_inject, state_inject = jax.jit(tx_inject.update)(
        grads, state_inject, params, **case.extra_args)
    test_utils.assert_trees_all_close(updates_inject, updates, rtol=1e-5, atol=1e-7)
    test_utils.assert_trees_all_close(state_inject.inner_state, state, rtol=1e-5, atol=1e-7)
    params = optax.apply_updates(params, updates)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_keeps_dtype(case, dtype):
  tx = case.build()
  params, grads = _small_problem(jnp.dtype(dtype))
  state = (jax.jit(tx.init) if case.jit_init else tx.init)(params)
  updates, state = jax.jit(tx.update)(grads, state, params, **case.extra_args)
  for u, p in zip(jax.tree.leaves(updates), jax.tree.leaves(params), strict=True):
    assert u.dtype == p.dtype, f"{case.name}: update {u.dtype} for params {p.dtype}"
    assert bool(jnp.all(jnp.isfinite(u.astype(jnp.float32))))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_multisteps(case):
  tx = optax.MultiSteps(case.build(), every_k_schedule=4)
  params, grads = _small_problem()
  state = (jax.jit(tx.init) if case.jit_init else tx.init)(params)
  update = jax.jit(lambda g, s, p: tx.update(g, s, p, **case.extra_args))
  updates, state = update(grads, state, params)
  for u in jax.tree.leaves(updates):
    np.testing.assert_array_equal(u, jnp.zeros_like(u))
  for _ in range(3):
    updates, state = update(grads, state, params)
  assert any(bool(jnp.any(u != 0)) for u in jax.tree.leaves(updates)), (
      f"{case.name}: the fourth mini-step must apply the accumulated update")


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_state_stable_under_cond(case, dtype):
  tx = case.build()
  params, grads = _small_problem(jnp.dtype(dtype))
  state = tx.init(params)

  @jax.jit
  def step(params, state):
    updates, new_state = tx.update(grads, state, params, **case.extra_args)
    # lax.cond requires both branches to have identical shapes and dtypes.
    return jax.lax.cond(True, lambda: new_state, lambda: state), updates

  new_state, _ = step(params, state)
  test_utils.assert_trees_all_equal_shapes(new_state, state)
  test_utils.assert_trees_all_equal_dtypes(new_state, state)


LR_CASES = [c for c in CASES if c.lr_arg is not None]


@pytest.mark.parametrize("case", LR_CASES, ids=[c.name for c in LR_CASES])
def test_constant_schedule_matches_scalar(case):
  lr = case.kwargs[case.lr_arg]
  assert not callable(lr), "register cases with a scalar learning rate"
  tx = case.build()
  tx_sched = case.build(**{case.lr_arg: optax.constant_schedule(lr)})
  params, grads = _small_problem()
  s, s_sched = tx.init(params), tx_sched.init(params)
  for _ in range(3):
    u, s = jax.jit(tx.update)(grads, s, params, **case.extra_args)
    u_sched, s_sched = jax.jit(tx_sched.update)(grads, s_sched, params, **case.extra_args)
    test_utils.assert_trees_all_close(u_sched, u, rtol=1e-6, atol=1e-8)
    params = optax.apply_updates(params, u)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_tuple_of_matrix_and_vector(case):
  # optax's contrib suite's mixed-tensor target: the parameters are a tuple (matrix, vector),
  # which must not be mistaken for an internal pair of (update, count).
  tx = case.build()
  params = (jnp.full((2, 2), 0.1), jnp.zeros((3,)))
  final = (jnp.array([[1.0, 0.5], [-1.0, 1.0]]), jnp.array([1.0, -1.0, 2.0]))
  objective = lambda p: sum(jnp.sum((a - b) ** 2) for a, b in zip(p, final, strict=True))  # noqa: E731
  state = tx.init(params)
  step = jax.jit(lambda p, s: tx.update(jax.grad(objective)(p), s, p, **case.extra_args))
  for _ in range(2):
    updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
  assert isinstance(updates, tuple) and len(updates) == 2
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(params))
