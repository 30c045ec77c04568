"""Sharded sparse training: RigL + HAM on 8 simulated CPU devices, with the step's collectives.

An MLP on scikit-learn's digits is trained with ``osp.sparse(osp.ham(optax.adamw(...)),
osp.rigl(...), 0.9, osp.erk())`` on a device mesh: ``2x4`` (``("data", "model")``: the batch
over ``data``, the kernels split over ``model``) or ``fsdp`` (one axis of 8 devices: the batch
and the first axis of every kernel). Parameters are placed with ``NamedSharding``; the optimizer
state (masks, moments) gets its shardings from ``osp.state_shardings`` as the ``out_shardings``
of a jitted ``tx.init``. HAM's ``alpha`` comes from ``osp.suggest_ham_alpha`` on a first
minibatch gradient. The script prints test accuracy, the density of every kernel and the
collectives of the compiled optimizer step (``tx.update`` + ``optax.apply_updates``), read with
``osp.collectives``: what runs on every step and what only on a mask-update step (no parameter
is all-gathered on either).

The 8 devices are simulated on the CPU: the script sets
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before importing JAX, so run it as its own
process. On real accelerators drop that line and build the mesh from ``jax.devices()``.

Run ``python examples/sharded_training.py`` (``--fast`` for a few steps, ``--mesh fsdp``).
"""

from __future__ import annotations

import os
import sys

