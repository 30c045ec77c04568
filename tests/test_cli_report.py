"""``python -m optax_sparse report <checkpoint>`` on the checkpoints our examples write."""

from __future__ import annotations

import functools
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sparse as osp
from optax_sparse import __main__ as cli

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
import checkpointing  # noqa: E402


@functools.cache
def _trained():
  """(params0, state0, params1, state1): a RigL mask update on a small model."""
  rng = np.random.default_rng(0)
  params = {"w1": jnp.asarray(rng.normal(size=(16, 8)), jnp.float32), "b1": jnp.zeros(8),
            "w2": jnp.asarray(rng.normal(size=(8, 4)), jnp.float32)}
  tx = osp.sparse(optax.adam(1e-2), osp.rigl(drop_fraction=0.5, every=1, end_step=5),
                  sparsity=0.75)
  state0 = tx.init(params)
  grads = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape), jnp.float32), params)
  updates, state1 = tx.update(grads, state0, params)
  params1 = optax.apply_updates(params, updates)
  return params, state0, params1, state1


def test_report_of_an_orbax_checkpoint_from_the_checkpointing_example(tmp_path, capsys):
  _, _, params, state = _trained()
  checkpointing.save(tmp_path / "ckpt", (params, state))  # the example's own helper
  assert cli.main(["report", str(tmp_path / "ckpt"), "--nm", "2:4", "--format", "markdown"]) == 0
  printed = capsys.readouterr().out.strip()
  expected = osp.sparsity_report(params, state, nm=(2, 4)).to_markdown()
  assert printed == expected
  assert "| w1 | 16x8 |" in printed and "| mask |" in printed


def test_report_of_a_compressed_checkpoint_with_churn_as_json(tmp_path, capsys):
  _, state0, params, state1 = _trained()
  osp.save_compressed(tmp_path / "now", params, osp.get_masks(state1))
  checkpointing.save(tmp_path / "before", {"params": params, "opt_state": state0})
  cli.main(["report", str(tmp_path / "now"), "--previous", str(tmp_path / "before"),
            "--format", "json"])
  printed = json.loads(capsys.readouterr().out)
  expected = osp.sparsity_report(params, state1, previous=state0).to_dict()
  assert printed == json.loads(json.dumps(expected))
  assert printed["leaves"]["w1"]["grown"] > 0  # the RigL update moved the mask


def test_report_of_a_bare_parameter_tree(tmp_path, capsys):
  _, _, params, _ = _trained()
  checkpointing.save(tmp_path / "p", params)
  cli.main(["report", str(tmp_path / "p"), "--format", "markdown"])
  assert capsys.readouterr().out.strip() == osp.sparsity_report(params).to_markdown()


def test_report_arguments(tmp_path, capsys):
  with pytest.raises(SystemExit) as exc:
    cli.main(["report", "--help"])
  assert exc.value.code == 0
  help_text = capsys.readouterr().out
  for option in ("--nm", "--previous", "--format", "checkpoint"):
    assert option in help_text
  with pytest.raises(ValueError, match="existing folder"):
    cli.main(["report", str(tmp_path / "missing")])
  checkpointing.save(tmp_path / "p", {"w": jnp.ones((4, 4))})
  with pytest.raises(ValueError, match="--nm"):
    cli.main(["report", str(tmp_path / "p"), "--nm", "2-4"])


def test_report_of_a_checkpoint_with_packed_masks(tmp_path, capsys):
  # Masks kept as bits in the state are unpacked with the parameters' shapes: the same report
  # as the bool-mask run.
  rng = np.random.default_rng(1)
  params = {"w1": jnp.asarray(rng.normal(size=(16, 12)), jnp.float32), "b1": jnp.zeros(12)}
  tx = osp.sparse(optax.adam(1e-2), osp.static_random(), sparsity=0.75, packed_masks=True)
  state = tx.init(params)
  checkpointing.save(tmp_path / "ckpt", (params, state))
  assert cli.main(["report", str(tmp_path / "ckpt"), "--format", "json"]) == 0
  got = json.loads(capsys.readouterr().out)
  want = osp.sparsity_report(params, state).to_dict()
  assert got == json.loads(json.dumps(want))
  assert int(np.asarray(osp.get_masks(state)["w1"]).sum()) == 48
