"""One-shot pruning from calibration data: Wanda, OWL layer densities and SparseGPT.

These prune a trained model once, from statistics of the inputs of its linear layers over a
few calibration batches (Flax helpers in ``calibration``; Flax is imported only when they are
called). Wanda is also a rule of :func:`optax_sparse.sparse` and OWL a layer distribution, so
the pruned model can be fine-tuned with its masks kept.
"""

from optax_sparse.pruning.calibration import input_grams, input_norms, record_inputs
from optax_sparse.pruning.owl import OwlDistribution, outlier_ratios, owl
from optax_sparse.pruning.sparsegpt import SparseGptResult, prune_layerwise, sparsegpt
from optax_sparse.pruning.wanda import wanda, wanda_masks, wanda_scores

__all__ = [
    "OwlDistribution",
    "SparseGptResult",
    "input_grams",
    "input_norms",
    "outlier_ratios",
    "owl",
    "prune_layerwise",
    "record_inputs",
    "sparsegpt",
    "wanda",
    "wanda_masks",
    "wanda_scores",
]
