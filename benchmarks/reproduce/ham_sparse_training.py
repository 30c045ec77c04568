"""HAM on top of RigL, of a static random mask (PaI) and of dense training, against tuned baselines.

Claim (HAM paper, ImageNet / ResNet-50, SGD with momentum): adding HAM's hyperbolic step
improves top-1 accuracy of RigL and of random pruning at initialization at 90% sparsity, and
of dense training.

Setting here: the digits MLP (64-128-10), ``optax.sgd(lr, momentum=0.9)`` with a cosine decay
to 10%, 1000 steps of batch 64, 5 seeds (initialization, batch order and random mask change
with the seed; HAM and its baseline share them, so differences are paired). Sparse settings
use 90% sparsity with the ERK distribution; RigL drops 30% every 50 steps until 3/4 of
training. Every method gets the same tuning budget, selected on the validation split, reported
on the test split:

* **lr only (5 configurations)**: the learning rate over ``LRS``; HAM's α comes from
  :func:`optax_sparse.suggest_ham_alpha` at its default target exponent 0.01 for each rate
  (measured once, on seed 0's initialization and one minibatch), β at the paper's 1e-3;
* **15 configurations**: HAM over ``LRS`` × the target exponents ``TARGETS`` (three α per rate);
  the baseline over ``FINE_LRS``, fifteen rates a factor 2^(1/3) apart that contain ``LRS``.

    python benchmarks/reproduce/ham_sparse_training.py --setting rigl|random|dense [--fast]
"""

from __future__ import annotations

import argparse
import time

import common as C
import jax
import numpy as np
import optax

osp = C.osp

LRS = (0.05, 0.1, 0.2, 0.4, 0.8)
FINE_LRS = tuple(float(0.05 * 2.0 ** ((k - 1) / 3)) for k in range(15))
TARGETS = (0.003, 0.01, 0.03)
DEFAULT_TARGET = 0.01
SPARSITY = 0.9

# The authors' ImageNet / ResNet-50 top-1 accuracies (mean ± std over their seeds) at s = 0.9
# and, for dense training, 100 epochs.
PAPER = {
    "rigl": ("RigL", 73.70, 0.20, 74.83, 0.08),
    "random": ("random PaI (ERK)", 71.56, 0.03, 72.72, 0.03),
    "dense": ("dense SGD, 100 epochs", 76.72, 0.19, 77.51, 0.11),
}
NAMES = {"rigl": "RigL", "random": "random PaI", "dense": "dense SGD"}


