"""Every reproduction script runs in its seconds-long mode and prints a complete, finite table.

Each entry of ``SCRIPTS``: the script and its arguments (under ``benchmarks/reproduce/``), the
header cells of the first markdown table it prints, and that table's number of rows. The
scripts run in a subprocess with XLA's cheap CPU compilation (their smoke runs are dominated by
compile time); the smoke mode writes nothing into ``docs/``.
"""

from __future__ import annotations

import math
import os
import pathlib
import re
import subprocess
import sys

import pytest

SCRIPTS = [
    (["ham_implicit_bias.py", "--fast"],
     ["α", "‖θ − θ_L2‖ / ‖θ_L2‖", "‖θ − θ_L1‖ / ‖θ_L1‖", "‖θ‖₁ / ‖θ_L1‖₁", "max residual"], 3),
    (["ham_alpha_sgd.py", "--fast"], ["α \\ lr", "0.05"], 2),
    (["ham_sparse_training.py", "--fast", "--setting", "rigl"],
     ["budget", "method", "configs", "selected", "val acc", "test acc", "Δ test"], 4),
    # --setting random differs from rigl only in its mask rule; left out to keep the file short.
    (["ham_sparse_training.py", "--fast", "--setting", "dense"],
     ["budget", "method", "configs", "selected", "val acc", "test acc", "Δ test"], 4),
    (["wd_switch_off.py", "--fast"],
     ["schedule", "configs", "selected", "val MSE", "test error ‖θ − x*‖/‖x*‖", "train residual",
      "‖θ‖₁ / ‖θ_L1‖₁"], 3),
    (["never_saddle.py", "--fast"], ["optimizer", "init scale", "lr 0.01", "lr 0.1"], 2),
    (["pilot_implicit_bias.py", "--fast"],
     ["β", "λ_init", "‖θ − θ_L2‖ / ‖θ_L2‖", "‖θ − θ_L1‖ / ‖θ_L1‖", "‖θ‖₁ / ‖θ_L1‖₁",
      "max residual"], 2),
    (["pilot_pruning.py", "--fast"],
     ["method", "dense", "90% cut", "95% cut", "90% + fine-tune", "95% + fine-tune"], 2),
    (["sign_in_random_pai.py", "--fast"],
     ["optimizer", "best lr", "test acc %", "sign flips", "flipped % of active", "acc @ 0.1"], 2),
    (["nanoadam_forgetting.py", "--fast"],
     ["optimizer", "lr chosen on", "lr", "B (new task)", "A (retained)", "A forgotten", "moved"],
     4),
]

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT_DIR = ROOT / "benchmarks" / "reproduce"
NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?|\b(?:nan|inf)\b", re.IGNORECASE)


def tables(text: str) -> list[list[list[str]]]:
  """The markdown tables in ``text``: lists of rows of stripped cells (separator rows dropped)."""
  out, current = [], []
  for line in text.splitlines() + [""]:
    if line.startswith("|"):
      cells = [c.strip() for c in line.strip().strip("|").split("|")]
      if not all(re.fullmatch(r":?-+:?", c) for c in cells):
        current.append(cells)
    elif current:
      out.append(current)
      current = []
  return out


def run(argv: list[str]) -> str:
  flags = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags)
  proc = subprocess.run([sys.executable, str(SCRIPT_DIR / argv[0]), *argv[1:]], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def test_tables_parser():
  text = "x\n| a | b |\n|---|---|\n| 1 | 2 ± 0.5 |\n\n| c |\n|---|\n| nan |\n"
  assert tables(text) == [[["a", "b"], ["1", "2 ± 0.5"]], [["c"], ["nan"]]]


@pytest.mark.parametrize("argv,header,n_rows", SCRIPTS, ids=lambda v: " ".join(v)
                         if isinstance(v, list) and v and v[0].endswith(".py") else None)
def test_smoke_mode_prints_a_finite_table(argv, header, n_rows):
  out = run(argv)
  found = tables(out)
  assert found, out
  first = found[0]
  assert first[0] == header
  assert len(first) - 1 == n_rows
  for table in found:
    for row in table[1:]:
      assert len(row) == len(table[0]), row
      numbers = [m for cell in row for m in NUMBER.findall(cell)]
      assert numbers, row
      for m in numbers:
        assert math.isfinite(float(m)), row
