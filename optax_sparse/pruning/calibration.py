"""Calibration statistics of the inputs of every linear layer of a Flax model.

One-shot pruning scores a layer ``y = x @ W`` by statistics of its inputs over a few calibration
batches: Wanda needs the L2 norm of every input feature, SparseGPT the Gram matrix

.. math::
  \\lVert X_j \\rVert_2 = \\Big(\\sum_t x_{tj}^2\\Big)^{1/2}, \\qquad
  H = X^\\top X = \\sum_t x_t x_t^\\top

summed over all tokens ``t`` (every row of every batch, all leading axes flattened). The
functions here run the model on the batches and record these for the inputs of ``nnx.Linear``,
``nnx.LinearGeneral`` (NNX) and ``nn.Dense``, ``nn.DenseGeneral`` (Linen) layers: for Linen
through ``flax.linen.intercept_methods`` on ``__call__``; for NNX by running a copy of the model
(``nnx.merge`` inside ``jax.jit``) whose linear modules record their input before computing. The
user's model is never modified. The result is a tree laid out like the parameters as pure
nested dicts (``variables["params"]`` for Linen, ``nnx.to_pure_dict(nnx.state(model,
nnx.Param))`` for NNX), with the statistic at each recorded ``kernel`` and ``None`` elsewhere.

Library decisions: a layer called several times per forward (weight sharing) accumulates all its
calls; layers inside lifted transformations (``nn.scan``, ``nnx.scan``, ``remat``) and
``LinearGeneral``/``DenseGeneral`` with batch axes are not recorded (their statistic stays
``None``). Flax is imported when a function is called, never at package import.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["input_grams", "input_norms", "record_inputs"]

Path = tuple[Hashable, ...]
_ACTIVE: contextvars.ContextVar = contextvars.ContextVar("optax_sparse_calibration", default=None)


def _statistic(x: jax.Array, axes: Sequence[int], name: str) -> jax.Array:
  """The statistic of one call: inputs ``x`` contracted over ``axes`` (moved last, flattened)."""
  axes = tuple(a % x.ndim for a in axes)
  rest = tuple(i for i in range(x.ndim) if i not in axes)
  fan_in = int(np.prod([x.shape[a] for a in axes]))
  rows = jnp.transpose(x, rest + axes).reshape(-1, fan_in).astype(jnp.float32)
  if name == "sq_norm":
    return jnp.sum(rows * rows, axis=0).reshape([x.shape[a] for a in axes])
  return jnp.matmul(rows.T, rows, precision=jax.lax.Precision.HIGHEST)


class _Recorder:
  """Collects statistics by kernel path while a model runs (inside one trace)."""

  def __init__(self, statistic: str, only: frozenset | None):
    self.statistic = statistic
    self.only = only
    self.stats: dict[Path, jax.Array] = {}
    self.order: list[Path] = []

  def add(self, path: Path, x: Any, axes: Sequence[int]) -> None:
    if path not in self.order:
      self.order.append(path)
    if self.only is not None and path not in self.only:
      return
    s = _statistic(jnp.asarray(x), axes, self.statistic)
    self.stats[path] = s + self.stats[path] if path in self.stats else s


# ----------------------------------------------------------------------------------------------
# NNX


@functools.cache
def _nnx_recording_class(cls: type) -> type:
  """A subclass of an NNX linear module class whose ``__call__`` records its input first."""
  base_call = cls.__call__

  def __call__(self, inputs, *args, **kwargs):
    rec, paths = _ACTIVE.get() or (None, {})
    path = paths.get(id(self))
    if rec is not None and path is not None:
      axes = getattr(self, "axis", (-1,))
      axes = (axes,) if isinstance(axes, int) else tuple(axes)
      if not getattr(self, "batch_axis", None):
        rec.add(path, inputs, axes)
    return base_call(self, inputs, *args, **kwargs)

  return type(cls.__name__, (cls,), {"__call__": __call__, "__slots__": ()})


def _nnx_run(model: Any, batches: Iterable[Any], statistic: str, only: frozenset | None,
             forward: Callable[..., Any] | None):
  from flax import nnx  # noqa: PLC0415 - flax is optional.

  graphdef, state = nnx.split(model)

  def run(state, args):
    mod = nnx.merge(graphdef, state)
    paths = {}
    for path, sub in nnx.iter_graph(mod):
      if type(sub) in (nnx.Linear, nnx.LinearGeneral):
        sub.__class__ = _nnx_recording_class(type(sub))
        paths[id(sub)] = tuple(path) + ("kernel",)
    rec = _Recorder(statistic, only)
    token = _ACTIVE.set((rec, paths))
    try:
      (forward or (lambda m, *a: m(*a)))(mod, *args)
    finally:
      _ACTIVE.reset(token)
    return rec.stats, rec.order

  return _accumulate(run, state, batches)


# ----------------------------------------------------------------------------------------------
# Linen


def _linen_run(module: Any, variables: Any, batches: Iterable[Any], statistic: str,
               only: frozenset | None, method: Any):
  import flax.linen as nn  # noqa: PLC0415 - flax is optional.

  def run(variables, args):
    rec = _Recorder(statistic, only)

    def interceptor(next_fun, call_args, call_kwargs, context):
      mdl = context.module
      if context.method_name == "__call__" and type(mdl) in (nn.Dense, nn.DenseGeneral):
        axes = getattr(mdl, "axis", -1)
        axes = (axes,) if isinstance(axes, int) else tuple(axes)
        if not getattr(mdl, "batch_dims", ()):
          rec.add(tuple(mdl.path) + ("kernel",), call_args[0], axes)
      return next_fun(*call_args, **call_kwargs)

    with nn.intercept_methods(interceptor):
      module.apply(variables, *args, method=method)
    return rec.stats, rec.order

  return _accumulate(run, variables, batches)


# ----------------------------------------------------------------------------------------------


def _accumulate(run: Callable[..., Any], state: Any, batches: Iterable[Any]):
  order: list[Path] = []
  jitted: dict[Any, Any] = {}
  totals: dict[Path, jax.Array] = {}
  seen = False
  for batch in batches:
    seen = True
    args = tuple(batch) if isinstance(batch, tuple) else (batch,)
    signature = tuple((jnp.shape(a), jnp.result_type(a)) for a in args)
    if signature not in jitted:
      holder: dict[str, Any] = {}

      def stats_only(state, args, holder=holder):
        stats, order_ = run(state, args)
        holder["order"] = order_
        return stats

      jitted[signature] = (jax.jit(stats_only), holder)
    fn, holder = jitted[signature]
    stats = fn(state, args)
    for path in holder["order"]:
      if path not in order:
        order.append(path)
    for path, s in stats.items():
      totals[path] = s + totals[path] if path in totals else s
  if not seen:
    raise ValueError("batches must contain at least one calibration batch; got none.")
  return totals, order


def _params_tree(model: Any, variables: Any) -> Any:
  if variables is not None:
    return variables["params"]
  from flax import nnx  # noqa: PLC0415 - flax is optional.

  return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _as_tree(params: Any, stats: dict[Path, jax.Array]) -> Any:
  def leaf(path, p):
    key = tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)
    return stats.get(key)

  return jax.tree_util.tree_map_with_path(leaf, params)


def _check_model(model: Any, variables: Any) -> None:
  if variables is None:
    from flax import nnx  # noqa: PLC0415 - flax is optional.

    if not isinstance(model, nnx.Module):
      raise TypeError(
          f"model must be an nnx.Module, or a Linen module with variables=; got {type(model)}.")
  else:
    import flax.linen as nn  # noqa: PLC0415 - flax is optional.

    if not isinstance(model, nn.Module):
      raise TypeError(f"model must be a flax.linen.Module when variables is given; got "
                      f"{type(model)}.")
    if "params" not in variables:
      raise ValueError("variables must contain a 'params' collection.")


def record_inputs(
    model: Any, batches: Iterable[Any], statistic: str = "sq_norm", *, variables: Any = None,
    method: Any = None, forward: Callable[..., Any] | None = None,
    only: Iterable[Path] | None = None,
) -> tuple[Any, list[Path]]:
  """Sums a statistic of the inputs of every linear layer over calibration batches.

  .. math::
    \\texttt{sq\\_norm}: \\; \\sum_t x_{tj}^2, \\qquad \\texttt{gram}: \\; \\sum_t x_t x_t^\\top

  Args:
    model: an ``nnx.Module``, or a ``flax.linen.Module`` together with ``variables``.
    batches: an iterable of model inputs (a tuple is unpacked as positional arguments).
    statistic: ``"sq_norm"`` (shape: the kernel's input dimensions) or ``"gram"`` (``(fan_in,
      fan_in)``).
    variables: the Linen variables (``{"params": ...}``); None for NNX.
    method: the Linen method to apply (default ``__call__``).
    forward: NNX only: ``forward(model, *batch)`` instead of ``model(*batch)``.
    only: kernel paths (tuples of keys, e.g. ``("blocks", 0, "up", "kernel")``) to record;
      None records all.

  Returns:
    ``(stats, order)``: a tree like the parameters (pure dicts) with the statistic per recorded
    kernel and ``None`` elsewhere, and the kernel paths in the order the forward first calls
    them.

  Raises:
    ValueError: for an unknown ``statistic`` or no batches. TypeError: for a model that is
      neither NNX nor Linen.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from optax_sparse import pruning
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> stats, order = pruning.record_inputs(model, [jnp.array([[1.0, 2.0], [3.0, 0.0]])])
    >>> stats["kernel"].tolist(), stats["bias"], order
    ([10.0, 4.0], None, [('kernel',)])
  """
  if statistic not in ("sq_norm", "gram"):
    raise ValueError(f"statistic must be 'sq_norm' or 'gram'; got {statistic!r}.")
  _check_model(model, variables)
  only = None if only is None else frozenset(tuple(p) for p in only)
  if variables is None:
    stats, order = _nnx_run(model, batches, statistic, only, forward)
  else:
    stats, order = _linen_run(model, variables, batches, statistic, only, method)
  return _as_tree(_params_tree(model, variables), stats), order


def input_norms(model: Any, batches: Iterable[Any], *, variables: Any = None,
                method: Any = None, forward: Callable[..., Any] | None = None) -> Any:
  """Wanda's input norms ||X_j||_2 of every linear layer over calibration batches.

  .. math::
    \\lVert X_j \\rVert_2 = \\Big(\\sum_t x_{tj}^2\\Big)^{1/2}

  Args:
    model: an ``nnx.Module``, or a Linen module with ``variables``.
    batches: an iterable of model inputs.
    variables: the Linen variables; None for NNX.
    method: the Linen method to apply.
    forward: NNX only: ``forward(model, *batch)`` instead of ``model(*batch)``.

  Returns:
    A tree like the parameters (pure dicts), a float32 norm per input feature of each recorded
    kernel (the kernel's input dimensions, e.g. ``(in,)``), ``None`` elsewhere; the ``norms``
    argument of :func:`~optax_sparse.pruning.wanda` and friends.

  Examples:
    >>> import jax.numpy as jnp
    >>> import flax.linen as nn
    >>> from optax_sparse import pruning
    >>> layer = nn.Dense(3)
    >>> x = jnp.array([[3.0, 0.0], [4.0, 1.0]])
    >>> variables = layer.init(__import__("jax").random.PRNGKey(0), x)
    >>> pruning.input_norms(layer, [x], variables=variables)["kernel"].tolist()
    [5.0, 1.0]
  """
  stats, _ = record_inputs(model, batches, "sq_norm", variables=variables, method=method,
                           forward=forward)
  return jax.tree.map(jnp.sqrt, stats)


def input_grams(model: Any, batches: Iterable[Any], *, variables: Any = None,
                method: Any = None, forward: Callable[..., Any] | None = None) -> Any:
  """SparseGPT's Gram matrices H = X^T X of the inputs of every linear layer.

  .. math::
    H = \\sum_t x_t x_t^\\top \\in \\mathbb{R}^{n_{in} \\times n_{in}}

  Args:
    model: an ``nnx.Module``, or a Linen module with ``variables``.
    batches: an iterable of model inputs.
    variables: the Linen variables; None for NNX.
    method: the Linen method to apply.
    forward: NNX only: ``forward(model, *batch)`` instead of ``model(*batch)``.

  Returns:
    A tree like the parameters (pure dicts), a float32 ``(fan_in, fan_in)`` matrix per recorded
    kernel, ``None`` elsewhere.

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from optax_sparse import pruning
    >>> model = nnx.Linear(2, 3, rngs=nnx.Rngs(0))
    >>> pruning.input_grams(model, [jnp.array([[1.0, 2.0]])])["kernel"].tolist()
    [[1.0, 2.0], [2.0, 4.0]]
  """
  stats, _ = record_inputs(model, batches, "gram", variables=variables, method=method,
                           forward=forward)
  return stats
