"""Pallas kernels with pure-jnp twins and backend dispatch. Imports nothing of the library.

Every public function takes ``backend="auto" | "xla" | "pallas"`` (``"auto"``: Pallas on GPU and
TPU, the jnp twin on CPU; ``"pallas"`` on CPU runs in interpret mode) and ``interpret`` (an
override for tests). The ``*_xla`` and ``*_pallas`` functions are the two implementations.
"""

from optax_sparse.kernels.compressed_adam import (
    compressed_adam_update,
    compressed_adam_update_pallas,
    compressed_adam_update_xla,
)
from optax_sparse.kernels.dispatch import resolve_backend
from optax_sparse.kernels.hyperbolic_mask import (
    hyperbolic_mask_update,
    hyperbolic_mask_update_pallas,
    hyperbolic_mask_update_xla,
)
from optax_sparse.kernels.key_histogram import (
    RadixThreshold,
    float_to_key,
    key_histogram,
    key_histogram_pallas,
    key_histogram_xla,
    key_to_float,
    radix_select_threshold,
)

__all__ = [
    "RadixThreshold",
    "compressed_adam_update",
    "compressed_adam_update_pallas",
    "compressed_adam_update_xla",
    "float_to_key",
    "hyperbolic_mask_update",
    "hyperbolic_mask_update_pallas",
    "hyperbolic_mask_update_xla",
    "key_histogram",
    "key_histogram_pallas",
    "key_histogram_xla",
    "key_to_float",
    "radix_select_threshold",
    "resolve_backend",
]
