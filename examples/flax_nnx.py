"""Flax NNX: ``nnx.Optimizer`` with a sparse optimizer of ``optax_sparse``.

``nnx.Optimizer(model, tx, wrt=nnx.Param)`` calls ``tx.update(grads, opt_state, params,
**kwargs)``: it passes the parameters (which the mask owner and HAM need) and forwards keyword
extra arguments. So any transformation of the library works unchanged; the masks live in
``optimizer.opt_state`` and ``osp.get_masks(nnx.as_pure(optimizer.opt_state))`` reads them.

The model is a small MLP on scikit-learn's digits, trained with the front page's recipe: RigL at
90% ERK sparsity and HAM on ``optax.sgd(0.1, momentum=0.9)`` (the pairing of the HAM paper), with
HAM's ``alpha`` from ``osp.suggest_ham_alpha`` on one minibatch gradient (about 3 here; the
paper's ImageNet default 200 collapses this model, see the guide, "Choosing alpha").

Run ``python examples/flax_nnx.py`` (``--fast`` for a few steps).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import optax_sparse as osp


class MLP(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(64, 128, rngs=rngs)
    self.out = nnx.Linear(128, 10, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.out(nnx.relu(self.hidden(x)))


def _loss(model: MLP, x: jax.Array, y: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()


@nnx.jit
def train_step(model: MLP, optimizer: nnx.Optimizer, x: jax.Array, y: jax.Array) -> jax.Array:
  loss, grads = nnx.value_and_grad(_loss)(model, x, y)
  optimizer.update(model, grads)  # tx.update(grads, opt_state, params) + apply_updates
  return loss


def main(argv: list[str] | None = None) -> float:
  from sklearn.datasets import load_digits
  from tqdm.auto import tqdm

  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fast", action="store_true", help="a few steps only (for tests)")
  steps = 100 if parser.parse_args(argv).fast else 1500
  digits = load_digits()
  x = (digits.data / 16.0).astype(np.float32)
  y = digits.target.astype(np.int32)
  x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]

  model = MLP(nnx.Rngs(0))
  lr = optax.cosine_decay_schedule(0.1, steps)
  # alpha: HAM's default 200 belongs to ImageNet; here the per-step exponent lr*alpha*|g| would be
  # of order one. suggest_ham_alpha sets its 99th percentile to 0.01 on one minibatch gradient.
  grads = nnx.grad(_loss)(model, x_train[:64], y_train[:64])
  alpha = osp.suggest_ham_alpha(nnx.state(model, nnx.Param), grads, learning_rate=lr)
  tx = osp.sparse(
      osp.ham(optax.sgd(lr, momentum=0.9), learning_rate=lr, alpha=alpha),
      osp.rigl(drop_fraction=0.3, every=max(1, steps // 15), end_step=(3 * steps) // 4),
      sparsity=0.9,
      distribution=osp.erk(),
  )
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  rng = np.random.default_rng(0)
  bar = tqdm(range(steps), desc="RigL + HAM (NNX)")
  for _ in bar:
    idx = rng.integers(0, len(x_train), 64)
    bar.set_postfix(loss=f"{float(train_step(model, optimizer, x_train[idx], y_train[idx])):.3f}")

  accuracy = float(jnp.mean(jnp.argmax(model(x_test), -1) == y_test))
  masks = osp.get_masks(nnx.as_pure(optimizer.opt_state))
  kernel = model.hidden.kernel[...]
  print(f"alpha {alpha:.3g}; test accuracy {accuracy:.4f}; hidden kernel sparsity "
        f"{float(jnp.mean(kernel == 0)):.2%}"
        f" (mask density {float(jnp.mean(masks['hidden']['kernel'])):.2%}); biases dense: "
        f"{masks['hidden']['bias'] is None}")
  return accuracy


if __name__ == "__main__":
  main()
