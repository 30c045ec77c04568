"""Sphinx configuration of the optax_sparse documentation.

Two pages are completed at build time by ``source-read`` hooks, so that they never go stale:

* ``api``: one autodoc directive per public name, read from the ``__all__`` of
  ``optax_sparse`` and of each subpackage;
* ``benchmarks``: one myst ``{include}`` per ``docs/benchmarks/*.md`` fragment (written by the
  scripts in ``benchmarks/``), in name order.

Build: ``sphinx-build -W -b html docs docs/_build/html`` (warnings are errors in CI).
"""

from __future__ import annotations

import inspect
import pathlib
import re
import sys

DOCS = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS.parent))

import optax_sparse  # noqa: E402

project = "optax_sparse"
author = "optax_sparse authors"
copyright = "2026, optax_sparse authors"  # noqa: A001
release = optax_sparse.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "benchmarks/*.md", "benchmarks/**/*.md"]
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # benchmark fragments may start at any heading level

napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True

html_theme = "alabaster"
html_static_path: list[str] = []
html_title = f"optax_sparse {release}"

# Modules documented on the API page, with their section titles; each contributes its __all__.
API_SECTIONS = [
    ("optax_sparse.compose", "Composition"),
    ("optax_sparse.geometry", "Geometries"),
    ("optax_sparse.masks", "Masks and sparse training"),
    ("optax_sparse.methods", "Methods"),
    ("optax_sparse.kernels", "Kernels"),
]


def _directives(module_name: str, seen: set[int]) -> list[str]:
  """Autodoc directives for the public names of a module not documented yet.

  Functions and classes come first; a public submodule (``potentials``) is documented last with
  the members of its own ``__all__`` that no earlier directive covered.
  """
  import importlib

  module = importlib.import_module(module_name)
  objects = [(n, getattr(module, n)) for n in getattr(module, "__all__", [])]
  out = []
  for name, obj in objects:
    if inspect.ismodule(obj) or id(obj) in seen:
      continue
    seen.add(id(obj))
    kind = "autoclass" if inspect.isclass(obj) else "autofunction" if callable(obj) else "autodata"
    out.append(f".. {kind}:: {module_name}.{name}\n")
  for _, obj in objects:
    if not inspect.ismodule(obj) or not obj.__name__.startswith(module_name + "."):
      continue
    members = [m for m in getattr(obj, "__all__", []) if id(getattr(obj, m)) not in seen]
    seen.update(id(getattr(obj, m)) for m in members)
    out.append(f".. automodule:: {obj.__name__}\n   :no-index:\n" if not members else
               f".. automodule:: {obj.__name__}\n   :members: {', '.join(members)}\n")
  return out


def api_source() -> str:
  """Markdown with one autodoc directive per public name of each documented module."""
  seen: set[int] = set()
  parts = []
  for module_name, title in API_SECTIONS:
    directives = _directives(module_name, seen)
    if directives:
      body = "\n".join(directives)
      parts.append(f"\n## {title}\n\n```{{eval-rst}}\n{body}```\n")
  return "".join(parts)


def benchmarks_source() -> str:
  """Markdown that includes every benchmark fragment of ``docs/benchmarks/``."""
  fragments = sorted((DOCS / "benchmarks").glob("*.md"))
  if not fragments:
    return "\nNo benchmark has been run yet: the scripts in `benchmarks/` write their tables.\n"
  return "".join(
      f"\n```{{include}} benchmarks/{path.name}\n:relative-images:\n```\n" for path in fragments
  )



_LITERAL = re.compile(r"(``.*?``|:math:`[^`]*`|`[^`]*`_?)")


def _escape_bars(text: str) -> str:
  """Writes ``|`` as ``∣`` (U+2223) outside inline literals and roles.

  The replacement has the same width, so the columns of simple tables stay aligned.
  """
  parts = _LITERAL.split(text)
  return "".join(p if i % 2 else p.replace("|", "\u2223") for i, p in enumerate(parts))


def _plain_text_maths(app, what, name, obj, options, lines: list[str]) -> None:
  """Lets docstrings write absolute values as ``|θ|`` in prose.

  reStructuredText reads ``|name|`` as a substitution reference, so prose maths such as
  "drop the smallest |θ|" would be an error. Bars become the divides sign ``∣``, which looks the
  same, outside ``.. math::`` blocks, doctest blocks, literal blocks and inline literals/roles;
  maths blocks keep them. Grid tables (rows starting with ``|`` or ``+``) are left alone.
  """
  block_indent = None  # indentation of the directive or literal block being skipped
  in_doctest = False
  for i, line in enumerate(lines):
    stripped = line.lstrip()
    indent = len(line) - len(stripped)
    if block_indent is not None:
      if not stripped or indent > block_indent:
        continue
      block_indent = None
    if in_doctest:
      if stripped:
        continue
      in_doctest = False
    if stripped.startswith(">>>"):
      in_doctest = True
      continue
    if stripped.startswith(".. ") or stripped.endswith("::"):
      block_indent = indent
      if stripped.startswith(".. math::"):
        continue
    if stripped.startswith(("|", "+")):
      continue
    lines[i] = _escape_bars(line)


def _complete_generated_pages(app, docname: str, source: list[str]) -> None:
  if docname == "api":
    source[0] += api_source()
  elif docname == "benchmarks":
    source[0] += benchmarks_source()


def setup(app) -> dict:
  app.connect("source-read", _complete_generated_pages)
  app.connect("autodoc-process-docstring", _plain_text_maths)
  return {"parallel_read_safe": True}
