"""Paper methods built from the geometry and mask layers."""

from optax_sparse.methods.nanoadam import (
    NanoAdamDenseMoments,
    NanoAdamState,
    NanoAdamSubsetMoments,
    nanoadam,
)
from optax_sparse.methods.pilot import (
    PilotMirrorState,
    PilotSchedule,
    PilotState,
    pilot,
    pilot_mirror,
)
from optax_sparse.methods.sign_in import SignInState, count_sign_flips, sign_in
from optax_sparse.methods.sparseopt import SparseOptState, sparseopt, sparseopt_scale

__all__: list[str] = [
    "NanoAdamDenseMoments",
    "NanoAdamState",
    "NanoAdamSubsetMoments",
    "nanoadam",
    "PilotMirrorState",
    "PilotSchedule",
    "PilotState",
    "pilot",
    "pilot_mirror",
    "SignInState",
    "count_sign_flips",
    "sign_in",
    "SparseOptState",
    "sparseopt",
    "sparseopt_scale",
]