if "jax" not in sys.modules:
  os.environ["XLA_FLAGS"] = (
      os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import argparse  # noqa: E402
import collections  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import optax_sparse as osp  # noqa: E402

SIZES = (64, 256, 128, 10)


def load_digits_split(seed: int = 0):
  """Digits as flat float32 vectors in [0, 1], a fixed 75/25 split."""
  from sklearn.datasets import load_digits  # noqa: PLC0415 - the examples extra.

  digits = load_digits()
  x = (digits.images.reshape(len(digits.images), -1) / 16.0).astype(np.float32)
  y = digits.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(x))
  test, train = order[: len(order) // 4], order[len(order) // 4:]
  return x[train], y[train], x[test], y[test]


def init_mlp(seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  params = {}
  for i, (n_in, n_out) in enumerate(zip(SIZES[:-1], SIZES[1:], strict=True)):
    params[f"w{i}"] = jnp.asarray(rng.normal(size=(n_in, n_out)) * np.sqrt(2.0 / n_in),
                                  jnp.float32)
    params[f"b{i}"] = jnp.zeros((n_out,), jnp.float32)
  return params


def logits(params: dict, x: jax.Array) -> jax.Array:
  n = len(SIZES) - 1
  for i in range(n):
    x = x @ params[f"w{i}"] + params[f"b{i}"]
    if i < n - 1:
      x = jax.nn.relu(x)
  return x


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits(params, x), y).mean()


def mesh_and_specs(kind: str):
  """The mesh, the batch's PartitionSpec and one PartitionSpec per parameter."""
  devices = np.array(jax.devices()[:8])
  if kind == "fsdp":
    mesh = Mesh(devices, ("fsdp",))
    specs = {k: P("fsdp") if k.startswith("b") and SIZES[int(k[1]) + 1] % 8 == 0
             else P() if k.startswith("b") else P("fsdp", None) for k in init_mlp()}
    return mesh, P("fsdp", None), specs
  mesh = Mesh(devices.reshape(2, 4), ("data", "model"))
  # Megatron-style: the first kernel split by columns, the second by rows, the last replicated
  # over "model" rows (10 classes do not split in 4).
  specs = {"w0": P(None, "model"), "b0": P("model"), "w1": P("model", None), "b1": P(),
           "w2": P("model", None), "b2": P()}
  return mesh, P("data", None), specs


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fast", action="store_true", help="a few steps only (for tests)")
  parser.add_argument("--mesh", choices=("2x4", "fsdp"), default="2x4")
  parser.add_argument("--steps", type=int, default=None)
  args = parser.parse_args(argv)
  steps = args.steps or (20 if args.fast else 800)
  if len(jax.devices()) < 8:
    raise RuntimeError(
        f"this example needs 8 devices; got {len(jax.devices())}. Run it as its own process "
        "(it sets XLA_FLAGS=--xla_force_host_platform_device_count=8 before importing JAX).")

  x_train, y_train, x_test, y_test = load_digits_split()
  mesh, batch_spec, specs = mesh_and_specs(args.mesh)
  shardings = {k: NamedSharding(mesh, s) for k, s in specs.items()}
  batch_sharding = NamedSharding(mesh, batch_spec)
  label_sharding = NamedSharding(mesh, P(batch_spec[0]))
  params = jax.device_put(init_mlp(), shardings)
  rng = np.random.default_rng(1)
  batch = 128

  def minibatch():
    idx = rng.integers(0, len(x_train), batch)
    return (jax.device_put(x_train[idx], batch_sharding),
            jax.device_put(y_train[idx], label_sharding))

  # --- sharded sparse training ----------------------------------------------------------------
  lr = optax.cosine_decay_schedule(1e-2, steps)
  alpha = osp.suggest_ham_alpha(params, jax.grad(loss_fn)(params, *minibatch()), lr)
  tx = osp.sparse(
      osp.ham(optax.adamw(lr), learning_rate=lr, alpha=alpha),
      osp.rigl(drop_fraction=0.3, every=max(2, steps // 20), end_step=(3 * steps) // 4),
      0.9, osp.erk())
  state_shardings = osp.state_shardings(tx, params)
  state = jax.jit(tx.init, out_shardings=state_shardings)(params)

  def update_step(grads, state, params):
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  # Two jitted functions, so that the optimizer's collectives can be read alone below (the
  # gradient's are the model's: data-parallel reductions, FSDP's weight gathers). Fused into one
  # jitted train step the optimizer part compiles to the same collectives.
  grad_fn = jax.jit(jax.grad(loss_fn), out_shardings=shardings)
  update = jax.jit(update_step, out_shardings=(shardings, state_shardings),
                   donate_argnums=(1, 2))
  compiled = update.lower(grad_fn(params, *minibatch()), state, params).compile()
  for _ in range(steps):
    params, state = compiled(grad_fn(params, *minibatch()), state, params)
    # One step in flight: with many steps queued, the collectives of the 8 simulated CPU devices
    # (threads of one pool) deadlocked here (XLA's rendezvous timeout); real devices need not wait.
    jax.block_until_ready(params)
  # ---------------------------------------------------------------------------------------------

  masks = osp.get_masks(state)
  same = all(masks[k].sharding.is_equivalent_to(params[k].sharding, masks[k].ndim)
             for k in masks if masks[k] is not None)
  accuracy = float(jnp.mean(jnp.argmax(logits(params, x_test), -1) == y_test))
  density = {k: float(jnp.mean(params[k] != 0)) for k in params if k.startswith("w")}
  kernel_params = sum(params[k].size for k in density)
  overall = sum(density[k] * params[k].size for k in density) / kernel_params
  print(f"mesh {args.mesh}: {steps} steps, HAM alpha {alpha:.3g}, test accuracy {accuracy:.4f}")
  print("kernel density " + ", ".join(f"{k} {d:.3f}" for k, d in density.items())
        + f"; overall {overall:.3f} (target 0.100)")
  print(f"masks sharded like their parameters: {same}")

  colls = osp.collectives(compiled.as_text())
  per = collections.defaultdict(lambda: collections.Counter())
  for c in colls:
    where = ("every step" if c.branch_depth == 0 else "mask update" if c.branch_depth == 1
             else "tie cut (only when ties straddle the threshold)")
    per[where][c.kind] += c.nbytes
  param_bytes = sum(4 * p.size for p in jax.tree.leaves(params))
  print(f"collectives of the compiled optimizer step, bytes per device (parameters: "
        f"{param_bytes:,} B):")
  for where in ("every step", "mask update", "tie cut (only when ties straddle the threshold)"):
    kinds = ", ".join(f"{k} {b:,} B" for k, b in sorted(per[where].items())) or "none"
    print(f"  {where}: {kinds}")
  gathers = [c for c in colls if c.kind == "all-gather"]
  largest = max((c.nbytes for c in gathers), default=0)
  print(f"  all-gathers: {len(gathers)} (largest {largest:,} B)")
  return {"accuracy": accuracy, "density": overall, "masks_sharded": same,
          "collectives": colls, "param_bytes": param_bytes}


if __name__ == "__main__":
  main()
