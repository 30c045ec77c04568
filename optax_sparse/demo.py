"""The demo: dense AdamW against RigL and RigL with HAM on scikit-learn's digits, each tuned.

``python -m optax_sparse demo`` trains the same small Flax NNX CNN on the 8x8 digits that ship
with scikit-learn (1797 images, 10 classes, a fixed 75/25 train/test split, and 20% of the
training images held out for validation; nothing is downloaded) and compares

* ``dense``: ``optax.adamw``;
* ``rigl``: ``osp.sparse(optax.adamw(...), osp.rigl(...), sparsity=s, distribution=osp.erk())``;
* ``rigl_ham``: the same with HAM inside the mask owner,
  ``osp.sparse(osp.ham(optax.adamw(...), learning_rate=lr), osp.rigl(...), ...)``, with HAM's
  defaults ``alpha=200``, ``beta=1e-3`` and the base's learning rate.

Fairness: every method gets the same tuning budget, a sweep over ``--lrs`` (default 3e-3, 1e-2,
3e-2); the learning rate with the best validation accuracy (mean over seeds) is kept and its test
accuracy reported. Without the sweep HAM's built-in step-size boost (per-weight multiplier
``1 + alpha|theta|``) wins against an under-tuned baseline, which says nothing about HAM. With
``--seeds k`` every rate of the sweep runs on ``k`` seeds (initialization and batch order) and
the table shows mean +- std; one seed (the default) cannot separate differences of about a point.

Speed: the learning rate enters the optimizer as a traced scalar, and a whole sweep (every rate
and every seed) is one ``jax.lax.map`` over runs of a training loop written with
``jax.lax.scan``: one compilation, no Python step loop. ``rigl`` runs in the program of
``rigl_ham`` with HAM's ``alpha = beta = 0`` (its step is then the identity), so the default run
compiles twice (dense; rigl and rigl_ham). The model is a Flax NNX module, split into a graph and
a parameter dict (``nnx.split``) and merged inside the loss; its convolutions are computed as
patches times the kernel (:class:`PatchConv`).
The default demo run (1000 steps, three rates, one seed, three methods) was measured at 167 s
on 2 CPU cores shared with other jobs (``time python -m optax_sparse demo``, load average 14 to
23, 43 s of CPU time); the examples page has its table.

The demo prints a table (chosen learning rate, test accuracy, sparsity achieved over the masked
leaves), the wall time of each compiled sweep (compilation included) and the sparsity report of
each kept model, and writes ``demo.png`` (test accuracy over steps; density per layer) and
``results.md`` / ``results.json`` into ``--out``.

This module imports Flax, scikit-learn and matplotlib (the ``examples`` extra); the package never
imports it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_sparse as osp

METHODS = ("dense", "rigl", "rigl_ham")
LEARNING_RATES = (3e-3, 1e-2, 3e-2)
BATCH_SIZE = 64


def load_digits_split(seed: int = 0, test_fraction: float = 0.25):
  """The digits of scikit-learn as NHWC float32 images in [0, 1], with a fixed split.

  Returns:
    ``(x_train, y_train, x_test, y_test)``; images have shape ``(n, 8, 8, 1)``.
  """
  from sklearn.datasets import load_digits

  digits = load_digits()
  x = (digits.images / 16.0).astype(np.float32)[..., None]
  y = digits.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(x))
  n_test = int(round(test_fraction * len(x)))
  test, train = order[:n_test], order[n_test:]
  return x[train], y[train], x[test], y[test]


class PatchConv(nnx.Conv):
  """``nnx.Conv`` (stride 1, ``SAME`` padding) computed as image patches times the kernel.

  The parameters, their initialization and the output are those of ``nnx.Conv``; only the
  computation differs. XLA's CPU convolution is slow for these few channels, and slower still
  when vmapped over a sweep of models (it becomes a grouped convolution); patches and a matrix
  product made a training step of the demo's CNN about ten times faster on CPU.
  """

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.kernel[...]
    patches = jax.lax.conv_general_dilated_patches(
        x, kernel.shape[:2], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    # The patch features are ordered (channel, row, column).
    y = patches @ jnp.transpose(kernel, (2, 0, 1, 3)).reshape(-1, kernel.shape[-1])
    return y + self.bias[...]


class CNN(nnx.Module):
  """Two 3x3 convolutions with average pooling, then two dense layers (about 13.6k weights)."""

  def __init__(self, rngs: nnx.Rngs, width: int = 16, classes: int = 10):
    self.conv1 = PatchConv(1, width, (3, 3), rngs=rngs)
    self.conv2 = PatchConv(width, 2 * width, (3, 3), rngs=rngs)
    self.fc1 = nnx.Linear(2 * width * 2 * 2, 64, rngs=rngs)
    self.fc2 = nnx.Linear(64, classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.avg_pool(nnx.relu(self.conv1(x)), (2, 2), (2, 2))
    x = nnx.avg_pool(nnx.relu(self.conv2(x)), (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    return self.fc2(nnx.relu(self.fc1(x)))


# HAM's (alpha, beta) per sparse method. ``rigl`` runs in the compiled program of ``rigl_ham``
# with alpha = beta = 0, where HAM's step multiplies every weight by exp(0) = 1 (the identity;
# tests/test_demo.py checks that it trains like plain RigL), so both share one compilation.
HAM_COEFFICIENTS = {"rigl": (0.0, 0.0), "rigl_ham": (200.0, 1e-3)}


def make_optimizer(
    method: str,
    steps: int,
    sparsity: float,
    learning_rate: float | jax.Array = 3e-3,
    *,
    ham: tuple[float | jax.Array, float | jax.Array] | None = None,
) -> optax.GradientTransformation:
  """The optimizer of one demo method (see the module docstring).

  ``learning_rate`` may be a traced scalar (the sweep maps over it). ``ham`` overrides HAM's
  ``(alpha, beta)``; with it ``rigl`` and ``rigl_ham`` build the same program (HAM inside the
  mask owner), which the sweep uses to compile both once.
  """
  lr = optax.cosine_decay_schedule(learning_rate, steps, alpha=0.1)

  def base():
    return optax.adamw(lr, weight_decay=1e-4)

  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  if method == "dense":
    return base()
  rule = osp.rigl(drop_fraction=0.3, every=max(1, steps // 20), end_step=max(1, (3 * steps) // 4))
  if ham is not None:
    inner = osp.ham(base(), learning_rate=lr, alpha=ham[0], beta=ham[1])
  elif method == "rigl":
    inner = base()
  else:
    inner = osp.ham(base(), learning_rate=lr)
  return osp.sparse(inner, rule, sparsity=sparsity, distribution=osp.erk())


@dataclasses.dataclass
class Result:
  """What one method's sweep produced, at the learning rate it kept."""

  method: str
  accuracy: float  # test accuracy, mean over seeds
  sparsity: float | None  # over the masked leaves; None for a dense run
  wall_time_s: float  # the whole sweep of the method, compilation included
  curve_steps: list[int]
  curve_accuracy: list[float]  # test accuracy over steps, mean over seeds
  layer_density: dict[str, float]  # fraction of non-zero weights per kernel (first seed)
  learning_rate: float = 3e-3
  val_accuracy: float = float("nan")  # mean over seeds
  accuracy_std: float = 0.0  # over seeds (0 for one seed)
  seeds: int = 1
  sweep: dict[str, float] = dataclasses.field(default_factory=dict)  # lr -> validation accuracy


