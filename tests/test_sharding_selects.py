"""Shape-preserving selection helpers (one device): nonzero_indices, per-row top-k, collectives."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax_sparse as osp
from optax_sparse.masks import groups as G
from optax_sparse.masks import select


@pytest.mark.parametrize("shape", [(), (5, 48), (3, 7), (2, 3, 32)])
def test_nonzero_indices_matches_jnp_nonzero(shape):
  rng = np.random.default_rng(len(shape) + sum(shape))
  mask = rng.random(shape) < 0.4
  n = int(np.prod(shape))
  # Fewer slots than True entries (truncated), and more (padded with the fill value).
  for size, fill in ((max(1, int(mask.sum()) // 2), -1), (n + 3, n)):
    got = np.asarray(jax.jit(select.nonzero_indices, static_argnums=(1, 2))(
        jnp.asarray(mask), size, fill))
    want = np.asarray(jnp.nonzero(jnp.asarray(mask).ravel(), size=size, fill_value=fill)[0])
    assert got.dtype == np.int32 and got.shape == (size,)
    np.testing.assert_array_equal(got, want, err_msg=f"shape {shape}, size {size}")


def test_nonzero_indices_all_and_none():
  full = jnp.ones((4, 6), bool)
  np.testing.assert_array_equal(select.nonzero_indices(full, 24, -1), np.arange(24))
  np.testing.assert_array_equal(select.nonzero_indices(~full, 3, 9), [9, 9, 9])
  assert select.nonzero_indices(full, 0, -1).shape == (0,)


def _argsort_rows(scores, k):
  """Reference: the first k[r] entries of a stable descending argsort of each row's keys."""
  rows, cols = scores.shape
  key = np.asarray(select.score_keys(scores)).reshape(rows, cols).astype(np.int64)
  out = np.zeros((rows, cols), bool)
  for r in range(rows):
    order = np.argsort(-key[r], kind="stable")
    out[r, order[:max(0, min(int(k[r]), cols))]] = True
  return out


@pytest.mark.parametrize("cols", [3, 16, 17, 129])
def test_row_top_k_equals_stable_argsort_with_ties_nan_and_inf(cols):
  rng = np.random.default_rng(cols)
  for trial in range(4):
    rows = 5
    s = rng.normal(size=(rows, cols)).astype(np.float32)
    if trial >= 1:
      s = np.round(s)  # many ties straddling the threshold
    if trial == 2:
      s[rng.random(s.shape) < 0.2] = np.nan
      s[rng.random(s.shape) < 0.2] = -np.inf
    if trial == 3:
      s[0] = 0.0
      s[1, ::2] = -0.0  # -0.0 and 0.0 are one key
    k = rng.integers(-1, cols + 2, size=rows).astype(np.int32)
    got = np.asarray(jax.jit(G.select_units)(jnp.asarray(s), jnp.asarray(k)))
    np.testing.assert_array_equal(got, _argsort_rows(s, k), err_msg=f"trial {trial}")
    counts = np.clip(k, 0, cols)
    np.testing.assert_array_equal(got.sum(axis=1), counts)


_HLO = """HloModule m

%add (a: s32[], b: s32[]) -> s32[] {
  ROOT %s = s32[] add(s32[] %a, s32[] %b)
}

%taken (p: s32[4]) -> s32[4] {
  %p = s32[4] parameter(0)
  ROOT %ar1 = s32[4]{0} all-reduce(%p), to_apply=%add
}

%not_taken (p: s32[4]) -> s32[4] {
  %p = s32[4] parameter(0)
  ROOT %ag = s32[4]{0} all-gather(%p), dimensions={0}
}

%inner (p: s32[4]) -> s32[4] {
  %p = s32[4] parameter(0)
  ROOT %ar2 = s32[16]{0} all-reduce(%p), to_apply=%add
}

%outer (p: s32[4]) -> s32[4] {
  %p = s32[4] parameter(0)
  %ar3 = f32[8]{0} all-reduce(%p), to_apply=%add
  %c = pred[] compare(%p, %p), direction=EQ
  ROOT %cond2 = s32[4] conditional(%c, %p, %p), true_computation=%inner, false_computation=%taken
}

ENTRY %main (x: s32[4], y: pred[]) -> s32[4] {
  %x = s32[4] parameter(0)
  %y = pred[] parameter(1)
  %ar0 = f32[2,3]{1,0} all-reduce(%x), to_apply=%add
  %k = s32[] constant(1)
  %fixed = s32[4] conditional(%k, %x, %x), branch_computations={%not_taken, %taken}
  ROOT %cond = s32[4] conditional(%y, %x, %x), branch_computations={%taken, %outer}
}
"""


def test_collectives_walks_branches_with_their_depth():
  got = [(c.kind, c.shapes, c.nbytes, c.branch_depth) for c in osp.collectives(_HLO)]
  assert got == [
      ("all-reduce", ("f32[2,3]",), 24, 0),
      ("all-reduce", ("s32[4]",), 16, 0),  # the constant-index conditional's branch 1 only
      ("all-reduce", ("s32[4]",), 16, 1),
      ("all-reduce", ("f32[8]",), 32, 1),
      ("all-reduce", ("s32[16]",), 64, 2),
      ("all-reduce", ("s32[4]",), 16, 2),
  ]


def test_nonzero_indices_rejects_a_bad_size():
  with pytest.raises(ValueError, match="size"):
    select.nonzero_indices(jnp.ones((2, 2), bool), -1, 0)
