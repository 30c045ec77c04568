"""Shared pieces of the reproduction scripts: data, small models, a vectorised training loop.

Every script trains small models (a digits MLP or CNN, or a synthetic regression) for a few
hundred steps, with all seeds and all learning rates of a sweep in one ``jax.vmap`` of a
``jax.lax.scan``, so one compilation covers a whole configuration. Learning rates are chosen on a
validation split carved out of the training set; accuracies are reported on a separate test
split.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

# Run from a checkout without installing the package.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import optax_sparse as osp  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT_DIR = ROOT / "docs" / "reproductions"


# ----------------------------------------------------------------------------------------------
# Data


@dataclasses.dataclass(frozen=True)
class Split:
  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


def digits(images: bool = False, seed: int = 0) -> Split:
  """scikit-learn's 8x8 digits: 1078 train / 270 validation / 449 test, pixels in [0, 1]."""
  from sklearn.datasets import load_digits

  d = load_digits()
  x = (d.images / 16.0).astype(np.float32)
  x = x[..., None] if images else x.reshape(len(x), -1)
  y = d.target.astype(np.int32)
  order = np.random.default_rng(seed).permutation(len(x))
  test, val, train = order[:449], order[449:719], order[719:]
  return Split(x[train], y[train], x[val], y[val], x[test], y[test])


# ----------------------------------------------------------------------------------------------
# Models (pure functions of a dict of parameters; kernels are (fan_in, fan_out) like Flax)


def _lecun(key, shape, fan_in):
  return jax.random.truncated_normal(key, -2.0, 2.0, shape) * (1.0 / np.sqrt(fan_in)) / 0.8796


def mlp_init(key, sizes: Sequence[int] = (64, 128, 10)) -> dict:
  """Flax-like initialisation: truncated LeCun-normal kernels, zero biases."""
  params = {}
  keys = jax.random.split(key, len(sizes) - 1)
  for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
    params[f"w{i}"] = _lecun(keys[i], (a, b), a)
    params[f"b{i}"] = jnp.zeros(b)
  return params


def mlp_apply(params: dict, x: jax.Array) -> jax.Array:
  n = len(params) // 2
  for i in range(n):
    x = x @ params[f"w{i}"] + params[f"b{i}"]
    if i < n - 1:
      x = jax.nn.relu(x)
  return x


def cnn_init(key, width: int = 16) -> dict:
  """The demo's CNN: two 3x3 convolutions with 2x2 average pooling, then two dense layers."""
  k = jax.random.split(key, 4)
  return {
      "conv1": _lecun(k[0], (3, 3, 1, width), 9),
      "conv1_b": jnp.zeros(width),
      "conv2": _lecun(k[1], (3, 3, width, 2 * width), 9 * width),
      "conv2_b": jnp.zeros(2 * width),
      "fc1": _lecun(k[2], (8 * width, 64), 8 * width),
      "fc1_b": jnp.zeros(64),
      "fc2": _lecun(k[3], (64, 10), 64),
      "fc2_b": jnp.zeros(10),
  }


def _conv(x, w, b):
  y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y + b


def _pool(x):
  return jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4.0


def cnn_apply(params: dict, x: jax.Array) -> jax.Array:
  x = _pool(jax.nn.relu(_conv(x, params["conv1"], params["conv1_b"])))
  x = _pool(jax.nn.relu(_conv(x, params["conv2"], params["conv2_b"])))
  x = x.reshape(x.shape[0], -1)
  x = jax.nn.relu(x @ params["fc1"] + params["fc1_b"])
  return x @ params["fc2"] + params["fc2_b"]


MODELS = {"mlp": (mlp_init, mlp_apply, False), "cnn": (cnn_init, cnn_apply, True)}


# ----------------------------------------------------------------------------------------------
# Training


