"""Sphinx configuration of the optax_sparse documentation.

Two pages are completed at build time by ``source-read`` hooks, so that they never go stale:

* ``api``: for each public subpackage, its docstring, then one section per module that defines
  public names (the module's docstring, then one autodoc directive per name), read from the
  ``__all__`` of ``optax_sparse`` and of each subpackage;
* ``benchmarks``: one myst ``{include}`` per ``docs/benchmarks/*.md`` fragment (written by the
  scripts in ``benchmarks/``), in name order. The fragments are not pages of their own.

The site works offline: MathJax is served from ``_static/mathjax`` (the ``sphinx-mathjax-offline``
package of the ``docs`` extra), and the inventories of the projects we link to (Python, NumPy,
JAX, optax, Flax) are used only when they can be downloaded when the build starts; a reference
to one of those projects that cannot be resolved is rendered as plain code, never as a warning.
References to ``optax_sparse`` itself must resolve.

Build (as CI runs it, nitpicky, warnings are errors)::

    sphinx-build -n -W -b html docs docs/_build/html

``OPTAX_SPARSE_DOCS_OFFLINE=1`` skips the inventory download.
"""

from __future__ import annotations

import builtins
import importlib
import inspect
import os
import pathlib
import re
import sys
import urllib.request

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
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    "sphinx-mathjax-offline",  # MathJax 3 in _static/mathjax: maths render without network
]
source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
# Benchmark fragments are included by benchmarks.md, never built as pages of their own.
exclude_patterns = ["_build", "benchmarks/*.md", "benchmarks/**/*.md", "reproductions/*.md"]
myst_enable_extensions = ["dollarmath", "amsmath", "substitution"]
myst_heading_anchors = 3
suppress_warnings = ["myst.header"]  # benchmark fragments may start at any heading level

# The demo's measured runtime is one figure, quoted alike in README.md, index.md, examples.md
# and the demo's docstring (tests/test_docs_refs.py checks that they agree).

nitpicky = True
napoleon_google_docstring = True
napoleon_numpy_docstring = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_typehints_format = "short"
python_use_unqualified_type_names = True
# Annotations are strings (``from __future__ import annotations``): the names below are shown
# as written instead of being expanded into their definitions (``optax.ScalarOrSchedule`` is a
# union of several hundred characters).
autodoc_type_aliases = {
    name: name
    for name in (
        "optax.ScalarOrSchedule", "optax.Schedule", "optax.Params", "optax.Updates",
        "optax.OptState", "optax.GradientTransformation", "optax.GradientTransformationExtraArgs",
        "chex.Array", "chex.Numeric", "chex.PRNGKey", "jax.typing.ArrayLike", "ArrayLike",
        "_eligibility.Where", "Where", "PyTree",
    )
}

html_theme = "alabaster"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
html_title = f"optax_sparse {release}"
html_theme_options = {"page_width": "1180px", "sidebar_width": "230px"}

# --- intersphinx: only with inventories that could be downloaded now --------------------------

_INVENTORIES = {
    "python": "https://docs.python.org/3",
    "numpy": "https://numpy.org/doc/stable",
    "jax": "https://docs.jax.dev/en/latest",
    "optax": "https://optax.readthedocs.io/en/latest",
    "flax": "https://flax.readthedocs.io/en/latest",
}


def _download_inventories() -> dict[str, tuple[str, str]]:
  """``intersphinx_mapping`` with a local file per inventory that could be downloaded.

  Each inventory is fetched once here with a short timeout; a project whose inventory cannot be
  fetched (no network) is left out, so that intersphinx never tries the network itself and never
  warns.
  """
  if os.environ.get("OPTAX_SPARSE_DOCS_OFFLINE"):
    return {}
  cache = DOCS / "_build" / "inventories"
  mapping = {}
  for name, url in _INVENTORIES.items():
    path = cache / f"{name}.inv"
    try:
      with urllib.request.urlopen(f"{url}/objects.inv", timeout=5) as response:
        data = response.read()
      if not data.startswith(b"# Sphinx inventory version"):
        continue
      cache.mkdir(parents=True, exist_ok=True)
      path.write_bytes(data)
    except (OSError, ValueError):
      continue
    mapping[name] = (url, str(path))
  return mapping


