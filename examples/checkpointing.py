"""Save and restore the whole optimizer state with Orbax, and resume bit-identically.

Everything a transformation of ``optax_sparse`` needs lives in its state: masks, compressed
moments, reparameterization factors, counters and PRNG keys. Checkpointing is therefore the usual
Orbax call on ``(params, opt_state)``; there is nothing to save outside the optimizer.

Two details, handled by :func:`save` and :func:`restore` below:

* Typed PRNG keys (``jax.random.key``) are stored as their raw ``uint32`` data
  (``jax.random.key_data``) and wrapped again on restore with the implementation of the key in the
  template (``jax.random.wrap_key_data``). Recent Orbax versions handle typed keys natively; the
  conversion keeps checkpoints readable by older ones and by plain NumPy tools.
* Restoring needs a template with the same structure (NamedTuples, ``None`` leaves for dense
  parameters in the masks), for instance a freshly initialized state ``tx.init(params)``. Orbax
  then returns the same pytree types.

Run ``python examples/checkpointing.py`` (``--fast`` for a few steps): it trains a small MLP on
scikit-learn's digits with RigL and HAM, stops half way, saves, restores into a fresh state and
checks that the rest of the run is bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

import optax_sparse as osp


def _is_key(x: Any) -> bool:
  return isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key)


def to_savable(tree: Any) -> Any:
  """Replaces every typed PRNG key in ``tree`` by its raw ``uint32`` data."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def from_savable(saved: Any, like: Any) -> Any:
  """Inverse of :func:`to_savable`: wraps key data again where ``like`` holds a typed key."""
  return jax.tree.map(
      lambda s, l: jax.random.wrap_key_data(s, impl=jax.random.key_impl(l)) if _is_key(l) else s,
      saved,
      like,
  )


def save(path: str | pathlib.Path, tree: Any) -> None:
  """Saves a pytree of arrays (params, optimizer state, ...) to a new folder ``path``."""
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(pathlib.Path(path).absolute(), to_savable(tree))
  checkpointer.wait_until_finished()


def restore(path: str | pathlib.Path, like: Any) -> Any:
  """Restores what :func:`save` wrote, with the structure and key types of ``like``."""
  checkpointer = ocp.StandardCheckpointer()
  saved = checkpointer.restore(pathlib.Path(path).absolute(), to_savable(like))
  return from_savable(saved, like)


def trees_identical(a: Any, b: Any) -> bool:
  """Whether two pytrees have the same structure and bit-identical leaves (keys included)."""
  leaves_a, def_a = jax.tree.flatten(to_savable(a))
  leaves_b, def_b = jax.tree.flatten(to_savable(b))
  return def_a == def_b and all(
      np.asarray(x).dtype == np.asarray(y).dtype and np.array_equal(x, y)
      for x, y in zip(leaves_a, leaves_b, strict=True)
  )


def _mlp_init(seed: int) -> dict:
  rng = np.random.default_rng(seed)
  return {
      "w1": jnp.asarray(rng.normal(size=(64, 64)) / 8.0, jnp.float32),
      "b1": jnp.zeros(64),
      "w2": jnp.asarray(rng.normal(size=(64, 10)) / 8.0, jnp.float32),
      "b2": jnp.zeros(10),
  }


def _loss(params: dict, x: jax.Array, y: jax.Array) -> jax.Array:
  h = jax.nn.relu(x @ params["w1"] + params["b1"])
  return optax.softmax_cross_entropy_with_integer_labels(h @ params["w2"] + params["b2"], y).mean()


def main(argv: list[str] | None = None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--fast", action="store_true", help="a few steps only (for tests)")
  args = parser.parse_args(argv)
  from sklearn.datasets import load_digits
  from tqdm.auto import tqdm

  steps = 20 if args.fast else 600
  digits = load_digits()
  x = jnp.asarray(digits.data / 16.0, jnp.float32)
  y = jnp.asarray(digits.target, jnp.int32)
  # The state holds masks, the rule's PRNG key (RigL's tie-break noise), HAM's and AdamW's state.
  tx = osp.sparse(
      osp.ham(optax.adamw(3e-3), learning_rate=3e-3, alpha=50.0),
      osp.rigl(drop_fraction=0.3, every=max(1, steps // 10), end_step=steps),
      sparsity=0.8,
      distribution=osp.erk(),
  )

  @jax.jit
  def step(params, state, i):
    idx = jax.random.randint(jax.random.fold_in(jax.random.key(1), i), (64,), 0, x.shape[0])
    grads = jax.grad(_loss)(params, x[idx], y[idx])
    updates, state = tx.update(grads, state, params)
    return optax.apply_updates(params, updates), state

  def train(params, state, start, stop, desc):
    for i in tqdm(range(start, stop), desc=desc):
      params, state = step(params, state, i)
    return params, state

  params0 = _mlp_init(0)
  straight = train(params0, tx.init(params0), 0, steps, "uninterrupted")
  half = train(params0, tx.init(params0), 0, steps // 2, "first half")
  with tempfile.TemporaryDirectory() as tmp:
    save(pathlib.Path(tmp) / "ckpt", half)
    restored = restore(pathlib.Path(tmp) / "ckpt", (params0, tx.init(params0)))
  resumed = train(*restored, steps // 2, steps, "resumed")
  same = trees_identical(straight, resumed)
  print(f"loss {float(_loss(resumed[0], x, y)):.4f}; resumed run bit-identical: {same}")
  if not same:
    raise SystemExit("the resumed run differs from the uninterrupted one")
  return {"straight": straight, "half": half, "restored": restored, "resumed": resumed,
          "template": (params0, tx.init(params0))}


if __name__ == "__main__":
  main()
