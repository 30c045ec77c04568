"""Every transformation composes with optax's wrappers, in both nestings.

Outer: ``multi_transform`` (ours on the kernel, Adam on the bias), ``masked``, ``chain``,
``MultiSteps``, ``inject_hyperparams`` and ``apply_if_finite`` around ours. Inner: the same
wrappers inside the transformations that take an inner optimizer (``sparse``, ``ham``,
``sr_ste``, ``sign_in``, ``compose``), ``optax.MaskedNode`` included. Two jitted steps each.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sparse as osp

PARAMS = {"kernel": jnp.linspace(-1.0, 1.0, 32).reshape(4, 8), "bias": jnp.full((8,), 0.5)}
GRADS = {"kernel": jnp.linspace(0.5, -0.3, 32).reshape(4, 8), "bias": jnp.full((8,), 0.1)}
LABELS = {"kernel": "ours", "bias": "adam"}
MASK = {"kernel": True, "bias": False}

OURS = {
    "sparse_rigl": lambda: osp.sparse(optax.adam(0.01), osp.rigl(every=1), 0.5),
    "ham": lambda: osp.ham(optax.sgd(0.01), 0.01),
    "sr_ste": lambda: osp.sr_ste(optax.adam(0.01), 1, 2, axis=-1),
}

OUTER = {
    "multi_transform": lambda tx: optax.multi_transform({"ours": tx, "adam": optax.adam(0.1)},
                                                        LABELS),
    "masked": lambda tx: optax.masked(tx, MASK),
    "chain": lambda tx: optax.chain(optax.clip_by_global_norm(1.0), tx),
    "multisteps": lambda tx: optax.MultiSteps(tx, every_k_schedule=2),
    "apply_if_finite": lambda tx: optax.apply_if_finite(tx, 3),
}

WRAPPED_INNER = {
    "multi_transform": lambda: optax.multi_transform(
        {"ours": optax.sgd(0.01), "adam": optax.adam(0.01)}, LABELS),
    "masked": lambda: optax.masked(optax.adam(0.01), MASK),
    "multisteps": lambda: optax.MultiSteps(optax.adam(0.01),
                                           every_k_schedule=2).gradient_transformation(),
    "apply_if_finite": lambda: optax.apply_if_finite(optax.adam(0.01), 3),
}
# By design: sign_in's base acts on the factor tree (m, w), not on the parameters, so labels or
# masks shaped like the parameters do not apply to it (docs/nonfinite.md, "Wrappers").
BY_DESIGN = {("sign_in", "multi_transform"), ("sign_in", "masked")}

TAKES_INNER = {
    "sparse": lambda inner: osp.sparse(inner, osp.rigl(every=1), 0.5),
    "ham": lambda inner: osp.ham(inner, 0.01),
    "sr_ste": lambda inner: osp.sr_ste(inner, 1, 2, axis=-1),
    "sign_in": lambda inner: osp.sign_in(inner, reset_every=1),
    "compose": lambda inner: osp.compose(inner, osp.hyperbolic_step(0.01)),
}


def _run(tx):
  state = tx.init(PARAMS)
  step = jax.jit(tx.update)
  params = PARAMS
  for _ in range(2):
    u, state = step(GRADS, state, params)
    params = optax.apply_updates(params, u)
  for x in jax.tree.leaves(params):
    assert bool(jnp.all(jnp.isfinite(x)))
  return params, state


def _check_masks(state, params):
  sentinel = object()
  masks = optax.tree.get(state, "masks", sentinel)
  if masks is sentinel:
    return
  masks = osp.get_masks(state)
  assert masks["bias"] is None, f"the dense leaf's mask must be None, got {masks['bias']!r}"
  assert int(jnp.sum(masks["kernel"])) == 16
  assert bool(jnp.all(params["kernel"][~masks["kernel"]] == 0.0))


@pytest.mark.parametrize("outer", OUTER)
@pytest.mark.parametrize("name", OURS)
def test_ours_inside_wrapper(name, outer):
  params, state = _run(OUTER[outer](OURS[name]()))
  _check_masks(state, params)


@pytest.mark.parametrize("name", ["sparse_rigl", "ham", "nanoadam"])
def test_ours_inside_inject_hyperparams(name):
  factories = {
      "sparse_rigl": (osp.sparse, {"inner": optax.adam(0.01), "rule": osp.rigl(every=1),
                                   "sparsity": 0.5}, ("inner", "rule")),
      "ham": (osp.ham, {"base": optax.sgd(0.01), "learning_rate": 0.01}, ("base",)),
      "nanoadam": (osp.nanoadam, {"learning_rate": 0.01, "density": 0.5, "refresh_every": 1},
                   ("refresh_every",)),
  }
  factory, kwargs, static = factories[name]
  params, state = _run(optax.inject_hyperparams(factory, static_args=static)(**kwargs))
  _check_masks(state, params)


@pytest.mark.parametrize("wrapper", WRAPPED_INNER)
@pytest.mark.parametrize("name", TAKES_INNER)
def test_wrapper_inside_ours(name, wrapper):
  if (name, wrapper) in BY_DESIGN:
    pytest.skip("sign_in's base sees the factor tree (m, w): parameter-shaped labels do not fit")
  params, state = _run(TAKES_INNER[name](WRAPPED_INNER[wrapper]()))
  _check_masks(state, params)


def test_sparse_over_multi_transform_with_ham_kernel():
  # The composition that crashed inside the hyperbolic step (MaskedNode against a None mask).
  inner = optax.multi_transform(
      {"ours": osp.ham(optax.sgd(0.01), 0.01), "adam": optax.adam(0.01)}, LABELS)
  params, state = _run(osp.sparse(inner, osp.rigl(every=1), 0.5))
  _check_masks(state, params)


def test_get_masks_under_multi_transform_is_none_for_other_leaves():
  tx = optax.multi_transform(
      {"ours": osp.sparse(optax.sgd(0.1), osp.rigl(every=1), 0.5), "adam": optax.adam(0.1)},
      LABELS)
  params, state = _run(tx)
  _check_masks(state, params)


POTENTIALS = {
    "quadratic": osp.potentials.quadratic(),
    "entropy": osp.potentials.entropy(),
    "hyperbolic_entropy": osp.potentials.hyperbolic_entropy(0.1),
    "ham_log": osp.potentials.ham_log(5.0),
    "power": osp.potentials.power(0.5),
}
INJECTED = {
    **{f"mirror_{k}": (osp.mirror_descent, {"learning_rate": 0.01, "potential": v},
                       ("potential",)) for k, v in POTENTIALS.items()},
    **{f"steepest_q{q}": (osp.steepest_descent, {"learning_rate": 0.01, "q": q}, ("q",))
       for q in (1.0, 1.5, 2.0)},
    "nanoadam_max_density": (osp.nanoadam, {"learning_rate": 0.01, "density": 0.25,
                                            "max_density": 0.5, "refresh_every": 1},
                             ("max_density", "refresh_every")),
}


@pytest.mark.parametrize("name", INJECTED)
def test_inject_hyperparams_with_jitted_init_matches_plain(name):
  # The contrib suite's protocol: init and update jitted, structural arguments static.
  factory, kwargs, static = INJECTED[name]
  tx = factory(**kwargs)
  tx_inject = optax.inject_hyperparams(factory, static_args=static)(**kwargs)
  params = {"kernel": PARAMS["kernel"] + 1.5, "bias": PARAMS["bias"]}  # entropy: positive
  state, state_inject = jax.jit(tx.init)(params), jax.jit(tx_inject.init)(params)
  for _ in range(2):
    u, state = jax.jit(tx.update)(GRADS, state, params)
    u_inject, state_inject = jax.jit(tx_inject.update)(GRADS, state_inject, params)
    for a, b in zip(jax.tree.leaves(u_inject), jax.tree.leaves(u), strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    for a, b in zip(jax.tree.leaves(state_inject.inner_state), jax.tree.leaves(state),
                    strict=True):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    assert any(bool(jnp.any(x != 0)) for x in jax.tree.leaves(u))
    params = optax.apply_updates(params, u)


def test_nanoadam_init_under_jit_with_float_density():
  tx = osp.nanoadam(0.01, 0.5)
  state = jax.jit(tx.init)(PARAMS)
  eager = tx.init(PARAMS)
  assert jax.tree.map(jnp.shape, state) == jax.tree.map(jnp.shape, eager)
  # k_max = 0.5 of the 32 kernel entries; the bias is updated densely.
  assert state.moments["kernel"].indices.shape == (16,)
  u, _ = jax.jit(tx.update)(GRADS, state, PARAMS)
  assert int(jnp.sum(u["kernel"] != 0)) == 16


def test_nanoadam_traced_density_at_init_names_max_density():
  # Documented limit (docs/nonfinite.md, "Wrappers"): a density injected as a traced value
  # cannot size the compressed state; the error says what to do.
  tx = optax.inject_hyperparams(osp.nanoadam, static_args=("refresh_every",))(
      learning_rate=0.01, density=0.5, refresh_every=1)
  with pytest.raises(ValueError, match="max_density"):
    jax.jit(tx.init)(PARAMS)
