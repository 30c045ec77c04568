"""Kernel benchmark: jnp twins vs unfused references vs native Pallas (GPU/TPU only).

Times, side by side in one process, the three kernels of ``optax_sparse.kernels``:

* fused HAM + mask step: jnp twin (one jit) vs an unfused reference (three jitted passes: half
  step, hyperbolic factor, mask projection) vs the Pallas kernel;
* NanoAdam compressed step (k = 1% of the leaf): jnp twin vs unfused (gather, Adam, scatter as
  separate jitted passes) vs the Pallas kernel;
* k-th largest score: radix select (4 histogram passes of 8 bits) vs ``jnp.argsort`` vs
  ``jax.lax.top_k`` (static k) vs the radix select with Pallas histograms.

On CPU, Pallas only runs in interpret mode, which is a correctness path and not timed here; the
Pallas rows say so. On a GPU or TPU the same command times the native lowering
(``backend="pallas"``), unmodified. Every timing is the median over ``--repeats`` calls
(alternating between the implementations) of a jitted function (buffers donated where the kernel
updates in place), with ``jax.block_until_ready``. The markdown table is written to
``docs/benchmarks/kernels.md``.

Usage::

  python benchmarks/kernels.py                      # defaults: 1024 x 1024 leaf, 30 repeats
  python benchmarks/kernels.py --rows 4096 --cols 4096 --repeats 50
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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from optax_sparse import kernels  # noqa: E402

LR, ALPHA, BETA = 0.1, 200.0, 1e-3
B1, B2, EPS = 0.9, 0.999, 1e-8


def _compare(fns: dict, make_args, repeats: int) -> dict:
  """Median wall time (ms) of each ``fn(*make_args())``, measured round-robin.

  Calls of the implementations alternate, so a change of machine load hits all of them alike;
  arguments (fresh copies of donated buffers) are built outside the timed region. An
  implementation that fails to compile or run is reported with its error instead of a time.
  """
  results, live = {}, {}
  for label, fn in fns.items():
    if fn is None:
      results[label] = "n/a (no GPU/TPU)"
      continue
    try:
      jax.block_until_ready(fn(*make_args()))  # compile and warm up
      live[label] = fn
      results[label] = []
    except Exception as err:  # a lowering the installed jax cannot do is reported, not fatal
      results[label] = f"failed: {type(err).__name__}: {str(err).splitlines()[0][:80]}"
  for _ in range(repeats):
    for label, fn in live.items():
      args = jax.block_until_ready(make_args())
      start = time.perf_counter()
      jax.block_until_ready(fn(*args))
      results[label].append(time.perf_counter() - start)
  return {k: 1e3 * statistics.median(v) if isinstance(v, list) else v
          for k, v in results.items()}


def _table(title: str, rows: dict) -> list[str]:
  """Markdown table: median ms and the time relative to the first row."""
  first = next(iter(rows.values()))
  lines = [f"### {title}", "", "| implementation | median ms | time / first row |", "|---|---|---|"]
  for label, value in rows.items():
    if isinstance(value, float):
      ratio = f"{value / first:.2f}x" if isinstance(first, float) else "-"
      lines.append(f"| {label} | {value:.3f} | {ratio} |")
    else:
      lines.append(f"| {label} | {value} | - |")
  return lines + [""]


def bench_ham(shape, dtype, repeats, native):
  rng = np.random.default_rng(0)
  theta = jnp.asarray(rng.normal(size=shape), dtype)
  g = jnp.asarray(rng.normal(size=shape), dtype)
  u0 = jnp.asarray(0.01 * rng.normal(size=shape), dtype)
  mask = jnp.asarray(rng.random(shape) < 0.1)
  make = lambda: (theta, g, jnp.array(u0, copy=True), mask)  # noqa: E731

  def fused(backend):
    return jax.jit(lambda t, g, u, m: kernels.hyperbolic_mask_update(
        t, g, u, m, learning_rate=LR, alpha=ALPHA, beta=BETA, backend=backend),
        donate_argnums=2)

  half = jax.jit(lambda t, u: t.astype(jnp.float32) + u.astype(jnp.float32), donate_argnums=1)
  hyper = jax.jit(lambda h, g: jnp.where(h != 0, h * jnp.exp(jnp.clip(
      -LR * (ALPHA * jnp.sign(h) * g.astype(jnp.float32) + BETA), -5, 5)), h), donate_argnums=0)
  project = jax.jit(lambda h, m, t: (jnp.where(m, h, 0.0) - t.astype(jnp.float32)).astype(
      t.dtype), donate_argnums=0)
  unfused = lambda t, g, u, m: project(hyper(half(t, u), g), m, t)  # noqa: E731

  return _compare({"jnp twin (one jit)": fused("xla"), "unfused (3 jitted passes)": unfused,
                   "Pallas": fused("pallas") if native else None}, make, repeats)


def bench_adam(shape, dtype, repeats, native):
  rng = np.random.default_rng(1)
  n = int(np.prod(shape))
  k = max(1, n // 100)
  g = jnp.asarray(rng.normal(size=shape), dtype)
  idx = jnp.asarray(rng.permutation(n)[:k].astype(np.int32))
  mu0 = jnp.asarray(0.01 * rng.normal(size=k), jnp.float32)
  nu0 = jnp.asarray(0.01 * rng.random(size=k), jnp.float32)
  make = lambda: (g, idx, jnp.array(mu0, copy=True), jnp.array(nu0, copy=True))  # noqa: E731

  def fused(backend):
    return jax.jit(lambda g, i, m, v: kernels.compressed_adam_update(
        g, i, m, v, learning_rate=LR, b1=B1, b2=B2, eps=EPS, backend=backend),
        donate_argnums=(2, 3))

  gather = jax.jit(lambda g, i: jnp.take(g.reshape(-1), i).astype(jnp.float32))
  adam = jax.jit(lambda gs, m, v: (
      -LR * (B1 * m + (1 - B1) * gs) / (jnp.sqrt(B2 * v + (1 - B2) * gs * gs) + EPS),
      B1 * m + (1 - B1) * gs, B2 * v + (1 - B2) * gs * gs), donate_argnums=(1, 2))
  scatter = jax.jit(lambda s, i: jnp.zeros(shape, jnp.float32).reshape(-1).at[i].set(s).reshape(
      shape).astype(dtype))

  def unfused(g, i, m, v):
    s, m, v = adam(gather(g, i), m, v)
    return scatter(s, i), m, v

  return _compare({"jnp twin (one jit)": fused("xla"), "unfused (3 jitted passes)": unfused,
                   "Pallas": fused("pallas") if native else None}, make, repeats), k


def bench_select(shape, repeats, native):
  rng = np.random.default_rng(2)
  scores = jnp.asarray(np.abs(rng.normal(size=shape)), jnp.float32)
  n = scores.size
  k = n // 10
  make = lambda: (scores, jnp.int32(k))  # noqa: E731

  def radix(backend):
    return jax.jit(lambda s, k: kernels.radix_select_threshold(s, k, backend=backend).value)

  by_argsort = jax.jit(lambda s, k: s.reshape(-1)[jnp.argsort(-s.reshape(-1))[k - 1]])
  by_top_k = jax.jit(lambda s, k: jax.lax.top_k(s.reshape(-1), n // 10)[0][-1])
  return _compare({"radix select, jnp twin (4 passes x 256 bins)": radix("xla"),
                   "jnp.argsort (traced k)": by_argsort, "jax.lax.top_k (static k)": by_top_k,
                   "radix select, Pallas histograms": radix("pallas") if native else None},
                  make, repeats), k


def _machine() -> str:
  backend = jax.default_backend()
  if backend == "cpu":
    return f"CPU ({platform.processor() or platform.machine()}), {os.cpu_count()} cores"
  return f"{backend.upper()}: {jax.devices()[0].device_kind}"


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rows", type=int, default=1024)
  parser.add_argument("--cols", type=int, default=1024)
  parser.add_argument("--repeats", type=int, default=30)
  parser.add_argument("--out", default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks", "kernels.md"))
  args = parser.parse_args(argv)
  shape = (args.rows, args.cols)
  native = jax.default_backend() != "cpu"
  command = "python benchmarks/kernels.py " + " ".join(sys.argv[1:] if argv is None else argv)

  lines = [
      "## Kernels (`benchmarks/kernels.py`)",
      "",
      f"Command: `{command.strip()}`  ",
      f"Machine: {_machine()}; jax {jax.__version__}; load average at start "
      f"{os.getloadavg()[0]:.1f} (other jobs shared the machine when above the core count).  ",
      f"Leaf {shape[0]} x {shape[1]}; median of {args.repeats} calls of each jitted function, "
      "donated buffers, `jax.block_until_ready`, all rows measured side by side in one process.",
      "",
  ]
  if not native:
    lines += [
        "**No GPU or TPU was available on this machine, so no native Pallas timings are "
        "recorded.** On CPU Pallas only runs in interpret mode (`interpret=True`), a correctness "
        "path that the tests use; `backend=\"auto\"` gives the jnp twins timed below. To time the "
        "native kernels, run the same command on a GPU or TPU machine: the script is unchanged "
        "and `backend=\"pallas\"` then uses the native lowering.",
        "",
    ]
  for dtype in (jnp.float32, jnp.bfloat16):
    name = jnp.dtype(dtype).name
    lines += _table(f"Fused HAM + mask step ({name})",
                    bench_ham(shape, dtype, args.repeats, native))
    rows, k = bench_adam(shape, dtype, args.repeats, native)
    lines += _table(f"NanoAdam compressed step ({name}, k = {k})", rows)
  rows, k = bench_select(shape, args.repeats, native)
  lines += _table(f"k-th largest score (float32, k = {k}, traced except for top_k)", rows)
  lines += [
      "The jnp twins are what `backend=\"auto\"` runs on CPU. The HAM and NanoAdam twins fuse "
      "into one XLA computation, so the unfused rows show what fusion saves; the Pallas kernels "
      "can at best match that fusion for elementwise work (one aliased pass) and pay off where "
      "XLA cannot fuse: the radix select replaces a full sort by 4 histogram passes.",
      "",
  ]
  text = "\n".join(lines)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