def permute_masks(state, key):
  """A fresh uniformly random mask per seed with the same per-leaf counts as ``state``'s masks.

  ``osp.sparse`` draws its initial mask from its static ``seed``; under ``jax.vmap`` over seeds
  this gives every seed its own random mask (same ERK densities, exact counts).
  """
  if not isinstance(state, osp.SparseState):
    return state
  leaves, treedef = jax.tree.flatten(state.masks, is_leaf=lambda m: m is None)
  keys = jax.random.split(key, len(leaves))
  new = [None if m is None else jax.random.permutation(k, m.ravel()).reshape(m.shape)
         for m, k in zip(leaves, keys, strict=True)]
  return state._replace(masks=jax.tree.unflatten(treedef, new), key=key)


@dataclasses.dataclass
class Runs:
  """Results of a grid of runs: arrays shaped ``(len(lrs), len(seeds))``."""

  lrs: np.ndarray
  seeds: np.ndarray
  val_acc: np.ndarray
  test_acc: np.ndarray
  train_loss: np.ndarray
  extra: dict  # name -> array (len(lrs), len(seeds), ...)

  def best(self) -> int:
    """Index of the learning rate with the highest mean validation accuracy."""
    return int(np.argmax(np.nan_to_num(self.val_acc.mean(1), nan=-1.0)))