def _path_name(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)


def measure_sparsity(params, masks) -> tuple[float | None, dict[str, float]]:
  """Fraction of exact zeros over the masked leaves, and the density of every kernel.

  Args:
    params: the parameters (any pytree).
    masks: ``osp.get_masks(state)`` (``None`` for dense leaves), or ``None`` for a dense run.

  Returns:
    ``(sparsity, {layer: density})``; ``sparsity`` is None when nothing is masked.
  """
  flat_params = jax.tree_util.tree_flatten_with_path(params)[0]
  if masks is None:
    masked = [False] * len(flat_params)
  else:
    masked = [m is not None for m in jax.tree.leaves(masks, is_leaf=lambda x: x is None)]
  zeros = total = 0
  density = {}
  for (path, leaf), is_masked in zip(flat_params, masked, strict=True):
    leaf = np.asarray(leaf)
    if leaf.ndim >= 2:
      density[_path_name(path)] = float(np.count_nonzero(leaf) / leaf.size)
    if is_masked:
      zeros += leaf.size - np.count_nonzero(leaf)
      total += leaf.size
  return (zeros / total if total else None), density


def init_model(seed: int) -> tuple[nnx.GraphDef, dict]:
  """The CNN's graph and its initial parameters as a plain dict (``nnx.to_pure_dict``)."""
  graphdef, state = nnx.split(CNN(nnx.Rngs(seed)))
  return graphdef, nnx.to_pure_dict(state)


