"""The front page's recipe (docs/index.md) trains a Flax NNX MLP on digits, as written."""

from __future__ import annotations

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from sklearn.datasets import load_digits

INDEX = pathlib.Path(__file__).resolve().parents[1] / "docs" / "index.md"


def test_index_recipe_trains_an_nnx_mlp_on_digits():
  class MLP(nnx.Module):
    def __init__(self, rngs):
      self.hidden = nnx.Linear(64, 128, rngs=rngs)
      self.out = nnx.Linear(128, 10, rngs=rngs)

    def __call__(self, x):
      return self.out(nnx.relu(self.hidden(x)))

  digits = load_digits()
  order = np.random.default_rng(0).permutation(len(digits.data))
  x = jnp.asarray(digits.data[order] / 16.0, jnp.float32)
  y = jnp.asarray(digits.target[order], jnp.int32)
  x_train, y_train, x_test, y_test = x[:1400], y[:1400], x[1400:], y[1400:]
  graphdef, state = nnx.split(MLP(nnx.Rngs(0)))
  params = nnx.to_pure_dict(state)

  def loss(p, xb, yb):
    return optax.softmax_cross_entropy_with_integer_labels(nnx.merge(graphdef, p)(xb), yb).mean()

  # The recipe builds tx as written; its last three lines (init, update, apply) are what the
  # jitted training loop below does at every step (run eagerly, they would take seconds).
  code = INDEX.read_text().split("```python\n")[1].split("```")[0]
  build, loop = code.split("state = tx.init(params)\n")
  assert [line.split("#")[0].strip() for line in loop.strip().splitlines()] == [
      "updates, state = tx.update(grads, state, params)",
      "params = optax.apply_updates(params, updates)"]
  namespace: dict = {}
  exec(compile(build, "docs/index.md", "exec"), namespace)  # noqa: S102
  tx = namespace["tx"]

  @jax.jit
  def train(p, batches):
    def step(carry, idx):
      p, s = carry
      updates, s = tx.update(jax.grad(loss)(p, x_train[idx], y_train[idx]), s, p)
      return (optax.apply_updates(p, updates), s), None
    return jax.lax.scan(step, (p, tx.init(p)), batches)[0]

  batches = np.random.default_rng(0).integers(0, len(x_train), (300, 64))
  trained, state = train(params, batches)
  accuracy = float(jnp.mean(jnp.argmax(nnx.merge(graphdef, trained)(x_test), -1) == y_test))
  assert accuracy > 0.85, accuracy  # with HAM's default alpha = 200: 0.25 at 300 steps
  kernel = np.asarray(trained["hidden"]["kernel"])
  assert np.mean(kernel == 0) > 0.85  # ERK at 90% overall: the large hidden kernel is sparser
