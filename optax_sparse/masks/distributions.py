"""Layer-wise density distributions: uniform, Erdős–Rényi (ER) and ER-Kernel (ERK).

From *Rigging the Lottery: Making All Tickets Winners* (Evci et al., arXiv 1911.11134, §3) and
its code (google-research/rigl ``rigl/sparse_utils.py``). A distribution turns a global target
sparsity ``S`` into one density per eligible leaf ``l`` (``n_l`` entries, ``N = sum_l n_l``):

.. math::
  d_l = \\min(1, \\epsilon\\, r_l), \\qquad \\sum_l d_l n_l = (1 - S) N

with ``r_l = 1`` (uniform), ``r_l = (n_in + n_out) / (n_in n_out)`` over the last two dims (ER),
or ``r_l = (\\sum_i k_i / \\prod_i k_i)^{power}`` over all dims (ERK). ``epsilon`` is solved in
closed form; any leaf whose density would exceed 1 is made dense and ``epsilon`` re-solved over
the rest (RigL removes the leaves with the largest ``r_l`` one group at a time, until valid).

Library decisions:

* ``sparsity`` may be a Python float or a traced scalar (a schedule evaluated inside ``jit``), so
  the rebalancing runs in ``jax.numpy`` with a static number of rounds (the number of leaves);
  each round makes dense the free leaves with the largest ``r_l`` when ``epsilon·max r > 1``,
  exactly RigL's loop.
* The budget is the real number ``(1 - S) N``; RigL floors ``n_l S`` per layer (a difference of
  less than one entry per leaf). Per-leaf counts are rounded later by ``count_for_density``.
* ``dense=`` leaves (density 1) and ``overrides`` (a fixed density) are *inside* the total: they
  consume budget and the other leaves share the rest. RigL instead leaves custom-sparsity layers
  out of the total; to get that, make those leaves ineligible (``where`` of ``osp.sparse``), which
  removes them from ``N``. With ``dense=`` or overrides, ``uniform()`` gives every other leaf the
  common density that meets the total (``1 - S`` when there are none).
* Infeasible targets (dense/overridden leaves already hold more than ``(1 - S) N`` entries, or the
  free leaves cannot hold the rest) raise ``ValueError`` with the numbers from ``check_target``
  (a Python ``sparsity``); a traced sparsity cannot raise, and densities are clipped to [0, 1].
* The first or last layer dense (RigL's uniform keeps the first layer dense): pass ``dense`` as
  a predicate on the key path, e.g.
  ``dense=lambda path, leaf: jax.tree_util.keystr(path).startswith("['Dense_0']")``, or a static
  pytree of bools with the parameters' structure.

References:
  Evci et al., *Rigging the Lottery: Making All Tickets Winners*, arXiv 1911.11134.
  Mocanu et al., *Scalable Training of Artificial Neural Networks with Adaptive Sparse
  Connectivity Inspired by Network Science*, arXiv 1707.04780.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from optax_sparse import _eligibility, _hyperparams

__all__ = ["LayerDistribution", "balanced", "er", "erk", "uniform"]

Overrides = Mapping[str, float] | Callable[[Any, Any], float | None] | None


def _raw_uniform(shape: tuple[int, ...], power: float) -> float:
  del shape, power
  return 1.0


def _raw_er(shape: tuple[int, ...], power: float) -> float:
  del power
  if len(shape) < 2:
    return 1.0
  n_in, n_out = shape[-2:]
  return (n_in + n_out) / (n_in * n_out)


def _raw_erk(shape: tuple[int, ...], power: float) -> float:
  return (sum(shape) / math.prod(shape)) ** power


def _raw_balanced(shape: tuple[int, ...], power: float) -> float:
  del power
  return 1.0 / math.prod(shape)


_RAW = {"uniform": _raw_uniform, "er": _raw_er, "erk": _raw_erk, "balanced": _raw_balanced}


@dataclasses.dataclass(frozen=True, eq=False)
class LayerDistribution:
  """A layer-wise density distribution (build it with ``uniform``, ``er`` or ``erk``).

  Attributes:
    kind: ``"uniform"``, ``"er"``, ``"erk"`` or ``"balanced"``.
    power: the ERK exponent on ``sum(dims) / prod(dims)``.
    dense: leaves kept dense: None, a predicate ``(path, leaf) -> bool`` or a pytree of bools.
    overrides: fixed densities: a mapping from ``jax.tree_util.keystr(path)`` to a density, or a
      function ``(path, leaf) -> density or None``.
  """

  kind: str
  power: float = 1.0
  dense: Any = None
  overrides: Overrides = None

  def _layout(self, params: Any, eligible: Any):
    """Static per-leaf data: (treedef, leaf slots, sizes, raw, kind) for eligible leaves."""
    leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(
        params, is_leaf=lambda x: x is None
    )
    if eligible is None:
      eligible = _eligibility.eligible_tree(None, params)
    elig = jax.tree.leaves(eligible, is_leaf=lambda x: x is None)
    if len(elig) != len(leaves_with_path):
      raise ValueError(
          f"eligible must have the structure of the parameters; got {len(elig)} leaves for "
          f"{len(leaves_with_path)} parameter leaves."
      )
    dense = self._dense_flags(params, len(leaves_with_path))
    slots, sizes, raws, fixed = [], [], [], []
    for i, ((path, leaf), ok) in enumerate(zip(leaves_with_path, elig, strict=True)):
      if leaf is None or not ok:
        continue
      shape = tuple(int(d) for d in jnp.shape(leaf))
      slots.append(i)
      sizes.append(math.prod(shape))
      raws.append(_RAW[self.kind](shape, self.power) if sizes[-1] else 0.0)
      fixed.append(1.0 if dense[i] else self._override(path, leaf))
    if self.overrides is not None and not callable(self.overrides):
      # A key that names no parameter leaf is a typo, never silently ignored.
      names = {jax.tree_util.keystr(path) for path, _ in leaves_with_path}
      unknown = sorted(set(self.overrides) - names)
      if unknown:
        raise ValueError(
            f"overrides has keys that match no parameter leaf: {unknown}; the leaves are "
            f"{sorted(names)}.")
    return treedef, len(leaves_with_path), slots, sizes, raws, fixed

  def _dense_flags(self, params: Any, count: int) -> list[bool]:
    if self.dense is None:
      return [False] * count
    flags = _eligibility.eligible_tree(self.dense, params, name="dense")
    return [bool(f) for f in jax.tree.leaves(flags, is_leaf=lambda x: x is None)]

  def _override(self, path: Any, leaf: Any) -> float | None:
    if self.overrides is None:
      return None
    if callable(self.overrides):
      value = self.overrides(path, leaf)
    else:
      value = self.overrides.get(jax.tree_util.keystr(path))
    if value is None:
      return None
    _hyperparams.check_scalar("overrides", value, low=0.0, high=1.0, allow_schedule=False)
    return float(value)

  def densities(self, params: Any, sparsity: Any, eligible: Any = None) -> Any:
    """Per-leaf densities: a float32 scalar per eligible leaf, ``None`` elsewhere.

    Args:
      params: the parameters (arrays or shape-dtype structs; only shapes are read).
      sparsity: the global target ``S`` in ``[0, 1)``, a Python float or a traced scalar.
      eligible: a pytree of Python bools with the parameters' structure (default: ndim >= 2).

    Returns:
      A pytree with the parameters' structure.

    Raises:
      ValueError: for a Python ``sparsity`` outside ``[0, 1)``.
    """
    _hyperparams.check_scalar("sparsity", sparsity, low=0.0, high=1.0, high_open=True)
    treedef, count, slots, sizes, raws, fixed = self._layout(params, eligible)
    out: list[Any] = [None] * count
    if slots:
      d = _solve(np.array(sizes, np.float64), np.array(raws, np.float64), fixed, sparsity)
      for j, i in enumerate(slots):
        out[i] = d[j]
    return jax.tree.unflatten(treedef, out)

  def check_target(self, params: Any, sparsity: float, eligible: Any = None) -> None:
    """Raises ``ValueError`` with the numbers when a Python ``sparsity`` cannot be met.

    Args:
      params: the parameters.
      sparsity: the global target, a Python float in ``[0, 1)``.
      eligible: as in ``densities``.
    """
    _hyperparams.check_scalar("sparsity", sparsity, low=0.0, high=1.0, high_open=True)
    _, _, _, sizes, _, fixed = self._layout(params, eligible)
    total = float(sum(sizes))
    allowed = (1.0 - float(sparsity)) * total
    held = sum(n * f for n, f in zip(sizes, fixed, strict=True) if f is not None)
    free = sum(n for n, f in zip(sizes, fixed, strict=True) if f is None)
    if held > allowed + 0.5:
      raise ValueError(
          f"sparsity={sparsity} allows {allowed:.0f} nonzeros over the {total:.0f} eligible "
          f"entries, but the leaves kept dense or overridden already hold {held:.0f}."
      )
    if allowed - held > free + 0.5:
      raise ValueError(
          f"sparsity={sparsity} needs {allowed:.0f} nonzeros over the {total:.0f} eligible "
          f"entries, but dense or overridden leaves hold {held:.0f} and the other leaves only "
          f"{free:.0f}."
      )


def _solve(sizes: np.ndarray, raws: np.ndarray, fixed: list, sparsity: Any) -> jnp.ndarray:
  """RigL's epsilon solve with dense-overflow rebalancing, in jnp (traced ``sparsity`` allowed)."""
  is_fixed = np.array([f is not None for f in fixed])
  fixed_d = np.array([0.0 if f is None else f for f in fixed])
  n = jnp.asarray(sizes, jnp.float32)
  r = jnp.asarray(raws, jnp.float32)
  free = jnp.asarray(~is_fixed)
  s = jnp.asarray(sparsity, jnp.float32)
  budget = (1.0 - s) * jnp.sum(n) - jnp.sum(jnp.asarray(fixed_d * sizes, jnp.float32))

  def eps_of(dense):
    live = free & ~dense
    denom = jnp.sum(jnp.where(live, r * n, 0.0))
    left = budget - jnp.sum(jnp.where(dense, n, 0.0))
    return jnp.where(denom > 0, left / jnp.where(denom > 0, denom, 1.0), 0.0), live

  def round_(_, dense):
    eps, live = eps_of(dense)
    max_r = jnp.max(jnp.where(live, r, -jnp.inf))
    overflow = eps * max_r > 1.0
    return dense | (overflow & live & (r == max_r))

  dense = jax.lax.fori_loop(0, len(sizes), round_, jnp.zeros(len(sizes), bool))
  eps, _ = eps_of(dense)
  d = jnp.where(dense, 1.0, jnp.clip(eps * r, 0.0, 1.0))
  return jnp.where(free, d, jnp.asarray(fixed_d, jnp.float32))


