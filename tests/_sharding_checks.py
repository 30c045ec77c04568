"""Every transformation on 8 simulated CPU devices against one device (run by test_sharding.py).

Run as a script (``python tests/_sharding_checks.py``): it sets ``XLA_FLAGS`` before importing
JAX, so it must be its own process. For each transformation and each mesh (a 1-D FSDP mesh and a
2x4 ``("data", "model")`` mesh) it

* initializes under ``jax.jit`` with ``out_shardings=osp.state_shardings(tx, params)`` and
  checks that every per-parameter state leaf is sharded like its parameter;
* runs the same gradients through the sharded step and through a one-device step and checks
  that masks (and NanoAdam's index slots) are bit-identical, pruned parameters exactly 0, and
  parameters equal within ``RTOL`` / ``ATOL`` (reductions such as norms are summed in another
  order on a mesh; elementwise maths is the same);
* reads the collectives of the compiled step from its HLO and checks that no all-gather (or
  all-to-all) produces an array with as many entries as a parameter shard.

It prints one JSON line per check and exits non-zero on the first failure.
"""

from __future__ import annotations

import os
import sys

if "jax" in sys.modules:
  raise RuntimeError("run _sharding_checks.py as its own process (XLA_FLAGS must come first).")
# The LLVM optimization level of XLA CPU's code generation only (the SPMD partitioning and every
# HLO pass are unchanged): it halves the compile time of these many small programs.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "")
    + " --xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import optax_sparse as osp  # noqa: E402

STEPS = 4
# Parameters after STEPS steps agree to this tolerance (see docs/sharding.md).
RTOL, ATOL = 1e-5, 1e-6

SHAPES = {"l0": (32, 64), "l1": (64, 16)}


def make_params() -> dict:
  rng = np.random.default_rng(0)
  params = {}
  for name, (a, b) in SHAPES.items():
    w = rng.normal(0, 0.3, (a, b)).astype(np.float32)
    if name == "l0":
      # Exact zeros: the masks of fixed_mask / keep_mask, and ties at the magnitude threshold.
      w[::4] = 0.0
    params[name] = {"w": jnp.asarray(w), "b": jnp.asarray(rng.normal(0, 0.1, (b,)), jnp.float32)}
  return params


def make_grads(params: dict) -> list:
  rng = np.random.default_rng(1)
  out = []
  for t in range(STEPS):
    g = jax.tree.map(lambda p: rng.normal(0, 1, p.shape).astype(np.float32), params)
    # Some exact zeros, so that growth meets ties.
    g["l1"]["w"][:, : 4 + t] = 0.0
    out.append(jax.tree.map(jnp.asarray, g))
  return out


def meshes() -> dict:
  devices = np.array(jax.devices())
  fsdp = Mesh(devices, ("fsdp",))
  tp = Mesh(devices.reshape(2, 4), ("data", "model"))
  return {
      "fsdp": (fsdp, {"l0": P("fsdp", None), "l1": P(None, "fsdp"), "b": P("fsdp")}),
      "2x4": (tp, {"l0": P(None, "model"), "l1": P("model", "data"), "b": P("model")}),
  }


def param_shardings(mesh: Mesh, specs: dict, params: dict) -> dict:
  return {name: {"w": NamedSharding(mesh, specs[name]), "b": NamedSharding(mesh, specs["b"])}
          for name in params}


