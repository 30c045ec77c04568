"""Masks: selection, layer densities, scores, rules and the mask-owning combinator."""

from optax_sparse.masks import groups
from optax_sparse.masks.distributions import LayerDistribution, er, erk, uniform
from optax_sparse.masks.finetune import KeepMaskState, fixed_mask, keep_mask, merge_masked
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
from optax_sparse.masks.scores import (
    grasp_scores,
    magnitude_scores,
    masks_from_scores,
    snip_scores,
    synflow_scores,
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
    "groups",
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
    "KeepMaskState",
    "fixed_mask",
    "keep_mask",
    "merge_masked",
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
    "grasp_scores",
    "magnitude_scores",
    "masks_from_scores",
    "snip_scores",
    "synflow_scores",
]
