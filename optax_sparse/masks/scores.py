"""Pruning-at-initialization scores: magnitude, SNIP, GraSP, SynFlow, and masks from scores.

Following ganguli-lab/Synaptic-Flow (Tanaka et al., arXiv 2006.05467), whose ``Pruner`` classes
the formulas mirror. Scorers need model evaluations, so they are functions of a loss or apply
function, not transformations; the masks they produce are used once (a static mask,
``osp.sparse`` with a static rule) or as the scores of a one-shot rule.

* magnitude: ``|θ|``.
* SNIP (Lee et al., arXiv 1810.02340): ``|θ ⊙ ∇L(θ)|``, the gradient with respect to a mask at 1,
  normalized by its global sum (Synaptic-Flow).
* GraSP (Wang et al., arXiv 2002.07376): ``(H g) ⊙ θ`` with ``g = ∇L(θ)`` held constant and
  ``H g = ∇_θ (g · ∇L(θ))`` (a Hessian-vector product, forward-over-reverse), normalized by
  ``|Σ score| + 1e-6``; the entries with the **largest** scores are kept
  (see :doc:`/methods/static_random`).
  GraSP divides the logits by a temperature (200 in the paper); that belongs to the user's loss:
  ``loss_fn = lambda p, b: xent(apply(p, b.x) / 200.0, b.y)``.
* SynFlow (Tanaka et al.): ``|θ ⊙ ∂R/∂θ|`` at ``|θ|`` with an all-ones input and
  ``R = Σ apply_fn(|θ|, 1)``; with ``iterations = E > 1`` the scoring and a global pruning step
  alternate at densities ``d^{(e+1)/E}``, ``e = 0..E-1`` (the paper's exponential schedule; the
  paper uses E = 100, Synaptic-Flow's default is 1). Only eligible leaves are pruned; biases and
  normalization scales are linearized (``|θ|``) but never pruned.

Inputs: ``loss_fn(params, batch) -> scalar`` and ``apply_fn(params, x) -> outputs`` (any pytree
of outputs). Layers with state (batch norm) should be evaluated in inference mode inside
``apply_fn``. Scores are float32 (SynFlow's ``R`` may overflow float32 in very deep networks;
Synaptic-Flow computes it in float64: enable ``jax_enable_x64`` and pass float64 parameters).

``masks_from_scores`` keeps the largest scores at a target sparsity, globally over all eligible
leaves by default (the PaI papers' scope), or per leaf; ties by flat index (``select``).

References:
  Lee et al., *SNIP: Single-shot Network Pruning based on Connection Sensitivity*,
  arXiv 1810.02340.
  Wang et al., *Picking Winning Tickets Before Training by Preserving Gradient Flow*,
  arXiv 2002.07376.
  Tanaka et al., *Pruning neural networks without any data by iteratively conserving synaptic
  flow*, arXiv 2006.05467.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optax_sparse import _eligibility, _hyperparams
from optax_sparse.masks import select

__all__ = [
    "adam_fisher_scores",
    "grasp_scores",
    "magnitude_scores",
    "masks_from_scores",
    "snip_scores",
    "synflow_scores",
]


def _is_none(x: Any) -> bool:
  return x is None


def _map(fn: Callable[..., Any], *trees: Any) -> Any:
  return jax.tree.map(
      lambda x, *r: None if x is None else fn(x, *r), *trees, is_leaf=_is_none
  )


def _f32(params: Any) -> Any:
  return _map(lambda p: jnp.asarray(p, jnp.float32), params)


def _normalize(scores: Any, norm: jnp.ndarray) -> Any:
  return _map(lambda s: s / norm, scores)


def _total(scores: Any) -> jnp.ndarray:
  return sum(jnp.sum(s) for s in jax.tree.leaves(scores))


def magnitude_scores(params: Any) -> Any:
  """Magnitude scores ``|θ|`` in float32; ``None`` leaves stay ``None``.

  Args:
    params: the parameters.

  Returns:
    A pytree of float32 scores with the parameters' structure.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> osp.magnitude_scores({'w': jnp.array([-2.0, 1.0])})['w'].tolist()
    [2.0, 1.0]
  """
  return _map(lambda p: jnp.abs(jnp.asarray(p, jnp.float32)), params)


def adam_fisher_scores(params: Any, opt_state: Any) -> Any:
  """Adam-Fisher saliency ``θ² ⊙ ν``: a diagonal Fisher estimate from Adam's second moment.

  .. math::
    s = θ^2 ⊙ ν, \\qquad ν_t = β_2 ν_{t-1} + (1 - β_2) g_t^2 \\approx \\operatorname{diag} F

  Under a diagonal Fisher model, removing weight i raises the loss by about ½ F_ii θ_i², so the
  largest scores are kept (``masks_from_scores``). ν is found by name in any optimizer state
  (``optax.adam``, ``adamw``, inside ``chain``, ``sparse()``, ``inject_hyperparams``, ...): the one
  field ``nu`` shaped like the parameters; ν is used as stored (Adam's bias correction rescales
  every score by the same factor, so the ranking does not change).

  Args:
    params: the parameters.
    opt_state: an optimizer state holding exactly one Adam-type ``nu`` like the parameters.

  Returns:
    A pytree of float32 scores with the parameters' structure (``None`` leaves stay ``None``).

  Raises:
    ValueError: naming ``opt_state`` when it has no such ``nu`` or more than one.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> params = {"w": jnp.array([1.0, -2.0, 3.0])}
    >>> tx = optax.adam(1e-3, b2=0.5)
    >>> _, state = tx.update({"w": jnp.array([2.0, 1.0, 0.0])}, tx.init(params), params)
    >>> osp.adam_fisher_scores(params, state)["w"].tolist()  # θ² · 0.5 g²
    [2.0, 2.0, 0.0]

  References:
    jaxpruner's ``adam-fisher`` pruner, a diagonal version of the WoodFisher scores of Singh,
    Alistarh, *WoodFisher: Efficient Second-Order Approximation for Neural Network Compression*,
    arXiv 2004.14340.
  """
  p_def = jax.tree.structure(params, is_leaf=_is_none)
  found = [v for _, v in optax.tree.get_all_with_path(opt_state, "nu")
           if jax.tree.structure(v, is_leaf=_is_none) == p_def]
  if len(found) != 1:
    raise ValueError(
        f"opt_state must hold exactly one Adam second moment 'nu' shaped like the parameters; "
        f"found {len(found)}.")
  return _map(lambda p, nu: jnp.asarray(p, jnp.float32) ** 2 * jnp.asarray(nu, jnp.float32),
              params, found[0])


def snip_scores(
    loss_fn: Callable[[Any, Any], jnp.ndarray], params: Any, batch: Any, *, normalize: bool = True
) -> Any:
  """SNIP connection sensitivity ``|θ ⊙ ∇L(θ)|``, normalized by the global sum.

  .. math::
    s = \\frac{|\\theta \\odot \\nabla_\\theta L(\\theta)|}{\\sum |\\theta \\odot \\nabla L|}

  This is the gradient of ``L(θ ⊙ m)`` with respect to the mask ``m`` at ``m = 1``. For several
  pruning batches, sum the scores of each batch (Synaptic-Flow accumulates the gradients).

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: the parameters at initialization.
    batch: the batch passed to ``loss_fn``.
    normalize: divide by the global sum (does not change the ranking).

  Returns:
    A pytree of float32 scores.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> loss = lambda p, x: jnp.sum(p['w'] * x) ** 2
    >>> s = osp.snip_scores(loss, {'w': jnp.array([1.0, -3.0])}, jnp.array([1.0, 1.0]))
    >>> s['w'].tolist()  # |w * 2 (w . x) x| / sum
    [0.25, 0.75]

  References:
    Lee et al., *SNIP: Single-shot Network Pruning based on Connection Sensitivity*,
    arXiv 1810.02340.
  """
  params = _f32(params)
  grads = jax.grad(loss_fn)(params, batch)
  scores = _map(lambda p, g: jnp.abs(p * g), params, grads)
  return _normalize(scores, _total(scores)) if normalize else scores


def grasp_scores(
    loss_fn: Callable[[Any, Any], jnp.ndarray], params: Any, batch: Any, *, normalize: bool = True
) -> Any:
  """GraSP scores ``(H g) ⊙ θ``; keep the largest.

  .. math::
    s = \\frac{(H g) \\odot \\theta}{|\\sum (H g) \\odot \\theta| + 10^{-6}},\\quad
    g = \\nabla L(\\theta)\\ \\text{(held constant)},\\quad
    H g = \\nabla_\\theta \\left(g \\cdot \\nabla_\\theta L(\\theta)\\right)

  The temperature on the logits (200 in the paper) is part of ``loss_fn``.

  Args:
    loss_fn: ``loss_fn(params, batch) -> scalar``.
    params: the parameters at initialization.
    batch: the batch passed to ``loss_fn``.
    normalize: divide by ``|Σ s| + 1e-6`` as Synaptic-Flow does.

  Returns:
    A pytree of float32 scores (signed).

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> loss = lambda p, x: 0.5 * jnp.sum(x * p['w'] ** 2)  # H = diag(x), g = x * w
    >>> s = osp.grasp_scores(loss, {'w': jnp.array([1.0, 2.0])}, jnp.array([1.0, 2.0]),
    ...                      normalize=False)
    >>> s['w'].tolist()  # (H g) * w = x^2 w^2
    [1.0, 16.0]

  References:
    Wang et al., *Picking Winning Tickets Before Training by Preserving Gradient Flow*,
    arXiv 2002.07376.
  """
  params = _f32(params)
  grad_fn = jax.grad(loss_fn)
  g = jax.lax.stop_gradient(grad_fn(params, batch))
  _, hg = jax.jvp(lambda p: grad_fn(p, batch), (params,), (g,))
  scores = _map(lambda p, h: h * p, params, hg)
  return _normalize(scores, jnp.abs(_total(scores)) + 1e-6) if normalize else scores


def _synflow_once(apply_fn: Callable[[Any, Any], Any], params: Any, ones: jnp.ndarray) -> Any:
  def flow(p):
    return sum(jnp.sum(o) for o in jax.tree.leaves(apply_fn(p, ones)))

  grads = jax.grad(flow)(params)
  return _map(lambda p, g: jnp.abs(p * g), params, grads)


def synflow_scores(
    apply_fn: Callable[[Any, Any], Any],
    params: Any,
    input_shape: Sequence[int],
    iterations: int = 1,
    *,
    sparsity: Any = None,
    eligible: Any = None,
) -> Any:
  """SynFlow scores ``|θ ⊙ ∂R/∂θ|`` with ``|θ|`` weights and an all-ones input.

  .. math::
    R = \\mathbb{1}^\\top f(\\mathbb{1}; |\\theta|),\\qquad s = |\\theta \\odot \\partial R /
    \\partial \\theta|

  With ``iterations = E > 1``: for ``e = 0..E-1`` score the masked ``|θ| ⊙ m``, then keep the
  global top ``d^{(e+1)/E}`` of the eligible entries (``d = 1 - sparsity``); entries pruned by
  an earlier round get score ``-inf``, so ``masks_from_scores(scores, sparsity, eligible)``
  returns the final mask of the iterative procedure.

  Args:
    apply_fn: ``apply_fn(params, x) -> outputs``.
    params: the parameters.
    input_shape: the shape of the all-ones input, batch dimension included (e.g. ``(1, 28, 28,
      1)``).
    iterations: the number ``E >= 1`` of scoring rounds.
    sparsity: the final target sparsity, required when ``iterations > 1``.
    eligible: which leaves are pruned (None: ``ndim >= 2``; a predicate or a bool pytree).

  Returns:
    A pytree of float32 scores.

  Raises:
    ValueError: for ``iterations < 1``, or ``iterations > 1`` without a valid ``sparsity``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> apply = lambda p, x: x @ p['w1'] @ p['w2']
    >>> params = {'w1': jnp.array([[1.0, -2.0]]), 'w2': jnp.array([[3.0], [1.0]])}
    >>> s = osp.synflow_scores(apply, params, (1, 1))
    >>> s['w1'].tolist(), s['w2'].ravel().tolist()
    ([[3.0, 2.0]], [3.0, 2.0])

  References:
    Tanaka et al., *Pruning neural networks without any data by iteratively conserving synaptic
    flow*, arXiv 2006.05467.
  """
  if not isinstance(iterations, int) or iterations < 1:
    raise ValueError(f"iterations must be an integer >= 1; got {iterations!r}.")
  if iterations > 1:
    if sparsity is None:
      raise ValueError(f"sparsity is required when iterations > 1; got iterations={iterations}.")
    _hyperparams.check_scalar("sparsity", sparsity, low=0.0, high=1.0, high_open=True)
  _eligibility.check_where("eligible", eligible)
  abs_params = magnitude_scores(params)
  ones = jnp.ones(tuple(input_shape), jnp.float32)
  if iterations == 1:
    return _synflow_once(apply_fn, abs_params, ones)
  elig = _eligibility.eligible_tree(eligible, params, name="eligible")
  density = 1.0 - sparsity
  masks = _map(lambda p, e: jnp.ones(p.shape, bool) if e else None, abs_params, elig)
  scores = None
  for e in range(iterations):
    masked = _map(lambda p, m: p if m is None else jnp.where(m, p, 0.0), abs_params, masks)
    raw = _synflow_once(apply_fn, masked, ones)
    scores = _map(lambda s, m: s if m is None else jnp.where(m, s, -jnp.inf), raw, masks)
    if e + 1 < iterations:
      d = density ** ((e + 1) / iterations)
      masks = masks_from_scores(scores, 1.0 - d, elig)
  return scores


def masks_from_scores(
    scores: Any, sparsity: Any, eligible: Any = None, scope: str = "global"
) -> Any:
  """Boolean masks keeping the largest scores at ``sparsity``.

  ``scope="global"`` keeps ``k = count_for_density(N, 1 - sparsity)`` entries over all eligible
  leaves together (``N`` eligible entries; ties by leaf order then flat index);
  ``scope="layer"`` keeps ``count_for_density(n_l, 1 - sparsity)`` in each eligible leaf.

  Args:
    scores: a pytree of scores (``None`` leaves allowed).
    sparsity: the target sparsity in ``[0, 1)``, a Python float or a traced scalar.
    eligible: which leaves are masked (None: ``ndim >= 2``; a predicate or a bool pytree).
    scope: ``"global"`` or ``"layer"``.

  Returns:
    A pytree with the scores' structure, a bool array per eligible leaf, ``None`` elsewhere
    (the library's ``masks`` convention).

  Raises:
    ValueError: for a bad ``scope`` or a Python ``sparsity`` outside ``[0, 1)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> s = {'w': jnp.array([[1.0, 4.0], [3.0, 2.0]]), 'b': jnp.ones(2)}
    >>> m = osp.masks_from_scores(s, 0.5)
    >>> m['w'].tolist(), m['b']
    ([[False, True], [True, False]], None)
  """
  if scope not in ("global", "layer"):
    raise ValueError(f"scope must be 'global' or 'layer'; got {scope!r}.")
  _hyperparams.check_scalar("sparsity", sparsity, low=0.0, high=1.0, high_open=True,
                            allow_schedule=False)
  _eligibility.check_where("eligible", eligible)
  elig = _eligibility.eligible_tree(eligible, scores, name="eligible")
  picked = jax.tree.map(lambda s, e: s if e else None, scores, elig, is_leaf=_is_none)
  density = 1.0 - sparsity
  if scope == "layer":
    return _map(lambda s: select.select_top_k(s, select.count_for_density(s.size, density)),
                picked)
  n = sum(s.size for s in jax.tree.leaves(picked))
  return select.select_top_k_global(picked, select.count_for_density(n, density))
