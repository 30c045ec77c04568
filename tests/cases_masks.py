"""Common-suite cases for `optax_sparse.masks` (see `tests/common_cases.py`)."""

from common_cases import Case

CASES: list[Case] = []

import jax.numpy as jnp  # noqa: E402
import optax  # noqa: E402

import optax_sparse as osp  # noqa: E402

# `sparse` has no learning rate of its own; the inner optimizer, the rule and the distribution are
# objects, static for inject_hyperparams (sparsity and seed are injected as numbers). The
# parabola and Rosenbrock targets are 1-D (dense under the default `where`); the mixed target's
# 2-D leaf has no zero entry, so only the sparsity-0 case can solve it. Every rule is registered
# once, each with a different inner optimizer; each rule's invariants are tested on their own in
# tests/test_masks_rules.py.
_STATIC = ("inner", "rule", "distribution")
_DENSE_TARGETS = ("parabola", "rosenbrock")

CASES.append(Case(
    "sparse_rigl_adam", osp.sparse,
    {"inner": optax.adam(0.05), "rule": osp.rigl(every=2, end_step=200), "sparsity": 0.5},
    static_args=_STATIC, lr_arg=None, targets=_DENSE_TARGETS))
CASES.append(Case(
    "sparse_gmp_sgd_momentum_sparse_grads", osp.sparse,
    {"inner": optax.sgd(1e-3, momentum=0.9),
     "rule": osp.gradual_magnitude(begin_step=0, end_step=4, frequency=2),
     "sparsity": 0.5, "sparse_gradients": True},
    static_args=_STATIC, lr_arg=None, targets=_DENSE_TARGETS, steps=5000))
CASES.append(Case(
    "sparse_static_random_adam_dense_target", osp.sparse,
    {"inner": optax.adam(0.05), "rule": osp.static_random(), "sparsity": 0.0},
    static_args=_STATIC, lr_arg=None))
CASES.append(Case(
    "sparse_nm_adam", osp.sparse,
    {"inner": optax.adam(0.05), "rule": osp.nm(1, 2, axis=-1), "sparsity": None},
    static_args=_STATIC, lr_arg=None, targets=_DENSE_TARGETS))
CASES.append(Case(
    "sr_ste_adam", osp.sr_ste,
    {"inner": optax.adam(0.05), "n": 1, "m": 2, "axis": -1},
    static_args=("inner", "n", "m", "axis"), lr_arg=None, targets=_DENSE_TARGETS))
CASES.append(Case(
    "sparse_set_sgd_momentum", osp.sparse,
    {"inner": optax.sgd(1e-3, momentum=0.9), "rule": osp.set_(every=2, end_step=200),
     "sparsity": 0.5, "distribution": osp.erk()},
    static_args=_STATIC, lr_arg=None, targets=_DENSE_TARGETS, steps=5000))
CASES.append(Case(
    "sparse_global_magnitude_adam", osp.sparse,
    {"inner": optax.adam(0.05), "rule": osp.global_magnitude(), "sparsity": 0.5},
    static_args=_STATIC, lr_arg=None, targets=_DENSE_TARGETS))
CASES.append(Case(
    "sparse_acdc_adam", osp.sparse,
    {"inner": optax.adam(0.05),
     "rule": osp.acdc(warmup_steps=1, sparse_steps=1, dense_steps=1, alternate_until=6,
                      final_sparse_from=8),
     "sparsity": 0.5},
    static_args=_STATIC, lr_arg=None, targets=_DENSE_TARGETS))
CASES.append(Case(
    "sparse_one_shot_magnitude_lion", osp.sparse,
    {"inner": optax.lion(5e-3), "rule": osp.one_shot_magnitude(), "sparsity": 0.5},
    static_args=_STATIC, lr_arg=None, targets=("parabola",), steps=5000))
CASES.append(Case(
    "keep_mask_adam", osp.keep_mask, {"inner": optax.adam(0.05)},
    static_args=("inner",), lr_arg=None))
# The compact state holds the active entries only: their number (the nonzeros of the parameters
# at init) fixes its shapes, so init runs outside jax.jit.
CASES.append(Case(
    "keep_mask_compact_sgd_momentum", osp.keep_mask,
    {"inner": optax.sgd(1e-3, momentum=0.9), "compact_state": True},
    static_args=("inner", "compact_state"), lr_arg=None, steps=5000, jit_init=False))
# Wanda with calibration norms for the (3, 4) kernel of the small problem; `where` selects only
# that shape, so the 2-D leaf of the mixed target stays dense and can be solved.
CASES.append(Case(
    "sparse_wanda_adam", osp.sparse,
    {"inner": optax.adam(0.05), "rule": osp.wanda({"w": jnp.array([1.0, 2.0, 0.5])}),
     "sparsity": 0.5, "where": lambda path, leaf: jnp.shape(leaf) == (3, 4)},
    static_args=(*_STATIC, "where"), lr_arg=None))
# Issue 13 rules side: IMP (restart hook), the STEs, iterative N:M and a grouped rule.
CASES.append(Case(
    "sparse_imp_weight_rewinding_adam", osp.sparse,
    {"inner": optax.adam(0.05), "rule": osp.imp(train_steps=4, rounds=1, rewind_step=1),
     "sparsity": 0.5},
    static_args=_STATIC, lr_arg=None, targets=_DENSE_TARGETS))
CASES.append(Case(
    "magnitude_ste_adam", osp.magnitude_ste, {"inner": optax.adam(0.05), "sparsity": 0.5},
    static_args=("inner",), lr_arg=None, targets=_DENSE_TARGETS))
CASES.append(Case(
    "random_ste_adam", osp.random_ste, {"inner": optax.adam(0.05), "sparsity": 0.5},
    static_args=("inner",), lr_arg=None, targets=_DENSE_TARGETS))
CASES.append(Case(
    "sparse_iterative_nm_adam", osp.sparse,
    {"inner": optax.adam(0.05),
     "rule": osp.iterative_nm(1, 2, axis=-1, begin_step=0, end_step=4, frequency=2),
     "sparsity": None},
    static_args=_STATIC, lr_arg=None, targets=_DENSE_TARGETS))
CASES.append(Case(
    "sparse_rigl_neurons_adam", osp.sparse,
    {"inner": optax.adam(0.05),
     "rule": osp.rigl(every=2, end_step=200, groups=osp.groups.neurons()), "sparsity": 0.5},
    static_args=_STATIC, lr_arg=None, targets=_DENSE_TARGETS))
