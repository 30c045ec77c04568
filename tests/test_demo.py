"""Tests of the demo command (``python -m optax_sparse demo``) in its fast mode."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from optax_sparse import __main__ as cli

SPARSITY = 0.9


def test_demo_fast_mode_writes_table_and_png(tmp_path, capsys):
  from optax_sparse import demo

  out = tmp_path / "out"
  code = cli.main(
      ["demo", "--steps", "150", "--sparsity", str(SPARSITY), "--out", str(out), "--no-progress",
       "--lrs", "0.003,0.01"]
  )
  assert code == 0
  printed = capsys.readouterr().out
  for method in demo.METHODS:
    assert f"| {method} |" in printed
  assert (out / "demo.png").stat().st_size > 10_000
  table = (out / "results.md").read_text()
  assert table.count("\n| ") == len(demo.METHODS)  # one row per method after the header
  assert "best learning rate of the sweep 0.003, 0.01" in table
  results = {r["method"]: r for r in json.loads((out / "results.json").read_text())}
  assert set(results) == set(demo.METHODS)
  assert results["dense"]["sparsity"] is None
  for method, r in results.items():
    assert r["accuracy"] > 0.25, (method, r["accuracy"])  # chance is 0.1
    # The kept learning rate is the sweep's best on validation.
    assert set(r["sweep"]) == {"0.003", "0.01"}
    assert r["sweep"][f"{r['learning_rate']:g}"] == max(r["sweep"].values())
    assert len(r["curve_steps"]) == len(r["curve_accuracy"]) >= 10
    if method != "dense":
      assert abs(r["sparsity"] - SPARSITY) <= 0.01, (method, r["sparsity"])
      # ERK keeps the overall budget but gives the small first convolution a higher density.
      assert r["layer_density"]["conv1/kernel"] > r["layer_density"]["fc1/kernel"]


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