intersphinx_mapping = _download_inventories()
intersphinx_disabled_reftypes = ["std:doc"]

# Top-level names of the projects linked through intersphinx (and their usual aliases).
_EXTERNAL = ("jax", "jnp", "jaxlib", "optax", "numpy", "np", "flax", "nnx", "chex", "orbax",
             "collections", "typing", "types", "functools", "builtins", "Array", "ArrayLike",
             "PyTree", "Callable", "Sequence", "Mapping", "Any", "NamedTuple",
             "pathlib", "os", "io", "enum", "dataclasses",
             # type aliases of the library, described where they are used; no object of their own
             "Where", "Overrides")

# --- the API page ---------------------------------------------------------------------------

# Subpackages documented on the API page, with their section titles; each contributes its
# __all__. Public names of optax_sparse that none of them exports get a section of their own
# (named after their module), so that a new public module is documented without editing this.
API_SECTIONS = [
    ("optax_sparse.compose", "Composition"),
    ("optax_sparse.geometry", "Geometries"),
    ("optax_sparse.masks", "Masks and sparse training"),
    ("optax_sparse.methods", "Methods"),
    ("optax_sparse.kernels", "Kernels"),
]

# Documented name (``optax_sparse.geometry.ham``) of every public object, by id; filled by
# api_source and used to resolve references written with another public path
# (``optax_sparse.ham``, ``osp.ham``, ``optax_sparse.geometry.hyperbolic.ham``).
_DOCUMENTED: dict[int, str] = {}


def _kind(obj) -> str:
  if inspect.isclass(obj):
    return "autoclass"
  return "autofunction" if callable(obj) else "autodata"


def _shadowed(module_name: str) -> bool:
  """Whether the package attribute of that name is not the module (``masks.sparse``)."""
  parent, _, leaf = module_name.rpartition(".")
  return not inspect.ismodule(getattr(importlib.import_module(parent), leaf, None))


def _directives(module_name: str, seen: set[int]) -> list[str]:
  """Markdown of one API section: the module docstring, then one block per defining module.

  Functions and classes are grouped by the module that defines them, in ``__all__`` order, and
  each group starts with that module's docstring (library decisions live there). A public
  submodule (``potentials``) is documented with the members of its own ``__all__``.
  """
  module = importlib.import_module(module_name)
  objects = [(n, getattr(module, n)) for n in getattr(module, "__all__", [])]
  submodules = {obj.__name__ for _, obj in objects if inspect.ismodule(obj)}
  groups: dict[str, list[str]] = {}
  for name, obj in objects:
    if inspect.ismodule(obj) or id(obj) in seen or getattr(obj, "__module__", "") in submodules:
      continue  # names of a public submodule are documented with it, below
    seen.add(id(obj))
    _DOCUMENTED[id(obj)] = f"{module_name}.{name}"
    home = getattr(obj, "__module__", None) or module_name
    if not isinstance(home, str) or not home.startswith("optax_sparse"):
      home = module_name
    groups.setdefault(home, []).append(f".. {_kind(obj)}:: {module_name}.{name}\n")
  out = [f"```{{eval-rst}}\n.. automodule:: {module_name}\n```\n"]
  for home, directives in groups.items():
    body = "".join(directives)
    if home == module_name:
      out.append(f"```{{eval-rst}}\n{body}```\n")
      continue
    # A module shadowed by a function of the same name (``masks.sparse``) gets no index entry.
    no_index = "   :no-index:\n" if _shadowed(home) else ""
    out.append(f"### `{home}`\n\n```{{eval-rst}}\n.. automodule:: {home}\n{no_index}\n"
               f"{body}```\n")
  for _, sub in objects:
    if not inspect.ismodule(sub) or not sub.__name__.startswith(module_name + "."):
      continue
    body = []
    for m in getattr(sub, "__all__", []):
      member = getattr(sub, m)
      if id(member) in seen:
        continue
      seen.add(id(member))
      _DOCUMENTED[id(member)] = f"{sub.__name__}.{m}"
      body.append(f".. {_kind(member)}:: {sub.__name__}.{m}\n")
    out.append(f"### `{sub.__name__}`\n\n```{{eval-rst}}\n.. automodule:: {sub.__name__}\n\n"
               f"{''.join(body)}```\n")
  return out


