"""Command line: ``python -m optax_sparse demo [--steps N] [--sparsity S] ...``."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

# Kept in sync with optax_sparse.demo.METHODS (a test checks it); defined here so that --help
# works without importing Flax.
DEMO_METHODS = ("dense", "rigl", "rigl_ham")


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
  """The command-line options of the demo."""
  parser.add_argument("--sparsity", type=float, default=0.9, help="target sparsity (default 0.9)")
  parser.add_argument("--steps", type=int, default=1500, help="training steps per method")
  parser.add_argument(
      "--methods",
      default=",".join(DEMO_METHODS),
      help=f"comma-separated subset of {','.join(DEMO_METHODS)} (default: all)",
  )
  parser.add_argument("--seed", type=int, default=0, help="model init and batch order seed")
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
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of ``python -m optax_sparse``."""
  args = build_parser().parse_args(argv)
  if args.command == "demo":
    from optax_sparse import demo

    demo.main(args)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