def _check_power(power: float) -> None:
  _hyperparams.check_scalar("power", power, low=0.0, allow_schedule=False)


def uniform(*, dense: Any = None, overrides: Overrides = None) -> LayerDistribution:
  """Uniform distribution: every eligible leaf at density ``1 - S``.

  .. math::
    d_l = 1 - S

  With ``dense`` or ``overrides``, the other leaves share the remaining budget at one common
  density so that the total stays ``(1 - S) N``.

  Args:
    dense: leaves kept dense (None, a predicate ``(path, leaf) -> bool`` or a pytree of bools).
    overrides: fixed densities by ``keystr`` path (a mapping) or a function of ``(path, leaf)``.

  Returns:
    A ``LayerDistribution``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> params = {'w': jnp.zeros((4, 8)), 'b': jnp.zeros(8)}
    >>> d = osp.uniform().densities(params, 0.75)
    >>> float(d['w']), d['b']
    (0.25, None)

  References:
    Evci et al., *Rigging the Lottery: Making All Tickets Winners*, arXiv 1911.11134.
  """
  _eligibility.check_where("dense", dense)
  return LayerDistribution("uniform", 1.0, dense, overrides)


def er(*, dense: Any = None, overrides: Overrides = None) -> LayerDistribution:
  """Erdős–Rényi distribution over the last two dimensions (SET, RigL).

  .. math::
    d_l = \\min\\left(1, \\epsilon \\frac{n_{in} + n_{out}}{n_{in} n_{out}}\\right),\\quad
    \\sum_l d_l n_l = (1 - S) N

  Args:
    dense: leaves kept dense (None, a predicate ``(path, leaf) -> bool`` or a pytree of bools).
    overrides: fixed densities by ``keystr`` path (a mapping) or a function of ``(path, leaf)``.

  Returns:
    A ``LayerDistribution``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> params = {'a': jnp.zeros((10, 10)), 'b': jnp.zeros((10, 40))}
    >>> d = osp.er().densities(params, 0.8)
    >>> round(float(d['a']), 4), round(float(d['b']), 4)
    (0.2857, 0.1786)

  References:
    Mocanu et al., *Scalable Training of Artificial Neural Networks with Adaptive Sparse
    Connectivity Inspired by Network Science*, arXiv 1707.04780.
    Evci et al., *Rigging the Lottery: Making All Tickets Winners*, arXiv 1911.11134.
  """
  _eligibility.check_where("dense", dense)
  return LayerDistribution("er", 1.0, dense, overrides)