def api_source() -> str:
  """Markdown with the docstrings of every public module and name."""
  seen: set[int] = set()
  parts = []
  sections = list(API_SECTIONS)
  covered = {m for m, _ in sections}
  for module_name, title in sections:
    body = "\n".join(_directives(module_name, seen))
    parts.append(f"\n## {title}\n\n{body}")
  # Public top-level names that no section exported: one section per subpackage.
  rest: dict[str, list[str]] = {}
  for name in optax_sparse.__all__:
    obj = getattr(optax_sparse, name)
    if inspect.ismodule(obj) or id(obj) in seen:
      continue
    home = getattr(obj, "__module__", "optax_sparse")
    package = ".".join(home.split(".")[:2])
    if package in covered:
      package = home
    rest.setdefault(package, []).append(name)
  for package in rest:
    if package == "optax_sparse" or package in covered:
      continue
    module = importlib.import_module(package)
    if not getattr(module, "__all__", None):
      module.__all__ = [n for n in rest[package] if hasattr(module, n)]  # type: ignore[attr-defined]
    body = "\n".join(_directives(package, seen))
    parts.append(f"\n## `{package}`\n\n{body}")
  return "".join(parts)


def benchmarks_source() -> str:
  """Markdown that includes every benchmark fragment of ``docs/benchmarks/``."""
  fragments = sorted((DOCS / "benchmarks").glob("*.md"))
  if not fragments:
    return "\nNo benchmark has been run yet: the scripts in `benchmarks/` write their tables.\n"
  return "".join(
      f"\n```{{include}} benchmarks/{path.name}\n:relative-images:\n:heading-offset: 1\n```\n"
      for path in fragments
  )


_LITERAL = re.compile(r"(``.*?``|:math:`[^`]*`|:[a-z:]+:`[^`]*`|`[^`]*`_?)")


def _escape_bars(text: str) -> str:
  """Writes ``|`` as ``∣`` (U+2223) outside inline literals and roles.

  The replacement has the same width, so the columns of simple tables stay aligned.
  """
  parts = _LITERAL.split(text)
  return "".join(p if i % 2 else p.replace("|", "\u2223") for i, p in enumerate(parts))


# Directives whose content is maths, code or a literal: their bars are left alone.
_VERBATIM = (".. math::", ".. code", ".. code-block::", ".. doctest::", ".. testcode::",
             ".. highlight::", ".. csv-table::", ".. raw::", ".. |")


