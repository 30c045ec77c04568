"""Why HAM's default alpha = 200 collapses SGD training of a small model, and what transfers.

RigL at 90% (ERK) on the digits MLP (64-128-10) or CNN, ``optax.sgd(lr, momentum=0.9)`` with
HAM at several α, 3 seeds, cosine decay; test accuracy for every (α, lr). Alongside, the 99th
percentile of the hyperbolic step's exponent ``η·α·|g|`` at initialization
(:func:`optax_sparse.ham_diagnostics` on one minibatch) and ``suggest_ham_alpha``'s value.

    python benchmarks/reproduce/ham_alpha_sgd.py [--model mlp|cnn] [--fast]
"""

from __future__ import annotations

import argparse
import time

import common as C
import jax
import numpy as np
import optax

osp = C.osp


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fast", action="store_true")
  parser.add_argument("--model", default="mlp", choices=("mlp", "cnn"))
  args = parser.parse_args(argv)
  start = time.perf_counter()
  init, apply, images = C.MODELS[args.model]
  data = C.digits(images=images)
  steps, seeds = (20, [0]) if args.fast else (1000, [0, 1, 2])
  alphas = (0.0, 200.0) if args.fast else (0.0, 2.0, 10.0, 50.0, 200.0)
  lrs = (0.05,) if args.fast else (0.02, 0.05, 0.1, 0.2, 0.4)
  p0 = init(jax.random.key(0))
  idx = np.random.default_rng(0).integers(0, len(data.x_train), 64)
  g0 = jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
      apply(p, data.x_train[idx]), data.y_train[idx]).mean())(p0)
  q99 = float(np.quantile(np.concatenate(
      [np.abs(np.asarray(g0[k])).ravel() for k in g0 if g0[k].ndim >= 2]), 0.99))
  rows = []
  for alpha in alphas:
    def make(lr, T, alpha=alpha):
      inner = optax.sgd(lr, momentum=0.9)
      if alpha:
        inner = osp.ham(inner, learning_rate=lr, alpha=alpha)
      return osp.sparse(inner, osp.rigl(0.3, every=max(1, T // 20), end_step=3 * T // 4),
                        sparsity=0.9, distribution=osp.erk())
    r = C.train_grid(make, args.model, data, steps=steps, lrs=lrs, seeds=seeds)
    cells = [f"{100 * a:.1f} ({lr * alpha * q99:.3f})" for a, lr in
             zip(r.test_acc.mean(1), lrs, strict=True)]
    rows.append(f"| {alpha:g} | " + " | ".join(cells) + " |")
  sugg = {lr: osp.suggest_ham_alpha(p0, g0, lr) for lr in lrs}
  text = "\n".join([
      f"### HAM's alpha on SGD: {args.model}, RigL 90% ERK, {steps} steps, {len(seeds)} seeds",
      "",
      "Test accuracy % (mean over seeds) and, in brackets, the 99th percentile of the "
      "exponent η·α·|g| at initialization.",
      "",
      "| α \\ lr | " + " | ".join(f"{v:g}" for v in lrs) + " |",
      "|---|" + "---|" * len(lrs),
      *rows,
      "",
      "`suggest_ham_alpha` (target exponent 0.01 at the 99th percentile): "
      + ", ".join(f"lr {lr:g} → α = {a:.1f}" for lr, a in sugg.items()),
      f"(runtime {time.perf_counter() - start:.0f} s on this shared machine)",
  ])
  C.write(f"ham_alpha_sgd_{args.model}", text, args.fast)


if __name__ == "__main__":
  main()
