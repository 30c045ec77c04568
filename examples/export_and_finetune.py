"""A sparse model's life after training: report, compressed export, and mask-keeping fine-tuning.

1. Train an MLP on scikit-learn's digits with RigL at 90% ERK sparsity and print its sparsity
   report (``osp.sparsity_report``).
2. Export it with ``osp.save_compressed`` (active values plus a one-bit mask per entry, through
   Orbax), compare the bytes with a dense Orbax checkpoint, load it back and check that it is
   bit-identical.
3. The task changes (every image shifted one pixel right and down). Fine-tune the loaded model
   with ``osp.keep_mask(optax.adamw(...), masks)``: any optax optimizer, the zeros stay zeros.
   The report against the exported masks shows no mask churn.
4. The masked LoRA-style recipe: train low-rank factors A, B next to the frozen sparse model and
   merge them with ``osp.merge_masked`` (θ + M ⊙ AB), which keeps the sparsity; the plain merge
   θ + AB would make the model dense.
5. Inference with ``jax.experimental.sparse``: the same logits from ``osp.to_bcoo`` kernels.

Run ``python examples/export_and_finetune.py`` (``--fast`` for a few steps; ``--out DIR`` also
writes the checkpoints and, with matplotlib, the report figure there).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax

import optax_sparse as osp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import checkpointing  # noqa: E402 - the Orbax recipe of examples/checkpointing.py


def load_digits_flat(seed: int = 0) -> dict:
  """Digits as flat vectors in [0, 1] (fixed 75/25 split), and a copy shifted by one pixel."""
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
  return {"original": (flat(images[train]), y[train], flat(images[test]), y[test]),
          "shifted": (flat(shifted[train]), y[train], flat(shifted[test]), y[test])}


def init_mlp(seed: int, sizes=(64, 256, 128, 10)) -> dict:
  """He-normal MLP weights (NumPy draws: no compilation)."""
  rng = np.random.default_rng(seed)
  params = {}
  for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
    params[f"w{i}"] = jnp.asarray(rng.normal(size=(n_in, n_out)) * np.sqrt(2.0 / n_in),
                                  jnp.float32)
    params[f"b{i}"] = jnp.zeros(n_out)
  return params


def logits(params: dict, x: jax.Array) -> jax.Array:
  n = len(params) // 2
  for i in range(n):
    x = x @ params[f"w{i}"] + params[f"b{i}"]
    if i < n - 1:
      x = jax.nn.relu(x)
  return x


def loss(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits(params, x), y).mean()


def accuracy(params: dict, x: np.ndarray, y: np.ndarray) -> float:
  return float(jnp.mean(jnp.argmax(logits(params, jnp.asarray(x)), -1) == jnp.asarray(y)))


def _train(params, tx, data, steps: int, seed: int, loss_fn=loss):
  x, y = jnp.asarray(data[0]), jnp.asarray(data[1])

  @jax.jit
  def step(params, state, i):
    idx = jax.random.randint(jax.random.fold_in(jax.random.key(seed), i), (64,), 0, x.shape[0])
    grads = jax.grad(loss_fn)(params, x[idx], y[idx])
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  state = tx.init(params)
  for i in range(steps):
    params, state = step(params, state, i)
  return params, state


def train_lora(base: dict, data, steps: int, rank: int = 4, seed: int = 0) -> dict:
  """Trains rank-``rank`` factors (A zero-initialized) of every kernel next to a frozen base."""
  rng = np.random.default_rng(seed)
  kernels = [k for k in base if k.startswith("w")]
  adapters = {k: {"a": jnp.zeros((base[k].shape[0], rank)),
                  "b": jnp.asarray(rng.normal(size=(rank, base[k].shape[1])) * 0.1, jnp.float32)}
              for k in kernels}

  def adapted_loss(adapters, x, y):
    merged = dict(base)
    for k, ab in adapters.items():
      # The forward sees the masked merge, so what is trained is what merge_masked keeps.
      merged[k] = base[k] + jnp.where(base[k] != 0, ab["a"] @ ab["b"], 0.0)
    return loss(merged, x, y)

  adapters, _ = _train(adapters, optax.adam(3e-3), data, steps, seed + 1, adapted_loss)
  return {k: (adapters[k]["a"] @ adapters[k]["b"] if k in adapters else None) for k in base}


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fast", action="store_true", help="a few steps only (for tests)")
  parser.add_argument("--out", default=None, help="keep the checkpoints (and the figure) here")
  args = parser.parse_args(argv)
  steps = 300 if args.fast else 2000
  data = load_digits_flat()
  original, shifted = data["original"], data["shifted"]

  # 1. Sparse training and its report.
  tx = osp.sparse(optax.adamw(3e-3), osp.rigl(drop_fraction=0.3, every=max(1, steps // 20),
                                               end_step=(3 * steps) // 4),
                  sparsity=0.9, distribution=osp.erk())
  params0 = init_mlp(0)
  params, state = _train(params0, tx, original, steps, seed=1)
  masks = osp.get_masks(state)
  print(f"sparse training: test accuracy {accuracy(params, *original[2:]):.3f}")
  osp.sparsity_report(params, state, reference=params0).print()

  # 2. Export: compressed against dense, loaded back bit-identically.
  folder = pathlib.Path(args.out) if args.out else pathlib.Path(tempfile.mkdtemp())
  folder.mkdir(parents=True, exist_ok=True)
  for name in ("dense", "compressed", "finetuned"):
    if (folder / name).exists():
      raise SystemExit(f"{folder / name} exists; choose another --out")
  checkpointing.save(folder / "dense", params)  # the plain Orbax checkpoint, for the bytes
  written = osp.save_compressed(folder / "compressed", params, masks)
  loaded, loaded_masks = osp.load_compressed(folder / "compressed", like=params)
  identical = checkpointing.trees_identical(loaded, params)

  def disk(path):
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())

  print(f"parameters: dense {written.dense_nbytes:,} B, compressed {written.nbytes:,} B "
        f"({written.nbytes / written.dense_nbytes:.1%}); Orbax on disk: dense "
        f"{disk(folder / 'dense'):,} B, compressed {disk(folder / 'compressed'):,} B; loaded "
        f"back bit-identical: {identical}")
  if not identical:
    raise SystemExit("the compressed checkpoint did not load back bit-identically")

  # 3. Fine-tuning on the shifted task with the mask kept.
  before = accuracy(loaded, *shifted[2:])
  finetuned, ft_state = _train(
      loaded, osp.keep_mask(optax.adamw(1e-3), loaded_masks), shifted, steps // 2, seed=2)
  after = accuracy(finetuned, *shifted[2:])
  report = osp.sparsity_report(finetuned, ft_state, previous=loaded_masks)
  print(f"fine-tuning on shifted digits: test accuracy {before:.3f} -> {after:.3f}; "
        f"mask kept {report.total['kept']:.0%}, grown {report.total['grown']}, "
        f"nonzeros outside the mask {report.total['outside_mask']}")
  osp.save_compressed(folder / "finetuned", finetuned, osp.get_masks(ft_state))

  # 4. Masked LoRA-style adapters: the merge keeps the zeros.
  delta = train_lora(loaded, shifted, steps // 2)
  merged = osp.merge_masked(loaded, delta)
  plain = {k: v if delta[k] is None else v + delta[k] for k, v in loaded.items()}

  def kernel_density(p):
    return float(np.mean(np.concatenate(
        [np.asarray(p[k]).ravel() != 0 for k in p if k.startswith("w")])))

  print(f"masked LoRA merge: test accuracy {accuracy(merged, *shifted[2:]):.3f}, kernel density "
        f"{kernel_density(merged):.1%} (plain merge: {kernel_density(plain):.1%})")

  # 5. Inference with jax.experimental.sparse kernels.
  sparse_params = osp.to_bcoo(finetuned, osp.get_masks(ft_state))
  x_test = jnp.asarray(shifted[2])
  gap = float(jnp.max(jnp.abs(logits(sparse_params, x_test) - logits(finetuned, x_test))))
  print(f"BCOO inference: max |logit difference| against dense {gap:.2e}")

  if args.out:
    try:
      from optax_sparse import report_plot

      report_plot.plot_report(finetuned, ft_state, path=folder / "report.png",
                              title="fine-tuned, mask kept")
      print(f"wrote {folder / 'report.png'}")
    except ImportError:
      pass
    print(f"checkpoints in {folder}: python -m optax_sparse report {folder / 'compressed'}")
  return {"params": params, "masks": masks, "loaded": loaded, "finetuned": finetuned,
          "finetuned_masks": osp.get_masks(ft_state), "merged": merged, "plain_merge": plain,
          "accuracy": (before, after), "written": written, "logit_gap": gap, "folder": folder}


if __name__ == "__main__":
  main()