def _plain_text_maths(app, what, name, obj, options, lines: list[str]) -> None:
  """Lets docstrings write absolute values as ``|θ|`` in prose.

  reStructuredText reads ``|name|`` as a substitution reference, so prose maths such as
  "drop the smallest |θ|" would be an error. Bars become the divides sign ``∣``, which looks the
  same, outside ``.. math::`` blocks, doctest blocks, literal blocks and inline literals/roles;
  maths blocks keep them. Grid tables (rows ``| ... |`` and borders ``+-...``) are left alone.
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
    if stripped.startswith((":type", ":rtype", ":vartype")):
      continue  # a type annotation: ``X | None``
    literal = stripped.endswith("::") and not stripped.startswith("..")
    if stripped.startswith(_VERBATIM) or literal:
      block_indent = indent
      if stripped.startswith(".. math::"):
        continue
    if stripped.startswith("+-") or (stripped.startswith("| ") and stripped.endswith(" |")):
      continue  # a grid table row
    lines[i] = _escape_bars(line)


# Private spellings that Python reports for public JAX types.
_PRIVATE_TYPES = (
    (re.compile(r"\bjax\.jaxlib\._jax\.Array\b|\bjaxlib\._jax\.Array\b|\bjaxlib\.xla_extension"
                r"\.ArrayImpl\b|\bjax\._src\.[\w.]*\.Array\b"), "jax.Array"),
    (re.compile(r"\boptax\._src\.base\.(\w+)"), r"optax.\1"),
    (re.compile(r"\bjnp\.ndarray\b|\bjax\.numpy\.ndarray\b"), "jax.Array"),
    # Sphinx prints an alias inside ``X | None`` as the repr of its forward reference.
    (re.compile(r"TypeAliasForwardRef\('([^']*)'\)"), r"\1"),
    (re.compile(r"\b_eligibility\.Where\b"), "Where"),
)


def _public_signature(app, what, name, obj, options, signature, return_annotation):
  """Rewrites private module paths of JAX and optax types in signatures to public ones."""
  def fix(text):
    if not text:
      return text
    for pattern, repl in _PRIVATE_TYPES:
      text = pattern.sub(repl, text)
    return text
  return fix(signature), fix(return_annotation)


def _resolve_object(target: str):
  """The object a dotted ``optax_sparse`` path (or ``osp.`` path) names, or None."""
  parts = target.split(".")
  if parts[0] == "osp":
    parts[0] = "optax_sparse"
  if parts[0] != "optax_sparse":
    parts = ["optax_sparse", *parts]
  obj = None
  for i in range(len(parts), 0, -1):
    try:
      obj = importlib.import_module(".".join(parts[:i]))
    except ImportError:
      continue
    try:
      for attr in parts[i:]:
        obj = getattr(obj, attr)
    except AttributeError:
      return None
    return obj
  return None


def _missing_reference(app, env, node, contnode):
  """Resolves references the Python domain could not, or renders external ones as plain code.

  * A public object of ``optax_sparse`` named by another public path (``optax_sparse.sparse``
    for ``optax_sparse.masks.sparse``) links to its API entry. Anything else of
    ``optax_sparse`` that does not resolve stays a warning.
  * A name of Python, NumPy, JAX, optax or Flax that intersphinx did not resolve (offline, or a
    name missing from that project's inventory) is shown without a link.
  """
  if node.get("refdomain") != "py":
    return None
  target = node.get("reftarget", "")
  top = target.split(".")[0]
  if top in ("optax_sparse", "osp") or (top and hasattr(optax_sparse, top)):
    obj = _resolve_object(target)
    documented = _DOCUMENTED.get(id(obj)) if obj is not None else None
    if inspect.ismodule(obj):
      documented = obj.__name__
    if documented and documented != target:
      domain = env.get_domain("py")
      for role in ("obj", node.get("reftype", "obj")):
        found = domain.resolve_xref(env, node.get("refdoc", ""), app.builder, role, documented,
                                    node, contnode)
        if found is not None:
          return found
    return None
  if top in _EXTERNAL or hasattr(builtins, top):
    return contnode
  return None


def _complete_generated_pages(app, docname: str, source: list[str]) -> None:
  if docname == "api":
    source[0] += api_source()
  elif docname == "benchmarks":
    source[0] += benchmarks_source()


def setup(app) -> dict:
  app.connect("source-read", _complete_generated_pages)
  app.connect("autodoc-process-docstring", _plain_text_maths)
  app.connect("autodoc-process-signature", _public_signature)
  app.connect("missing-reference", _missing_reference, priority=900)
  return {"parallel_read_safe": True}

