"""Common-suite cases for `optax_sparse.geometry` (see `tests/common_cases.py`)."""

from common_cases import Case

CASES: list[Case] = []

import optax  # noqa: E402
import optax_sparse as osp  # noqa: E402


def _two_sgd_steps(learning_rate):
  return osp.compose(optax.sgd(learning_rate), optax.sgd(learning_rate, momentum=0.5))


CASES.append(Case("compose_sgd_momentum", _two_sgd_steps, {"learning_rate": 1e-3}, steps=5000))
