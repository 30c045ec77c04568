"""Common-suite cases for `optax_sparse.masks` (see `tests/common_cases.py`)."""

from common_cases import Case

CASES: list[Case] = []
