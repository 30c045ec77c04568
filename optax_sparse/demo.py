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
3e-2); the learning rate with the best validation accuracy is kept and its test accuracy
reported. Without the sweep HAM's built-in step-size boost (per-weight multiplier
``1 + alpha|theta|``) wins against an under-tuned baseline, which says nothing about HAM. With
``--seeds k`` the chosen rate is rerun on ``k`` seeds and the table shows mean +- std; one seed
(the default) cannot separate differences of about a point.

Training uses ``nnx.Optimizer``, which passes the parameters to ``tx.update`` (so the mask owner
and HAM see them) and forwards keyword extra arguments. The demo prints a table (chosen
learning rate, test accuracy, sparsity achieved over the masked leaves, wall time including
compilation) and writes ``demo.png`` (test accuracy over steps; density per layer) and
``results.md`` / ``results.json`` into ``--out``.

This module imports Flax, scikit-learn, matplotlib and tqdm (the ``examples`` extra); the package
never imports it.
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


class CNN(nnx.Module):
  """Two 3x3 convolutions with average pooling, then two dense layers (about 13.6k weights)."""

  def __init__(self, rngs: nnx.Rngs, width: int = 16, classes: int = 10):
    self.conv1 = nnx.Conv(1, width, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(width, 2 * width, (3, 3), rngs=rngs)
    self.fc1 = nnx.Linear(2 * width * 2 * 2, 64, rngs=rngs)
    self.fc2 = nnx.Linear(64, classes, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    x = nnx.avg_pool(nnx.relu(self.conv1(x)), (2, 2), (2, 2))
    x = nnx.avg_pool(nnx.relu(self.conv2(x)), (2, 2), (2, 2))
    x = x.reshape(x.shape[0], -1)
    return self.fc2(nnx.relu(self.fc1(x)))


def make_optimizer(
    method: str, steps: int, sparsity: float, learning_rate: float = 3e-3
) -> optax.GradientTransformation:
  """The optimizer of one demo method (see the module docstring)."""
  lr = optax.cosine_decay_schedule(learning_rate, steps, alpha=0.1)

  def base():
    return optax.adamw(lr, weight_decay=1e-4)

  if method == "dense":
    return base()
  rule = osp.rigl(drop_fraction=0.3, every=max(1, steps // 20), end_step=max(1, (3 * steps) // 4))
  if method == "rigl":
    inner = base()
  elif method == "rigl_ham":
    inner = osp.ham(base(), learning_rate=lr)
  else:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  return osp.sparse(inner, rule, sparsity=sparsity, distribution=osp.erk())


@dataclasses.dataclass
class Result:
  """What one run produced."""

  method: str
  accuracy: float
  sparsity: float | None  # over the masked leaves; None for a dense run
  wall_time_s: float
  curve_steps: list[int]
  curve_accuracy: list[float]
  layer_density: dict[str, float]  # fraction of non-zero weights per kernel
  learning_rate: float = 3e-3
  val_accuracy: float = float("nan")
  accuracy_std: float = 0.0  # over seeds (0 for one seed)
  seeds: int = 1
  sweep: dict[str, float] = dataclasses.field(default_factory=dict)  # lr -> validation accuracy


def _loss(model: CNN, x: jax.Array, y: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def _train_step(model: CNN, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
  loss, grads = nnx.value_and_grad(_loss)(model, x, y)
  optimizer.update(model, grads)
  return loss


@nnx.jit
def _accuracy(model: CNN, x: jax.Array, y: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(model(x), -1) == y)


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


def init_model(seed: int) -> tuple[nnx.GraphDef, nnx.State]:
  """The CNN's graph and initial state; every method starts from the same weights."""
  return nnx.split(CNN(nnx.Rngs(seed)))


def train(
    method: str,
    data,
    *,
    init: tuple[nnx.GraphDef, nnx.State] | None = None,
    steps: int,
    sparsity: float,
    seed: int,
    batch_size: int = 64,
    eval_points: int = 20,
    progress: bool = True,
    learning_rate: float = 3e-3,
    val: tuple[np.ndarray, np.ndarray] | None = None,
) -> Result:
  """Trains the CNN with one method and returns its :class:`Result`.

  ``init`` (from :func:`init_model`) is the starting model; it defaults to a fresh one from
  ``seed``. ``val`` is an optional validation set scored at the end. The wall time counts
  everything from building the optimizer to the last step, compilation included.
  """
  from tqdm.auto import tqdm

  x_train, y_train, x_test, y_test = data
  start = time.perf_counter()
  model = nnx.merge(*(init or init_model(seed)))
  optimizer = nnx.Optimizer(model, make_optimizer(method, steps, sparsity, learning_rate),
                            wrt=nnx.Param)
  rng = np.random.default_rng(seed)
  eval_every = max(1, steps // eval_points)
  curve_steps, curve_acc = [], []
  bar = tqdm(range(1, steps + 1), desc=f"{method:>9} lr {learning_rate:g}", disable=not progress,
             leave=True)
  for step in bar:
    idx = rng.integers(0, len(x_train), batch_size)
    loss = _train_step(model, optimizer, x_train[idx], y_train[idx])
    if step % eval_every == 0 or step == steps:
      acc = float(_accuracy(model, x_test, y_test))
      curve_steps.append(step)
      curve_acc.append(acc)
      bar.set_postfix(loss=f"{float(loss):.3f}", test_acc=f"{acc:.3f}")
  wall = time.perf_counter() - start
  params = nnx.state(model, nnx.Param)
  masks = None if method == "dense" else osp.get_masks(nnx.as_pure(optimizer.opt_state))
  achieved, density = measure_sparsity(nnx.as_pure(params), masks)
  print(f"\n{method}: sparsity report of the trained model")
  osp.sparsity_report(nnx.as_pure(params), masks=masks).print(use_rich=False)
  val_acc = float("nan") if val is None else float(_accuracy(model, *val))
  return Result(method, curve_acc[-1], achieved, wall, curve_steps, curve_acc, density,
                learning_rate=learning_rate, val_accuracy=val_acc)


def format_table(results: Sequence[Result], target: float) -> str:
  """A markdown table of the results."""
  lines = [
      f"| method | learning rate (best on validation) | test accuracy | "
      f"sparsity (target {target:.0%}) | wall time (s) |",
      "|---|---|---|---|---|",
  ]
  for r in results:
    sparsity = "dense" if r.sparsity is None else f"{r.sparsity:.2%}"
    acc = f"{r.accuracy:.4f}" if r.seeds == 1 else (
        f"{r.accuracy:.4f} ± {r.accuracy_std:.4f} ({r.seeds} seeds)")
    lines.append(f"| {r.method} | {r.learning_rate:g} | {acc} | {sparsity} | "
                 f"{r.wall_time_s:.1f} |")
  return "\n".join(lines)


def plot(results: Sequence[Result], path: pathlib.Path) -> None:
  """Writes test accuracy over steps and density per layer to ``path`` (PNG)."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax_acc, ax_den) = plt.subplots(1, 2, figsize=(11, 4))
  for r in results:
    ax_acc.plot(r.curve_steps, r.curve_accuracy, marker=".", label=r.method)
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

  Every method is trained at each of ``learning_rates`` (seed ``seed``); the rate with the best
  validation accuracy is kept, and with ``seeds > 1`` rerun on seeds ``seed + 1, ...``. The
  reported accuracy is the test accuracy at the kept rate (mean over seeds), the wall time the
  sum over all of the method's runs.
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
  init = init_model(seed)
  results = []
  for m in methods:
    sweep = [train(m, data, init=init, steps=steps, sparsity=sparsity, seed=seed,
                   progress=progress, learning_rate=lr, val=val) for lr in learning_rates]
    best = max(sweep, key=lambda r: r.val_accuracy)
    reruns = [best] + [
        train(m, data, steps=steps, sparsity=sparsity, seed=seed + k, progress=progress,
              learning_rate=best.learning_rate, val=val) for k in range(1, seeds)]
    accs = np.array([r.accuracy for r in reruns])
    results.append(dataclasses.replace(
        best, accuracy=float(accs.mean()), seeds=seeds,
        accuracy_std=float(accs.std(ddof=1)) if seeds > 1 else 0.0,
        wall_time_s=sum(r.wall_time_s for r in sweep + reruns[1:]),
        sweep={f"{r.learning_rate:g}": r.val_accuracy for r in sweep}))
  table = format_table(results, sparsity)
  table += ("\n\nEach method at its best learning rate of the sweep "
            f"{', '.join(f'{lr:g}' for lr in learning_rates)} (validation split); "
            + (f"mean ± std over {seeds} seeds." if seeds > 1 else
               "one seed: differences of about a point are within seed noise (use --seeds)."))
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
