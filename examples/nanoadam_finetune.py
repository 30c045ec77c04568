"""NanoAdam fine-tuning: pretrain densely on digits, then adapt to shifted digits.

A small MLP is pretrained with AdamW on scikit-learn's digits. The task then changes: every image
is shifted one pixel to the right and one down (a distribution shift the pretrained model handles
badly). We fine-tune with ``osp.nanoadam``, which updates only the smallest-magnitude 5% of every
weight matrix with Adam (moments kept only for that subset, the subset refreshed every
``refresh_every`` steps), and compare with dense AdamW fine-tuning: accuracy on the shifted test
set, accuracy kept on the original task (forgetting), and the fraction of weights that moved.

Run ``python examples/nanoadam_finetune.py`` (``--fast`` for a few steps).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_sparse as osp


def load_digits_flat(seed: int = 0):
  """Digits as flat float32 vectors in [0, 1] with a fixed 75/25 split, and a shifted copy."""
  from sklearn.datasets import load_digits

  digits = load_digits()
  images = (digits.images / 16.0).astype(np.float32)
  shifted = np.roll(images, shift=(1, 1), axis=(1, 2))
  shifted[:, 0, :] = 0.0
  shifted[:, :, 0] = 0.0
  order = np.random.default_rng(seed).permutation(len(images))
  test, train = order[: len(order) // 4], order[len(order) // 4 :]
  y = digits.target.astype(np.int32)
  flat = lambda a: a.reshape(len(a), -1)  # noqa: E731
  return {
      "original": (flat(images[train]), y[train], flat(images[test]), y[test]),
      "shifted": (flat(shifted[train]), y[train], flat(shifted[test]), y[test]),
  }


def init_mlp(seed: int, sizes=(64, 128, 64, 10)) -> dict:
  """He-normal MLP weights (drawn with NumPy, which needs no compilation)."""
  rng = np.random.default_rng(seed)
  params = {}
  for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
    params[f"w{i}"] = jnp.asarray(rng.normal(size=(n_in, n_out)) * np.sqrt(2.0 / n_in), jnp.float32)
    params[f"b{i}"] = jnp.zeros(n_out)
  return params


def logits(params: dict, x: jax.Array) -> jax.Array:
  n = len(params) // 2
  for i in range(n):
    x = x @ params[f"w{i}"] + params[f"b{i}"]
    if i < n - 1:
      x = jax.nn.relu(x)
  return x


def loss_fn(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits(params, x), y).mean()


def accuracy(params: dict, x: np.ndarray, y: np.ndarray) -> float:
  return float(jnp.mean(jnp.argmax(logits(params, x), -1) == y))


def fit(params, tx, data, steps: int, desc: str, seed: int = 0):
  from tqdm.auto import tqdm

  x, y = jnp.asarray(data[0]), jnp.asarray(data[1])

  @jax.jit
  def step(params, state, idx):
    grads = jax.grad(loss_fn)(params, x[idx], y[idx])
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  rng = np.random.default_rng(seed)
  for _ in tqdm(range(steps), desc=desc):
    params, state = step(params, state, rng.integers(0, len(x), 64))
  return params


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fast", action="store_true", help="a few steps only (for tests)")
  args = parser.parse_args(argv)
  pre_steps, ft_steps = (60, 20) if args.fast else (1500, 600)
  data = load_digits_flat()
  pretrained = fit(init_mlp(0), optax.adamw(3e-3), data["original"], pre_steps,
                   "pretrain (AdamW)")
  # The classifier head stays dense, as in the paper; every other matrix updates 5% of entries.
  nano = osp.nanoadam(3e-3, density=0.05, refresh_every=max(1, ft_steps // 6),
                      dense=lambda path, leaf: leaf.ndim < 2 or "w2" in jax.tree_util.keystr(path))
  tuned = {
      "nanoadam": fit(pretrained, nano, data["shifted"], ft_steps, "fine-tune (NanoAdam)"),
      "adamw": fit(pretrained, optax.adamw(1e-3), data["shifted"], ft_steps, "fine-tune (AdamW)"),
  }
  report = {"pretrained": pretrained, **tuned}
  print("| model | shifted test acc | original test acc | weights changed |")
  print("|---|---|---|---|")
  for name, p in report.items():
    changed = sum(int(jnp.sum(a != b)) for a, b in
                  zip(jax.tree.leaves(p), jax.tree.leaves(pretrained), strict=True))
    total = sum(a.size for a in jax.tree.leaves(p))
    print(f"| {name} | {accuracy(p, *data['shifted'][2:]):.4f} | "
          f"{accuracy(p, *data['original'][2:]):.4f} | {changed / total:.2%} |")
  return report


if __name__ == "__main__":
  main()
