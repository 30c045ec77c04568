"""Optimizer geometries: hyperbolic steps, mirror descent, steepest descent, weight decay."""

from optax_sparse.geometry import potentials
from optax_sparse.geometry.decay import (
    DecoupledWeightDecayState,
    PaperAdamWState,
    adamw_paper,
    decay_switch_off,
    decoupled_weight_decay,
)
from optax_sparse.geometry.ham_alpha import HamDiagnostics, ham_diagnostics, suggest_ham_alpha
from optax_sparse.geometry.hyperbolic import (
    HyperbolicStepState,
    ham,
    hyperbolic_adamw,
    hyperbolic_factor,
    hyperbolic_step,
)
from optax_sparse.geometry.mirror import MirrorDescentState, mirror_descent
from optax_sparse.geometry.potentials import Potential
from optax_sparse.geometry.steepest import scale_by_steepest, steepest_descent

__all__: list[str] = [
    "DecoupledWeightDecayState",
    "HamDiagnostics",
    "HyperbolicStepState",
    "MirrorDescentState",
    "PaperAdamWState",
    "Potential",
    "adamw_paper",
    "decay_switch_off",
    "decoupled_weight_decay",
    "ham",
    "ham_diagnostics",
    "hyperbolic_adamw",
    "hyperbolic_factor",
    "hyperbolic_step",
    "mirror_descent",
    "potentials",
    "scale_by_steepest",
    "steepest_descent",
    "suggest_ham_alpha",
]
