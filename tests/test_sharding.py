"""Sharding: every transformation on 8 simulated CPU devices equals one device, no gathers.

The checks run in one subprocess (``tests/_sharding_checks.py``) because the number of simulated
devices must be set in ``XLA_FLAGS`` before JAX is imported.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).with_name("_sharding_checks.py")


def test_every_transform_on_two_meshes_matches_one_device_without_gathers():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env,
                       timeout=900, check=False)
  assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
  rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
  meshes = {(r["check"], r["mesh"]) for r in rows if "mesh" in r}
  checks = {c for c, _ in meshes}
  assert len(checks) >= 24
  assert all((c, m) in meshes for c in checks for m in ("fsdp", "2x4"))
  # The dynamic rules really communicate histograms / per-row counts (the check is not vacuous).
  for name in ("rigl+ham", "rigl+fan_in"):
    runs = [r for r in rows if r.get("check") == name and "mesh" in r]
    assert len(runs) == 2 and all(r["collective_bytes"].get("all-reduce", 0) > 0 for r in runs)
  # NanoAdam with one set of slots per shard communicates scalars only (checked per collective
  # in the script); the whole-matrix slots all-reduce the selected gradient entries.
  for name, most in (("nanoadam_chunks", 64), ("nanoadam", None)):
    runs = [r for r in rows if r.get("check") == name and "mesh" in r]
    total = [sum(r["collective_bytes"].values()) for r in runs]
    assert len(runs) == 2 and all(t <= most if most else t > 1000 for t in total), total
