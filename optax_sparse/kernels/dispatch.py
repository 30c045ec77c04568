"""Backend dispatch and block layout shared by the Pallas kernels.

Every kernel in this package has a pure-``jnp`` twin with identical semantics. The public
functions take ``backend: str = "auto"``, resolved here:

* ``"auto"``: the Pallas kernel on GPU and TPU (``jax.default_backend()``), the jnp twin on CPU.
* ``"xla"``: always the jnp twin (XLA fuses it inside the caller's ``jit``).
* ``"pallas"``: always the Pallas kernel; on CPU it runs with ``interpret=True`` (slow: a
  correctness path, not a performance path).

Block layout (library decision): each array is flattened and reshaped to ``(rows, 128)`` (the
lane width of a TPU vreg and a multiple of a GPU warp), padding the flat tail up to a multiple
of 128 when needed. The grid walks row blocks of ``ROW_UNIT * c`` rows with ``ROW_UNIT = 32``:
a multiple of the (8, 128) f32 tile, the (16, 128) bf16 tile and the (32, 128) int8 tile that a
mask needs on TPU, and a power of two for the Triton lowering on GPU. The last row block may be
partial; elementwise kernels let Pallas discard its out-of-bounds writes, reductions mask it by
the flat index (interpret mode fills out-of-bounds reads of floats with NaN, which must never
reach a count).

On GPU the kernels request the Triton lowering (``jax.experimental.pallas.triton``): it handles
the generic ``jnp`` bodies used here (elementwise maths, reductions, ``fori_loop``), while
``pl.pallas_call`` on Mosaic GPU is deprecated in favour of ``plgpu.kernel``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

LANES = 128
ROW_UNIT = 32
MAX_ROW_BLOCK = 256

_BACKENDS = ("auto", "xla", "pallas")
_ACCELERATORS = ("gpu", "cuda", "rocm", "tpu")


def platform() -> str:
  """The platform kernels are built for (``jax.default_backend()``; tests may patch it)."""
  return jax.default_backend()


def resolve_backend(backend: str, *, name: str = "backend") -> str:
  """Resolves ``backend`` to ``"xla"`` (jnp twin) or ``"pallas"``.

  Args:
    backend: ``"auto"`` (Pallas on GPU/TPU, jnp twin on CPU), ``"xla"`` or ``"pallas"``.
    name: the argument name used in the error message.

  Returns:
    ``"xla"`` or ``"pallas"``.

  Raises:
    ValueError: naming the argument and the value for anything else.

  Examples:
    >>> from optax_sparse import kernels
    >>> kernels.resolve_backend("xla")
    'xla'
  """
  if not isinstance(backend, str) or backend not in _BACKENDS:
    raise ValueError(f"{name} must be one of {_BACKENDS}, got {backend!r}.")
  if backend == "auto":
    return "pallas" if platform() in _ACCELERATORS else "xla"
  return backend


def resolve_interpret(interpret: bool | None) -> bool:
  """Interpret mode unless a GPU or TPU lowering exists; ``interpret`` overrides."""
  if interpret is not None:
    return bool(interpret)
  return platform() not in _ACCELERATORS


def compiler_params(interpret: bool):
  """Backend-specific ``compiler_params`` (None in interpret mode or when unknown)."""
  if interpret:
    return None
  target = platform()
  if target == "tpu":
    from jax.experimental.pallas import tpu as pltpu

    params_cls = getattr(pltpu, "CompilerParams", None) or pltpu.TPUCompilerParams
    return params_cls(dimension_semantics=("parallel",))
  if target in ("gpu", "cuda", "rocm"):
    from jax.experimental.pallas import triton as pltriton

    params_cls = getattr(pltriton, "CompilerParams", None) or pltriton.TritonCompilerParams
    return params_cls(num_warps=4, num_stages=1)
  return None


def scalar_spec(interpret: bool):
  """BlockSpec of the (1, LANES) operand holding the kernel's scalars (read as ``ref[0, j]``).

  On TPU the block lives in SMEM, where scalar reads are allowed; elsewhere it is an ordinary
  block (Triton loads a scalar through a pointer; interpret mode indexes an array).
  """
  memory_space = None
  if not interpret and platform() == "tpu":
    from jax.experimental.pallas import tpu as pltpu

    memory_space = pltpu.SMEM
  if memory_space is None:
    return pl.BlockSpec((1, LANES), lambda i: (0, 0))
  return pl.BlockSpec((1, LANES), lambda i: (0, 0), memory_space=memory_space)


def pack_scalars(*values, dtype=jnp.float32) -> jax.Array:
  """Packs scalars (Python numbers or 0-d arrays, possibly traced) into a (1, LANES) array."""
  flat = jnp.stack([jnp.asarray(v).astype(dtype).reshape(()) for v in values])
  return jnp.pad(flat, (0, LANES - len(values))).reshape(1, LANES)


def row_block(rows: int) -> int:
  """Rows per grid step: ``ROW_UNIT * c`` (c a power of two), at most ``MAX_ROW_BLOCK``."""
  block = ROW_UNIT
  while block < rows and block < MAX_ROW_BLOCK:
    block *= 2
  return block


def to_rows(x: jax.Array, fill=0) -> jax.Array:
  """Flattens ``x`` to ``(rows, LANES)``, padding the flat tail with ``fill`` when needed.

  When ``x.size`` is a multiple of ``LANES`` this is a free reshape (no copy), so a donated
  buffer can be updated in place by an aliased kernel output.
  """
  flat = jnp.ravel(x)
  rows = max(1, math.ceil(flat.size / LANES))
  pad = rows * LANES - flat.size
  if pad:
    flat = jnp.concatenate([flat, jnp.full((pad,), fill, flat.dtype)])
  return flat.reshape(rows, LANES)


def from_rows(y: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Inverse of :func:`to_rows`: drops the padded tail and restores ``shape``."""
  size = math.prod(shape)
  flat = y.reshape(-1)
  if flat.size != size:
    flat = flat[:size]
  return flat.reshape(shape)
