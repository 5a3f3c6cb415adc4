"""The package's shape, read from its imports (ast; module-level and function-level imports alike):

* no import circle between quark_jax modules;
* layers import only downward (docs/DESIGN.md): a module may import its own layer or lower ones;
* no module imports another package's private (underscore) module or name;
* across packages, only what a package's ``__init__`` (or a top-level module's ``__all__``) exports is imported.

The checks are pure functions of an import graph, so the self-tests run them on small synthetic graphs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "quark_jax"

# Bottom to top. A unit is a top-level module or package of quark_jax; units on one line share a layer.
LAYERS = (
    ("formats", "errors", "data", "runtime_checks"),
    ("io",),
    ("quant",),
    ("kernels",),
    ("schemes",),
    ("naming",),  # checkpoint naming (fused shards, KV-scale names): the config resolves fused layers per shard
    ("config",),
    ("checkpoint", "value_checks"),
    ("nn",),
    ("models",),
    ("ptq",),
    ("cli", "demo", "validation"),
)
RANK = {unit: i for i, units in enumerate(LAYERS) for unit in units}


# ------------------------------------------------------------------------------------------------ the graph

def module_name(path: Path, root: Path = ROOT) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports_of(path: Path, root: Path = ROOT) -> list[tuple[str, str | None, int]]:
    """``(module, imported name or None, line)`` for every quark_jax import in a file, at any depth."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "quark_jax"]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] == "quark_jax":
                out += [(mod, a.name, node.lineno) for a in node.names]
    return out


def build_graph(root: Path = ROOT):
    """``modules`` (names) and ``edges``: (importer, imported module, imported name or None, line)."""
    files = sorted(root.rglob("*.py"))
    modules = {module_name(f, root) for f in files}
    edges = []
    for f in files:
        src = module_name(f, root)
        for mod, name, line in imports_of(f, root):
            target = f"{mod}.{name}" if name is not None and f"{mod}.{name}" in modules else mod
            edges.append((src, target, None if target != mod else name, line))
    return modules, edges