def _eval_steps(steps: int, eval_points: int) -> np.ndarray:
  """The steps (1-based) after which the test accuracy is measured; the last one included."""
  every = max(1, steps // eval_points)
  return np.unique(np.append(np.arange(every, steps + 1, every), steps))


def train_sweep(
    method: str,
    data,
    *,
    learning_rates: Sequence[float],
    seeds: Sequence[int],
    ham: Sequence[tuple[float, float]] | None = None,
    steps: int,
    sparsity: float,
    eval_points: int = 20,
    val: tuple[np.ndarray, np.ndarray],
) -> dict:
  """Trains one method at every learning rate and seed in one compiled program.

  Run ``r`` of the sweep uses ``learning_rates[r // len(seeds)]`` and seed
  ``seeds[r % len(seeds)]`` (its initialization and batch order; every method sees the same
  ones). ``ham``, for a sparse method, is a list of HAM ``(alpha, beta)`` pairs (see
  :func:`make_optimizer`): the sweep then runs every pair, each over all rates and seeds, in
  the same program (pair-major order). The runs go through ``jax.lax.map`` over a
  ``jax.lax.scan`` of the steps: one compilation for the whole sweep, no Python loop over
  steps. (On CPU, ``lax.map`` over the runs compiled about twice as fast as ``jax.vmap`` and ran
  faster.)

  Returns:
    A dict of NumPy arrays with a leading run axis: ``params`` and ``masks`` (pytrees; ``masks``
    is None for ``dense``), ``curve`` (test accuracy at ``curve_steps``), ``val`` and ``test``
    accuracies; ``curve_steps`` (a list), ``wall_time_s`` (the sweep, compilation included) and
    ``compile_time_s`` (tracing and compilation).
  """
  x_train, y_train, x_test, y_test = (jnp.asarray(a) for a in data)
  x_val, y_val = (jnp.asarray(a) for a in val)
  eval_at = _eval_steps(steps, eval_points)
  is_eval = np.zeros(steps, bool)
  is_eval[eval_at - 1] = True
  start = time.perf_counter()
  graphdef = init_model(seeds[0])[0]
  inits = [init_model(s)[1] for s in seeds]
  pairs = [(0.0, 0.0)] if ham is None else list(ham)
  configs = np.asarray([(lr, a, b) for a, b in pairs for lr in learning_rates for _ in seeds],
                       np.float32)
  repeats = len(pairs) * len(learning_rates)
  runs_init = jax.tree.map(lambda *a: jnp.stack(a * repeats), *inits)
  batches = np.stack([np.random.default_rng(s).integers(0, len(x_train), (steps, BATCH_SIZE))
                      for s in seeds] * repeats).astype(np.int32)

  def logits(params, x):
    return nnx.merge(graphdef, params)(x)

  def accuracy(params, x, y):
    return jnp.mean(jnp.argmax(logits(params, x), -1) == y)

  def loss_fn(params, idx):
    return optax.softmax_cross_entropy_with_integer_labels(
        logits(params, x_train[idx]), y_train[idx]).mean()

  def run_one(args):
    config, params, idx = args
    tx = make_optimizer(method, steps, sparsity, config[0],
                        ham=None if ham is None else (config[1], config[2]))

    def step(carry, xs):
      params, state = carry
      idx_t, evaluate = xs
      updates, state = tx.update(jax.grad(loss_fn)(params, idx_t), state, params)
      params = optax.apply_updates(params, updates)
      acc = jax.lax.cond(evaluate, lambda p: accuracy(p, x_test, y_test),
                         lambda p: jnp.zeros([], jnp.float32), params)
      return (params, state), acc

    (params, state), accs = jax.lax.scan(step, (params, tx.init(params)),
                                         (idx, jnp.asarray(is_eval)))
    masks = None if method == "dense" else osp.get_masks(state)
    return {"params": params, "masks": masks, "curve": accs[eval_at - 1],
            "val": accuracy(params, x_val, y_val), "test": accuracy(params, x_test, y_test)}

  args = (jnp.asarray(configs), runs_init, jnp.asarray(batches))
  sweep = jax.jit(lambda *a: jax.lax.map(run_one, a)).lower(*args).compile()
  compiled = time.perf_counter()
  out = jax.tree.map(np.asarray, sweep(*args))
  out["wall_time_s"] = time.perf_counter() - start
  out["compile_time_s"] = compiled - start
  out["curve_steps"] = eval_at.tolist()
  return out


def format_table(results: Sequence[Result], target: float) -> str:
  """A markdown table of the results, then the wall time of each compiled sweep."""
  lines = [
      f"| method | learning rate (best on validation) | test accuracy | "
      f"sparsity (target {target:.0%}) |",
      "|---|---|---|---|",
  ]
  sweeps: dict[float, list[str]] = {}
  for r in results:
    sparsity = "dense" if r.sparsity is None else f"{r.sparsity:.2%}"
    acc = f"{r.accuracy:.4f}" if r.seeds == 1 else (
        f"{r.accuracy:.4f} ± {r.accuracy_std:.4f} ({r.seeds} seeds)")
    lines.append(f"| {r.method} | {r.learning_rate:g} | {acc} | {sparsity} |")
    sweeps.setdefault(r.wall_time_s, []).append(r.method)
  lines.append("\nWall time of each compiled sweep (compilation included): " + "; ".join(
      f"{' + '.join(ms)} {t:.1f} s" for t, ms in sweeps.items()) + ".")
  return "\n".join(lines)


def plot(results: Sequence[Result], path: pathlib.Path) -> None:
  """Writes test accuracy over steps and density per layer to ``path`` (PNG)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax_acc, ax_den) = plt.subplots(1, 2, figsize=(11, 4))
  for r in results:
    ax_acc.plot(r.curve_steps, r.curve_accuracy, marker=".",
                label=f"{r.method} (lr {r.learning_rate:g})")
  ax_acc.set(xlabel="step", ylabel="test accuracy", title="digits: test accuracy")
  ax_acc.grid(alpha=0.3)
  ax_acc.legend()
  layers = list(results[0].layer_density)
  width = 0.8 / len(results)
  for i, r in enumerate(results):
    xs = np.arange(len(layers)) + (i - (len(results) - 1) / 2) * width
    ax_den.bar(xs, [r.layer_density[k] for k in layers], width, label=r.method)
  ax_den.set_xticks(np.arange(len(layers)))
  ax_den.set_xticklabels([k.replace("/kernel", "") for k in layers])
  ax_den.set(ylabel="density (fraction of non-zeros)", title="density per layer", ylim=(0, 1.2))
  ax_den.legend(loc="upper center", ncol=len(results))
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _pick(tree, run: int):
  return jax.tree.map(lambda a: a[run], tree)


def run(
    methods: Sequence[str] = METHODS,
    *,
    steps: int = 1000,
    sparsity: float = 0.9,
    seed: int = 0,
    out: str | pathlib.Path = "demo_out",
    progress: bool = True,
    learning_rates: Sequence[float] = LEARNING_RATES,
    seeds: int = 1,
) -> list[Result]:
  """Runs the demo and writes ``demo.png``, ``results.md`` and ``results.json`` into ``out``.

  Every method is trained at each of ``learning_rates`` on seeds ``seed, ..., seed + seeds - 1``
  (one compiled sweep for ``dense``, one shared by the sparse methods); the rate with the best
  validation accuracy (mean over seeds) is kept. The reported accuracy is the test accuracy at
  the kept rate (mean over seeds), the wall time that of the compiled sweep the method ran in.
  ``progress`` prints a line per sweep and the sparsity report of every kept model.
  """
  for m in methods:
    if m not in METHODS:
      raise ValueError(f"methods must be among {METHODS}, got {m!r}")
  if not 0.0 <= sparsity < 1.0:
    raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  if not learning_rates or any(not lr > 0 for lr in learning_rates):
    raise ValueError(f"learning_rates must be positive numbers, got {learning_rates!r}")
  if seeds < 1:
    raise ValueError(f"seeds must be >= 1, got {seeds}")
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  x_train, y_train, x_test, y_test = load_digits_split(seed=0)
  n_val = len(x_train) // 5
  data = (x_train[n_val:], y_train[n_val:], x_test, y_test)
  val = (x_train[:n_val], y_train[:n_val])
  seed_list = [seed + k for k in range(seeds)]
  n_rates = len(learning_rates)
  # One compiled sweep for dense, one for the sparse methods (HAM's alpha = beta = 0 for rigl).
  programs = [(m, [m]) for m in methods if m == "dense"]
  sparse = [m for m in methods if m != "dense"]
  if sparse:
    programs.append(("rigl_ham", sparse))
  by_method = {}
  for kind, members in programs:
    if progress:
      print(f"{' + '.join(members)}: {len(members) * n_rates * seeds} runs ({n_rates} learning "
            f"rates x {seeds} seed(s)), {steps} steps, one compilation ...", flush=True)
    sweep = train_sweep(kind, data, learning_rates=learning_rates, seeds=seed_list, steps=steps,
                        sparsity=sparsity, val=val,
                        ham=None if kind == "dense" else [HAM_COEFFICIENTS[m] for m in members])
    if progress:
      print(f"{' + '.join(members)}: {sweep['wall_time_s']:.1f} s (compilation "
            f"{sweep['compile_time_s']:.1f} s)", flush=True)
    for i, m in enumerate(members):
      by_method[m] = (sweep, i * n_rates * seeds)
  results = []
  for m in methods:
    sweep, first = by_method[m]
    val_acc = sweep["val"][first:first + n_rates * seeds].reshape(n_rates, seeds).mean(1)
    best = int(np.argmax(val_acc))
    runs = list(range(first + best * seeds, first + (best + 1) * seeds))
    test = sweep["test"][runs]
    params = _pick(sweep["params"], runs[0])
    masks = None if m == "dense" else _pick(sweep["masks"], runs[0])
    achieved, density = measure_sparsity(params, masks)
    if progress:
      print(f"\n{m}: validation accuracy per learning rate "
            + ", ".join(f"{lr:g}: {a:.4f}" for lr, a in zip(learning_rates, val_acc, strict=True))
            + f"; sparsity report of the kept model (seed {seed})")
      osp.sparsity_report(params, masks=masks).print(use_rich=False)
    results.append(Result(
        m, float(test.mean()), achieved, float(sweep["wall_time_s"]), sweep["curve_steps"],
        sweep["curve"][runs].mean(0).tolist(), density,
        learning_rate=float(learning_rates[best]), val_accuracy=float(val_acc[best]),
        accuracy_std=float(test.std(ddof=1)) if seeds > 1 else 0.0, seeds=seeds,
        sweep={f"{lr:g}": float(a) for lr, a in zip(learning_rates, val_acc, strict=True)}))
  table = format_table(results, sparsity)
  table += ("\n\nEach method at its best learning rate of the sweep "
            f"{', '.join(f'{lr:g}' for lr in learning_rates)} (validation split"
            + (f", mean over {seeds} seeds); test accuracy mean ± std over the seeds."
               if seeds > 1 else
               "); one seed: differences of about a point are within seed noise (use --seeds)."))
  print(table)
  (out / "results.md").write_text(table + "\n")
  (out / "results.json").write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=1))
  plot(results, out / "demo.png")
  print(f"wrote {out / 'demo.png'}, {out / 'results.md'} and {out / 'results.json'}")
  return results


def main(args: argparse.Namespace) -> list[Result]:
  """Runs the demo from parsed command-line arguments."""
  methods = [m.strip() for m in args.methods.split(",") if m.strip()]
  return run(
      methods,
      steps=args.steps,
      sparsity=args.sparsity,
      seed=args.seed,
      out=args.out,
      progress=not args.no_progress,
      learning_rates=[float(v) for v in getattr(args, "lrs", ",".join(map(str, LEARNING_RATES)))
                      .split(",") if v.strip()],
      seeds=getattr(args, "seeds", 1),
  )