def train_grid(
    make_tx: Callable[[jax.Array, int], optax.GradientTransformation],
    model: str,
    data: Split,
    *,
    steps: int,
    lrs: Sequence[float],
    seeds: Sequence[int],
    batch_size: int = 64,
    extra_fn: Callable | None = None,
    init_fn: Callable | None = None,
    update_kwargs: Callable | None = None,
    aux: Sequence | None = None,
) -> Runs:
  """Trains ``model`` with ``make_tx(lr_schedule, steps)`` for every learning rate and seed.

  Args:
    make_tx: ``(schedule, steps) -> optimizer``; the schedule is a cosine decay from the traced
      learning rate to 10% of it (always pass it on as a schedule, never as a number).
    model: ``"mlp"`` or ``"cnn"``.
    data: the split.
    steps: training steps.
    lrs: the learning-rate grid.
    seeds: seeds (model init, batch order, random masks).
    extra_fn: ``(init_params, final_params, final_state) -> dict`` of extra per-run results.
    init_fn: optional ``(key) -> params`` replacing the model's initialisation.
    update_kwargs: optional ``(params, step) -> dict`` of extra arguments for ``tx.update``.
    aux: optional per-configuration values, one row per entry of ``lrs`` (vmapped with it);
      ``make_tx`` is then called as ``make_tx(schedule, steps, row)``, so a whole grid of
      (learning rate, other hyperparameters) compiles once.
  """
  m_init, apply, _ = MODELS[model]
  m_init = init_fn or m_init
  x_tr, y_tr = jnp.asarray(data.x_train), jnp.asarray(data.y_train)
  sets = [(jnp.asarray(a), jnp.asarray(b)) for a, b in
          ((data.x_val, data.y_val), (data.x_test, data.y_test))]

  def loss_fn(p, x, y):
    return optax.softmax_cross_entropy_with_integer_labels(apply(p, x), y).mean()

  def accuracy(p, x, y):
    return jnp.mean(jnp.argmax(apply(p, x), -1) == y)

  def one(lr, row, seed):
    key = jax.random.key(seed)
    k_init, k_mask, k_data = jax.random.split(key, 3)
    params0 = m_init(k_init)
    schedule = optax.cosine_decay_schedule(1.0, steps, alpha=0.1)
    sched = lambda c: lr * schedule(c)  # noqa: E731
    tx = make_tx(sched, steps) if aux is None else make_tx(sched, steps, row)
    state = permute_masks(tx.init(params0), jax.random.key_data(k_mask))

    def step(carry, inputs):
      params, state = carry
      k, t = inputs
      idx = jax.random.randint(k, (batch_size,), 0, x_tr.shape[0])
      loss, g = jax.value_and_grad(loss_fn)(params, x_tr[idx], y_tr[idx])
      kwargs = update_kwargs(params, t) if update_kwargs else {}
      u, state = tx.update(g, state, params, **kwargs)
      return (optax.apply_updates(params, u), state), loss

    (params, state), losses = jax.lax.scan(
        step, (params0, state), (jax.random.split(k_data, steps), jnp.arange(steps)))
    out = {"val": accuracy(params, *sets[0]), "test": accuracy(params, *sets[1]),
           "loss": jnp.mean(losses[-max(1, steps // 10):])}
    if extra_fn is not None:
      out.update(extra_fn(params0, params, state))
    return out

  rows = jnp.zeros(len(lrs)) if aux is None else jnp.asarray(aux, jnp.float32)
  f = jax.jit(jax.vmap(jax.vmap(one, (None, None, 0)), (0, 0, None)))
  res = jax.device_get(f(jnp.asarray(lrs, jnp.float32), rows, jnp.asarray(seeds, jnp.uint32)))
  extra = {k: np.asarray(v) for k, v in res.items() if k not in ("val", "test", "loss")}
  return Runs(np.asarray(lrs), np.asarray(seeds), np.asarray(res["val"]),
              np.asarray(res["test"]), np.asarray(res["loss"]), extra)


def fit_regression(tx, xs, ys, steps: int) -> np.ndarray:
  """``tx`` on the least-squares losses of the problems ``(xs[i], ys[i])``, full batch.

  One vmapped, scanned run per problem from a small Gaussian initialization (scale 1e-3, seed
  i of ``key(0)``); returns the final weights, one row per problem.
  """
  def one(x, y, key):
    theta = {"t": 1e-3 * jax.random.normal(key, (x.shape[1],))}
    loss = lambda p: 0.5 * jnp.mean((x @ p["t"] - y) ** 2)  # noqa: E731

    def step(carry, _):
      p, s = carry
      u, s = tx.update(jax.grad(loss)(p), s, p)
      return (optax.apply_updates(p, u), s), None

    (p, _), _ = jax.lax.scan(step, (theta, tx.init(theta)), None, length=steps)
    return p["t"]

  keys = jax.random.split(jax.random.key(0), len(xs))
  return np.asarray(jax.jit(jax.vmap(one))(jnp.asarray(xs), jnp.asarray(ys), keys))


def fit_minibatches(tx, apply, params, x, y, keys, batch_size: int = 64):
  """``tx`` on the mean cross-entropy of ``apply`` over minibatches of ``(x, y)``.

  One step per key of ``keys`` (each draws ``batch_size`` indices with replacement), from
  ``params`` and a fresh ``tx.init(params)``; returns the final parameters.
  """
  def step(carry, k):
    p, s = carry
    idx = jax.random.randint(k, (batch_size,), 0, x.shape[0])
    g = jax.grad(lambda q: optax.softmax_cross_entropy_with_integer_labels(
        apply(q, x[idx]), y[idx]).mean())(p)
    u, s = tx.update(g, s, p)
    return (optax.apply_updates(p, u), s), None

  (p, _), _ = jax.lax.scan(step, (params, tx.init(params)), keys)
  return p


# ----------------------------------------------------------------------------------------------
# Reporting




def mean_std(a) -> str:
  a = np.asarray(a, np.float64)
  return f"{a.mean():.4f} ± {a.std(ddof=1) if a.size > 1 else 0.0:.4f}"


def pct(a) -> str:
  a = 100 * np.asarray(a, np.float64)
  return f"{a.mean():.1f} ± {a.std(ddof=1) if a.size > 1 else 0.0:.1f}"


def write(name: str, text: str, fast: bool) -> pathlib.Path | None:
  """Prints ``text`` and, unless ``fast``, writes it to ``docs/reproductions/<name>.md``."""
  print(text)
  if fast:
    return None
  OUT_DIR.mkdir(parents=True, exist_ok=True)
  path = OUT_DIR / f"{name}.md"
  path.write_text(text.rstrip() + "\n")
  return path


def savefig(fig, name: str, fast: bool) -> None:
  if not fast:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT_DIR / f"{name}.png", dpi=110)


def lr_grid_text(lrs) -> str:
  return "{" + ", ".join(f"{v:g}" for v in lrs) + "}"
