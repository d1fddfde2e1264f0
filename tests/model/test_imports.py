"""Package structure: no import circles in the core packages; one version string."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import radixrt
from radixrt.version import __version__

ROOT = Path(radixrt.__file__).resolve().parent
# Packages whose modules must not take part in an import circle (the package root too).
CHECKED = ("radixrt.fsm", "radixrt.model", "radixrt.cache", "radixrt.lang", "radixrt.version")


def _modules() -> dict[str, Path]:
    mods = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = path
    return mods


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def _imports(mod: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """radixrt modules ``mod`` imports when run: at module level and inside functions (lazy),
    but not under ``if TYPE_CHECKING:`` (never executed)."""
    pkg = mod if path.name == "__init__.py" else mod.rpartition(".")[0]

    def known(name: str) -> str | None:  # the module itself, or the package it comes from
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for stmt in child.orelse:
                    visit_node(stmt)
                continue
            visit_node(child)

    def visit_node(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            out.update(filter(None, (known(a.name) for a in node.names)))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = pkg.split(".")[: len(pkg.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                target = full if full in mods else known(base)
                if target:
                    out.add(target)
        else:
            visit(node)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    out.discard(mod)
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return found


def test_no_import_circles():
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    bad = [c for c in _cycles(graph)
           if any(m == "radixrt" or m == p or m.startswith(p + ".") for m in c for p in CHECKED)]
    detail = [[f"{a} -> {b}" for a in c for b in sorted(graph[a]) if b in c] for c in bad]
    assert not bad, f"import circles: {detail}"


def test_cycle_finder_sees_lazy_imports(tmp_path):
    """The check itself: a lazy import that closes a circle is found; TYPE_CHECKING is not."""
    (tmp_path / "a.py").write_text("from pkg.b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from pkg.a import y\n")
    (tmp_path / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                   "    from pkg.a import z\nfrom pkg.b import w\n")
    mods = {"pkg.a": tmp_path / "a.py", "pkg.b": tmp_path / "b.py", "pkg.c": tmp_path / "c.py"}
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    assert graph == {"pkg.a": {"pkg.b"}, "pkg.b": {"pkg.a"}, "pkg.c": {"pkg.b"}}
    assert _cycles(graph) == [["pkg.a", "pkg.b"]]


def test_one_version():
    assert radixrt.__version__ is __version__
    pyproject = (ROOT.parent / "pyproject.toml").read_text(encoding="utf-8")
    m = re.search(r'^\[project\][^\[]*?^version\s*=\s*"([^"]+)"', pyproject, re.M | re.S)
    assert m is not None and m.group(1) == __version__
