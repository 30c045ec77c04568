"""Checkpoints: the whole optimizer state saves and restores with Orbax, and training resumed
from a checkpoint continues bit-identically to an uninterrupted run.

The save/restore helpers live in ``examples/checkpointing.py`` (they are a recipe, not part of
the package).
"""

from __future__ import annotations

import pathlib
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sparse as osp

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
import checkpointing  # noqa: E402

STEPS, SPLIT = 10, 4


def _params() -> dict:
  rng = np.random.default_rng(0)  # NumPy: no compilation for the initialization
  return {
      "w1": jnp.asarray(rng.normal(size=(6, 8)) / 3.0, jnp.float32),
      "b1": jnp.zeros(8),
      "w2": jnp.asarray(rng.normal(size=(8, 4)) / 3.0, jnp.float32),
  }


def _loss(params: dict, key: jax.Array) -> jax.Array:
  kx, kt = jax.random.split(key)
  x = jax.random.normal(kx, (16, 6))
  target = jnp.tanh(x @ jnp.ones((6, 4)) * 0.3) + 0.1 * jax.random.normal(kt, (16, 4))
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  return jnp.mean((h @ params["w2"] - target) ** 2)


def _nanoadam():
  return osp.nanoadam(1e-2, density=0.25, refresh_every=3)


def _sign_in():
  return osp.sign_in(optax.adam(1e-2), reset_every=3)


def _pilot():
  return osp.pilot(1e-2, steps_per_epoch=3, total_epochs=4)


FACTORIES = {
    "adamw": lambda: optax.adamw(1e-2),
    "nanoadam": _nanoadam,
    "sign_in": _sign_in,
    "pilot": _pilot,
}
# Transformations given a (rising) training accuracy as the extra argument of ``update``.
WITH_ACCURACY = {"pilot"}


def _run(tx, params, state, start: int, stop: int, step_fn):
  for i in range(start, stop):
    params, state = step_fn(params, state, jnp.int32(i))
  return params, state


@pytest.mark.parametrize("name", sorted(FACTORIES))
def test_resume_from_checkpoint_is_bit_identical(name, tmp_path):
  tx = FACTORIES[name]()

  @jax.jit
  def step(params, state, i):
    grads = jax.grad(_loss)(params, jax.random.fold_in(jax.random.key(7), i))
    extra = {"train_accuracy": i.astype(jnp.float32) / STEPS} if name in WITH_ACCURACY else {}
    updates, state = tx.update(grads, state, params, **extra)
    return optax.apply_updates(params, updates), state

  params0 = _params()
  straight = _run(tx, params0, tx.init(params0), 0, STEPS, step)
  half = _run(tx, params0, tx.init(params0), 0, SPLIT, step)
  checkpointing.save(tmp_path / "ckpt", half)
  template = (params0, tx.init(params0))
  restored = checkpointing.restore(tmp_path / "ckpt", template)
  assert checkpointing.trees_identical(restored, half)
  assert jax.tree.structure(restored) == jax.tree.structure(template)
  resumed = _run(tx, *restored, SPLIT, STEPS, step)
  assert checkpointing.trees_identical(resumed, straight)
  # The run must actually have moved, or the comparison above proves nothing.
  assert not checkpointing.trees_identical(straight[0], half[0])


def test_sparse_ham_rigl_resumes_bit_identically_in_the_example(capsys):
  """``examples/checkpointing.py --fast``: sparse(ham(adamw), rigl) on digits, resumed half way."""
  out = checkpointing.main(["--fast"])
  assert "bit-identical: True" in capsys.readouterr().out
  assert checkpointing.trees_identical(out["restored"], out["half"])
  assert jax.tree.structure(out["restored"]) == jax.tree.structure(out["template"])
  assert checkpointing.trees_identical(out["resumed"], out["straight"])
  assert not checkpointing.trees_identical(out["straight"][0], out["half"][0])
  masks = osp.get_masks(out["straight"][1])
  assert masks["b1"] is None and 0.0 < float(masks["w1"].mean()) < 0.5
  # RigL moved the masks between the checkpoint and the end of the run.
  assert not checkpointing.trees_identical(masks, osp.get_masks(out["half"][1]))


class _StateWithKey(NamedTuple):
  key: jax.Array
  masks: dict
  count: jax.Array


def test_typed_keys_none_leaves_and_namedtuples_round_trip(tmp_path):
  state = _StateWithKey(
      key=jax.random.split(jax.random.key(3, impl="rbg"))[1],
      masks={"w": jnp.array([[True, False], [False, True]]), "b": None},
      count=jnp.int32(5),
  )
  savable = checkpointing.to_savable(state)
  assert savable.key.dtype == jnp.uint32
  like = _StateWithKey(jax.random.key(0, impl="rbg"), {"w": jnp.ones((2, 2), bool), "b": None},
                       jnp.int32(0))
  checkpointing.save(tmp_path / "ckpt", state)
  restored = checkpointing.restore(tmp_path / "ckpt", like)
  assert isinstance(restored, _StateWithKey) and restored.masks["b"] is None
  assert jax.random.key_impl(restored.key) == jax.random.key_impl(state.key)
  assert checkpointing.trees_identical(restored, state)
  assert not checkpointing.trees_identical(restored, like)
