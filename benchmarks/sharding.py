"""Collectives of sharded sparse training: bytes per plain step and per mask update, two meshes.

Runs on 8 simulated CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=8``, set by
this script before JAX is imported, so run it as its own process). For a 1-D FSDP mesh of 8
devices and a 2x4 ``("data", "model")`` mesh, an MLP of about 2.9M float32 parameters is
sharded with ``NamedSharding`` and each transformation

* is initialized under ``jax.jit`` with ``out_shardings=osp.state_shardings(tx, params)``;
* has its train step (``tx.update`` + ``optax.apply_updates``) compiled for the sharded
  parameters and state; every collective of the compiled HLO is read with
  ``osp.collectives``, which also tells on which steps it runs: ``branch_depth`` 0 on every
  step, 1 inside the mask-update branch of ``sparse()`` (NanoAdam: its index refresh), 2 inside
  a tie cut of a selection (only when tied scores straddle the threshold);
* for the transformations with a step counter, has its plain step compiled a second time with
  the counter fixed at a plain count (the mask-update branch is then statically not taken), as
  a cross-check of the bytes attributed to the plain step;
* runs ``--steps`` steps fed the same gradients sharded and on one device: masks (every bool
  and integer state leaf) must be bit-identical, and the largest parameter difference is
  reported.

The markdown table goes to ``docs/benchmarks/sharding.md``.

Usage::

  python benchmarks/sharding.py
  python benchmarks/sharding.py --only rigl --out /tmp/sharding.md
"""

from __future__ import annotations

import os
import sys

if "jax" in sys.modules:
  raise RuntimeError("run benchmarks/sharding.py as its own process (XLA_FLAGS must come first).")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import collections  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import optax_sparse as osp  # noqa: E402

LR = 1e-3
# (fan_in, fan_out) of the MLP's kernels; every size divides by 8.
LAYERS = ((512, 1024), (1024, 1024), (1024, 1024), (1024, 256))


def make_params() -> dict:
  rng = np.random.default_rng(0)
  return {
      f"l{i}": {"w": jnp.asarray(rng.normal(0, a ** -0.5, (a, b)), jnp.float32),
                "b": jnp.zeros((b,), jnp.float32)}
      for i, (a, b) in enumerate(LAYERS)}


def make_grads(params: dict, steps: int) -> list:
  rng = np.random.default_rng(1)
  return [jax.tree.map(lambda p: jnp.asarray(rng.normal(0, 1e-2, p.shape), jnp.float32), params)
          for _ in range(steps)]


def meshes() -> dict:
  """Mesh and per-layer specs: FSDP shards every kernel's first axis; 2x4 alternates column and
  row parallel kernels on ``model`` with the other axis over ``data``."""
  devices = np.array(jax.devices()[:8])
  fsdp = Mesh(devices, ("fsdp",))
  tp = Mesh(devices.reshape(2, 4), ("data", "model"))
  return {
      "fsdp (8)": (fsdp, lambda i: (P("fsdp", None), P("fsdp"))),
      "2x4 (data, model)": (tp, lambda i: (P("data", "model"), P("model")) if i % 2 == 0
                             else (P("model", "data"), P("data"))),
  }


def transforms() -> dict:
  """Name -> (transformation, or a function of the parameter shardings that builds it; a plain
  count, or None when the step has no counter)."""
  return {
      "sparse(ham(adamw), rigl, 0.9, erk)": (
          osp.sparse(osp.ham(optax.adamw(LR), learning_rate=LR), osp.rigl(every=2), 0.9,
                     osp.erk()), 1),
      "sparse(adam, set_, 0.9)": (osp.sparse(optax.adam(LR), osp.set_(every=2), 0.9), 1),
      "sparse(adam, rigl(groups=fan_in()), 0.9)": (
          osp.sparse(optax.adam(LR), osp.rigl(every=2, groups=osp.groups.fan_in()), 0.9), 1),
      "sparse(adam, acdc) (global top-k)": (
          osp.sparse(optax.adam(LR), osp.acdc(warmup_steps=1, sparse_steps=2, dense_steps=1,
                                              alternate_until=4, final_sparse_from=5), 0.8), 2),
      "nanoadam(density 0.1)": (osp.nanoadam(LR, 0.1, refresh_every=2), 1),
      # One set of compressed slots per shard: built per mesh from the parameters' shardings.
      "nanoadam(density 0.1, chunks=shard_grid)": (
          lambda shardings: osp.nanoadam(LR, 0.1, refresh_every=2,
                                         chunks=osp.shard_grid(shardings)), 1),
      "sr_ste(adam, 2:4)": (osp.sr_ste(optax.adam(LR), 2, 4), None),
      "hyperbolic_adamw": (osp.hyperbolic_adamw(LR), None),
  }


def train_step(tx, fixed_count=None):
  def step(g, state, p):
    if fixed_count is not None:
      state = state._replace(count=jnp.asarray(fixed_count, jnp.int32))
    updates, state = tx.update(g, state, p)
    return optax.apply_updates(p, updates), state

  return step


