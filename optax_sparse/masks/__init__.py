"""Masks: selection, layer densities, scores, rules and the mask-owning combinator."""

from optax_sparse.masks.distributions import LayerDistribution, er, erk, uniform
from optax_sparse.masks.rules import (
    MaskRule,
    SrSteState,
    Target,
    acdc,
    global_magnitude,
    gradual_magnitude,
    gradual_sparsity,
    nm,
    one_shot_magnitude,
    rigl,
    set_,
    sr_ste,
    static_random,
)
from optax_sparse.masks.select import (
    block_mask,
    count_for_density,
    nm_mask,
    score_keys,
    select_bottom_k,
    select_top_k,
    select_top_k_global,
)
from optax_sparse.masks.sparse import SparseState, get_masks, sparse

__all__: list[str] = [
    "MaskRule",
    "SrSteState",
    "Target",
    "acdc",
    "global_magnitude",
    "gradual_magnitude",
    "gradual_sparsity",
    "nm",
    "one_shot_magnitude",
    "rigl",
    "set_",
    "sr_ste",
    "static_random",
    "SparseState",
    "get_masks",
    "sparse",
    "block_mask",
    "count_for_density",
    "nm_mask",
    "score_keys",
    "select_bottom_k",
    "select_top_k",
    "select_top_k_global",
    "LayerDistribution",
    "er",
    "erk",
    "uniform",
]