def transforms() -> dict:
  """One entry per transformation family (small settings, mask updates inside STEPS)."""
  lr = 1e-2
  return {
      # Dynamic sparse training: gradient growth with tie-break noise, random regrowth.
      "rigl+ham": osp.sparse(osp.ham(optax.adamw(lr), learning_rate=lr), osp.rigl(every=2),
                             0.75, osp.erk()),
      "set": osp.sparse(optax.adam(lr), osp.set_(every=2), 0.75),
      # Layer magnitude with a schedule, on whole blocks; constant fan-in (within groups).
      "gradual+blocks": osp.sparse(
          optax.sgd(lr, momentum=0.9),
          osp.gradual_magnitude(begin_step=0, end_step=2, frequency=1,
                                groups=osp.groups.blocks((4, 4))), 0.8),
      # Global selections (one threshold over all leaves) and iterative pruning with rewind.
      "acdc": osp.sparse(optax.adam(lr), osp.acdc(warmup_steps=1, sparse_steps=2, dense_steps=1,
                                                   alternate_until=4, final_sparse_from=5), 0.6),
      "imp": osp.sparse(optax.sgd(lr), osp.imp(train_steps=2, rounds=2), 0.5),
      "static_random": osp.sparse(optax.adam(lr), osp.static_random(), 0.5, osp.er(), seed=3),
      "iterative_nm": osp.sparse(optax.adam(lr),
                                 osp.iterative_nm(2, 4, begin_step=0, end_step=2, frequency=1),
                                 None),
      "sr_ste": osp.sr_ste(optax.adam(lr), 2, 4),
      "nanoadam": osp.nanoadam(lr, 0.25, refresh_every=2),
      # One set of compressed slots per shard (chunks = the mesh's tiles of each parameter):
      # built per mesh, and the one-device reference uses the same chunks.
      "nanoadam_chunks": lambda shardings: osp.nanoadam(
          lr, 0.25, refresh_every=2, chunks=osp.shard_grid(shardings)),
      "pilot": osp.pilot(lr, steps_per_epoch=2, total_epochs=3),
      "sign_in": osp.sign_in(optax.sgd(lr, momentum=0.9), reset_every=3),
      # SparseOpt reads the masks (here those of the parameters' zeros: no selection to compile).
      "sparseopt": osp.sparse(optax.chain(osp.sparseopt(), optax.sgd(lr)), osp.fixed_mask(),
                              None),
      # Within groups (constant fan-in: per-row selections by row reductions); whole output
      # neurons selected globally.
      "rigl+fan_in": osp.sparse(optax.adam(lr), osp.rigl(every=2, groups=osp.groups.fan_in()),
                                0.75),
      "global+neurons": osp.sparse(optax.adam(lr),
                                   osp.global_magnitude(groups=osp.groups.neurons()), 0.5),
      # Masks recomputed every step (straight-through estimators), balanced distribution.
      "magnitude_ste": osp.magnitude_ste(optax.adam(lr), 0.75, osp.balanced()),
      "random_ste": osp.random_ste(optax.adam(lr), 0.75, seed=2),
      # Masks given by the parameters' zeros; the N:M rule; the Wanda rule (per-column top-k by
      # column reductions, pruning at a later step; norms with ties).
      "fixed_mask": osp.sparse(optax.adam(lr), osp.fixed_mask(), None),
      "keep_mask": osp.keep_mask(optax.adam(lr), compact_state=False),
      "nm": osp.sparse(optax.adam(lr), osp.nm(2, 4), None),
      "wanda": osp.sparse(optax.adam(lr), osp.wanda(
          {name: {"w": jnp.asarray(np.round(np.linspace(0.5, 2.0, a), 1), jnp.float32),
                  "b": None} for name, (a, _) in SHAPES.items()}, at_step=2), 0.5),
      "geometry": osp.compose(
          optax.adamw(lr),
          osp.mirror_descent(lr, osp.potentials.hyperbolic_entropy(0.1)),
          osp.steepest_descent(lr, 1.0)),
      "geometry2": osp.compose(
          osp.adamw_paper(lr), osp.hyperbolic_step(lr, alpha=5.0),
          osp.decoupled_weight_decay(osp.decay_switch_off(1e-2, off_step=2))),
      "pilot_mirror": osp.pilot_mirror(lr, steps_per_epoch=2, total_epochs=3),
  }


def _arrays(tree):
  return [x for x in jax.tree.leaves(tree) if hasattr(x, "shape")]


def exact_leaves(state) -> list:
  """Integer and bool leaves of a state (masks, indices, counts): must be bit-identical."""
  return [np.asarray(x) for x in _arrays(state)
          if not jnp.issubdtype(x.dtype, jnp.floating)]


def run(tx, params, grads, shardings=None):
  """STEPS steps of update + apply_updates; returns (params, state, compiled text or None)."""

  def train_step(g, state, p):
    updates, state = tx.update(g, state, p)
    return optax.apply_updates(p, updates), state

  if shardings is None:
    state = jax.jit(tx.init)(params)
    step, text = jax.jit(train_step), None
  else:
    params = jax.device_put(params, shardings)
    state_sh = osp.state_shardings(tx, params)
    state = jax.jit(tx.init, out_shardings=state_sh)(params)
    check_state_shardings(state, params, state_sh)
    grads = [jax.device_put(g, shardings) for g in grads]
    step = jax.jit(train_step, out_shardings=(shardings, state_sh)).lower(
        grads[0], state, params).compile()
    text = step.as_text()
  for g in grads:
    params, state = step(g, state, params)
  return params, state, text


def check_state_shardings(state, params, state_sh) -> None:
  flat_p = [(p.shape, p.sharding) for p in jax.tree.leaves(params)]
  for leaf, want in zip(jax.tree.leaves(state), jax.tree.leaves(state_sh), strict=True):
    if not leaf.sharding.is_equivalent_to(want, leaf.ndim):
      raise AssertionError(f"state leaf {leaf.shape} has {leaf.sharding}, expected {want}")
    for shape, sharding in flat_p:
      if leaf.shape == shape and leaf.ndim >= 2 and want == sharding:
        break
    else:
      if leaf.ndim >= 2 and any(leaf.shape == s for s, _ in flat_p):
        raise AssertionError(f"a parameter-shaped state leaf {leaf.shape} is not sharded")