def unit_of(module: str) -> str | None:
    """``quark_jax.nn.load`` -> ``nn``; the package root itself has no unit."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


# ------------------------------------------------------------------------------------------------ the checks

def find_cycles(edges) -> list[list[str]]:
    """Strongly connected components with more than one module (or a self-import), each sorted (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for src, dst, *_ in edges:
        graph.setdefault(src, set()).add(dst)
        graph.setdefault(dst, set())
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def upward_imports(edges, rank=RANK) -> list[str]:
    """Imports from a lower layer's module into a higher one; a unit missing from the layer table is an error."""
    bad = []
    for src, dst, _, line in edges:
        a, b = unit_of(src), unit_of(dst)
        if a is None or b is None or a == b:
            continue
        for u, m in ((a, src), (b, dst)):
            if u not in rank:
                bad.append(f"{m}: unit {u!r} is not in the layer table of tests/test_architecture.py")
        if a in rank and b in rank and rank[b] > rank[a]:
            bad.append(f"{src}:{line} imports {dst} (layer {b!r} is above {a!r})")
    return sorted(set(bad))


def private_imports(edges) -> list[str]:
    """Imports of another unit's private module (a path component starting with ``_``) or private name (dunders
    such as ``__version__`` are public)."""
    bad = []
    for src, dst, name, line in edges:
        if unit_of(src) is None or unit_of(src) == unit_of(dst):
            continue
        private_path = any(p.startswith("_") and not p.startswith("__") for p in dst.split(".")[1:])
        if private_path or (name is not None and name.startswith("_") and not name.startswith("__")):
            bad.append(f"{src}:{line} imports {dst}{'.' + name if name else ''}")
    return sorted(bad)


def exports(root: Path = ROOT) -> dict[str, set[str]]:
    """unit -> the names in its ``__all__`` (a package's ``__init__.py`` or a top-level module), read with ast."""
    out = {}
    for path in sorted(root.glob("*/__init__.py")) + sorted(root.glob("*.py")):
        unit = path.parent.name if path.name == "__init__.py" else path.stem
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
                out[unit] = {e.value for e in node.value.elts if isinstance(e, ast.Constant)}
    return out


def unexported_imports(edges, exported) -> list[str]:
    """Imports from another unit of a name (or submodule) that the unit does not export."""
    bad = []
    for src, dst, name, line in edges:
        a, b = unit_of(src), unit_of(dst)
        if a is None or b is None or a == b or b not in exported:
            continue
        deeper = dst.split(".")[2:]  # a submodule of the unit, when imported as a module
        what = name if name is not None else (deeper[0] if deeper else None)
        if what is not None and not what.startswith("__") and what not in exported[b]:
            bad.append(f"{src}:{line} imports {dst}{'.' + name if name else ''} ({what!r} is not in "
                       f"quark_jax.{b}.__all__)")
    return sorted(bad)


# ------------------------------------------------------------------------------------------------ the tests

@pytest.fixture(scope="module")
def graph():
    return build_graph()


def test_no_import_circles(graph):
    _, edges = graph
    assert find_cycles(edges) == []


def test_layers_import_only_downward(graph):
    modules, edges = graph
    assert {unit_of(m) for m in modules} - {None} <= set(RANK), "a new unit needs a place in LAYERS"
    assert upward_imports(edges) == []


def test_no_private_names_across_packages(graph):
    _, edges = graph
    assert private_imports(edges) == []


def test_only_exported_names_across_packages(graph):
    _, edges = graph
    assert unexported_imports(edges, exports()) == []


def test_the_graph_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "quark_jax"
    (pkg / "nn").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("def f():\n    from quark_jax.nn import load\n")
    (pkg / "nn" / "__init__.py").write_text("from . import load\n")
    (pkg / "nn" / "load.py").write_text("import quark_jax.config\nfrom quark_jax.quant import _checks, _x\n")
    _, edges = build_graph(pkg)
    assert ("quark_jax.config", "quark_jax.nn.load", None, 2) in edges
    assert ("quark_jax.nn", "quark_jax.nn.load", None, 1) in edges
    assert find_cycles(edges) == [["quark_jax.config", "quark_jax.nn.load"]]
    assert upward_imports(edges, {"config": 0, "nn": 1, "quant": 0}) == [
        "quark_jax.config:2 imports quark_jax.nn.load (layer 'nn' is above 'config')"]
    assert private_imports(edges) == ["quark_jax.nn.load:2 imports quark_jax.quant._checks",
                                      "quark_jax.nn.load:2 imports quark_jax.quant._x"]
    (pkg / "nn" / "__init__.py").write_text("from . import load\n__all__ = ['load_weights']\n")
    assert exports(pkg) == {"nn": {"load_weights"}}
    assert unexported_imports(edges, exports(pkg)) == [
        "quark_jax.config:2 imports quark_jax.nn.load ('load' is not in quark_jax.nn.__all__)"]


def test_the_checks_on_a_clean_and_a_broken_synthetic_graph():
    clean = [("quark_jax.nn.load", "quark_jax.config", "QuarkConfig", 1),
             ("quark_jax.config", "quark_jax.schemes", "select_scheme", 1),
             ("quark_jax.nn.load", "quark_jax.nn.linear", "QuarkLinear", 2)]
    assert find_cycles(clean) == [] and upward_imports(clean) == [] and private_imports(clean) == []
    broken = clean + [("quark_jax.schemes.base", "quark_jax.nn.load", "module_path", 9),
                      ("quark_jax.schemes", "quark_jax.schemes.base", "x", 1),
                      ("quark_jax.config", "quark_jax.gadgets", None, 3)]
    assert find_cycles(broken) == [["quark_jax.config", "quark_jax.nn.load", "quark_jax.schemes",
                                    "quark_jax.schemes.base"]]
    assert upward_imports(broken) == [
        "quark_jax.gadgets: unit 'gadgets' is not in the layer table of tests/test_architecture.py",
        "quark_jax.schemes.base:9 imports quark_jax.nn.load (layer 'nn' is above 'schemes')"]
