"""Mask selection speed: sort-free ``select_top_k`` against argsort and ``lax.top_k``.

One process. A float32 score array of ``--n`` entries (default 10,240,000), ``k`` = 10% of the
entries (90% sparsity). Rows, each jitted, timed as the median of calls ended by
``jax.block_until_ready``:

* ``osp.select_top_k``: the two-pass 16-bit radix select with the index tie-fix, traced ``k``.
* argsort top-k (jaxpruner's method): a stable ``jnp.argsort`` of the negated scores, then the
  mask of the first ``k`` positions scattered back (index tie-break, traced ``k``).
* ``jax.lax.top_k`` (static ``k``, recompiles for every new ``k``) plus the scatter of its
  indices into a mask.
* ``osp.select_top_k_global`` over a tree of 8 leaves with the same total size.

The fast rows run interleaved (one call of each per round, ``--repeats`` rounds) so that load
drifts hit all alike; the argsort row is much slower and runs ``--argsort-repeats`` times. The
selection inputs are not donated: the same scores are selected on every call and only a small
bool mask is produced. All masks are checked equal before timing.

``time_steps`` times, interleaved in one process with parameters and state donated, on an
MLP-like tree of 12.6M parameters: ``optax.adamw``, ``sparse(adamw, static_random)``, the plain
and the mask-update step of ``sparse(adamw, rigl)`` (bool and bit-packed masks), and the RigL
plain step inside ``optax.chain``, ``optax.MultiSteps`` and ``optax.inject_hyperparams`` against
the same wrapper around adamw; each row also reports XLA's bytes accessed (cost analysis).
``state_bytes_rows`` compares the state bytes with the inner optimizer's, ``compile_seconds``
times the compilation of a ``sparse(ham(adamw), rigl)`` step.

The markdown table goes to ``docs/benchmarks/masks.md``.

Usage::

  python benchmarks/masks.py                       # defaults: n = 10,240,000, 20 repeats
  python benchmarks/masks.py --repeats 30 --argsort-repeats 5
  python benchmarks/masks.py --skip-steps          # selection only
  python benchmarks/masks.py --skip-selection      # optimizer steps only
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import optax_sparse as osp  # noqa: E402


def argsort_top_k(scores: jax.Array, k: jax.Array) -> jax.Array:
  """jaxpruner-style exact top-k: a full stable argsort, index tie-break, traced ``k``."""
  flat = scores.reshape(-1)
  order = jnp.argsort(-flat, stable=True)
  keep = jnp.arange(flat.size) < k
  return jnp.zeros(flat.shape, bool).at[order].set(keep).reshape(scores.shape)


def lax_top_k(scores: jax.Array, k: int) -> jax.Array:
  """``jax.lax.top_k`` (static ``k``) and the scatter of its indices into a mask."""
  flat = scores.reshape(-1)
  _, idx = jax.lax.top_k(flat, k)
  return jnp.zeros(flat.shape, bool).at[idx].set(True).reshape(scores.shape)


def _median_ms(times: list[float]) -> float:
  return 1e3 * statistics.median(times)


def _interleaved(calls, repeats: int) -> list[float]:
  """Median ms of each zero-argument call; one call of each per round."""
  for c in calls:
    jax.block_until_ready(c())
  times = [[] for _ in calls]
  for _ in range(repeats):
    for i, c in enumerate(calls):
      t0 = time.perf_counter()
      jax.block_until_ready(c())
      times[i].append(time.perf_counter() - t0)
  return [_median_ms(t) for t in times]


def time_selection(n: int, sparsity: float, repeats: int, argsort_repeats: int) -> list[tuple]:
  """Rows (name, median ms, repeats) for the selection methods at ``sparsity``."""
  rng = np.random.default_rng(0)
  side = max(8, int(np.sqrt(n)) // 8 * 8)
  shape = (side, n // side)
  n = shape[0] * shape[1]
  scores = jnp.asarray(rng.standard_normal(shape, np.float32))
  k = int(round(n * (1.0 - sparsity)))
  k_arr = jnp.int32(k)
  ours = jax.jit(osp.select_top_k)
  by_argsort = jax.jit(argsort_top_k)
  by_lax = jax.jit(lax_top_k, static_argnums=1)
  leaves = 8
  tree = {f"w{i}": s for i, s in enumerate(jnp.split(scores, leaves, axis=0))}
  ours_global = jax.jit(osp.select_top_k_global)

  want = np.asarray(ours(scores, k_arr))
  assert want.sum() == k
  np.testing.assert_array_equal(np.asarray(by_lax(scores, k)), want)
  np.testing.assert_array_equal(np.asarray(by_argsort(scores, k_arr)), want)
  got = ours_global(tree, k_arr)
  np.testing.assert_array_equal(np.concatenate([np.asarray(got[f"w{i}"]) for i in range(leaves)]),
                                want)

  fast = _interleaved(
      [lambda: ours(scores, k_arr), lambda: by_lax(scores, k),
       lambda: ours_global(tree, k_arr)],
      repeats,
  )
  # The argsort row is interleaved with our row again, so that its ratio is measured side by side.
  slow = _interleaved([lambda: ours(scores, k_arr), lambda: by_argsort(scores, k_arr)],
                      argsort_repeats)
  return [
      (f"`osp.select_top_k` (traced k), {shape[0]}x{shape[1]}", fast[0], repeats),
      (f"`osp.select_top_k_global` (traced k), {leaves} leaves", fast[2], repeats),
      ("`jax.lax.top_k` + scatter (static k)", fast[1], repeats),
      ("stable `jnp.argsort` top-k (traced k, jaxpruner)", slow[1], argsort_repeats),
  ], n, k, slow[1] / slow[0]


def _mlp_params(width: int, blocks: int) -> dict:
  rng = np.random.default_rng(1)
  tree = {}
  for i in range(blocks):
    tree[f"block{i}"] = {
        "up": jnp.asarray(rng.normal(size=(width, 2 * width)).astype(np.float32) * 0.02),
        "up_bias": jnp.zeros((2 * width,), jnp.float32),
        "down": jnp.asarray(rng.normal(size=(2 * width, width)).astype(np.float32) * 0.02),
        "norm_scale": jnp.ones((width,), jnp.float32),
    }
  return tree


def _tree_bytes(tree) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree) if hasattr(x, "dtype")))


def _supports_packed() -> bool:
  import inspect  # noqa: PLC0415

  return "packed_masks" in inspect.signature(osp.sparse).parameters


def _keep_rule(every: int):
  """``rigl(every)`` whose mask branch only flips no mask entry (an unfoldable identity).

  XLA removes a conditional whose branches are equal, so the plain step's bytes are read from
  this twin: its branch reads and writes the masks once (an upper bound of the plain path).
  """
  rule = osp.rigl(every=every)

  def update_masks(masks, params, grads, count, key, target, rule_state):
    del params, grads, key, target
    never = count > np.int32(2**30)
    return jax.tree.map(lambda m: None if m is None else m ^ never, masks,
                        is_leaf=lambda x: x is None), rule_state

  return rule._replace(update_masks=update_masks)


def step_rows(width: int = 1024, blocks: int = 3):
  """The step rows: (name, transformation, bytes twin or None, baseline name, kind).

  ``rigl(every=10**6)`` gives plain steps only (no count after 0 is a multiple), with the same
  conditional as every RigL step; ``rigl(every=1)`` gives a mask update on every step.
  """
  erk = osp.erk()
  adamw = lambda: optax.adamw(1e-3)  # noqa: E731

  def sp(rule, **kw):
    return osp.sparse(adamw(), rule, sparsity=0.9, distribution=erk, **kw)

  plain, update = osp.rigl(every=10**6), osp.rigl(every=1)
  rows = [
      ("`optax.adamw`", adamw(), None, None),
      ("`sparse(adamw, static_random)`", sp(osp.static_random()), None, "`optax.adamw`"),
      ("`sparse(adamw, rigl)` plain step", sp(plain), sp(_keep_rule(10**6)), "`optax.adamw`"),
      ("`sparse(adamw, rigl)` mask-update step", sp(update), None,
       "`sparse(adamw, rigl)` plain step"),
  ]
  if _supports_packed():
    rows += [
        ("`sparse(adamw, rigl, packed_masks=True)` plain step", sp(plain, packed_masks=True),
         sp(_keep_rule(10**6), packed_masks=True), "`optax.adamw`"),
        ("`sparse(adamw, rigl, packed_masks=True)` mask-update step",
         sp(update, packed_masks=True), None,
         "`sparse(adamw, rigl, packed_masks=True)` plain step"),
    ]
  clip = lambda: optax.clip(1.0)  # noqa: E731
  rows += [
      ("`chain(clip, adamw)`", optax.chain(clip(), adamw()), None, None),
      ("`chain(clip, sparse(adamw, rigl))` plain step", optax.chain(clip(), sp(plain)),
       optax.chain(clip(), sp(_keep_rule(10**6))), "`chain(clip, adamw)`"),
      ("`MultiSteps(adamw, 1)`", optax.MultiSteps(adamw(), 1), None, None),
      ("`MultiSteps(sparse(adamw, rigl), 1)` plain step", optax.MultiSteps(sp(plain), 1),
       optax.MultiSteps(sp(_keep_rule(10**6)), 1), "`MultiSteps(adamw, 1)`"),
      ("`inject_hyperparams(adamw)`", optax.inject_hyperparams(optax.adamw)(learning_rate=1e-3),
       None, None),
      ("`inject_hyperparams(sparse(adamw, rigl))(sparsity)` plain step",
       optax.inject_hyperparams(lambda sparsity: osp.sparse(
           adamw(), plain, sparsity, distribution=erk))(sparsity=0.9),
       optax.inject_hyperparams(lambda sparsity: osp.sparse(
           adamw(), _keep_rule(10**6), sparsity, distribution=erk))(sparsity=0.9),
       "`inject_hyperparams(adamw)`"),
  ]
  return rows


def _make_step(tx):
  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  return jax.jit(step, donate_argnums=(0, 1))


def _bytes_accessed(step, params, state, grads) -> float:
  cost = step.lower(params, state, grads).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("bytes accessed", float("nan")))


def time_steps(repeats: int, width: int = 1024, blocks: int = 3) -> tuple[list[tuple], int]:
  """Every step row, interleaved (one call of each per round), parameters and state donated.

  Returns rows (name, median ms, median per-round ratio to the row's baseline, baseline,
  bytes accessed, bytes ratio to optax.adamw) and the parameter count.
  """
  params = _mlp_params(width, blocks)
  n_params = sum(x.size for x in jax.tree.leaves(params))
  grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
  specs = step_rows(width, blocks)
  steps, carries, nbytes = [], [], []
  for _name, tx, twin, _ in specs:
    step = _make_step(tx)
    state = tx.init(params)
    # The bytes of the plain path are read from the twin (see _keep_rule).
    twin_state = state if twin is None else twin.init(params)
    nbytes.append(_bytes_accessed(step if twin is None else _make_step(twin), params,
                                  twin_state, grads))
    carry = (jax.tree.map(jnp.copy, params), state)
    for _ in range(2):  # compile, and leave the count at 0 behind (a mask update for every=10**6)
      carry = jax.block_until_ready(step(*carry, grads))
    steps.append(step)
    carries.append(carry)
  times = [[] for _ in specs]
  for _ in range(repeats):
    for i, step in enumerate(steps):
      t0 = time.perf_counter()
      carries[i] = jax.block_until_ready(step(*carries[i], grads))
      times[i].append(time.perf_counter() - t0)
  index = {name: i for i, (name, *_rest) in enumerate(specs)}
  base_bytes = nbytes[0]
  rows = []
  for i, (name, _, _, base) in enumerate(specs):
    j = index[base] if base is not None else 0
    ratios = [a / b for a, b in zip(times[i], times[j], strict=True)]
    rows.append((name, _median_ms(times[i]), statistics.median(ratios),
                 base if base is not None else "`optax.adamw`", nbytes[i],
                 nbytes[i] / base_bytes))
  return rows, n_params


def state_bytes_rows(width: int = 1024, blocks: int = 3) -> list[tuple]:
  """(name, state bytes, of which masks, ratio to the inner optimizer's state)."""
  params = _mlp_params(width, blocks)
  inner = optax.adamw(1e-3).init(params)
  rows = [("`optax.adamw` (inner)", _tree_bytes(inner), 0)]
  variants = [("`sparse(adamw, rigl)`", {})]
  if _supports_packed():
    variants.append(("`sparse(adamw, rigl, packed_masks=True)`", {"packed_masks": True}))
  for name, kw in variants:
    state = jax.eval_shape(osp.sparse(optax.adamw(1e-3), osp.rigl(), sparsity=0.9,
                                      distribution=osp.erk(), **kw).init, params)
    rows.append((name, _tree_bytes(state), _tree_bytes(state.masks)))
  return [(n, b, m, b / rows[0][1]) for n, b, m in rows]


def compile_seconds(width: int = 1024, blocks: int = 3) -> float:
  """Seconds to lower and compile one donated ``sparse(ham(adamw), rigl)`` step."""
  params = _mlp_params(width, blocks)
  grads = jax.tree.map(jnp.ones_like, params)
  tx = osp.sparse(osp.ham(optax.adamw(1e-3), 1e-3), osp.rigl(every=2), sparsity=0.9,
                  distribution=osp.erk())
  state = tx.init(params)
  t0 = time.perf_counter()
  _make_step(tx).lower(params, state, grads).compile()
  return time.perf_counter() - t0


def _step_table(rows) -> list[str]:
  lines = ["| step | median ms | time ratio (median per round) | against | bytes accessed (MB) "
           "| bytes / `optax.adamw` |", "|---|---|---|---|---|---|"]
  for name, ms, ratio, base, nbytes, bratio in rows:
    lines.append(f"| {name} | {ms:.1f} | {ratio:.2f}x | {base} | {nbytes / 1e6:.0f} | "
                 f"{bratio:.2f}x |")
  return lines


def _state_table(rows) -> list[str]:
  lines = ["| state | bytes (MB) | masks (MB) | / inner state |", "|---|---|---|---|"]
  for name, b, m, r in rows:
    lines.append(f"| {name} | {b / 1e6:.2f} | {m / 1e6:.2f} | {r:.3f}x |")
  return lines


def _table(rows, base: float) -> list[str]:
  lines = ["| method | median ms | repeats | time / first row |", "|---|---|---|---|"]
  for name, ms, reps in rows:
    lines.append(f"| {name} | {ms:.1f} | {reps} | {ms / base:.2f}x |")
  return lines


ROOT_CAUSE = """\
### Root cause (optimized HLO of the donated step, 12.6M parameters)

Read from `jax.jit(step, donate_argnums=(0, 1)).lower(...).compile().as_text()` and its cost
analysis; `optax.adamw` reads and writes 504 MB per step (three fused passes per leaf: the two
moments written in place, then the parameter pass reading them back).

Before (the structure of `sparse()` before this change):

* **The non-finite guard copied every moment.** `_nonfinite.guard` selects
  `where(ok, s', s)` after `inner.update`. XLA fuses the cheap producer of `s'` (Adam's
  `b1·m + (1 − b1)·g`) into both consumers, the select that writes the moment and the parameter
  pass that computes the update, so the parameter pass reads the *old* moment after the
  in-place select has overwritten it; copy insertion therefore copies every donated moment to a
  fresh temporary first (24 `copy` instructions, `mu` and `nu` of 12 leaves, plus a page-faulted
  temporary per call). `sparse(adamw, static_random)`: 869 MB, 1.73x adamw's bytes; a
  three-array toy with the guard ran 2.7x slower than without.
* **The masks were copied into the conditional on every step.** The mask update is a
  `lax.cond` whose keep branch returns its operand; with donated masks XLA copies the masks into
  the conditional's operand on every step, taken or not (6 `pred` copies), and the moment and
  parameter passes read both the old and the new masks (6 bytes per entry of bool masks).
* **The non-finite check** reads the gradient and the parameter once more per leaf (two
  reductions, 100 MB): a floor of about 1.2x adamw's bytes for any guarded step.
* **Mask update:** the tie-break noise was a threefry normal draw (on CPU about as slow as one
  whole selection); each of the 6 histogram passes of a RigL update (3 per selection, drop and
  grow) materializes its int32 digits and a broadcast of ones as `s32[n, 1]` scatter operands
  (16 bytes per entry per pass; XLA CPU runs a scatter as a serial loop).
* `skip_update_on_mask_step=True` kept the old inner state with the same select after the
  update (the same copies).

Changes:

* `optax_sparse._select_in_place.guard`: the same policy, with the select placed where the state
  is produced. `inner.update` is traced once and its jaxpr re-evaluated with each per-parameter
  state leaf `s'` replaced by `where(ok, s', s)` at the equation that computes it, so the update
  is computed from the selected value, which XLA writes in place and reads back exactly like
  plain optax (on finite steps the result is `inner.update`'s own, bit-identical in the checked
  optimizers, where the recomputing structure could differ from it in the last bit, e.g. for
  Nesterov Adam; a skipped leaf's update is 0 and its state is kept, as before).
  The entry computation of the donated step has no `copy` of a float buffer left (checked by
  `tests/test_packed_masks.py`); `static_random`: 617 MB, 1.23x (the check's two reductions and
  the mask read are what remains). `skip_update_on_mask_step=True` uses the same guard (every
  leaf skipped on a mask-update step).
* `packed_masks=True` (`PackedMask`): the masks are bits, unpacked inside the passes that read
  them and inside the mask-update branch, so the conditional's operand copy and the mask reads
  are 8x smaller: the RigL plain step moves 620 MB (1.23x), as much as `static_random`.
* RigL's tie-break noise: a counter-based integer hash of the flat index (two words of threefry
  seed it), uniform with the same std (a documented deviation from the official normal draw);
  the mask branch drops from 4.75 GB to 4.04 GB of bytes accessed.

What remains: the non-finite check's reductions (about 1.2x adamw's bytes, by the policy), the
conditional's copy of bool masks (2 bytes per entry per step; 1/4 byte packed), and the
histogram scatters of the mask update, which dominate it on CPU.
"""


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=10_240_000)
  parser.add_argument("--sparsity", type=float, default=0.9)
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--argsort-repeats", type=int, default=5)
  parser.add_argument("--step-repeats", type=int, default=20)
  parser.add_argument("--skip-steps", action="store_true")
  parser.add_argument("--skip-selection", action="store_true")
  parser.add_argument("--out", default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks", "masks.md"))
  args = parser.parse_args()

  load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
  lines = [
      "## Mask selection and sparse optimizer steps (`benchmarks/masks.py`)",
      "",
      f"Command: `python benchmarks/masks.py {' '.join(sys.argv[1:])}`".rstrip() + "  ",
      f"Machine: CPU ({platform.machine()}), {os.cpu_count()} cores; jax {jax.__version__}; "
      f"backend {jax.default_backend()}; load average at start {load:.1f} (other jobs shared the "
      "machine when above the core count).",
  ]
  if not args.skip_selection:
    rows, n, k, argsort_ratio = time_selection(
        args.n, args.sparsity, args.repeats, args.argsort_repeats)
    ours, argsort = rows[0][1], rows[-1][1]
    lines += [
        "",
        "### Selection",
        "",
        f"Scores: float32 standard normal, n = {n:,}, k = {k:,} (sparsity {args.sparsity}). "
        "Median of jitted calls ended by `jax.block_until_ready`; the first three rows "
        "interleaved in one process, the argsort row with fewer repeats (each call takes "
        "seconds), interleaved with `select_top_k` again. All four masks were checked identical.",
        "",
        *_table(rows, ours),
        "",
        f"**`select_top_k` is {argsort_ratio:.1f}x faster than the argsort top-k** (ratio of the "
        f"medians over {args.argsort_repeats} rounds in which both ran in turn; {argsort:.0f} ms "
        f"vs {ours:.0f} ms in the table) and {rows[2][1] / ours:.1f}x faster than "
        "`jax.lax.top_k`.",
        "",
        "How: scores become order-preserving uint32 keys of their float32 bits; three histogram "
        "passes (scatter-adds into 2048, 2048 and 1024 bins) of the next digit of the keys find "
        "the k-th key exactly, with the counts above and at it; the mask is one comparison, plus "
        "an exact cut by flat index over the tied entries only when ties straddle the "
        "threshold. No sort and no index array of size n; `k` may be traced (a sparsity "
        "schedule inside `jit`), which `lax.top_k` does not allow. The global variant sums "
        "per-leaf histograms (no concatenation).",
    ]
  if not args.skip_steps:
    compile_s = compile_seconds()
    step_lines, n_params = time_steps(args.step_repeats)
    lines += [
        "",
        f"### Optimizer steps, {n_params:,} parameters (MLP-like tree, 3 blocks of width 1024)",
        "",
        "One process, every row jitted with parameters and optimizer state donated, one call of "
        f"each row per round ({args.step_repeats} rounds); the time ratio is the median over the "
        "rounds of the row's time over its baseline's time in the same round (the machine is "
        "shared, so only per-round ratios and the bytes are comparable). ERK densities at "
        "sparsity 0.9. Plain steps: `rigl(every=10**6)` (the conditional of every RigL step, "
        "never taken after count 0); mask-update steps: `rigl(every=1)`. Bytes accessed: XLA's "
        "cost analysis of the compiled step (noise-free); XLA counts a conditional as its "
        "larger branch, so a plain step's bytes are those of a twin whose mask branch only "
        "reads and writes the masks.",
        "",
        *_step_table(step_lines),
        "",
        "State bytes (the inner optimizer's state against `sparse()`'s):",
        "",
        *_state_table(state_bytes_rows()),
        "",
        f"Lower + compile of one `sparse(ham(adamw), rigl)` step: {compile_s:.1f} s.",
    ]
  if not args.skip_steps:
    lines += ["", ROOT_CAUSE.rstrip("\n")]
  text = "\n".join(lines) + "\n"
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
