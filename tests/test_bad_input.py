"""Bad input across the public API: every case raises our error, naming the argument.

Each case is ``(id, call, error type, text the message must contain)``; the call builds the
transformation and, where the bad value is only seen with the parameters, runs ``init`` or one
``update``. Construction and ``init`` checks need no compilation, so the battery is fast.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
import pytest

import optax_sparse as osp

P = {"w": jnp.ones((4, 8)), "b": jnp.zeros((8,))}
SGD = optax.sgd(0.1)
NAN = float("nan")


def _init(tx, params=P):
  return lambda: tx().init(params)


def _update(tx, grads, params=P):
  def run():
    t = tx()
    return t.update(grads, t.init(params), params)
  return run


INT_P = {"w": jnp.ones((4, 8), jnp.int32)}
SHAPE_G = {"w": jnp.ones((4, 1)), "b": jnp.zeros((8,))}
STRUCT_G = {"w": jnp.ones((4, 8))}
# The battery's shapes: a (16, 1) gradient for a (16, 64) parameter is never broadcast.
P16 = {"w": jnp.ones((16, 64))}
G16 = {"w": jnp.ones((16, 1))}

CASES = [
    # sparse(): construction.
    ("sparse_inner_str", lambda: osp.sparse("adam", osp.rigl(), 0.9), TypeError, "inner"),
    ("sparse_inner_none", lambda: osp.sparse(None, osp.rigl(), 0.9), TypeError, "inner"),
    ("sparse_rule_str", lambda: osp.sparse(SGD, "rigl", 0.9), ValueError, "rule"),
    ("sparse_sparsity_1", lambda: osp.sparse(SGD, osp.rigl(), 1.0), ValueError, "sparsity"),
    ("sparse_sparsity_neg", lambda: osp.sparse(SGD, osp.rigl(), -0.1), ValueError, "sparsity"),
    ("sparse_sparsity_nan", lambda: osp.sparse(SGD, osp.rigl(), NAN), ValueError, "sparsity"),
    ("sparse_sparsity_str", lambda: osp.sparse(SGD, osp.rigl(), "0.9"), ValueError, "sparsity"),
    ("sparse_sparsity_none", lambda: osp.sparse(SGD, osp.rigl(), None), ValueError, "sparsity"),
    ("sparse_nm_sparsity", lambda: osp.sparse(SGD, osp.nm(2, 4), 0.5), ValueError, "sparsity"),
    ("sparse_dist_str", lambda: osp.sparse(SGD, osp.rigl(), 0.9, distribution="erk"),
     TypeError, "distribution"),
    ("sparse_dist_global", lambda: osp.sparse(SGD, osp.global_magnitude(), 0.5,
                                              distribution=osp.erk()), ValueError, "distribution"),
    ("sparse_seed_float", lambda: osp.sparse(SGD, osp.rigl(), 0.9, seed=1.5), TypeError, "seed"),
    ("sparse_seed_str", lambda: osp.sparse(SGD, osp.rigl(), 0.9, seed="a"), TypeError, "seed"),
    ("sparse_seed_none", lambda: osp.sparse(SGD, osp.rigl(), 0.9, seed=None), TypeError, "seed"),
    ("sparse_where_int", lambda: osp.sparse(SGD, osp.rigl(), 0.9, where={"w": 1}),
     ValueError, "where"),
    ("sparse_backend", lambda: osp.sparse(SGD, osp.rigl(), 0.9, backend="gpu"),
     ValueError, "backend"),
    ("sparse_sparse_gradients_str", lambda: osp.sparse(SGD, osp.rigl(), 0.9,
                                                       sparse_gradients="yes"),
     TypeError, "sparse_gradients"),
    ("sparse_skip_int", lambda: osp.sparse(SGD, osp.rigl(), 0.9, skip_update_on_mask_step=1),
     TypeError, "skip_update_on_mask_step"),
    # sparse(): init / update.
    ("sparse_int_params", _init(lambda: osp.sparse(SGD, osp.rigl(), 0.5), INT_P),
     TypeError, "params"),
    ("sparse_initial_masks_count",
     _init(lambda: osp.sparse(SGD, osp.static_random(), 0.9,
                              initial_masks={"w": jnp.arange(32).reshape(4, 8) % 2 == 0,
                                             "b": None})),
     ValueError, "initial_masks"),
    ("sparse_initial_masks_global_count",
     _init(lambda: osp.sparse(SGD, osp.global_magnitude(), 0.5,
                              initial_masks={"w": jnp.ones((4, 8), bool), "b": None})),
     ValueError, "initial_masks"),
    ("sparse_initial_masks_shape",
     _init(lambda: osp.sparse(SGD, osp.static_random(), 0.5,
                              initial_masks={"w": jnp.ones((4, 4), bool), "b": None})),
     ValueError, "initial_masks"),
    ("sparse_initial_masks_structure",
     _init(lambda: osp.sparse(SGD, osp.static_random(), 0.5,
                              initial_masks={"w": jnp.ones((4, 8), bool)})),
     ValueError, "initial_masks"),
    ("sparse_schedule_nan_at_0",
     _init(lambda: osp.sparse(SGD, osp.rigl(), lambda t: jnp.float32(NAN))),
     ValueError, "sparsity"),
    ("sparse_schedule_2_at_0",
     _init(lambda: osp.sparse(SGD, osp.rigl(), lambda t: 2.0)), ValueError, "sparsity"),
    ("sparse_grad_shape", _update(lambda: osp.sparse(SGD, osp.rigl(), 0.5), SHAPE_G),
     ValueError, "shape"),
    ("sparse_grad_16x1", _update(lambda: osp.sparse(optax.adam(0.1), osp.rigl(), 0.5), G16,
                                 P16), ValueError, "(16, 1)"),
    ("sparse_grad_structure", _update(lambda: osp.sparse(SGD, osp.rigl(), 0.5), STRUCT_G),
     ValueError, "structure"),
    ("sparse_erk_override_unknown",
     _init(lambda: osp.sparse(SGD, osp.rigl(), 0.5,
                              distribution=osp.erk(overrides={"['x']": 0.5}))),
     ValueError, "overrides"),
    ("sparse_erk_infeasible",
     _init(lambda: osp.sparse(SGD, osp.rigl(), 0.9,
                              distribution=osp.erk(overrides={"['w']": 1.0}))),
     ValueError, "sparsity"),
    # Rules.
    ("rigl_drop_fraction_2", lambda: osp.rigl(2.0), ValueError, "drop_fraction"),
    ("rigl_drop_fraction_neg", lambda: osp.rigl(-1.0), ValueError, "drop_fraction"),
    ("rigl_drop_fraction_nan", lambda: osp.rigl(NAN), ValueError, "drop_fraction"),
    ("rigl_every_0", lambda: osp.rigl(every=0), ValueError, "every"),
    ("rigl_every_float", lambda: osp.rigl(every=1.5), ValueError, "every"),
    ("rigl_end_step_0", lambda: osp.rigl(end_step=0), ValueError, "end_step"),
    ("rigl_noise_neg", lambda: osp.rigl(noise_std=-1.0), ValueError, "noise_std"),
    ("set_drop_fraction", lambda: osp.set_(1.5), ValueError, "drop_fraction"),
    ("set_every", lambda: osp.set_(every=-1), ValueError, "every"),
    ("one_shot_at_step", lambda: osp.one_shot_magnitude(at_step=-1), ValueError, "at_step"),
    ("one_shot_at_step_float", lambda: osp.one_shot_magnitude(at_step=0.5), ValueError,
     "at_step"),
    ("global_at_step", lambda: osp.global_magnitude(at_step="0"), ValueError, "at_step"),
    ("gmp_end_before_begin", lambda: osp.gradual_magnitude(begin_step=5, end_step=5),
     ValueError, "end_step"),
    ("gmp_frequency", lambda: osp.gradual_magnitude(begin_step=0, end_step=5, frequency=0),
     ValueError, "frequency"),
    ("gmp_initial_sparsity", lambda: osp.gradual_magnitude(1.0, begin_step=0, end_step=5),
     ValueError, "initial_sparsity"),
    ("acdc_sparse_steps", lambda: osp.acdc(warmup_steps=0, sparse_steps=0, dense_steps=1,
                                           alternate_until=2, final_sparse_from=3),
     ValueError, "sparse_steps"),
    ("acdc_final", lambda: osp.acdc(warmup_steps=0, sparse_steps=1, dense_steps=1,
                                    alternate_until=4, final_sparse_from=3),
     ValueError, "final_sparse_from"),
    ("nm_n_gt_m", lambda: osp.nm(5, 4), ValueError, "n"),
    ("nm_m_0", lambda: osp.nm(1, 0), ValueError, "m"),
    ("sr_ste_inner_none", lambda: osp.sr_ste(None), TypeError, "inner"),
    ("sr_ste_inner_str", lambda: osp.sr_ste("sgd"), TypeError, "inner"),
    ("sr_ste_refine_neg", lambda: osp.sr_ste(SGD, refine=-1.0), ValueError, "refine"),
    ("sr_ste_mask_decay_3", lambda: osp.sr_ste(SGD, mask_decay=3.0), ValueError, "mask_decay"),
    ("sr_ste_int_params", _init(lambda: osp.sr_ste(SGD), INT_P), TypeError, "params"),
    ("sr_ste_grad_shape", _update(lambda: osp.sr_ste(SGD, 1, 2, axis=-1), SHAPE_G),
     ValueError, "shape"),
    # Distributions.
    ("erk_power_neg", lambda: osp.erk(-1.0), ValueError, "power"),
    ("erk_dense_int", lambda: osp.erk(dense={"w": 1}), ValueError, "dense"),
    ("erk_override_range", lambda: osp.erk(overrides={"['w']": 2.0}).densities(P, 0.5),
     ValueError, "overrides"),
    ("erk_override_unknown", lambda: osp.erk(overrides={"['x']": 0.5}).densities(P, 0.5),
     ValueError, "overrides"),
    ("uniform_sparsity", lambda: osp.uniform().densities(P, 1.5), ValueError, "sparsity"),
    # Selection.
    ("count_n_neg", lambda: osp.count_for_density(-5, 0.5), ValueError, "n"),
    ("count_n_float", lambda: osp.count_for_density(2.5, 0.5), TypeError, "n"),
    ("count_density_nan", lambda: osp.count_for_density(10, NAN), ValueError, "density"),
    ("count_density_2", lambda: osp.count_for_density(10, 2.0), ValueError, "density"),
    ("top_k_none", lambda: osp.select_top_k(None, 2), TypeError, "scores"),
    ("top_k_k_none", lambda: osp.select_top_k(jnp.ones(3), None), TypeError, "k"),
    ("bottom_k_none", lambda: osp.select_bottom_k(None, 2), TypeError, "scores"),
    ("top_k_backend", lambda: osp.select_top_k(jnp.ones(3), 1, backend="tpu2"), ValueError,
     "backend"),
    # Geometry.
    ("ham_base_str", lambda: osp.ham("sgd", 0.1), TypeError, "base"),
    ("ham_lr_neg", lambda: osp.ham(SGD, -0.1), ValueError, "learning_rate"),
    ("ham_alpha_nan", lambda: osp.ham(SGD, 0.1, alpha=NAN), ValueError, "alpha"),
    ("ham_beta_neg", lambda: osp.ham(SGD, 0.1, beta=-1.0), ValueError, "beta"),
    ("ham_cap_0", lambda: osp.ham(SGD, 0.1, max_weight_norm=0.0), ValueError,
     "max_weight_norm"),
    ("ham_backend", lambda: osp.ham(SGD, 0.1, backend="cuda"), ValueError, "backend"),
    ("ham_int_params", _init(lambda: osp.ham(optax.adamw(0.1), 0.1), INT_P), TypeError,
     "params"),
    ("ham_grad_shape", _update(lambda: osp.ham(SGD, 0.1), SHAPE_G), ValueError, "shape"),
    ("ham_grad_16x1", _update(lambda: osp.ham(optax.adamw(0.1), 0.1), G16, P16), ValueError,
     "(16, 1)"),
    ("ham_grad_structure", _update(lambda: osp.ham(SGD, 0.1), STRUCT_G), ValueError,
     "structure"),
    ("hyperbolic_step_lr", lambda: osp.hyperbolic_step("0.1"), ValueError, "learning_rate"),
    ("hyperbolic_adamw_order", lambda: osp.hyperbolic_adamw(0.1, order="x"), ValueError,
     "order"),
    ("hyperbolic_adamw_wd", lambda: osp.hyperbolic_adamw(0.1, weight_decay=-1.0), ValueError,
     "weight_decay"),
    ("compose_none", lambda: osp.compose(), ValueError, "step"),
    ("compose_str", lambda: osp.compose("sgd"), TypeError, "steps[0]"),
    ("compose_int_params", _init(lambda: osp.compose(SGD), INT_P), TypeError, "params"),
    ("compose_grad_shape", _update(lambda: osp.compose(SGD), SHAPE_G), ValueError, "shape"),
    ("mirror_potential", lambda: osp.mirror_descent(0.1, "hypentropy"), ValueError,
     "potential"),
    ("mirror_other_leaves", lambda: osp.mirror_descent(0.1, osp.potentials.quadratic(),
                                                       other_leaves="x"),
     ValueError, "other_leaves"),
    ("mirror_lr_neg", lambda: osp.mirror_descent(-1.0, osp.potentials.quadratic()), ValueError,
     "learning_rate"),
    ("mirror_grad_shape", _update(lambda: osp.mirror_descent(0.1, osp.potentials.ham_log()),
                                  SHAPE_G), ValueError, "shape"),
    ("hypentropy_scale_0", lambda: osp.potentials.hyperbolic_entropy(0.0), ValueError, "scale"),
    ("ham_log_alpha_0", lambda: osp.potentials.ham_log(0.0), ValueError, "alpha"),
    ("power_m_1", lambda: osp.potentials.power(1.0), ValueError, "metric_exponent"),
    ("steepest_q_3", lambda: osp.steepest_descent(0.1, 3.0), ValueError, "q"),
    ("steepest_q_nan", lambda: osp.steepest_descent(0.1, NAN), ValueError, "q"),
    ("steepest_normalization", lambda: osp.steepest_descent(0.1, 1.5, normalization="l2"),
     ValueError, "normalization"),
    ("steepest_wd_neg", lambda: osp.steepest_descent(0.1, 1.5, weight_decay=-1.0), ValueError,
     "weight_decay"),
    ("steepest_int_params", _init(lambda: osp.steepest_descent(0.1, 1.5), INT_P), TypeError,
     "params"),
    ("decay_wd_neg", lambda: osp.decoupled_weight_decay(-0.1), ValueError, "weight_decay"),
    ("decay_where", lambda: osp.decoupled_weight_decay(0.1, where={"w": 2}), ValueError,
     "where"),
    ("adamw_paper_lr_0", lambda: osp.adamw_paper(0.0), ValueError, "learning_rate"),
    ("adamw_paper_b1", lambda: osp.adamw_paper(1e-3, b1=1.0), ValueError, "b1"),
    ("switch_off_ramp", lambda: osp.decay_switch_off(0.1, 10, ramp="exp"), ValueError, "ramp"),
    ("switch_off_step", lambda: osp.decay_switch_off(0.1, -1), ValueError, "off_step"),
    # Methods.
    ("nanoadam_density_0", lambda: osp.nanoadam(0.1, 0.0), ValueError, "density"),
    ("nanoadam_density_2", lambda: osp.nanoadam(0.1, 2.0), ValueError, "density"),
    ("nanoadam_refresh_0", lambda: osp.nanoadam(0.1, 0.5, refresh_every=0), ValueError,
     "refresh_every"),
    ("nanoadam_refresh_float", lambda: osp.nanoadam(0.1, 0.5, refresh_every=2.5), TypeError,
     "refresh_every"),
    ("nanoadam_max_density", lambda: osp.nanoadam(0.1, 0.5, max_density=0.0), ValueError,
     "max_density"),
    ("nanoadam_b2", lambda: osp.nanoadam(0.1, 0.5, b2=1.0), ValueError, "b2"),
    ("nanoadam_int_params", _init(lambda: osp.nanoadam(0.1, 0.5), INT_P), TypeError, "params"),
    ("nanoadam_grad_shape", _update(lambda: osp.nanoadam(0.1, 0.5), SHAPE_G), ValueError,
     "shape"),
    ("nanoadam_grad_16x1", _update(lambda: osp.nanoadam(0.1, 0.5), G16, P16), ValueError,
     "(16, 1)"),
    ("sign_in_base", lambda: osp.sign_in("sgd", reset_every=10), TypeError, "base"),
    ("sign_in_reset", lambda: osp.sign_in(SGD, reset_every=0), ValueError, "reset_every"),
    ("sign_in_gamma", lambda: osp.sign_in(SGD, reset_every=10, gamma=0.0), ValueError, "gamma"),
    ("sign_in_int_params", _init(lambda: osp.sign_in(SGD, reset_every=10), INT_P), TypeError,
     "params"),
    ("pilot_steps", lambda: osp.pilot(0.1, steps_per_epoch=0, total_epochs=1), ValueError,
     "steps_per_epoch"),
    ("pilot_delta", lambda: osp.pilot(0.1, steps_per_epoch=1, total_epochs=1, delta=0.5),
     ValueError, "delta"),
    ("pilot_base", lambda: osp.pilot(0.1, steps_per_epoch=1, total_epochs=1, base="sgd"),
     ValueError, "base"),
    ("pilot_mirror_beta", lambda: osp.pilot_mirror(0.1, steps_per_epoch=1, total_epochs=1,
                                                   beta=0.0), ValueError, "beta"),
    ("pilot_int_params", _init(lambda: osp.pilot(0.1, steps_per_epoch=1, total_epochs=1),
                               INT_P), TypeError, "params"),
    ("sparseopt_axis", lambda: osp.sparseopt(axis=1.5), ValueError, "axis"),
    ("sparseopt_eps", lambda: osp.sparseopt(eps=0.0), ValueError, "eps"),
]


@pytest.mark.parametrize("call,error,text", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_raises_naming_the_argument(call, error, text):
  with pytest.raises(error) as info:
    call()
  assert text in str(info.value), f"the message does not name {text!r}: {info.value}"
  # Raised by the library, not deep inside JAX or optax.
  tb = info.traceback
  assert any("optax_sparse" in str(entry.path) for entry in tb), "not raised by optax_sparse"


def test_battery_size():
  assert len(CASES) >= 80


ZERO_SIZE = {"w": jnp.linspace(-1.0, 1.0, 32).reshape(4, 8), "e": jnp.zeros((0, 4))}
ZERO_SIZE_TX = {
    "sparse_rigl": lambda: osp.sparse(optax.adam(0.1), osp.rigl(every=1), 0.5),
    "sparse_rigl_erk": lambda: osp.sparse(optax.adam(0.1), osp.rigl(every=1), 0.5,
                                          distribution=osp.erk()),
    "sparse_global_magnitude": lambda: osp.sparse(optax.adam(0.1), osp.global_magnitude(), 0.5),
    "ham": lambda: osp.ham(optax.adamw(0.1), 0.1),
    "nanoadam": lambda: osp.nanoadam(0.1, 0.5),
    "sr_ste": lambda: osp.sr_ste(optax.adam(0.1), 1, 2, axis=-1),
    "keep_mask_compact": lambda: osp.keep_mask(optax.adam(0.1), compact_state=True),
}


@pytest.mark.parametrize("name", ZERO_SIZE_TX)
def test_zero_size_leaves_are_handled(name):
  tx = ZERO_SIZE_TX[name]()
  state = tx.init(ZERO_SIZE)
  grads = {"w": jnp.full((4, 8), 0.1), "e": jnp.zeros((0, 4))}
  updates, state = tx.update(grads, state, ZERO_SIZE)
  assert updates["e"].shape == (0, 4)
  for x in jax.tree.leaves((updates, state)):
    if jnp.issubdtype(x.dtype, jnp.inexact):
      assert bool(jnp.all(jnp.isfinite(x)))
  if name.startswith("sparse"):
    assert int(jnp.sum(osp.get_masks(state)["w"])) == 16


@pytest.mark.parametrize("distribution", [osp.erk(), osp.uniform()], ids=["erk", "uniform"])
def test_zero_size_leaf_density_is_zero_not_nan(distribution):
  densities = distribution.densities(ZERO_SIZE, 0.5)
  assert float(densities["e"]) == 0.0 and 0.0 < float(densities["w"]) <= 1.0
