"""Paper methods built from the geometry and mask layers."""

from optax_sparse.methods.nanoadam import (
    NanoAdamDenseMoments,
    NanoAdamState,
    NanoAdamSubsetMoments,
    nanoadam,
)

__all__: list[str] = [
    "NanoAdamDenseMoments",
    "NanoAdamState",
    "NanoAdamSubsetMoments",
    "nanoadam",
]