def check_tiled_slots(state, shardings) -> None:
  """NanoAdam's per-shard slots ``(*grid, k)`` are sharded like their parameter on the grid."""
  for name, sh in shardings.items():
    mom = state.moments[name]["w"]
    for leaf in (mom.indices, mom.mu, mom.nu):
      want = NamedSharding(sh["w"].mesh, P(*sh["w"].spec, None))
      if leaf.ndim != 3 or not leaf.sharding.is_equivalent_to(want, 3):
        raise AssertionError(f"{name}: slots {leaf.shape} have {leaf.sharding}, expected {want}")


def check_collectives(text: str, params, shardings, scalars_only: bool = False) -> dict:
  """No all-gather / all-to-all as large as a parameter shard; returns bytes per kind.

  With ``scalars_only``, every collective must be a reduction of a few scalars."""
  shard_sizes = [int(np.prod(s.shard_shape(p.shape)))
                 for p, s in zip(jax.tree.leaves(params), jax.tree.leaves(shardings), strict=True)
                 if p.ndim >= 2]
  limit = min(shard_sizes)
  totals: dict[str, int] = {}
  for c in osp.collectives(text):
    totals[c.kind] = totals.get(c.kind, 0) + c.nbytes
    entries = max(int(np.prod([int(d) for d in s[s.index("[") + 1:-1].split(",") if d]))
                  for s in c.shapes)
    if scalars_only and (c.kind != "all-reduce" or entries > 1):
      raise AssertionError(f"{c.kind} of {c.shapes} where only scalars may move: {c.line[:300]}")
    if c.kind in ("all-gather", "all-to-all"):
      if entries >= limit:
        raise AssertionError(f"{c.kind} of {c.shapes} (limit {limit} entries): {c.line[:300]}")
  return totals


def compare(name, mesh_name, ref, got) -> dict:
  (p_ref, s_ref), (p_got, s_got) = ref, got
  ex_ref, ex_got = exact_leaves(s_ref), exact_leaves(s_got)
  assert len(ex_ref) == len(ex_got)
  for a, b in zip(ex_ref, ex_got, strict=True):
    if not np.array_equal(a, b):
      raise AssertionError(f"{name} on {mesh_name}: an integer/bool state leaf differs")
  worst = 0.0
  for a, b in zip(jax.tree.leaves(p_ref), jax.tree.leaves(p_got), strict=True):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(b, a, rtol=RTOL, atol=ATOL, err_msg=f"{name} on {mesh_name}")
    np.testing.assert_array_equal(b == 0, a == 0, err_msg=f"{name} on {mesh_name}: zeros")
    worst = max(worst, float(np.max(np.abs(a - b) / (np.abs(a) + ATOL))))
  masks = [m for m in jax.tree.leaves(_masks(s_got)) if m is not None]
  return {"max_rel_diff": worst, "masks": len(masks)}


def _masks(state):
  try:
    return osp.get_masks(state)
  except ValueError:
    return None


def main(selected: list[str]) -> int:
  keep_going = "--keep-going" in selected
  selected = [s for s in selected if not s.startswith("--")]
  failures = 0
  params = make_params()
  grads = make_grads(params)
  mesh_defs = meshes()
  txs = transforms()
  for name, tx in txs.items():
    if selected and name not in selected:
      continue
    t0, c0 = time.perf_counter(), time.process_time()
    per_mesh = callable(tx) and not hasattr(tx, "init")
    if not per_mesh:
      p_ref, s_ref, _ = run(tx, params, grads)
    for mesh_name, (mesh, specs) in mesh_defs.items():
      shardings = param_shardings(mesh, specs, params)
      try:
        if per_mesh:
          mesh_tx = tx(shardings)
          p_ref, s_ref, _ = run(mesh_tx, params, grads)
          p_got, s_got, text = run(mesh_tx, params, grads, shardings)
          check_tiled_slots(s_got, shardings)
        else:
          p_got, s_got, text = run(tx, params, grads, shardings)
        info = compare(name, mesh_name, (p_ref, s_ref), (p_got, s_got))
        info["collective_bytes"] = check_collectives(text, params, shardings,
                                                     scalars_only=per_mesh)
      except Exception as e:  # noqa: BLE001 - reported, and the exit status says it failed.
        if not keep_going:
          raise
        failures += 1
        info = {"error": f"{type(e).__name__}: {str(e)[:400]}"}
      print(json.dumps({"check": name, "mesh": mesh_name, **info}), flush=True)
    print(json.dumps({"check": name, "seconds": round(time.perf_counter() - t0, 2),
                      "cpu_seconds": round(time.process_time() - c0, 2)}), flush=True)
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