def erk(power: float = 1.0, *, dense: Any = None, overrides: Overrides = None) -> LayerDistribution:
  """Erdős–Rényi-Kernel distribution over all dimensions (RigL).

  .. math::
    d_l = \\min\\left(1, \\epsilon \\left(\\frac{\\sum_i k_i}{\\prod_i k_i}\\right)^{p}\\right),
    \\quad \\sum_l d_l n_l = (1 - S) N

  Leaves whose density would exceed 1 are made dense and ``epsilon`` re-solved (RigL).

  Args:
    power: the exponent ``p >= 0`` (RigL ``erk_power_scale``, default 1; 0 gives uniform).
    dense: leaves kept dense (None, a predicate ``(path, leaf) -> bool`` or a pytree of bools).
    overrides: fixed densities by ``keystr`` path (a mapping) or a function of ``(path, leaf)``.

  Returns:
    A ``LayerDistribution``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> params = {'small': jnp.zeros((4, 4)), 'big': jnp.zeros((100, 100))}
    >>> d = osp.erk().densities(params, 0.5)  # 'small' would exceed 1: dense, rest re-solved
    >>> float(d['small']), round(float(d['big']), 4)
    (1.0, 0.4992)

  References:
    Evci et al., *Rigging the Lottery: Making All Tickets Winners*, arXiv 1911.11134.
  """
  _check_power(power)
  _eligibility.check_where("dense", dense)
  return LayerDistribution("erk", float(power), dense, overrides)


