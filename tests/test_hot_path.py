"""Structural properties of the hot path, read from the compiled HLO (no timing).

The bytes XLA's cost analysis assigns to a donated ``update`` + ``apply_updates`` step do not
depend on the machine's load; ``docs/benchmarks/step_overhead.md`` explains each figure.
"""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import optax_sparse as osp
from optax_sparse.masks import select

nanoadam_module = importlib.import_module("optax_sparse.methods.nanoadam")

REGION_ANALYSIS = {"xla_cpu_copy_insertion_use_region_analysis": True}


def _tree():
  rng = np.random.default_rng(0)
  return {
      "embed": jnp.asarray(rng.normal(size=(256, 64)) * 0.02, jnp.float32),
      "up": jnp.asarray(rng.normal(size=(64, 128)) * 0.02, jnp.float32),
      "bias": jnp.zeros((128,), jnp.float32),
  }


def _compiled(tx, options=None):
  params = _tree()
  grads = jax.tree.map(lambda x: jnp.sin(7.0 * x + 0.3) * 1e-2, params)

  def step(p, s, g):
    u, s = tx.update(g, s, p)
    return optax.apply_updates(p, u), s

  lowered = jax.jit(step, donate_argnums=(0, 1)).lower(params, tx.init(params), grads)
  return lowered.compile(options)


def _bytes(compiled):
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return cost["bytes accessed"]


def _copies(compiled):
  text = compiled.as_text()
  return text[text.index("ENTRY"):].count(" copy(")


@pytest.fixture(scope="module")
def adamw_bytes():
  return _bytes(_compiled(optax.adamw(1e-3, weight_decay=1e-4)))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA CPU pass structure")
@pytest.mark.parametrize("cap, max_ratio", [(1000.0, 1.75), (None, 1.35)])
def test_ham_bytes_against_adamw(adamw_bytes, cap, max_ratio):
  # Each 2-D leaf: two non-finite reductions (gradient, parameter) and one more gradient read
  # in the last fusion; with the cap the result is written, reduced and read once more. The
  # step must not check the leaves a second time (+0.6x adamw's bytes), and the guard's kept
  # state must be written in place (copies of the moments: +0.4x).
  tx = osp.ham(optax.adamw(1e-3, weight_decay=1e-4), 1e-3, max_weight_norm=cap)
  for options in (None, REGION_ANALYSIS):
    compiled = _compiled(tx, options)
    assert _copies(compiled) == 0
    assert _bytes(compiled) / adamw_bytes <= max_ratio


def test_flat_nonzero_matches_nonzero_indices():
  rng = np.random.default_rng(0)
  flat_nonzero = jax.jit(nanoadam_module._flat_nonzero, static_argnums=(1, 2))
  reference = jax.jit(select.nonzero_indices, static_argnums=(1, 2))
  for shape, size in [((7, 5), 20), ((3, 64), 192), ((5, 7), 3)]:
    for density in (0.0, 0.3, 1.0):
      mask = jnp.asarray(rng.random(shape) < density)
      n = mask.size
      np.testing.assert_array_equal(flat_nonzero(mask, size, n), reference(mask, size, n))


def test_one_device_refresh_matches_mesh_path(monkeypatch):
  # top_k / packed compaction on one device against the radix + shape-preserving compaction,
  # with many ties and subnormal magnitudes (which compare equal to 0 on XLA CPU).
  rng = np.random.default_rng(1)
  # k_max <= n/32 takes top_k, the others the radix selection and the packed compaction.
  for shape, k_max, k in [((40, 30), 20, 17), ((9, 11), 99, 60)]:
    w = rng.integers(0, 3, size=shape) * rng.choice([1.0, 1e-40, 0.5], size=shape)
    w = jnp.abs(jnp.asarray(w, jnp.float32))
    n = w.size
    mom = nanoadam_module.NanoAdamSubsetMoments(
        n + jnp.arange(k_max, dtype=jnp.int32), jnp.zeros(k_max), jnp.zeros(k_max),
        jnp.int32(0))
    # A fresh function per trace: the two paths must not share a jit cache entry.
    one = jax.jit(lambda *a: nanoadam_module._refresh(*a))(w, mom, jnp.int32(k))
    monkeypatch.setattr(nanoadam_module, "_one_device", lambda: False)
    mesh = jax.jit(lambda *a: nanoadam_module._refresh(*a))(w, mom, jnp.int32(k))
    monkeypatch.undo()
    np.testing.assert_array_equal(one.indices, mesh.indices)
    assert int(jnp.sum(one.indices < n)) == k
