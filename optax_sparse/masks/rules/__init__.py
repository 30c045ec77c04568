"""Mask rules: when and how the masks owned by :func:`optax_sparse.sparse` change.

A rule is a :class:`MaskRule`, a frozen tuple of pure functions that ``sparse()`` calls inside
``init`` and ``update`` (under ``jit``; a traced count, a traced sparsity):

* ``init_masks(params, target, key) -> masks``: the masks at ``init``.
* ``is_update_step(count) -> bool[]``: whether the update with this count changes the masks
  (traced; ``sparse()`` runs ``update_masks`` under ``lax.cond``, so a mask-update step and a plain
  step share one compilation).
* ``update_masks(masks, params, grads, count, key, target, rule_state) -> (masks, rule_state)``:
  the new masks from the parameters *before* this step's update (``params`` is θ_t) and the
  raw dense gradient g_t of this step (the official RigL order).

``masks`` is a pytree like the parameters: a bool array for each eligible leaf, ``None`` for each
dense leaf. ``target`` (:class:`Target`) carries the target sparsity evaluated at the count and a
function from a sparsity to per-leaf densities (the layer-wise distribution: uniform, ER, ERK).
Each mask change keeps an exact count: k = max(1, round(n·density)) per leaf
(``select.count_for_density``) or the same total over all eligible leaves for global rules. All
selections go through ``optax_sparse.masks.select`` (no sort; ties by lower flat index).

Rules and their papers (one page each under :doc:`/methods/index`):

* :func:`one_shot_magnitude`: M = top-k(|θ|) per leaf at ``at_step``; fixed afterwards.
* :func:`gradual_magnitude` (Zhu & Gupta, arXiv 1710.01878):
  s_t = s_f + (s_i − s_f)(1 − (t − t₀)/(t_end − t₀))³ at t ∈ {t₀, t₀ + Δt, …, t_end}; pruning by
  |θ| among the active entries only (pruned stay pruned). Library decision (the sources differ):
  s_i = 0, Δt = 100 steps, ``begin_step``/``end_step`` required; ``end_step`` itself is always an
  event so that s_f is reached even when Δt does not divide the window.
* :func:`global_magnitude`: one top-k over all eligible leaves; optional per-leaf L2
  normalization of the scores (jaxpruner's default), off
  by default (see :doc:`/methods/magnitude`).
* :func:`static_random`: a random mask at init, never updated (pruning at
  initialization; jaxpruner ``static_sparse``).
* :func:`set_` (Mocanu et al., arXiv 1707.04780): every ΔT steps drop the fraction ζ_t of
  active weights with the smallest |θ|, regrow as many uniformly at random among the inactive.
* :func:`rigl` (Evci et al., arXiv 1911.11134): every ΔT steps while t ≤ T_end, per leaf
  k = ⌊f(t)·n_active⌋ (n_active = (1 − s_l)n_l), f(t) = (ζ/2)(1 + cos(πt/T_end)); drop the k
  active weights with the smallest |θ| (+ tie-break noise of std 10⁻⁵, uniform where the official
  code draws a normal, see :func:`rigl`), grow
  the k inactive-after-drop entries with the largest |g| of the raw dense gradient (entries kept
  after the drop are lifted out of the grow ranking).
* :func:`acdc` (Peste et al., arXiv 2106.12379): alternating dense / sparse phases; each
  compression is a global magnitude top-k to the target; at decompression every weight is active
  again and the pruned ones restart from exactly 0.
* :func:`nm`: one-shot N:M magnitude pattern (n kept in every m consecutive entries
  along ``axis``, default −2 = fan-in of Flax kernels, see :doc:`/methods/nm`).
* :func:`sr_ste` (Zhou et al., arXiv 2102.04010; MDGF, Bambhaniya et al., arXiv
  2402.04744): dynamic N:M needs dense shadow weights, so it is its own transformation wrapping an
  inner optimizer (not a ``sparse()`` rule): see its docstring.

Library decisions common to all rules:

* Step counting: the update with count t (0 for the first ``update``) may change the masks from
  θ_t and g_t; the new masks decide the parameters θ_{t+1} this same update lands on and govern
  every later step.
* Grown entries start at exactly 0 and ``sparse()`` zeroes the inner optimizer's per-parameter
  state there; an entry dropped and regrown in the same update keeps its value (RigL
  ``reinit_when_same=False``).
* Non-finite scores: a non-finite |θ| ranks lowest (dropped first); a non-finite gradient ranks
  lowest for growth (below every finite candidate, above entries that are already active), so a
  NaN/Inf gradient can never change the number of active entries.
* The official RigL/SET code and jaxpruner skip the optimizer step on mask-update iterations;
  ``sparse()`` applies both the optimizer step and the mask change in the same update by default
  (entries whose mask changes see a zero gradient on that step) and follows the official code
  with ``skip_update_on_mask_step=True``.
* The first mask update of SET/RigL happens at t = 0 when ``0 % every == 0`` (the official
  ``is_update_iter``: ``step % update_freq == 0 and step <= last_update_step``).
"""

from optax_sparse.masks.rules._base import MaskRule, Target
from optax_sparse.masks.rules.alternating import acdc
from optax_sparse.masks.rules.dynamic import rigl, set_
from optax_sparse.masks.rules.imp import ImpState, imp, imp_schedule, imp_step
from optax_sparse.masks.rules.magnitude import global_magnitude, one_shot_magnitude, static_random
from optax_sparse.masks.rules.nm_schedule import iterative_nm
from optax_sparse.masks.rules.nm_ste import SrSteState, nm, sr_ste
from optax_sparse.masks.rules.schedules import gradual_magnitude, gradual_sparsity
from optax_sparse.masks.rules.ste import SteState, magnitude_ste, random_ste

__all__ = [
    "ImpState",
    "MaskRule",
    "SrSteState",
    "SteState",
    "Target",
    "acdc",
    "global_magnitude",
    "gradual_magnitude",
    "gradual_sparsity",
    "imp",
    "imp_schedule",
    "imp_step",
    "iterative_nm",
    "magnitude_ste",
    "nm",
    "one_shot_magnitude",
    "random_ste",
    "rigl",
    "set_",
    "sr_ste",
    "static_random",
]
