"""The registry of the common acceptance suite (``tests/test_common.py``).

Every public transformation of the library is registered here through one of the
``tests/cases_*.py`` modules, each owned by one part of the package. A case says how to build the
transformation and which hyperparameters are static for ``optax.inject_hyperparams``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any


@dataclasses.dataclass(frozen=True)
class Case:
  """One registered transformation.

  Attributes:
    name: test id.
    factory: the public factory.
    kwargs: keyword arguments for ``factory``.
    static_args: names of arguments that ``inject_hyperparams`` must treat as static (anything
      that is not a float hyperparameter: base optimizers, potentials, rules, integer shapes).
    lr_arg: the name of the ``ScalarOrSchedule`` learning-rate argument, or None.
    targets: the convergence targets this transformation must solve (names in
      ``test_common.TARGETS``); a transformation that is not an optimizer by itself (a decay
      transform) is registered chained with one.
    steps: scanned steps for the convergence check.
    extra_args: keyword arguments passed to ``update`` on every call.
    jit_init: whether ``init`` works under ``jax.jit`` (optax's contrib suite jits it); False
      only where the state's shapes depend on the parameters' values by design.
  """

  name: str
  factory: Callable[..., Any]
  kwargs: dict[str, Any]
  static_args: tuple[str, ...] = ()
  lr_arg: str | None = "learning_rate"
  targets: tuple[str, ...] = ("parabola", "rosenbrock", "mixed")
  steps: int = 3000
  extra_args: dict[str, Any] = dataclasses.field(default_factory=dict)
  jit_init: bool = True

  def build(self, **overrides: Any):
    return self.factory(**{**self.kwargs, **overrides})


def all_cases() -> list[Case]:
  """Collects the cases of every part of the package."""
  import cases_geometry
  import cases_masks
  import cases_methods

  return [*cases_geometry.CASES, *cases_masks.CASES, *cases_methods.CASES]
