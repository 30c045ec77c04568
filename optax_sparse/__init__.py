"""optax_sparse: sparse-training geometries and dynamic sparsity as optax transformations.

Every public factory returns an ``optax.GradientTransformationExtraArgs`` with a pure
``init``/``update`` and a state made of arrays, so it can be used inside ``optax.chain``,
``optax.MultiSteps``, ``optax.inject_hyperparams``, ``jax.lax.cond`` and under ``jax.jit``.
"""

from optax_sparse import export, geometry, kernels, masks, methods, pruning, sharding
from optax_sparse.compose import ComposeState, compose
from optax_sparse.export import (
    CompressedParams,
    compress,
    decompress,
    load_compressed,
    save_compressed,
    to_bcoo,
    to_bcsr,
)
from optax_sparse.geometry import *  # noqa: F403 - each subpackage has an explicit __all__
from optax_sparse.masks import *  # noqa: F403
from optax_sparse.methods import *  # noqa: F403
from optax_sparse.pruning import *  # noqa: F403
from optax_sparse.report import LeafReport, SparsityReport, connectivity_image, sparsity_report
from optax_sparse.sharding import Collective, collectives, shard_grid, state_shardings

__version__ = "0.1.0"

__all__ = [
    "ComposeState",
    "compose",
    "geometry",
    "kernels",
    "masks",
    "methods",
    "sharding",
    "Collective",
    "collectives",
    "shard_grid",
    "state_shardings",
    *geometry.__all__,
    *masks.__all__,
    *methods.__all__,
    "pruning",
    *pruning.__all__,
    "LeafReport",
    "SparsityReport",
    "connectivity_image",
    "sparsity_report",
    "export",
    "CompressedParams",
    "compress",
    "decompress",
    "load_compressed",
    "save_compressed",
    "to_bcoo",
    "to_bcsr",
]