def exact_leaves(state) -> list:
  return [np.asarray(x) for x in jax.tree.leaves(state)
          if hasattr(x, "dtype") and not jnp.issubdtype(x.dtype, jnp.floating)]


def summarize(colls, depths) -> str:
  """``kind xN = bytes`` per kind over the collectives with a branch depth in ``depths``."""
  total: dict[str, list[int]] = collections.defaultdict(lambda: [0, 0])
  for c in colls:
    if c.branch_depth in depths:
      total[c.kind][0] += 1
      total[c.kind][1] += c.nbytes
  if not total:
    return "none"
  return ", ".join(f"{k} x{n}: {b:,} B" for k, (n, b) in sorted(total.items()))


def largest_gather(colls) -> int:
  entries = [math_prod(s) for c in colls if c.kind in ("all-gather", "all-to-all")
             for s in c.shapes]
  return max(entries, default=0)


def math_prod(shape: str) -> int:
  dims = [int(d) for d in shape[shape.index("[") + 1:-1].split(",") if d]
  return int(np.prod(dims)) if dims else 1


def shapes_text(shapes) -> str:
  """``f32[] x15 s32[2049]``: the result shapes with repeats counted."""
  out: list[list] = []
  for shape in shapes:
    if out and out[-1][0] == shape:
      out[-1][1] += 1
    else:
      out.append([shape, 1])
  return " ".join(s if n == 1 else f"{s} x{n}" for s, n in out)


def grouped(colls) -> list[tuple]:
  """(branch depth, kind, shapes, count, bytes each) for every distinct collective."""
  counts = collections.Counter((c.branch_depth, c.kind, c.shapes, c.nbytes) for c in colls)
  return sorted((d, k, s, n, b) for (d, k, s, b), n in counts.items())


def shardings_of(mesh, specs, params) -> dict:
  return {k: dict(zip(("w", "b"), (NamedSharding(mesh, s) for s in specs(i)), strict=True))
          for i, k in enumerate(params)}


def run(name, tx, plain_count, mesh_name, mesh, specs, params, grads, ref):
  shardings = shardings_of(mesh, specs, params)
  p = jax.device_put(params, shardings)
  state_sh = osp.state_shardings(tx, p)
  state = jax.jit(tx.init, out_shardings=state_sh)(p)
  gs = [jax.device_put(g, shardings) for g in grads]
  t0 = time.perf_counter()
  step = jax.jit(train_step(tx), out_shardings=(shardings, state_sh)).lower(
      gs[0], state, p).compile()
  compile_s = time.perf_counter() - t0
  colls = osp.collectives(step.as_text())
  plain_check = None
  if plain_count is not None:
    plain = jax.jit(train_step(tx, plain_count), out_shardings=(shardings, state_sh)).lower(
        gs[0], state, p).compile()
    plain_colls = osp.collectives(plain.as_text())
    plain_check = (sum(c.nbytes for c in plain_colls if c.branch_depth == 0),
                   sum(c.nbytes for c in colls if c.branch_depth == 0))
  for g in gs:
    p, state = step(g, state, p)
  p_ref, s_ref = ref
  masks_equal = all(np.array_equal(a, b) for a, b in
                    zip(exact_leaves(s_ref), exact_leaves(state), strict=True))
  diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p), strict=True))
  scale = max(float(np.max(np.abs(np.asarray(a)))) for a in jax.tree.leaves(p_ref))
  shard_bytes = sum(4 * math_prod(f"f32[{','.join(map(str, s.shard_shape(x.shape)))}]")
                    for x, s in zip(jax.tree.leaves(params), jax.tree.leaves(shardings),
                                    strict=True))
  return {
      "transform": name, "mesh": mesh_name, "colls": colls, "plain_check": plain_check,
      "masks_equal": masks_equal, "n_exact": len(exact_leaves(state)), "max_diff": diff,
      "rel_diff": diff / scale, "compile_s": compile_s, "shard_bytes": shard_bytes,
      "largest_gather": largest_gather(colls)}


def reference(tx, params, grads):
  state = jax.jit(tx.init)(params)
  step = jax.jit(train_step(tx))
  p = params
  for g in grads:
    p, state = step(g, state, p)
  return p, state