def balanced(*, dense: Any = None, overrides: Overrides = None) -> LayerDistribution:
  """Balanced ER distribution: every eligible leaf gets the same number of nonzeros.

  .. math::
    d_l = \\min\\left(1, \\frac{\\epsilon}{n_l}\\right),\\quad \\sum_l d_l n_l = (1 - S) N

  so d_l n_l = (1 − S) N / L for L leaves while no leaf is full. With random masks
  (``osp.static_random()``) this is the "balanced" layer-wise ratio of random (ER) source
  networks. Leaves whose density would exceed 1 are made dense and the others re-solved so the
  total is met exactly (the authors' code caps those leaves at 1 and leaves the total short).

  Args:
    dense: leaves kept dense (None, a predicate ``(path, leaf) -> bool`` or a pytree of bools).
    overrides: fixed densities by ``keystr`` path (a mapping) or a function of ``(path, leaf)``.

  Returns:
    A ``LayerDistribution``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax_sparse as osp
    >>> params = {'a': jnp.zeros((10, 10)), 'b': jnp.zeros((10, 40))}
    >>> d = osp.balanced().densities(params, 0.8)  # 50 nonzeros each
    >>> round(float(d['a']), 4), round(float(d['b']), 4)
    (0.5, 0.125)

  References:
    Gadhikar, Mukherjee, Burkholz, *Why Random Pruning Is All We Need to Start Sparse*,
    ICML 2023, arXiv 2210.02412.
  """
  _eligibility.check_where("dense", dense)
  return LayerDistribution("balanced", 1.0, dense, overrides)
