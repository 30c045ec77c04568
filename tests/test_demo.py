"""Tests of the demo command (``python -m optax_sparse demo``) in its fast mode."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from optax_sparse import __main__ as cli

SPARSITY = 0.9


def test_demo_fast_mode_writes_table_and_png(tmp_path, capsys):
  from optax_sparse import demo

  out = tmp_path / "out"
  code = cli.main(
      ["demo", "--steps", "60", "--sparsity", str(SPARSITY), "--out", str(out), "--no-progress",
       "--lrs", "0.01,0.03"]
  )
  assert code == 0
  printed = capsys.readouterr().out
  for method in demo.METHODS:
    assert f"| {method} |" in printed
  assert (out / "demo.png").stat().st_size > 10_000
  table = (out / "results.md").read_text()
  assert table.count("\n| ") == len(demo.METHODS)  # one row per method after the header
  assert "best learning rate of the sweep 0.01, 0.03" in table
  assert "rigl + rigl_ham" in table  # the sparse methods share one compiled sweep
  results = {r["method"]: r for r in json.loads((out / "results.json").read_text())}
  assert set(results) == set(demo.METHODS)
  assert results["dense"]["sparsity"] is None
  for method, r in results.items():
    assert math.isfinite(r["accuracy"]) and r["accuracy"] > 0.3, (method, r["accuracy"])  # 0.1
    # The kept learning rate is the sweep's best on validation.
    assert set(r["sweep"]) == {"0.01", "0.03"}
    assert r["sweep"][f"{r['learning_rate']:g}"] == max(r["sweep"].values())
    assert r["curve_steps"][-1] == 60
    assert len(r["curve_steps"]) == len(r["curve_accuracy"]) == 20
    if method != "dense":
      # Exact zeros over the masked leaves: at least the target (a kept weight can also be 0).
      assert SPARSITY <= r["sparsity"] <= SPARSITY + 0.01, (method, r["sparsity"])
      # ERK keeps the overall budget but gives the small first convolution a higher density.
      assert r["layer_density"]["conv1/kernel"] > r["layer_density"]["fc1/kernel"]


def test_rigl_is_rigl_ham_at_zero_alpha_and_beta():
  """The sweep runs rigl as HAM with alpha = beta = 0: the same steps as plain RigL."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import optax

  from optax_sparse import demo

  params = {"w": jax.random.normal(jax.random.key(0), (16, 8)), "b": jnp.zeros(8)}
  target = jax.random.normal(jax.random.key(1), (32, 8))
  x = jax.random.normal(jax.random.key(2), (32, 16))

  def train(tx):
    def step(carry, _):
      p, s = carry
      g = jax.grad(lambda p: jnp.mean((x @ p["w"] + p["b"] - target) ** 2))(p)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None
    return jax.jit(lambda p: jax.lax.scan(step, (p, tx.init(p)), None, length=20)[0][0])(params)

  # 20 steps: a mask update every step until step 15.
  plain = train(demo.make_optimizer("rigl", 20, 0.75, 0.03))
  zero_ham = train(demo.make_optimizer("rigl", 20, 0.75, 0.03, ham=(0.0, 0.0)))
  np.testing.assert_array_equal(plain["w"] == 0, zero_ham["w"] == 0)
  assert np.mean(np.asarray(plain["w"]) == 0) == 0.75
  np.testing.assert_allclose(plain["w"], zero_ham["w"], rtol=1e-5, atol=1e-6)
  assert np.abs(np.asarray(plain["w"] - params["w"])).max() > 1e-2  # it did train


def test_measure_sparsity_counts_exact_zeros_of_masked_leaves_only():
  import numpy as np

  from optax_sparse import demo

  params = {"a": np.array([[0.0, 1.0], [0.0, 0.0]]), "b": np.zeros(3), "c": np.ones((2, 2))}
  masks = {"a": np.ones((2, 2), bool), "b": None, "c": None}
  sparsity, density = demo.measure_sparsity(params, masks)
  assert sparsity == 0.75
  assert density == {"a": 0.25, "c": 1.0}
  assert demo.measure_sparsity(params, None)[0] is None


def test_cli_help_and_argument_checks(capsys):
  from optax_sparse import demo

  assert cli.DEMO_METHODS == demo.METHODS
  with pytest.raises(SystemExit) as exc:
    cli.main(["demo", "--help"])
  assert exc.value.code == 0
  help_text = capsys.readouterr().out
  for option in ("--sparsity", "--steps", "--methods", "--seed", "--seeds", "--lrs", "--out"):
    assert option in help_text
  with pytest.raises(ValueError, match="methods"):
    demo.run(["adam"], steps=1)
  with pytest.raises(ValueError, match="sparsity"):
    demo.run(["dense"], steps=1, sparsity=1.0)
  with pytest.raises(ValueError, match="learning_rates"):
    demo.run(["dense"], steps=1, learning_rates=[0.0])
  with pytest.raises(ValueError, match="seeds"):
    demo.run(["dense"], steps=1, seeds=0)


def test_package_import_does_not_import_flax_or_the_demo():
  code = "import sys, optax_sparse; print(sorted(m for m in ('flax', 'optax_sparse.demo', " \
         "'sklearn', 'matplotlib') if m in sys.modules))"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "[]"
