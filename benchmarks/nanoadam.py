"""NanoAdam against optax.adam: optimizer-state bytes and step time on >= 10M parameters.

A plain step (no selection) and a refresh step (bottom-k selection of every matrix, moments
carried over) are timed separately: the refresh is measured with ``refresh_every=1`` (every step
selects), the plain step with a refresh period longer than the run (after one warm-up step that
selects). Every step is ``update`` + ``apply_updates`` under one ``jax.jit`` with the parameters
and the state donated; medians over ``--repeats`` timed calls after warm-up, all in one process,
the configurations timed in turn (round robin) so that a drift of the machine's load hits all.

    python benchmarks/nanoadam.py [--repeats 20] [--out docs/benchmarks/nanoadam.md]
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

# Run from a checkout without installing the package.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import optax_sparse as osp  # noqa: E402

# Four transformer-block-like matrices and their biases: 10.5M parameters.
SHAPES = {"attn_qkv": (1024, 3072), "attn_out": (1024, 1024), "mlp_in": (1024, 4096),
          "mlp_out": (4096, 1024)}


DENSITIES = (0.01, 0.1)


def make_params(seed: int = 0):
  rng = np.random.default_rng(seed)
  params = {}
  for name, shape in SHAPES.items():
    params[name] = {"kernel": jnp.asarray(rng.normal(size=shape) / np.sqrt(shape[0]), jnp.float32),
                    "bias": jnp.zeros((shape[1],), jnp.float32)}
  return params


def state_bytes(state) -> int:
  return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(state))


def make_step(tx, params, grads, warmup: int = 2):
  """A jitted, donated ``update`` + ``apply_updates`` and its carried (params, state)."""
  state = tx.init(params)
  params = jax.tree.map(jnp.copy, params)

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  step = jax.jit(step, donate_argnums=(0, 1))
  for _ in range(warmup):
    params, state = jax.block_until_ready(step(params, state, grads))
  return [step, params, state]


def round_robin(steps: dict, grads, repeats: int) -> dict:
  """Median seconds per step, the configurations timed in turn so that load drifts hit all."""
  times = {name: [] for name in steps}
  for _ in range(repeats):
    for name, c in steps.items():
      t0 = time.perf_counter()
      c[1], c[2] = jax.block_until_ready(c[0](c[1], c[2], grads))
      times[name].append(time.perf_counter() - t0)
  return {name: statistics.median(v) for name, v in times.items()}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=20)
  parser.add_argument("--out", default="docs/benchmarks/nanoadam.md")
  args = parser.parse_args()

  params = make_params()
  rng = np.random.default_rng(1)
  grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
  n_params = sum(x.size for x in jax.tree.leaves(params))

  txs = {"adam": optax.adam(1e-3)}
  for density in DENSITIES:
    txs[f"plain {density}"] = osp.nanoadam(1e-3, density, refresh_every=1 << 30)
    txs[f"refresh {density}"] = osp.nanoadam(1e-3, density, refresh_every=1)
  nbytes = {name: state_bytes(tx.init(params)) for name, tx in txs.items()}
  steps = {name: make_step(tx, params, grads) for name, tx in txs.items()}
  med = round_robin(steps, grads, args.repeats)
  adam_bytes, adam_time = nbytes["adam"], med["adam"]
  rows = [("optax.adam", "-", adam_bytes, adam_time, None)]
  for density in DENSITIES:
    rows.append(("osp.nanoadam", density, nbytes[f"plain {density}"], med[f"plain {density}"],
                 med[f"refresh {density}"]))

  device = jax.devices()[0]
  machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores"
             if device.platform == "cpu" else f"{device.device_kind} ({device.platform})")
  command = " ".join(["python benchmarks/nanoadam.py", *sys.argv[1:]])
  lines = [
      "# NanoAdam: optimizer state and step time",
      "",
      f"Command: `{command}`  ",
      f"Machine: {machine}; JAX {jax.__version__}, backend `{device.platform}`.  ",
      f"Parameters: {n_params:,} float32 ({len(SHAPES)} matrices "
      f"{', '.join('x'.join(map(str, s)) for s in SHAPES.values())} and their biases; "
      "biases are updated densely by both).  ",
      f"Times: median of {args.repeats} jitted steps (`update` + `apply_updates`, parameters and "
      "state donated) after warm-up, in one process, configurations timed in turn. "
      "*Refresh step*: the bottom-k selection of every matrix and the carry-over of the kept "
      "moments, plus the Adam step.",
      "",
      "| optimizer | density | state bytes | state / adam | plain step (ms) | "
      "plain / adam | refresh step (ms) | refresh / adam |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for name, density, nbytes, t_plain, t_refresh in rows:
    refresh_cells = ("-", "-") if t_refresh is None else (
        f"{1e3 * t_refresh:.2f}", f"{t_refresh / adam_time:.2f}x")
    lines.append(
        f"| {name} | {density} | {nbytes:,} | {nbytes / adam_bytes:.3f} | {1e3 * t_plain:.2f} | "
        f"{t_plain / adam_time:.2f}x | {refresh_cells[0]} | {refresh_cells[1]} |")
  text = "\n".join(lines) + "\n"
  print(text)
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    f.write(text)


if __name__ == "__main__":
  main()
