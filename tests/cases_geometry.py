"""Common-suite cases for `optax_sparse.geometry` (see `tests/common_cases.py`)."""

from common_cases import Case

CASES: list[Case] = []

import optax  # noqa: E402

import optax_sparse as osp  # noqa: E402


def _two_sgd_steps(learning_rate):
  return osp.compose(optax.sgd(learning_rate), optax.sgd(learning_rate, momentum=0.5))


CASES.append(Case("compose_sgd_momentum", _two_sgd_steps, {"learning_rate": 1e-3}, steps=5000))

# HAM with its two usual bases. The base keeps its own (fixed) learning rate; `learning_rate` is
# HAM's lockstep copy of it. The hyperbolic step scales the rate by about α|θ|: at the paper's
# α = 200 it is stable on the mixed target's entries of size 4 only for η ≤ 1e-3 (docs/nonfinite.md,
# "optax's contrib suite").
CASES.append(Case(
    "ham_sgd", osp.ham,
    {"base": optax.sgd(1e-3, momentum=0.9), "learning_rate": 1e-3, "alpha": 200.0,
     "beta": 1e-4},
    static_args=("base",), steps=5000))
CASES.append(Case(
    "ham_adamw", osp.ham,
    {"base": optax.adamw(1e-2, weight_decay=0.0), "learning_rate": 1e-2, "alpha": 20.0,
     "beta": 1e-4},
    static_args=("base",), steps=4000))
# The hyperbolic step alone is multiplicative (signs never flip, 1-D leaves untouched): it is no
# optimizer by itself, so it has no convergence target; `ham` covers its convergence.
CASES.append(Case("hyperbolic_step", osp.hyperbolic_step,
                  {"learning_rate": 1e-2, "alpha": 10.0, "beta": 1e-3}, targets=()))
for _order in ("adamw_first", "mirror_first"):
  CASES.append(Case(
      f"hyperbolic_adamw_{_order}", osp.hyperbolic_adamw,
      {"learning_rate": 1e-2, "weight_decay": 0.0, "alpha": 20.0, "beta": 1e-4,
       "order": _order},
      static_args=("order",), steps=4000))

# Quadratic (== SGD) and normalized hypentropy (a rescaled hypentropy) are covered by
# tests/test_geometry_mirror.py and tests/test_geometry_potentials.py; the suite keeps to the
# geometries that differ.
_POTENTIALS = {
    "hypentropy": osp.potentials.hyperbolic_entropy(0.1),
    "ham_log": osp.potentials.ham_log(5.0),
    "power": osp.potentials.power(0.5),
}
for _name, _pot in _POTENTIALS.items():
  CASES.append(Case(f"mirror_descent_{_name}", osp.mirror_descent,
                    {"learning_rate": 2e-3, "potential": _pot},
                    static_args=("potential",), steps=5000))
# Entropy lives on the positive orthant: the targets have negative entries, so only the
# acceptance checks run here; tests/test_geometry_mirror.py checks its convergence.
CASES.append(Case("mirror_descent_entropy", osp.mirror_descent,
                  {"learning_rate": 1e-2, "potential": osp.potentials.entropy()},
                  static_args=("potential",), targets=()))

# Sign descent with a constant rate zig-zags in Rosenbrock's curved valley without converging.
CASES.append(Case("steepest_descent_q1", osp.steepest_descent,
                  {"learning_rate": 1e-2, "q": 1.0}, static_args=("q",),
                  targets=("parabola", "mixed"), steps=3000))
CASES.append(Case("steepest_descent_q1.5", osp.steepest_descent,
                  {"learning_rate": 3e-3, "q": 1.5, "weight_decay": 1e-5},
                  static_args=("q",), steps=8000))


def _adam_with_switch_off_decay(learning_rate, weight_decay):
  return optax.chain(
      optax.scale_by_adam(),
      osp.decoupled_weight_decay(osp.decay_switch_off(weight_decay, 1000, ramp_steps=200)),
      optax.scale_by_learning_rate(learning_rate),
  )


CASES.append(Case("decoupled_weight_decay_adam", _adam_with_switch_off_decay,
                  {"learning_rate": 1e-2, "weight_decay": 0.1}, steps=4000))
CASES.append(Case("adamw_paper", osp.adamw_paper,
                  {"learning_rate": 1e-2, "weight_decay": 1e-4, "multiplier": 1.0},
                  lr_arg="multiplier", steps=4000))


def _scaled_steepest(learning_rate, q):
  # The direction alone with a per-leaf ‖g‖_q^{2−q} normalization, scaled by a learning rate.
  return optax.chain(osp.scale_by_steepest(q, normalization="per_leaf"),
                     optax.scale_by_learning_rate(learning_rate))


CASES.append(Case("scale_by_steepest_per_leaf", _scaled_steepest,
                  {"learning_rate": 1e-3, "q": 1.5}, static_args=("q",), steps=20000))
