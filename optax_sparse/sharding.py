"""Sharding helpers: optimizer-state shardings that follow the parameters, collectives of a step.

Every transformation of the library is written for XLA's SPMD partitioner: under ``jax.jit``
with sharded parameters, the elementwise maths runs on each device's shard and the selections
of ``optax_sparse.masks.select`` reduce small histograms across devices instead of gathering
(see ``docs/sharding.md``). Two things are left to the user, and this module does them:

* :func:`state_shardings` gives the sharding of every leaf of ``tx.init(params)``: a leaf of a
  sub-tree shaped like the parameters (masks, moments, shadow weights, reparameterization
  factors, NanoAdam's compressed slots when they are chunked by the shards) gets the sharding
  of its parameter; any other leaf (counters, keys, schedules, NanoAdam's whole-matrix slots)
  is replicated over the parameters' mesh. Pass it as ``out_shardings`` of a jitted
  ``tx.init`` and as the state's sharding of the train step.
* :func:`shard_grid` gives each parameter's number of shards per axis, the ``chunks`` with
  which NanoAdam keeps one set of compressed slots per shard.
* :func:`collectives` reads the collective operations out of compiled HLO text
  (``jax.jit(f).lower(...).compile().as_text()``) with the bytes each one produces, which is how
  the tests check that no step gathers a parameter.
"""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

__all__ = ["Collective", "collectives", "shard_grid", "state_shardings"]


def _is_none(x: Any) -> bool:
  return x is None


def _mesh_of(shardings: list[Any]) -> Any:
  for s in shardings:
    if isinstance(s, NamedSharding):
      return s.mesh
  return None


def _ways(mesh: Any, axes: Any) -> int:
  """How many shards one entry of a ``PartitionSpec`` (None, a mesh axis, a tuple of axes) makes."""
  names = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
  sizes = dict(zip(mesh.axis_names, mesh.devices.shape, strict=True))
  return math.prod(sizes[a] for a in names)


def _along(shape: tuple[int, ...], p_shape: tuple[int, ...], sharding: Any, replicated: Any) -> Any:
  """A mask packed as bits along the last axis: the parameter's spec on every axis whose length
  the mesh axes still divide (the leading axes always), replicated on the others."""
  if not isinstance(sharding, NamedSharding) or len(shape) != len(p_shape) or not shape:
    return replicated
  spec = tuple(sharding.spec) + (None,) * (len(shape) - len(sharding.spec))
  out = []
  for n, axes in zip(shape, spec, strict=True):
    ways = _ways(sharding.mesh, axes)
    out.append(axes if ways and n % ways == 0 else None)
  if all(a is None for a in out):
    return replicated
  return NamedSharding(sharding.mesh, PartitionSpec(*out))


