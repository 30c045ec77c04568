"""Command line: ``python -m optax_sparse demo [--steps N] ...`` and ``... report <checkpoint>``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

# Kept in sync with optax_sparse.demo.METHODS (a test checks it); defined here so that --help
# works without importing Flax.
DEMO_METHODS = ("dense", "rigl", "rigl_ham")


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
  """The command-line options of the demo."""
  parser.add_argument("--sparsity", type=float, default=0.9, help="target sparsity (default 0.9)")
  parser.add_argument("--steps", type=int, default=1000, help="training steps per run")
  parser.add_argument(
      "--methods",
      default=",".join(DEMO_METHODS),
      help=f"comma-separated subset of {','.join(DEMO_METHODS)} (default: all)",
  )
  parser.add_argument("--seed", type=int, default=0, help="model init and batch order seed")
  parser.add_argument(
      "--seeds", type=int, default=1,
      help="seeds per method at its chosen learning rate (mean +- std when > 1; default 1)")
  parser.add_argument(
      "--lrs", default="0.003,0.01,0.03",
      help="learning rates swept per method, chosen on a validation split (default "
           "0.003,0.01,0.03)")
  parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
  parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


def build_parser() -> argparse.ArgumentParser:
  """The argument parser with its subcommands."""
  parser = argparse.ArgumentParser(
      prog="python -m optax_sparse",
      description="optax_sparse: sparse training as optax transformations.",
  )
  sub = parser.add_subparsers(dest="command", required=True)
  demo = sub.add_parser(
      "demo",
      help="train a small CNN on scikit-learn digits: dense AdamW, RigL, RigL + HAM",
      description=(
          "Trains a Flax NNX CNN on scikit-learn's bundled digits with dense AdamW, RigL at the "
          "target ERK sparsity and RigL with HAM; prints a table and writes a PNG. Needs the "
          "'examples' extra (flax, scikit-learn, matplotlib, tqdm)."
      ),
  )
  add_demo_arguments(demo)
  report = sub.add_parser(
      "report",
      help="print the sparsity report of an Orbax checkpoint",
      description=(
          "Prints the per-leaf sparsity report of a checkpoint: a folder written by "
          "optax_sparse.save_compressed, or an Orbax checkpoint of (params, opt_state) as "
          "examples/checkpointing.py saves it (the masks are read from the state when present)."
      ),
  )
  add_report_arguments(report)
  return parser


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
  """The command-line options of ``report``."""
  parser.add_argument("checkpoint", help="the checkpoint folder")
  parser.add_argument("--nm", default=None, help="check N:M conformity, e.g. 2:4")
  parser.add_argument(
      "--previous", default=None, help="an earlier checkpoint to measure mask churn against")
  parser.add_argument(
      "--format", choices=("auto", "markdown", "rich", "json"), default="auto",
      help="auto (default): a Rich table on a terminal when Rich is installed, else markdown")


def _parse_nm(text: str | None) -> tuple[int, int] | None:
  if text is None:
    return None
  try:
    n, m = (int(v) for v in text.split(":"))
  except ValueError:
    raise ValueError(f"--nm must look like 2:4; got {text!r}.") from None
  return n, m


def load_checkpoint(path: str) -> tuple[object, object]:
  """The parameters and masks (or None) of a checkpoint folder, for the report.

  A folder of ``optax_sparse.save_compressed`` gives its parameters and masks; any other
  Orbax checkpoint is restored without a template: a pair or list ``(params, opt_state, ...)``
  (the ``masks`` field of the state, when there is one, gives the masks), a dict with
  ``params`` (and ``opt_state``) entries, or a tree of parameters.
  """
  import pathlib

  from optax_sparse import export

  folder = pathlib.Path(path)
  if not folder.is_dir():
    raise ValueError(f"checkpoint must be an existing folder; got {path!r}.")
  if export.is_compressed_checkpoint(folder):
    return export.load_compressed(folder)
  import orbax.checkpoint as ocp

  raw = ocp.StandardCheckpointer().restore(folder.absolute())
  if isinstance(raw, (list, tuple)) and raw:
    params, rest = raw[0], list(raw[1:])
  elif isinstance(raw, dict) and "params" in raw:
    params, rest = raw["params"], [raw.get("opt_state")]
  else:
    params, rest = raw, []
  return params, _unpack_raw_masks(_find_masks(rest), params)


def _unpack_raw_masks(masks: object, params: object) -> object:
  """Masks saved as bits (``sparse(..., packed_masks=True)``) as bool masks of the params' shapes.

  Restored without a template, a packed mask is a dict ``{"bits": uint8 array}``; the shape of
  its parameter gives the mask's shape back.
  """
  if masks is None:
    return None
  import jax

  from optax_sparse.masks.sparse import PackedMask

  def is_packed(x):
    return isinstance(x, dict) and set(x) == {"bits"}

  def unpack(m, p):
    if is_packed(m) and p is not None:
      return PackedMask(m["bits"], jax.numpy.shape(p)).unpack()
    return m

  try:
    return jax.tree.map(unpack, masks, params, is_leaf=lambda x: x is None or is_packed(x))
  except ValueError:
    return masks  # Not shaped like the parameters: the report says what it can.


def _find_masks(tree: object) -> object:
  """The first value under a key named ``masks`` in nested dicts and lists (None if none)."""
  if isinstance(tree, dict):
    if "masks" in tree:
      return tree["masks"]
    children = list(tree.values())
  elif isinstance(tree, (list, tuple)):
    children = list(tree)
  else:
    return None
  for child in children:
    found = _find_masks(child)
    if found is not None:
      return found
  return None


def report_main(args: argparse.Namespace) -> int:
  """Runs ``python -m optax_sparse report``."""
  import json
  import sys

  from optax_sparse import report as report_lib

  params, masks = load_checkpoint(args.checkpoint)
  previous = None
  if args.previous is not None:
    prev_params, prev_masks = load_checkpoint(args.previous)
    previous = prev_params if prev_masks is None else prev_masks
  report = report_lib.sparsity_report(
      params, masks=masks, previous=previous, nm=_parse_nm(args.nm))
  fmt = args.format
  if fmt == "json":
    print(json.dumps(report.to_dict(), indent=1))
  elif fmt == "markdown" or (fmt == "auto" and not sys.stdout.isatty()):
    report.print(use_rich=False)
  else:
    report.print(use_rich=True if fmt == "rich" else None)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of ``python -m optax_sparse``."""
  args = build_parser().parse_args(argv)
  if args.command == "demo":
    from optax_sparse import demo

    demo.main(args)
  elif args.command == "report":
    return report_main(args)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
