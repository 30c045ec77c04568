"""Quick start: RigL at 90% sparsity with HAM on a teacher-student regression (about 10 lines).

Run ``python examples/quickstart.py`` (``--fast`` for a few steps).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_sparse as osp


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fast", action="store_true", help="a few steps only (for tests)")
  steps = 30 if parser.parse_args(argv).fast else 2000
  # A sparse teacher: 10% of its weights are non-zero.
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(512, 64)), jnp.float32)
  teacher = rng.normal(size=(64, 16)) * (rng.uniform(size=(64, 16)) < 0.1)
  y = x @ jnp.asarray(teacher, jnp.float32)
  params = {"w": jnp.zeros((64, 16)) + 0.01, "b": jnp.zeros(16)}

  # --- the library in ten lines ---------------------------------------------------------------
  lr = optax.cosine_decay_schedule(1e-2, steps)
  tx = osp.sparse(
      osp.ham(optax.adamw(lr), learning_rate=lr),          # any optimizer + a hyperbolic step
      osp.rigl(drop_fraction=0.3, every=max(1, steps // 20), end_step=(3 * steps) // 4),
      sparsity=0.9)                                        # masks live in the optimizer state
  loss = lambda p: jnp.mean((x @ p["w"] + p["b"] - y) ** 2)  # noqa: E731

  @jax.jit
  def step(params, state):
    updates, state = tx.update(jax.grad(loss)(params), state, params)
    return optax.apply_updates(params, updates), state  # pruned entries are exactly 0.0

  initial = float(loss(params))
  state = tx.init(params)
  for _ in range(steps):
    params, state = step(params, state)
  # ---------------------------------------------------------------------------------------------

  final = float(loss(params))
  sparsity = float(jnp.mean(params["w"] == 0))
  print(f"steps {steps}: loss {initial:.4f} -> {final:.5f}, sparsity of w {sparsity:.2%}")
  return {"initial_loss": initial, "loss": final, "sparsity": sparsity}


if __name__ == "__main__":
  main()
