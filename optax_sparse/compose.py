"""Operator composition of parameter steps (operator splitting).

``optax.chain(a, b)`` composes transformations of the *update*: ``b`` sees what ``a`` produced and
never the raw gradient. Methods such as HAM ("a base step, then a hyperbolic step with the same
gradient") and HORST ("a composition of non-commuting optimizer operators") compose *parameter
steps* instead. With steps ``S_1 .. S_n``, raw gradient ``g`` and parameters ``p``::

    p_0 = p
    u_i = S_i.update(g, state_i, p_{i-1})        p_i = p_{i-1} + u_i
    u   = u_1 + ... + u_n                         (so p + u = p_n)

Every step receives the same raw gradient and the parameter iterate left by the steps before it.
Extra keyword arguments are forwarded to every step.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from optax_sparse import _nonfinite, _validation

__all__ = ["ComposeState", "compose"]


class ComposeState(NamedTuple):
  """State of :func:`compose`: one inner state per step, in order.

  Attributes:
    inner_states: the steps' states, in order.
    skipped_leaves: int32 number of (leaf, step) pairs skipped under the non-finite policy
      (``docs/nonfinite.md``).
  """

  inner_states: tuple[Any, ...]
  skipped_leaves: jax.Array


def _add(a: Any, b: Any) -> Any:
  return jax.tree.map(
      lambda x, y: None if x is None else (x + y).astype(x.dtype),
      a,
      b,
      is_leaf=lambda x: x is None,
  )


def compose(*steps: optax.GradientTransformation) -> optax.GradientTransformationExtraArgs:
  """Composes parameter steps: each sees the raw gradient and the iterate left by the others.

  The composed update is the sum of the step updates, so that ``optax.apply_updates(params, u)``
  lands on the parameters reached by applying the steps one after the other. Order matters: the
  steps of most geometries do not commute.

  Args:
    *steps: any optax transformations (at least one). Each must emit a full update (include its
      learning rate), as the optimizers of ``optax`` do.

  Returns:
    An ``optax.GradientTransformationExtraArgs``.

  Examples:
    >>> import jax.numpy as jnp
    >>> import optax
    >>> import optax_sparse as osp
    >>> tx = osp.compose(optax.sgd(0.1), optax.sgd(0.1))
    >>> params = jnp.array([1.0, -2.0])
    >>> state = tx.init(params)
    >>> updates, state = tx.update(jnp.array([1.0, 1.0]), state, params)
    >>> updates
    Array([-0.2, -0.2], dtype=float32)

  References:
    Jacobs, Jain, Burkholz, `HORST: Composing Optimizer Geometries for Sparse Transformer
    Training <https://arxiv.org/abs/2605.21104>`_, 2026.
  """
  if not steps:
    raise ValueError("compose needs at least one step; got none.")
  for i, s in enumerate(steps):
    if not isinstance(s, optax.GradientTransformation):
      raise _validation.ArgumentTypeError(
          f"steps[{i}] must be an optax.GradientTransformation; got {s!r}.")
  steps = tuple(optax.with_extra_args_support(s) for s in steps)

  def init_fn(params):
    _validation.check_float_params(params)
    return ComposeState(inner_states=tuple(s.init(params) for s in steps),
                        skipped_leaves=jnp.zeros([], jnp.int32))

  def update_fn(updates, state, params=None, **extra_args):
    if params is None and len(steps) > 1:
      raise ValueError(optax._src.base.NO_PARAMS_MSG)
    _validation.check_grads(updates, params)
    # Non-finite policy (docs/nonfinite.md): every step sees a skipped leaf as a zero gradient
    # and a zero parameter, emits 0 there and keeps that leaf's state.
    ok = _nonfinite.ok_tree(updates, params)
    grads = _nonfinite.zero_bad(updates, ok)
    total = None
    iterate = None if params is None else _nonfinite.zero_bad(params, ok)
    new_states = []
    for step, inner in zip(steps, state.inner_states, strict=True):
      u, s = step.update(grads, inner, iterate, **extra_args)
      u = _nonfinite.zero_bad(u, ok)
      new_states.append(_nonfinite.keep_state(step, s, inner, ok, params))
      total = u if total is None else _add(total, u)
      if iterate is not None:
        iterate = optax.apply_updates(iterate, u)
    return total, ComposeState(inner_states=tuple(new_states),
                               skipped_leaves=state.skipped_leaves + _nonfinite.n_skipped(ok))

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
