"""The import graph of src/funnelrec, read from the sources with `ast` (nothing is imported).

Every `import funnelrec.x` / `from funnelrec.x import y` / relative import counts, also inside
functions (a lazy import still ties the two modules together); imports under
`if TYPE_CHECKING:` do not (they never run). Two rules:

- no cycle between modules (the failure lists every cycle as a path a → b → … → a);
- the package layering of docs/ARCHITECTURE.md that issue #15 names: features/ imports none of
  models/, train/, pipeline/, serving/; serving/ reaches models only through pipeline/.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
ROOT = "funnelrec"


def _module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules(src: Path) -> dict[str, Path]:
    return {_module_name(p, src): p for p in sorted((src / ROOT).rglob("*.py"))}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """Collects the funnelrec modules one source file imports (resolved to modules that exist:
    `from funnelrec.data import Dataset` is an import of funnelrec.data, `from funnelrec.data
    import synthetic` one of funnelrec.data.synthetic)."""

    def __init__(self, module: str, is_package: bool, known: set[str], type_checking: bool) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = known
        self.type_checking = type_checking
        self.found: dict[str, int] = {}  # imported module → first line

    def _add(self, name: str, line: int) -> None:
        # the longest existing prefix: an attribute import resolves to its module
        while name and name not in self.known:
            name = name.rpartition(".")[0]
        if name:
            self.found.setdefault(name, line)

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test) and not self.type_checking:
            for child in node.orelse:  # the else branch does run
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.name == ROOT or alias.name.startswith(ROOT + "."):
                self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            mod = ".".join(base + ([node.module] if node.module else []))
        else:
            mod = node.module or ""
        if not (mod == ROOT or mod.startswith(ROOT + ".")):
            return
        for alias in node.names:
            sub = f"{mod}.{alias.name}"
            self._add(sub if sub in self.known else mod, node.lineno)


def import_graph(src: Path = SRC, type_checking: bool = False) -> dict[str, dict[str, int]]:
    """module → {imported funnelrec module: line}; a package's own parents are not edges
    (importing funnelrec.data.dataset runs funnelrec/data/__init__.py, but that is Python's
    doing, not a dependency the code chose). type_checking: also count the imports under
    `if TYPE_CHECKING:` (the dependencies of the annotations)."""
    mods = _modules(src)
    known = set(mods)
    graph: dict[str, dict[str, int]] = {}
    for name, path in mods.items():
        v = _Imports(name, path.name == "__init__.py", known, type_checking)
        v.visit(ast.parse(path.read_text(), filename=str(path)))
        graph[name] = {m: line for m, line in v.found.items() if m != name and not name.startswith(m + ".")}
    return graph


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Every strongly connected component with more than one module (Tarjan), each reported as
    one cycle path through it, found by a breadth-first search back to its first module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    sccs: list[list[str]] = []
    counter = [0]

    def strongconnect(v: str) -> None:  # recursion depth ≤ number of modules (~120)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                strongconnect(w)
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
                sccs.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for comp in sorted(sccs):
        members, start = set(comp), comp[0]
        prev: dict[str, str] = {}
        frontier = [start]
        while frontier and start not in prev:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w in members and w not in prev:
                        prev[w] = v
                        nxt.append(w)
            frontier = nxt
        path = [start]
        v = prev[start]
        while v != start:
            path.append(v)
            v = prev[v]
        path.append(start)
        cycles.append(path[::-1])
    return cycles


def _describe(path: list[str], graph: dict[str, dict[str, int]]) -> str:
    hops = [f"{a} (line {graph[a][b]})" for a, b in zip(path, path[1:])]
    return " → ".join(hops + [path[-1]])


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layering_violations(graph: dict[str, dict[str, int]]) -> list[str]:
    forbidden = {
        "features": {"models", "train", "pipeline", "serving"},
        "serving": {"models"},  # serving reaches the models through pipeline/
    }
    out = []
    for mod, deps in sorted(graph.items()):
        banned = forbidden.get(_package(mod), set())
        for dep, line in sorted(deps.items()):
            if _package(dep) in banned:
                out.append(f"{mod} (line {line}) imports {dep}")
    return out


# ---------------------------------------------------------------- the checker itself


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_the_checker_finds_a_hand_built_cycle_and_ignores_type_checking(tmp_path):
    _write(tmp_path, {
        "funnelrec/__init__.py": "",
        "funnelrec/a/__init__.py": "",
        "funnelrec/a/x.py": "def f():\n    from funnelrec.b.y import g\n",  # lazy import: an edge
        "funnelrec/b/__init__.py": "",
        "funnelrec/b/y.py": "from ..a import x\n",  # relative import of a module: an edge
        "funnelrec/b/z.py": ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                             "    from funnelrec.a.x import f\nelse:\n    import funnelrec.a\n"),
        "funnelrec/a/w.py": "import funnelrec.b.z\n",
        "funnelrec/features/__init__.py": "",
        "funnelrec/features/enc.py": "import numpy\nfrom funnelrec.models import m\n",
        "funnelrec/models/__init__.py": "",
        "funnelrec/models/m.py": "",
    })
    g = import_graph(tmp_path)
    assert g["funnelrec.a.x"] == {"funnelrec.b.y": 2}
    assert g["funnelrec.b.y"] == {"funnelrec.a.x": 1}
    assert g["funnelrec.b.z"] == {"funnelrec.a": 5}  # the TYPE_CHECKING import is not an edge
    assert find_cycles(g) == [["funnelrec.a.x", "funnelrec.b.y", "funnelrec.a.x"]]
    assert _describe(find_cycles(g)[0], g) == "funnelrec.a.x (line 2) → funnelrec.b.y (line 1) → funnelrec.a.x"
    with_tc = import_graph(tmp_path, type_checking=True)
    assert with_tc["funnelrec.b.z"] == {"funnelrec.a.x": 3, "funnelrec.a": 5}
    assert layering_violations(g) == ["funnelrec.features.enc (line 2) imports funnelrec.models.m"]


# ---------------------------------------------------------------- the rules on src/funnelrec


def test_the_graph_sees_the_whole_package():
    g = import_graph()
    assert len(g) > 100
    # spot checks of edges the sources plainly hold
    assert "funnelrec.core.registry" in g["funnelrec.data.synthetic"]
    assert "funnelrec.pipeline.funnel" in g["funnelrec.pipeline.service"]


def test_no_import_cycle_between_modules():
    g = import_graph()
    cycles = find_cycles(g)
    assert not cycles, "import cycles:\n" + "\n".join(_describe(c, g) for c in cycles)


def test_no_cycle_even_through_annotation_imports():
    """The dependency of an annotation is still a design dependency: stages that take a whole
    `Funnel` reach into it."""
    g = import_graph(type_checking=True)
    cycles = find_cycles(g)
    assert not cycles, "import cycles counting TYPE_CHECKING imports:\n" + "\n".join(_describe(c, g) for c in cycles)


def test_features_and_serving_respect_the_package_layering():
    bad = layering_violations(import_graph())
    assert not bad, "imports against the layering of docs/ARCHITECTURE.md:\n" + "\n".join(bad)
