"""Common-suite cases for `optax_sparse.methods` (see `tests/common_cases.py`)."""

from common_cases import Case

CASES: list[Case] = []

import optax  # noqa: E402

import optax_sparse as osp  # noqa: E402

# NanoAdam freezes its largest weights by design: on the mixed target an entry that overshoots its
# optimum becomes the largest of its matrix and is never selected again, so at partial density
# the mixed target is not solvable. The 1-D targets run its dense Adam path, and the mixed target
# runs the compressed path at full density.
# The compressed state is sized from max_density, static for inject_hyperparams (a traced
# density cannot size it; docs/nonfinite.md, "Wrappers").
CASES.append(Case(
    "nanoadam", osp.nanoadam,
    {"learning_rate": 1e-2, "density": 0.5, "refresh_every": 10, "max_density": 0.5},
    static_args=("refresh_every", "max_density"), targets=("parabola", "rosenbrock"),
))
CASES.append(Case(
    "nanoadam_full_density", osp.nanoadam,
    {"learning_rate": 1e-2, "density": 1.0, "refresh_every": 10, "max_density": 1.0},
    static_args=("refresh_every", "max_density"), targets=("mixed",),
))


def _sign_in_sgd(learning_rate, reset_every=50, gamma=1.0):
  return osp.sign_in(optax.sgd(learning_rate, momentum=0.9), reset_every=reset_every, gamma=gamma)


CASES.append(Case(
    "sign_in_sgd", _sign_in_sgd, {"learning_rate": 1e-3, "reset_every": 50, "gamma": 1.0},
    static_args=("reset_every",), steps=5000,
))

_PILOT_STATIC = ("steps_per_epoch", "total_epochs")
CASES.append(Case(
    "pilot", osp.pilot,
    {"learning_rate": 1e-3, "steps_per_epoch": 100, "total_epochs": 50, "lambda_init": 1e-4},
    static_args=_PILOT_STATIC, steps=5000,
))
CASES.append(Case(
    "pilot_mirror", osp.pilot_mirror,
    {"learning_rate": 2e-3, "steps_per_epoch": 100, "total_epochs": 50, "lambda_init": 1e-4},
    static_args=_PILOT_STATIC, steps=5000,
))


def _sparseopt_sgd(learning_rate):
  return optax.chain(osp.sparseopt(), optax.sgd(learning_rate, momentum=0.9))


CASES.append(Case("sparseopt_sgd", _sparseopt_sgd, {"learning_rate": 1e-3}, steps=5000))
