"""2:4 structured sparsity: at most 2 non-zeros in every group of 4 weights along the fan-in.

Two ways, both on an MLP for scikit-learn's digits:

* ``osp.sparse(optax.adamw(...), osp.nm(2, 4), sparsity=None)``: a fixed 2:4 mask chosen from
  the weights of a briefly pretrained dense model (one-shot N:M pruning, then sparse training);
* ``osp.sr_ste(optax.adamw(...), 2, 4)``: SR-STE, N:M training from scratch with dense shadow
  weights in the optimizer state; the 2:4 mask is recomputed every step, and the sparse-refined
  term ``refine * (1 - E) * W`` pulls pruned shadow weights towards zero.

Groups run along axis -2 (the input axis of a Flax kernel ``(in, out)``), the layout 2:4 sparse
tensor cores expect. The script checks the pattern on the final parameters.

Run ``python examples/nm_2_4.py`` (``--fast`` for a few steps).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_sparse as osp


def init_mlp(seed: int) -> dict:
  """He-normal MLP weights (drawn with NumPy, which needs no compilation)."""
  rng = np.random.default_rng(seed)
  return {
      "w1": jnp.asarray(rng.normal(size=(64, 128)) * np.sqrt(2.0 / 64), jnp.float32),
      "b1": jnp.zeros(128),
      "w2": jnp.asarray(rng.normal(size=(128, 10)) * np.sqrt(2.0 / 128), jnp.float32),
      "b2": jnp.zeros(10),
  }


def logits(params: dict, x: jax.Array) -> jax.Array:
  return jax.nn.relu(x @ params["w1"] + params["b1"]) @ params["w2"] + params["b2"]


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits(params, x), y).mean()


def max_nonzeros_per_group(w: jax.Array, m: int = 4) -> int:
  """Largest count of non-zeros in a group of m consecutive entries along axis -2."""
  groups = jnp.moveaxis(w, -2, -1).reshape(-1, m)
  return int(jnp.max(jnp.sum(groups != 0, axis=-1)))


def fit(params, tx, x, y, steps: int, desc: str):
  from tqdm.auto import tqdm

  @jax.jit
  def step(params, state, idx):
    grads = jax.grad(loss_fn)(params, x[idx], y[idx])
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  rng = np.random.default_rng(0)
  for _ in tqdm(range(steps), desc=desc):
    params, state = step(params, state, rng.integers(0, len(x), 64))
  return params


def main(argv: list[str] | None = None) -> dict:
  from sklearn.datasets import load_digits

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fast", action="store_true", help="a few steps only (for tests)")
  steps = 100 if parser.parse_args(argv).fast else 1500
  digits = load_digits()
  x = jnp.asarray(digits.data / 16.0, jnp.float32)
  y = jnp.asarray(digits.target, jnp.int32)
  x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
  params0 = init_mlp(0)
  lr = optax.cosine_decay_schedule(3e-3, steps)

  dense = fit(params0, optax.adamw(3e-3), x_train, y_train, max(1, steps // 5), "dense warm-up")
  results = {
      "one-shot 2:4": fit(dense, osp.sparse(optax.adamw(lr), osp.nm(2, 4), sparsity=None),
                          x_train, y_train, steps, "fixed 2:4 mask"),
      "SR-STE 2:4": fit(params0, osp.sr_ste(optax.adamw(lr), 2, 4), x_train, y_train, steps,
                        "SR-STE 2:4"),
  }
  for name, p in results.items():
    accuracy = float(jnp.mean(jnp.argmax(logits(p, x_test), -1) == y_test))
    groups = [max_nonzeros_per_group(p[k]) for k in ("w1", "w2")]
    print(f"{name}: test accuracy {accuracy:.4f}; max non-zeros per group of 4: {groups}")
  return results


if __name__ == "__main__":
  main()