def make_base(setting: str, lr, steps: int, alpha=None):
  inner = optax.sgd(lr, momentum=0.9)
  if alpha is not None:
    inner = osp.ham(inner, learning_rate=lr, alpha=alpha)
  if setting == "dense":
    return inner
  rule = (osp.rigl(0.3, every=max(1, steps // 20), end_step=3 * steps // 4)
          if setting == "rigl" else osp.static_random())
  return osp.sparse(inner, rule, sparsity=SPARSITY, distribution=osp.erk())


def initial_gradient(setting: str, data: C.Split):
  """Seed 0's (masked) initialization and the gradient on one minibatch of 64 there."""
  init, apply, _ = C.MODELS["mlp"]
  idx = np.random.default_rng(0).integers(0, len(data.x_train), 64)

  @jax.jit
  def f(x, y):
    p0 = init(jax.random.key(0))
    if setting != "dense":
      masks = make_base(setting, 0.1, 1000).init(p0).masks
      p0 = {k: v if masks[k] is None else v * masks[k] for k, v in p0.items()}
    return p0, jax.grad(lambda p: optax.softmax_cross_entropy_with_integer_labels(
        apply(p, x), y).mean())(p0)

  return f(data.x_train[idx], data.y_train[idx])


def select(runs: C.Runs, idx) -> int:
  """Index (into the runs' grid) of the configuration in ``idx`` with the best mean val acc."""
  idx = np.asarray(idx)
  return int(idx[np.argmax(np.nan_to_num(runs.val_acc[idx].mean(1), nan=-1.0))])


def paired(a, b, scale: float = 100.0) -> tuple[float, float, float]:
  """Mean and std of the per-seed difference ``scale·(a − b)`` and the two-sided p-value of a
  paired t-test over the seeds."""
  from scipy import stats

  d = scale * (np.asarray(a, np.float64) - np.asarray(b, np.float64))
  mean = float(d.mean())
  sd = float(d.std(ddof=1)) if d.size > 1 else 0.0
  if d.size < 2 or sd == 0.0:
    return mean, sd, 1.0 if mean == 0.0 or d.size < 2 else 0.0
  t = mean / (sd / np.sqrt(d.size))
  return mean, sd, float(2 * stats.t.sf(abs(t), d.size - 1))


def verdict(mean: float, p: float, subject: str = "HAM", unit: str = " points") -> str:
  """The verdict of a paired comparison (``mean > 0``: ``subject`` is better) at the 5% level."""
  if not p < 0.05:
    return (f"**inconclusive**: the paired difference ({mean:+.3g}{unit}, p = {p:.2f} in a "
            "paired t-test over the seeds) is not significant at 5%")
  if mean > 0:
    return f"**reproduces in direction**: {subject} is better by {mean:.3g}{unit} (p = {p:.3f})"
  return f"**does not reproduce**: {subject} is worse by {-mean:.3g}{unit} (p = {p:.3f})"


def edge(index: int, size: int) -> str:
  """A marker for a selection at either end of its grid (the grid may be too narrow there)."""
  return " (grid edge)" if size > 1 and index in (0, size - 1) else ""


def fine_text(fine) -> str:
  return (f"{len(fine)} rates 2^(1/3) apart from {fine[0]:.3g} to {fine[-1]:.3g}"
          if len(fine) > 5 else C.lr_grid_text(fine))


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--setting", default="rigl", choices=tuple(PAPER))
  parser.add_argument("--fast", action="store_true", help="seconds-long smoke run")
  args = parser.parse_args(argv)
  start, cpu = time.perf_counter(), time.process_time()
  setting = args.setting
  data = C.digits()
  if args.fast:
    steps, seeds, lrs, targets, fine = 20, [0, 1], LRS[1:3], TARGETS[1:], LRS[1:3] + (0.3, 0.6)
  else:
    steps, seeds, lrs, targets, fine = 1000, [0, 1, 2, 3, 4], LRS, TARGETS, FINE_LRS
  p0, g0 = initial_gradient(setting, data)
  # alpha = target / (lr * Q_0.99|g|), exactly what suggest_ham_alpha returns for each rate.
  configs = [(lr, t, osp.suggest_ham_alpha(p0, g0, lr, target_exponent=t))
             for t in targets for lr in lrs]
  ham = C.train_grid(lambda lr, T, a: make_base(setting, lr, T, alpha=a), "mlp", data,
                     steps=steps, lrs=[c[0] for c in configs], seeds=seeds,
                     aux=[c[2] for c in configs])
  base = C.train_grid(lambda lr, T: make_base(setting, lr, T), "mlp", data, steps=steps,
                      lrs=fine, seeds=seeds)
  base_coarse = [int(np.argmin(np.abs(np.asarray(fine) - lr))) for lr in lrs]
  ham_default = [i for i, c in enumerate(configs) if c[1] == DEFAULT_TARGET]
  picks = {
      ("lr only", "base"): (base, select(base, base_coarse), len(lrs)),
      ("lr only", "ham"): (ham, select(ham, ham_default), len(lrs)),
      ("equal", "base"): (base, select(base, range(len(fine))), len(fine)),
      ("equal", "ham"): (ham, select(ham, range(len(configs))), len(configs)),
  }
  name = NAMES[setting]
  rows, out = [], {}
  for budget, label in (("lr only", "lr sweep"), ("equal", "lr × α grid / finer lr grid")):
    b_runs, bi, bn = picks[(budget, "base")]
    h_runs, hi, hn = picks[(budget, "ham")]
    mean, sd, pv = paired(h_runs.test_acc[hi], b_runs.test_acc[bi])
    out[budget] = {"base_test": b_runs.test_acc[bi], "ham_test": h_runs.test_acc[hi],
                   "delta": mean, "delta_std": sd, "p": pv}
    lr_h, tg, a = configs[hi]
    b_grid = [float(fine[i]) for i in (base_coarse if budget == "lr only" else range(len(fine)))]
    b_edge = edge(b_grid.index(float(fine[bi])), len(b_grid))
    lr_edge = edge(lrs.index(lr_h), len(lrs))
    tg_edge = "" if budget == "lr only" else edge(targets.index(tg), len(targets))
    rows.append(f"| {label} | {name} | {bn} | lr {fine[bi]:.3g}{b_edge} | "
                f"{C.pct(b_runs.val_acc[bi])} | {C.pct(b_runs.test_acc[bi])} | |")
    rows.append(f"| {label} | {name} + HAM | {hn} | lr {lr_h:.3g}{lr_edge}, e* {tg:g}{tg_edge} "
                f"(α = {a:.3g}) | "
                f"{C.pct(h_runs.val_acc[hi])} | {C.pct(h_runs.test_acc[hi])} | "
                f"{mean:+.2f} ± {sd:.2f} |")
  grid = [f"| lr | {name} | " + " | ".join(f"HAM e* {t:g}" for t in targets) + " |",
          "|---|---|" + "---|" * len(targets)]
  for j, lr in enumerate(lrs):
    cells = [C.pct(base.test_acc[base_coarse[j]])]
    cells += [C.pct(ham.test_acc[k * len(lrs) + j]) for k in range(len(targets))]
    grid.append(f"| {lr:g} | " + " | ".join(cells) + " |")
  paper_name, pb, pbs, ph, phs = PAPER[setting]
  eq = out["equal"]
  sparsity = "dense" if setting == "dense" else f"{SPARSITY:.0%} sparsity (ERK)"
  text = "\n".join([
      f"### HAM + {name}: digits MLP, {sparsity}, SGD momentum, {steps} steps, "
      f"{len(seeds)} seeds",
      "",
      "Accuracy % (mean ± std over seeds) at the configuration with the best mean validation "
      "accuracy within each budget; Δ is HAM minus its baseline, paired by seed (points). "
      f"Rates: {C.lr_grid_text(lrs)}; finer baseline grid: {fine_text(fine)}; HAM target "
      f"exponents e* {C.lr_grid_text(targets)} (α = `suggest_ham_alpha(e*)` per rate, β = 1e-3).",
      "",
      "| budget | method | configs | selected | val acc | test acc | Δ test |",
      "|---|---|---|---|---|---|---|",
      *rows,
      "",
      f"Paper (ImageNet, ResNet-50, {paper_name}): {pb:.2f} ± {pbs:.2f} → with HAM "
      f"{ph:.2f} ± {phs:.2f} ({ph - pb:+.2f} points). Ours at the equal budget: "
      f"{C.pct(eq['base_test'])} → {C.pct(eq['ham_test'])} ({eq['delta']:+.2f} points).",
      "",
      f"**Verdict** ({name}, equal budget): {verdict(eq['delta'], eq['p'])}.",
      "",
      "Test accuracy % over the whole grid (mean ± std over seeds):",
      "",
      *grid,
      "",
      f"(runtime {time.perf_counter() - start:.0f} s wall, {time.process_time() - cpu:.0f} s "
      "CPU, on a shared machine)",
  ])
  C.write(f"ham_sparse_training_{setting}", text, args.fast)
  if not args.fast:
    plot(setting, lrs, targets, base, ham, fine)
  return out


def plot(setting, lrs, targets, base, ham, fine) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(5.2, 3.4))
  m, s = 100 * base.test_acc.mean(1), 100 * base.test_acc.std(1, ddof=1)
  ax.errorbar(fine, m, s, color="k", marker="o", ms=3, capsize=2, label=NAMES[setting])
  for k, t in enumerate(targets):
    sl = slice(k * len(lrs), (k + 1) * len(lrs))
    m, s = 100 * ham.test_acc[sl].mean(1), 100 * ham.test_acc[sl].std(1, ddof=1)
    ax.errorbar(lrs, m, s, marker="s", ms=3, capsize=2, label=f"+ HAM, e* = {t:g}")
  ax.set_xscale("log")
  ax.set_xlabel("learning rate")
  ax.set_ylabel("test accuracy %")
  lo = np.nanmax(100 * base.test_acc.mean(1)) - 6
  ax.set_ylim(lo, 100)
  ax.set_title(f"HAM + {NAMES[setting]}, digits MLP", fontsize=10)
  ax.legend(fontsize=8)
  fig.tight_layout()
  C.savefig(fig, f"ham_sparse_training_{setting}", False)


if __name__ == "__main__":
  main()
