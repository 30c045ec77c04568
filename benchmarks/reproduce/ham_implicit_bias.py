"""HAM's implicit bias moves from L2 to L1 as alpha grows (sparse underdetermined regression).

Claim (HAM paper, Thm 4.6, qualitative): the flow ``dθ = −(1 + α|θ|)∇f dt`` converges, on an
underdetermined least-squares problem, to the interpolant minimising a potential ``R_α`` that
behaves like ``‖θ‖₂²`` as ``α → 0`` and like ``‖θ‖₁`` as ``α → ∞``.

Setting: ``X`` is ``n = 40`` by ``d = 100`` Gaussian, ``y = X x*`` with a 5-sparse ``x*``;
full-batch HAM on ``optax.sgd`` (``β = 0``) from ``θ₀ = 10⁻³·N(0, 1)``, step size
``0.5 / (λ_max(XᵀX/n)·(1 + α))``, run until the residual is below 1e-4 relative. We compare the
limit with the minimum-L2 interpolant (``pinv``) and the minimum-L1 interpolant (a linear
program, ``scipy.optimize.linprog``). Seeds change ``X`` and ``x*``.

    python benchmarks/reproduce/ham_implicit_bias.py [--fast]
"""

from __future__ import annotations

import argparse
import time

import common as C
import numpy as np
import optax

osp = C.osp

ALPHAS = (0.0, 1.0, 10.0, 100.0, 1000.0)


def problem(seed: int, n: int = 40, d: int = 100, k: int = 5):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  star = np.zeros(d, np.float32)
  support = rng.choice(d, k, replace=False)
  star[support] = rng.choice([-1.0, 1.0], k) * rng.uniform(0.5, 1.5, k)
  return x, x @ star, star


def min_l1(x, y):
  from scipy.optimize import linprog

  n, d = x.shape
  # θ = p − q, p, q >= 0, minimise Σ(p + q) subject to X(p − q) = y.
  res = linprog(np.ones(2 * d), A_eq=np.hstack([x, -x]), b_eq=y, bounds=(0, None),
                method="highs")
  return res.x[:d] - res.x[d:]


def run_ham(xs, ys, alpha: float, steps: int):
  lam = max(float(np.linalg.eigvalsh(x.T @ x / len(x)).max()) for x in xs)
  lr = 0.5 / (lam * (1.0 + alpha))
  tx = osp.ham(optax.sgd(lr), learning_rate=lr, alpha=alpha, beta=0.0, where=lambda p, v: True,
               max_weight_norm=None)

  return C.fit_regression(tx, xs, ys, steps)


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fast", action="store_true", help="seconds-long smoke run")
  args = parser.parse_args(argv)
  seeds = [0, 1] if args.fast else [0, 1, 2, 3, 4]
  steps = 200 if args.fast else 30_000
  alphas = ALPHAS[::2] if args.fast else ALPHAS
  start = time.perf_counter()
  probs = [problem(s) for s in seeds]
  xs, ys, stars = (np.stack(v) for v in zip(*probs, strict=True))
  l2 = np.stack([np.linalg.pinv(x) @ y for x, y in zip(xs, ys, strict=True)])
  l1 = np.stack([min_l1(x, y) for x, y in zip(xs, ys, strict=True)])
  rows, out = [], {}
  for alpha in alphas:
    th = run_ham(xs, ys, alpha, steps)
    res = np.linalg.norm(np.einsum("snd,sd->sn", xs, th) - ys, axis=1) / np.linalg.norm(ys, axis=1)
    d_l2 = np.linalg.norm(th - l2, axis=1) / np.linalg.norm(l2, axis=1)
    d_l1 = np.linalg.norm(th - l1, axis=1) / np.linalg.norm(l1, axis=1)
    ratio = np.abs(th).sum(1) / np.abs(l1).sum(1)
    out[alpha] = {"dist_l2": d_l2, "dist_l1": d_l1, "l1_ratio": ratio, "residual": res}
    rows.append(f"| {alpha:g} | {C.mean_std(d_l2)} | {C.mean_std(d_l1)} | {C.mean_std(ratio)} | "
                f"{res.max():.1e} |")
  recover = np.linalg.norm(l1 - stars, axis=1).max()
  closer_l1 = out[alphas[-1]]["dist_l1"].mean() < out[alphas[-1]]["dist_l2"].mean()
  closer_l2 = out[alphas[0]]["dist_l2"].mean() < out[alphas[0]]["dist_l1"].mean()
  verdict = ("reproduces in direction" if closer_l1 and closer_l2 else "does not reproduce")
  text = "\n".join([
      "### HAM: implicit bias from L2 to L1 as alpha grows",
      "",
      f"n = 40, d = 100, 5-sparse target, {len(seeds)} seeds, {steps} full-batch steps; "
      "relative distances (mean ± std over seeds). The paper states the limit behaviour "
      "(Thm 4.6) without a number for this problem.",
      "",
      "| α | ‖θ − θ_L2‖ / ‖θ_L2‖ | ‖θ − θ_L1‖ / ‖θ_L1‖ | ‖θ‖₁ / ‖θ_L1‖₁ | max residual |",
      "|---|---|---|---|---|",
      *rows,
      "",
      f"The min-L1 interpolant recovers x* here (max error {recover:.1e}).",
      f"**Verdict: {verdict}**: α = {alphas[0]:g} lands "
      f"{'next to' if closer_l2 else 'away from'} the min-L2 interpolant, α = {alphas[-1]:g} "
      f"{'next to' if closer_l1 else 'away from'} the min-L1 one.",
      f"(runtime {time.perf_counter() - start:.0f} s on this machine)",
  ])
  C.write("ham_implicit_bias", text, args.fast)
  return out


if __name__ == "__main__":
  main()