def write(rows, args, n_params, out, seconds=None) -> None:
  cmd = "python benchmarks/sharding.py" + (f" --steps {args.steps}" if args.steps != 4 else "")
  lines = [
      "# Collectives of sharded steps",
      "",
      f"Command: `{cmd}`",
      "",
      f"Machine: {platform.machine()}, {os.cpu_count()} cores, JAX {jax.__version__}, 8 simulated "
      "CPU devices (`--xla_force_host_platform_device_count=8`)."
      + ("" if seconds is None else
         f" Runtime: {seconds[0]:.0f} s of CPU time ({seconds[1]:.0f} s wall; the machine was "
         "shared with other jobs)."),
      "",
      f"Model: an MLP of {n_params:,} float32 parameters ({4 * n_params:,} B), kernels "
      + ", ".join(f"{a}x{b}" for a, b in LAYERS) + " and their biases. Meshes: `fsdp (8)` "
      "shards the first axis of every kernel over 8 devices; `2x4 (data, model)` shards the "
      "kernels alternately as `P('data', 'model')` and `P('model', 'data')`.",
      "",
      "Bytes are those of each collective's result on one device, read from the compiled HLO "
      "of the train step (`tx.update` + `optax.apply_updates`) with `osp.collectives`. *Plain "
      "step*: collectives outside every data-dependent conditional (they run on every step). "
      "*Mask update*: those inside the mask-update branch of `sparse()` (NanoAdam: its index "
      "refresh), run on mask-update steps only, in addition to the plain ones. *Tie cuts*: "
      "those of the index tie-break of a selection, which runs only when tied scores straddle "
      "the threshold (an upper bound: every tie cut of the step). *Largest gather*: entries of "
      "the largest all-gather / all-to-all result (0: none). *Plain check*: the plain-step bytes "
      "of a second compilation with the step counter fixed at a plain count (mask branch "
      "statically not taken), which must equal the first column.",
      "",
      f"Equality: {args.steps} steps fed the same gradients, sharded against one device: "
      "*masks* compares every bool and integer state leaf (masks, counters, NanoAdam's "
      "indices) bit for bit; *max diff* is the largest absolute parameter difference (and "
      "relative to the largest parameter).",
      "",
      "| transform | mesh | param shard (B/device) | plain step | mask update | tie cuts | "
      "largest gather | plain check | masks | max diff |",
      "|---|---|---:|---|---|---|---:|---|---|---|",
  ]
  for r in rows:
    check = ("-" if r["plain_check"] is None else
             f"{r['plain_check'][0]:,} B" + (" (equal)" if r["plain_check"][0] ==
                                             r["plain_check"][1] else " (DIFFERS)"))
    lines.append(
        f"| `{r['transform']}` | {r['mesh']} | {r['shard_bytes']:,} | "
        f"{summarize(r['colls'], (0,))} | {summarize(r['colls'], (1,))} | "
        f"{summarize(r['colls'], tuple(range(2, 9)))} | {r['largest_gather']:,} | {check} | "
        f"{'bit-identical' if r['masks_equal'] else 'DIFFER'} ({r['n_exact']} leaves) | "
        f"{r['max_diff']:.1e} ({r['rel_diff']:.1e}) |")
  first = [r for r in rows if r["transform"].startswith("sparse(ham")]
  lines += ["", "Every collective of `sparse(ham(adamw), rigl, 0.9, erk)` (branch depth, kind, "
            "result shapes, how many, bytes each):", ""]
  for r in first:
    lines += [f"{r['mesh']}:", "", "| depth | kind | shapes | count | bytes each |",
              "|---:|---|---|---:|---:|"]
    for d, k, s, n, b in grouped(r["colls"]):
      lines.append(f"| {d} | {k} | `{shapes_text(s)}` | {n} | {b:,} |")
    lines.append("")
  with open(out, "w") as f:
    f.write("\n".join(lines).rstrip() + "\n")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--only", default=None, help="run the transforms whose name contains this")
  parser.add_argument("--out", default=os.path.join(
      os.path.dirname(os.path.abspath(__file__)), "..", "docs", "benchmarks", "sharding.md"))
  args = parser.parse_args(argv)
  if len(jax.devices()) < 8:
    raise RuntimeError(f"needs 8 devices; got {jax.devices()}")
  params = make_params()
  n_params = sum(x.size for x in jax.tree.leaves(params))
  grads = make_grads(params, args.steps)
  rows = []
  t0, c0 = time.perf_counter(), time.process_time()
  for name, (tx, plain_count) in transforms().items():
    if args.only and args.only not in name:
      continue
    per_mesh = not hasattr(tx, "init")
    ref = None if per_mesh else reference(tx, params, grads)
    for mesh_name, (mesh, specs) in meshes().items():
      mesh_tx = tx(shardings_of(mesh, specs, params)) if per_mesh else tx
      mesh_ref = reference(mesh_tx, params, grads) if per_mesh else ref
      r = run(name, mesh_tx, plain_count, mesh_name, mesh, specs, params, grads, mesh_ref)
      rows.append(r)
      print(f"{name} | {mesh_name} | plain: {summarize(r['colls'], (0,))} | mask update: "
            f"{summarize(r['colls'], (1,))} | ties: {summarize(r['colls'], tuple(range(2, 9)))} "
            f"| plain check {r['plain_check']} | masks equal {r['masks_equal']} | max diff "
            f"{r['max_diff']:.2e} | compile {r['compile_s']:.1f} s", flush=True)
      for c in r["colls"]:
        print(f"    depth {c.branch_depth} {c.kind} {shapes_text(c.shapes)} {c.nbytes:,} B")
  write(rows, args, n_params, args.out,
        (time.process_time() - c0, time.perf_counter() - t0))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
