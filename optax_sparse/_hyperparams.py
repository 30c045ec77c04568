"""Evaluation and validation of scalar-or-schedule hyperparameters.

Every factory in the library validates its numeric arguments where the transformation is built
(a ``ValueError`` naming the argument and the value) and evaluates schedules on a step counter
kept in its own state.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax.numpy as jnp
import optax


def evaluate(value: optax.ScalarOrSchedule, count: jnp.ndarray) -> jnp.ndarray:
  """Returns ``value(count)`` for a schedule, else ``value`` as a float32 array."""
  if callable(value):
    return jnp.asarray(value(count), jnp.float32)
  return jnp.asarray(value, jnp.float32)


def check_scalar(
    name: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    allow_schedule: bool = True,
) -> None:
  """Raises ``ValueError`` naming ``name`` when a literal ``value`` is out of range.

  Schedules (callables) are accepted when ``allow_schedule`` and cannot be checked before they
  run; traced values (inside ``inject_hyperparams``) are accepted unchecked.

  Args:
    name: the argument's name, used in the message.
    value: the literal number, a schedule, or a traced array.
    low: lower bound, inclusive unless ``low_open``.
    high: upper bound, inclusive unless ``high_open``.
    low_open: exclude ``low`` itself.
    high_open: exclude ``high`` itself.
    allow_schedule: whether a callable is a valid value.
  """
  if isinstance(value, (str, bytes, bool)):
    from optax_sparse import _validation  # noqa: PLC0415 - avoids an import cycle.

    raise _validation.ArgumentTypeError(f"{name} must be a number; got {value!r}.")
  if callable(value):
    if not allow_schedule:
      raise ValueError(f"{name} must be a number, not a schedule; got {value!r}.")
    return
  try:
    v = float(value)
  except (TypeError, ValueError):
    # A tracer (inject_hyperparams) or an array: nothing to check at construction.
    if hasattr(value, "shape") or type(value).__name__.endswith("Tracer"):
      return
    raise ValueError(f"{name} must be a number; got {value!r}.") from None
  except Exception:  # noqa: BLE001 - concrete conversion of a tracer raises jax errors
    return
  if math.isnan(v):
    raise ValueError(f"{name} must not be NaN; got {value!r}.")
  if low is not None and (v < low or (low_open and v == low)):
    bound = f"> {low}" if low_open else f">= {low}"
    raise ValueError(f"{name} must be {bound}; got {value!r}.")
  if high is not None and (v > high or (high_open and v == high)):
    bound = f"< {high}" if high_open else f"<= {high}"
    raise ValueError(f"{name} must be {bound}; got {value!r}.")


def needs_count(*values: Any) -> bool:
  """Whether any of ``values`` is a schedule, so that a step counter must be kept."""
  return any(isinstance(v, Callable) for v in values)  # type: ignore[arg-type]
