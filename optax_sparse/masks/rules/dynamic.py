"""Dynamic sparse training rules: SET and RigL (drop by magnitude, grow at random / by gradient)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from optax_sparse import _hyperparams
from optax_sparse.masks import groups as groups_lib
from optax_sparse.masks import select
from optax_sparse.masks.rules._base import (
  MaskRule,
  _check_step,
  _exclude,
  _groupings,
  _leaf_keys,
  _leafwise,
  _magnitude,
  _random_masks,
)

__all__ = ["rigl", "set_"]


def _drop_fraction_schedule(
    name: str, drop_fraction: optax.ScalarOrSchedule, end_step: int | None
) -> Callable[[Any], Any]:
  _hyperparams.check_scalar(name, drop_fraction, low=0.0, high=1.0)
  if callable(drop_fraction):
    # Whatever the schedule returns, the fraction used is clip(f, 0, 1) with NaN read as 0 (no
    # connection moves): per-leaf counts never change (docs/nonfinite.md).
    def clipped(t):
      f = _hyperparams.evaluate(drop_fraction, t)
      return jnp.clip(jnp.where(jnp.isnan(f), 0.0, f), 0.0, 1.0)

    return clipped
  if end_step is None:
    return lambda t: jnp.asarray(drop_fraction, jnp.float32)

  def cosine(t):
    progress = jnp.minimum(jnp.asarray(t, jnp.float32), end_step) / float(end_step)
    return 0.5 * jnp.asarray(drop_fraction, jnp.float32) * (1.0 + jnp.cos(jnp.pi * progress))

  return cosine


def _periodic(every: int, end_step: int | None, begin_step: int = 0) -> Callable[[Any], Any]:
  def is_update_step(count):
    due = count % every == 0
    if begin_step:
      due = due & (count >= begin_step)
    if end_step is not None:
      due = due & (count <= end_step)
    return due

  return is_update_step


def _mix32(x: jax.Array) -> jax.Array:
  """The 32-bit finalizer of MurmurHash3: a bijection of uint32 that mixes every bit."""
  x = x ^ (x >> jnp.uint32(16))
  x = x * jnp.uint32(0x85EBCA6B)
  x = x ^ (x >> jnp.uint32(13))
  x = x * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> jnp.uint32(16))


def _tie_noise(key: jax.Array, shape: tuple[int, ...], std: float) -> jax.Array:
  """Uniform noise of standard deviation ``std`` on ``shape``, a function of ``key`` and position.

  A counter-based draw: two words from ``key`` (threefry, two numbers) seed an integer hash of
  every entry's row-major flat index (built from iotas, so a sharded array draws its own entries
  with no communication and the noise is the same on every mesh); the top 24 bits of the hash
  give u in [0, 1), and the noise is std·√12·(u − ½). One elementwise pass that XLA fuses into
  the selection's key computation, instead of a threefry normal draw (about as slow as a whole
  selection on CPU).
  """
  seed = jax.random.bits(key, (2,), jnp.uint32)
  index = select._flat_index(shape)  # noqa: SLF001 - the selections' shard-local flat index.
  h = _mix32(_mix32(index ^ seed[0]) + seed[1])
  u = (h >> jnp.uint32(8)).astype(jnp.float32) * jnp.float32(2.0 ** -24)
  return jnp.float32(std * 12.0 ** 0.5) * (u - jnp.float32(0.5))


def _drop_grow_units(
    mask: jax.Array, drop_scores: jax.Array, grow_scores: jax.Array, fraction: Any,
) -> jax.Array:
  """Per row of units: drops ⌊f·n_active⌋ lowest active units, grows as many by ``grow_scores``."""
  n_active = jnp.sum(mask, axis=tuple(range(1, mask.ndim)), dtype=jnp.int32)
  n_drop = jnp.floor(n_active.astype(jnp.float32) * fraction).astype(jnp.int32)
  kept = groups_lib.select_units(_exclude(drop_scores, mask), n_active - n_drop)
  grow = jnp.where(jnp.isfinite(grow_scores), grow_scores, -jnp.inf)
  grown = groups_lib.select_units(_exclude(grow, ~kept), n_drop)
  return kept | grown


def _dynamic_rule(
    name: str, drop_fraction: Any, every: int, end_step: int | None, grow: str, noise_std: float,
    begin_step: int = 0, groups: Any = None,
) -> MaskRule:
  _check_step("every", every, low=1)
  _check_step("begin_step", begin_step)
  if end_step is not None:
    _check_step("end_step", end_step, low=1)
  _hyperparams.check_scalar("noise_std", noise_std, low=0.0, allow_schedule=False)
  groups_lib.check("groups", groups)
  fraction_at = _drop_fraction_schedule("drop_fraction", drop_fraction, end_step)

  def init_masks(params, target, key):
    return _random_masks(params, target, key, groups)

  def update_masks(masks, params, grads, count, key, target, rule_state):
    fraction = fraction_at(count)
    leaf_keys = _leaf_keys(key, masks)
    gtree = _groupings(groups, params, target)

    def leaf(m, p, g, k, grouping):
      k_noise, k_grow = jax.random.split(k)
      shape = grouping.unit_shape(m.shape)
      drop = groups_lib.units(grouping, _magnitude(p))
      if noise_std > 0.0:
        drop = drop + _tie_noise(k_noise, shape, noise_std)
      if grow == "random":
        scores = jax.random.uniform(k_grow, shape, jnp.float32)
      else:
        scores = groups_lib.units(grouping, jnp.abs(jnp.asarray(g, jnp.float32)))
      new = _drop_grow_units(groups_lib.unit_mask(grouping, m), drop, scores, fraction)
      return groups_lib.expand(grouping, new, m.shape)

    return _leafwise(leaf, masks, params, grads, leaf_keys, gtree), rule_state

  return MaskRule(name, init_masks, _periodic(every, end_step, begin_step), update_masks)


def set_(
    drop_fraction: optax.ScalarOrSchedule = 0.3,
    every: int = 100,
    end_step: int | None = None,
    *,
    noise_std: float = 0.0,
    begin_step: int = 0,
    groups: groups_lib.GroupsArg = None,
) -> MaskRule:
  """SET: drop the smallest active weights, regrow as many uniformly at random.

  .. math::
    k_l = \\lfloor ζ_t \\, n_{active,l} \\rfloor,\\;
    M' = \\operatorname{top}_{n_{active}-k}(|θ| \\text{ on } M) \\cup
         \\operatorname{top}_{k}(U \\text{ on } ¬M_{kept})

  Every ``every`` steps (and while t ≤ ``end_step`` when given). Grown weights start at 0 and
  their optimizer state is zeroed by ``sparse()``. The random draws use ``sparse()``'s key folded
  with the count. Masks at init are uniformly random at the per-leaf densities.

  Args:
    drop_fraction: ζ in [0, 1] or a schedule of the count. A float with ``end_step`` follows the
      cosine decay ζ/2·(1 + cos(πt/T_end)) (as RigL); without ``end_step`` it is constant
      (jaxpruner's SET default).
    every: ΔT >= 1, steps between mask updates (default 100).
    end_step: T_end, last step with mask updates (None: never stops).
    noise_std: std σ of the tie-break noise added to the drop scores (default 0; the RigL
      code's SET uses its ``noise_std`` flag): uniform on [−√3σ, √3σ), drawn as in
      :func:`rigl`.
    begin_step: no mask update before this count (jaxpruner's ``update_start_step``: updates at
      t with t mod ΔT = 0 and t >= ``begin_step``); default 0.
    groups: the grouping (``osp.groups``; None: unstructured): whole groups are dropped by their
      reduced |θ| and regrown at random; with a within-groups grouping every group drops and
      regrows the same number of its members.

  Returns:
    A :class:`MaskRule` for :func:`optax_sparse.sparse`.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> tx = osp.sparse(optax.sgd(0.1), osp.set_(every=1), sparsity=0.5)
    >>> params = {"w": jnp.ones((4, 4))}
    >>> state = tx.init(params)
    >>> updates, state = tx.update(params, state, params)
    >>> int(osp.get_masks(state)["w"].sum())
    8

  References:
    Mocanu et al., *Scalable Training of Artificial Neural Networks with Adaptive Sparse
    Connectivity Inspired by Network Science*, arXiv 1707.04780.
  """
  return _dynamic_rule("set", drop_fraction, every, end_step, "random", noise_std, begin_step,
                       groups)


def rigl(
    drop_fraction: optax.ScalarOrSchedule = 0.3,
    every: int = 100,
    end_step: int | None = None,
    *,
    noise_std: float = 1e-5,
    begin_step: int = 0,
    groups: groups_lib.GroupsArg = None,
) -> MaskRule:
  """RigL: drop the smallest active weights, grow where the dense gradient is largest.

  .. math::
    k_l = \\lfloor f(t)\\, n_{active,l} \\rfloor, \\quad
    f(t) = \\tfrac{ζ}{2}\\big(1 + \\cos(πt / T_{end})\\big) \\\\
    M_{kept} = \\operatorname{top}_{n_{active}-k}(|θ| + ε \\text{ on } M), \\;
    M' = M_{kept} \\cup \\operatorname{top}_{k}(|g| \\text{ on } ¬M_{kept})

  Every ``every`` steps while t ≤ T_end. g is the *raw dense* gradient passed to ``update``
  (not masked, even with ``sparse_gradients=True``); θ the parameters θ_t this step starts from.
  ε is tie-break noise of std ``noise_std`` from the state's key folded with the count: uniform
  on [−√3σ, √3σ), from a counter-based hash of each entry's flat index (the official code draws
  N(0, σ²); a deviation of this library: the threefry normal draw cost about as much as a whole
  selection on CPU, and the noise only breaks near-ties of |θ|). Entries
  kept after the drop are lifted out of the grow ranking; a connection dropped and regrown in
  the same update keeps its value; grown weights start at 0 with zeroed optimizer state. The
  per-layer density never changes. Masks at init are uniformly random at the per-leaf densities
  (use ``distribution=osp.erk()`` for RigL's ERK).

  Args:
    drop_fraction: ζ in [0, 1] (default 0.3) or a schedule f(t) used as given. A float with
      ``end_step`` gives the cosine decay above; without ``end_step`` it stays constant (the
      official code's ``constant`` anneal).
    every: ΔT >= 1 (default 100).
    end_step: T_end, the last step with mask updates (paper: 0.75·T); None never stops.
    noise_std: tie-break noise std on the drop scores (default 1e-5; 0 disables it; uniform
      noise, see above).
    begin_step: no mask update before this count (jaxpruner's ``update_start_step``: updates at
      t with t mod ΔT = 0 and t >= ``begin_step``); the cosine decay still reads t / T_end.
    groups: the grouping (``osp.groups``; None: unstructured). Whole groups: drop the groups
      with the smallest reduced |θ|, grow the groups with the largest reduced |g| of the dense
      gradient. ``osp.groups.fan_in()``: constant fan-in (SRigL): in every output neuron drop
      ⌊f·k⌋ of its k active inputs by |θ| and grow as many by |g|, so every neuron keeps k.

  Returns:
    A :class:`MaskRule` for :func:`optax_sparse.sparse`.

  Examples:
    >>> import jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> tx = osp.sparse(optax.sgd(0.1), osp.rigl(every=1, end_step=100), sparsity=0.5)
    >>> params = {"w": jnp.ones((4, 4))}
    >>> state = tx.init(params)
    >>> updates, state = tx.update(params, state, params)
    >>> int(osp.get_masks(state)["w"].sum())
    8

  References:
    Evci, Gale, Menick, Castro, Elsen, *Rigging the Lottery: Making All Tickets Winners*,
    arXiv 1911.11134. Lasby et al., *Dynamic Sparse Training with Structured Sparsity*,
    arXiv 2305.02299 (constant fan-in; its neuron ablation is not implemented).
  """
  return _dynamic_rule("rigl", drop_fraction, every, end_step, "gradient", noise_std,
                       begin_step, groups)
