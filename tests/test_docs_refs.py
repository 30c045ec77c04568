"""The documentation stands on its own: no reference to a file outside the repository.

Pure file scanning (no import of the package, no Sphinx): the package, the docs, the README, the
examples, the benchmarks and the tests must not point to notes that are not shipped (a methods
file, numbered "open points") nor to a file path of this repository that does not exist. Paths
inside other projects are allowed only as citations of that project's code, written with its
GitHub name on the same line (``google-research/rigl`` ``rigl/sparse_utils.py``).
"""

from __future__ import annotations

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCANNED = ("optax_sparse", "docs", "examples", "benchmarks", "tests")
TOP_LEVEL = ("README.md", "pyproject.toml")
SUFFIXES = {".py", ".md", ".rst", ".txt", ".toml", ".cfg", ".css"}
RUNTIME_OUTPUTS = ("demo_out/",)
SKIPPED_DIRS = {"_build", "__pycache__", ".ipynb_checkpoints"}

# Notes kept outside the repository; written as patterns so that this file does not match them.
FORBIDDEN = [
    re.compile("METHODS" + r"\.md", re.IGNORECASE),
    re.compile(r"\bopen point\s*(?:#\s*)?\d+", re.IGNORECASE),
    re.compile(r"\bopen points?\s+(?:of|in)\s+§", re.IGNORECASE),
    re.compile(r"§\s*13\b|§\s*1[0-4]\.\d|§\s*\d+\s*#"),  # their section numbers
    re.compile("PEERS" + r"(?:-\d+)?\.md", re.IGNORECASE),
    re.compile(r"/work/shared|/tmp/coord"),
]

# A relative file path with an extension we ship (``docs/benchmarks/masks.md``,
# ``examples/flax_nnx.py``, ``benchmarks/kernels.py``).
PATH = re.compile(
    r"(?<![\w./:@-])((?:\.\./|\./)?(?:[A-Za-z0-9_.-]+/)+[A-Za-z0-9_.-]+"
    r"\.(?:py|md|rst|txt|toml|yaml|yml|json|png|cfg|ipynb|sh))(?![\w/-])"
)
# ``owner/name`` of a GitHub project on the same line makes a path a citation of that project.
GITHUB_PROJECT = re.compile(r"\b[A-Za-z0-9][A-Za-z0-9-]*/[A-Za-z0-9_.-]+\b")
URL = re.compile(r"\b(?:https?|file)://\S+")


def _files() -> list[pathlib.Path]:
  out = [ROOT / name for name in TOP_LEVEL if (ROOT / name).exists()]
  for top in SCANNED:
    for path in sorted((ROOT / top).rglob("*")):
      if path.is_file() and path.suffix in SUFFIXES and not SKIPPED_DIRS & set(path.parts):
        out.append(path)
  return out


FILES = _files()
THIS = pathlib.Path(__file__).resolve()


def _exists(path: str, source: pathlib.Path) -> bool:
  """Whether a path written in ``source`` names a file of the repository."""
  candidates = [ROOT / path, source.parent / path]
  if source.is_relative_to(ROOT / "docs"):
    candidates.append(ROOT / "docs" / path)
  # Outputs written at run time (the demo's ``--out`` folder) are not in the repository.
  return path.startswith(RUNTIME_OUTPUTS) or any(c.exists() for c in candidates)


def _is_citation(line: str, path: str) -> bool:
  """A path of another project, named on the same line (``IST-DASLab/ACDC``, ``configs/...``)."""
  rest = line.replace(path, " ")
  return any(not (ROOT / p).exists() for p in GITHUB_PROJECT.findall(rest))


def test_files_are_scanned():
  names = {p.relative_to(ROOT).as_posix() for p in FILES}
  assert "README.md" in names and "docs/conf.py" in names and "optax_sparse/__init__.py" in names
  assert any(n.startswith("docs/methods/") for n in names), "no methods pages found"


def test_no_reference_to_unshipped_notes():
  hits = []
  for path in FILES:
    if path.resolve() == THIS:
      continue
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
      for pattern in FORBIDDEN:
        if pattern.search(line):
          hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
  assert not hits, "references to notes outside the repository:\n" + "\n".join(hits)


def test_every_file_path_exists():
  missing = []
  for path in FILES:
    if path.resolve() == THIS:
      continue
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
      text = URL.sub(" ", line)
      for match in PATH.finditer(text):
        written = match.group(1)
        if _exists(written, path) or _is_citation(text, written):
          continue
        missing.append(f"{path.relative_to(ROOT)}:{number}: {written}")
  assert not missing, "file paths that do not exist in the repository:\n" + "\n".join(missing)


@pytest.mark.parametrize(
    "line, bad",
    [
        ("see " + "METHODS" + ".md §2", True),
        ("library decision (open point 13): s_i = 0", True),
        ("Library decisions and open points (§13 #11):", True),
        ("Library decisions and open points:", False),
        ("RigL (Evci et al., arXiv 1911.11134, §3)", False),
        (":func:`rigl` (§12.7, Evci et al.)", True),
        ("the paper leaves this open; our decision: s_i = 0", False),
    ],
)
def test_forbidden_patterns(line, bad):
  assert any(p.search(line) for p in FORBIDDEN) == bad


def test_path_check_catches_a_missing_file():
  source = ROOT / "docs" / "guide.md"
  assert _exists("examples/flax_nnx.py", source)
  assert not _exists("examples/does_not_exist.py", source)
  found = [m.group(1) for m in PATH.finditer("run `benchmarks/nope.py` now")]
  assert found == ["benchmarks/nope.py"]
  assert _is_citation("google-research/rigl ``rigl/sparse_utils.py``", "rigl/sparse_utils.py")
  assert not _is_citation("see ``docs/benchmarks/nope.md``", "docs/benchmarks/nope.md")


DEMO_RUNTIME = re.compile(r"demo run[^.]*?measured at (\d+) s on 2 CPU cores")
DEMO_PAGES = ("README.md", "docs/index.md", "docs/examples.md", "optax_sparse/demo.py")


def test_one_demo_runtime_everywhere():
  """Every page that states the demo's runtime quotes the same measured figure, in seconds."""
  found = {}
  for name in DEMO_PAGES:
    text = " ".join((ROOT / name).read_text().split())  # phrases may wrap across lines
    found[name] = set(DEMO_RUNTIME.findall(text))
    assert found[name], f"{name} does not state the demo's measured runtime"
    assert not re.search(r"under a minute|a few minutes", text), name
  assert len(set().union(*found.values())) == 1, found