def state_shardings(tx: Any, params: Any) -> Any:
  """Shardings of ``tx.init(params)``: per-parameter leaves like their parameter, others replicated.

  A sub-tree of the state whose structure starts with that of ``params`` (``None`` allowed, as the
  masks of dense leaves; a sub-tree per parameter allowed, as NanoAdam's per-leaf moments) is
  per-parameter: its leaves with the shape of the matching parameter get that parameter's
  sharding; a mask packed as bits (uint8, ``ceil(n / 8)`` bytes along the last axis) keeps the
  parameter's partitioning on every axis whose length the mesh axes still divide; per-tile
  slots of shape ``(*grid, k)`` (NanoAdam with ``chunks``, ``grid`` dividing the parameter's
  shape axis by axis) keep the parameter's partitioning on the grid axes the mesh axes divide
  and are replicated along the last axis.
  Every other array leaf is replicated over the mesh of the parameters'
  ``NamedSharding`` (or gets the first parameter's sharding when none is a ``NamedSharding``).

  Args:
    tx: an ``optax.GradientTransformation``.
    params: the parameters: arrays, or ``jax.ShapeDtypeStruct`` with a ``sharding``.

  Returns:
    A pytree of shardings with the structure of ``tx.init(params)`` (``None`` stays ``None``).

  Raises:
    ValueError: when a parameter leaf carries no sharding.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> import optax_sparse as osp
    >>> params = {"w": jnp.ones((4, 4))}
    >>> tx = osp.sparse(optax.adam(1e-3), osp.rigl(every=10), sparsity=0.5)
    >>> shardings = osp.state_shardings(tx, params)
    >>> state = jax.jit(tx.init, out_shardings=shardings)(params)
    >>> osp.get_masks(state)["w"].sharding == params["w"].sharding
    True
  """
  p_leaves, p_def = jax.tree.flatten(params, is_leaf=_is_none)
  p_shardings = []
  for p in p_leaves:
    if p is None:
      p_shardings.append(None)
      continue
    sharding = getattr(p, "sharding", None)
    if sharding is None:
      raise ValueError(
          f"params must be arrays or ShapeDtypeStructs with a sharding; got a leaf {p!r}.")
    p_shardings.append(sharding)
  present = [s for s in p_shardings if s is not None]
  mesh = _mesh_of(present)
  if mesh is not None:
    replicated = NamedSharding(mesh, PartitionSpec())
  elif present:
    replicated = present[0]
  else:
    replicated = None
  p_shapes = [None if p is None else tuple(p.shape) for p in p_leaves]

  def params_like(x: Any) -> bool:
    # A node whose structure starts with the parameters' structure (each parameter position
    # may hold a sub-tree, e.g. NanoAdam's per-leaf moments).
    if x is None or (hasattr(x, "shape") and p_def.num_nodes > 1):
      return False
    try:
      p_def.flatten_up_to(x)
    except (ValueError, TypeError):
      return False
    return True

  def like(sub: Any, shape: Any, sharding: Any) -> Any:
    def leaf(v: Any) -> Any:
      if shape is None:
        return replicated
      if tuple(v.shape) == shape:
        return sharding
      packed = (v.ndim == len(shape) >= 1 and v.dtype == jnp.uint8
                and tuple(v.shape[:-1]) == shape[:-1] and v.shape[-1] == -(-shape[-1] // 8))
      if packed:
        return _along(v.shape, shape, sharding, replicated)
      tiled = (v.ndim == len(shape) + 1 >= 2
               and all(s % g == 0 for s, g in zip(shape, v.shape[:-1], strict=True)))
      if tiled:
        grid = _along(v.shape[:-1], shape, sharding, None)
        if grid is not None:
          return NamedSharding(grid.mesh, PartitionSpec(*grid.spec, None))
      return replicated

    return jax.tree.map(leaf, sub)

  def per_param(x: Any) -> Any:
    subs = p_def.flatten_up_to(x)
    return p_def.unflatten([
        None if v is None else like(v, shape, sharding)
        for v, shape, sharding in zip(subs, p_shapes, p_shardings, strict=True)])

  def visit(x: Any) -> Any:
    if params_like(x):
      return per_param(x)
    return None if x is None else replicated

  abstract = jax.eval_shape(tx.init, params)
  return jax.tree.map(visit, abstract, is_leaf=lambda x: x is None or params_like(x))


def shard_grid(shardings: Any):
  """Per-leaf tile grids of a pytree of shardings: NanoAdam ``chunks`` that are the shards.

  Passed as ``chunks`` of :func:`optax_sparse.nanoadam`, every tile is one device's shard.

  Args:
    shardings: a pytree of ``jax.sharding.NamedSharding`` with the structure of the parameters
      (leaves that are not ``NamedSharding`` are not chunked).

  Returns:
    A callable ``(path, leaf) -> tuple | None``: the number of shards of each axis of the
    leaf (``None`` for a replicated leaf or an unknown path).

  Examples:
    >>> import jax, numpy as np
    >>> from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    >>> import optax_sparse as osp
    >>> mesh = Mesh(np.array(jax.devices()[:1]), ("fsdp",))
    >>> grid = osp.shard_grid({"w": NamedSharding(mesh, P("fsdp", None))})
    >>> grid((jax.tree_util.DictKey("w"),), np.zeros((4, 4)))
    (1, 1)
  """
  flat, _ = jax.tree_util.tree_flatten_with_path(shardings)
  by_path = {jax.tree_util.keystr(path): s for path, s in flat}

  def grid(path: Any, leaf: Any) -> tuple[int, ...] | None:
    s = by_path.get(jax.tree_util.keystr(path))
    if not isinstance(s, NamedSharding):
      return None
    spec = tuple(s.spec) + (None,) * (leaf.ndim - len(s.spec))
    return tuple(_ways(s.mesh, axes) for axes in spec)

  return grid


class Collective(NamedTuple):
  """One collective operation of compiled HLO.

  Attributes:
    kind: ``"all-gather"``, ``"all-reduce"``, ``"reduce-scatter"``, ``"all-to-all"`` or
      ``"collective-permute"``.
    nbytes: the bytes of its result on one device (a tuple result: the sum of its parts).
    shapes: the result shapes as HLO writes them, e.g. ``("f32[512,64]",)``.
    line: the HLO instruction.
    branch_depth: how many ``conditional`` branches with a data-dependent branch index enclose
      the instruction: 0 when it runs on every execution of the program; 1 inside, e.g., the
      mask-update branch of ``sparse()`` (it runs on mask-update steps only); 2 inside a branch
      within that branch (the tie cut of a selection, which runs only when tied scores straddle
      the threshold).
  """

  kind: str
  nbytes: int
  shapes: tuple[str, ...]
  line: str
  branch_depth: int = 0


_KINDS = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute")
_OP = re.compile(r"=\s*(.*?)\s+(" + "|".join(_KINDS) + r")(?:-start)?\(")
_SHAPE = re.compile(r"\b([a-z]+[0-9]*)\[([0-9,]*)\]")
_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
          "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
_HEADER = re.compile(r"^(ENTRY\s+)?%?([^\s(]+)\s*\(.*\{\s*$")
_CALLS = re.compile(r"\b(?:to_apply|calls|condition)=%?([\w.\-]+)")
_BODY = re.compile(r"\bbody=%?([\w.\-]+)")
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"\}')
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_TRUE_FALSE = re.compile(r"\b(true|false)_computation=%?([\w.\-]+)")
_COND_OPERAND = re.compile(r"\sconditional\(%?([\w.\-]+)")
_CONSTANT = re.compile(r"^\s*%?([\w.\-]+)\s*=\s*(?:pred|s32|u32|s64)\[\]\S*\s+constant\((\w+)\)")


def _collective(line: str, depth: int) -> Collective | None:
  match = _OP.search(line)
  if match is None:
    return None
  shapes, nbytes = [], 0
  for dtype, dims in _SHAPE.findall(match.group(1)):
    if dtype not in _BYTES:
      continue
    size = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
    shapes.append(f"{dtype}[{dims}]")
    nbytes += size * _BYTES[dtype]
  return Collective(match.group(2), int(nbytes), tuple(shapes), line.strip(), depth)


def _computations(hlo_text: str) -> tuple[dict[str, list[str]], str | None]:
  comps: dict[str, list[str]] = {}
  entry = None
  current = None
  for line in hlo_text.splitlines():
    if current is None:
      match = _HEADER.match(line)
      if match is not None:
        current = match.group(2)
        comps[current] = []
        if match.group(1):
          entry = current
      continue
    if line.strip() == "}":
      current = None
      continue
    comps[current].append(line)
  return comps, entry


def _branch_list(line: str) -> list[str] | None:
  """The ``branch_computations`` of a conditional, in index order (None in the true/false form)."""
  branches = _BRANCHES.search(line)
  if branches is None:
    return None
  return [b.strip().lstrip("%") for b in branches.group(1).split(",") if b.strip()]


def _taken_branch(line: str, constants: dict[str, str]) -> str | None:
  """The branch a conditional takes when its index is a constant of its computation."""
  operand = _COND_OPERAND.search(line)
  value = constants.get(operand.group(1)) if operand else None
  if value is None:
    return None
  names = _branch_list(line)
  if names is not None:
    index = 1 if value == "true" else 0 if value == "false" else int(value)
    return names[index] if 0 <= index < len(names) else names[-1]
  pair = dict(_TRUE_FALSE.findall(line))
  return pair.get("true" if value in ("true", "1") else "false")


def collectives(hlo_text: str) -> list[Collective]:
  """The collective operations in compiled HLO text, with the bytes of each result.

  The program is walked from its ``ENTRY`` computation through the computations it calls, so
  a collective is listed once per call site, and once per iteration in the body of a ``while``
  loop with a known trip count (once when the count is unknown). A ``conditional`` whose
  branch index is a compile-time constant (a step compiled with a fixed count, for instance)
  contributes only the branch it takes; the collectives in the branches of any other
  ``conditional`` are listed with their ``branch_depth`` (the nesting of such branches) raised
  by one. Asynchronous pairs (``all-gather-start`` / ``-done``) are counted once, at their
  start. Text without an ``ENTRY`` computation (a fragment) is read line by line.

  Args:
    hlo_text: ``jax.jit(f).lower(*args).compile().as_text()``.

  Returns:
    A list of :class:`Collective`, in program order.

  Examples:
    >>> import optax_sparse as osp
    >>> line = "%ag = f32[8,4]{1,0} all-gather(f32[2,4]{1,0} %p), dimensions={0}"
    >>> [(c.kind, c.nbytes) for c in osp.collectives(line)]
    [('all-gather', 128)]
  """
  comps, entry = _computations(hlo_text)
  if entry is None:
    found = (_collective(line, 0) for line in hlo_text.splitlines())
    return [c for c in found if c is not None]
  out: list[Collective] = []

  def visit(name: str, branch_depth: int, depth: int) -> None:
    lines = comps.get(name)
    if lines is None or depth > 64:
      return
    constants = {}
    for line in lines:
      match = _CONSTANT.match(line)
      if match is not None:
        constants[match.group(1)] = match.group(2)
    for line in lines:
      found = _collective(line, branch_depth)
      if found is not None:
        out.append(found)
      if " conditional(" in line:
        taken = _taken_branch(line, constants)
        if taken is not None:
          visit(taken, branch_depth, depth + 1)
        else:
          names = _branch_list(line)
          if names is None:
            names = [n for _, n in _TRUE_FALSE.findall(line)]
          for branch in names:
            visit(branch, branch_depth + 1, depth + 1)
      for callee in _CALLS.findall(line):
        visit(callee, branch_depth, depth + 1)
      body = _BODY.search(line)
      if body is not None:
        trips = _TRIPS.search(line)
        for _ in range(min(int(trips.group(1)), 4096) if trips else 1):
          visit(body.group(1), branch_depth, depth + 1)

  visit(entry, 0, 0)
  return out
