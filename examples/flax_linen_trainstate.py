"""Flax Linen with a ``TrainState``: the optimizer is just the ``tx`` field.

``TrainState.apply_gradients`` calls ``tx.update(grads, opt_state, params)`` and applies the
update, so sparse training needs no extra call before or after the step: the masks live in
``state.opt_state`` and pruned weights are exactly zero after every step. The rule here is SET
(random regrowth; its PRNG key lives in the optimizer state too) at 80% sparsity.

Run ``python examples/flax_linen_trainstate.py`` (``--fast`` for a few steps).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import linen as nn
from flax.training import train_state

import optax_sparse as osp


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = nn.relu(nn.Dense(128)(x))
    return nn.Dense(10)(x)


@jax.jit
def train_step(state: train_state.TrainState, x: jax.Array, y: jax.Array):
  def loss_fn(params):
    logits = state.apply_fn({"params": params}, x)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  return state.apply_gradients(grads=grads), loss


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

  model = MLP()
  params = model.init(jax.random.key(0), x_train[:1])["params"]
  tx = osp.sparse(
      optax.adamw(optax.cosine_decay_schedule(3e-3, steps)),
      osp.set_(drop_fraction=0.3, every=max(1, steps // 15), end_step=(3 * steps) // 4),
      sparsity=0.8,
      seed=0,
  )
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
  rng = np.random.default_rng(0)
  bar = tqdm(range(steps), desc="SET (Linen TrainState)")
  for _ in bar:
    idx = rng.integers(0, len(x_train), 64)
    state, loss = train_step(state, x_train[idx], y_train[idx])
    bar.set_postfix(loss=f"{float(loss):.3f}")

  logits = model.apply({"params": state.params}, x_test)
  accuracy = float(jnp.mean(jnp.argmax(logits, -1) == y_test))
  kernel = state.params["Dense_0"]["kernel"]
  print(f"test accuracy {accuracy:.4f}; Dense_0 kernel sparsity {float(jnp.mean(kernel == 0)):.2%}")
  return accuracy


if __name__ == "__main__":
  main()
