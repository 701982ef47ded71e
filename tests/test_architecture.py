"""The layering of ``lib/widen`` (docs/architecture.md), checked on the source itself:
no import cycle (function-level imports included), each layer imports only what is below it,
no target-kind branch outside ``targets/``, the narrow table named in SQL only in ``sources/``,
and a pure core (no psycopg2, no Spark session)."""
from __future__ import annotations

import ast
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "lib"
WIDEN = LIB / "widen"

#: what each part of the library may import from widen (besides itself and the utilities)
UTILITIES = {"widen.config", "widen.secrets", "widen.errors", "widen.log", "widen.metrics"}
ALLOWED = {
    "widen.core": set(),
    "widen.pg": {"widen.core"},
    "widen.catalog": {"widen.core", "widen.pg"},
    "widen.sources": {"widen.core", "widen.pg"},
    "widen.targets": {"widen.core", "widen.pg", "widen.catalog"},
    "widen.streaming": {"widen.core", "widen.pg", "widen.catalog", "widen.targets", "widen.sources"},
    "widen.jobs": {"widen.core", "widen.pg", "widen.catalog", "widen.targets", "widen.sources", "widen.streaming",
                   "widen.session", "widen.progress", "widen.embedded", "widen.dashboard"},
}


def modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(WIDEN.rglob("*.py")):
        name = ".".join(path.relative_to(LIB).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = ast.parse(path.read_text(), str(path))
    return out


def imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """widen modules ``name`` imports anywhere in its body (``from widen.x import y`` counts as
    widen.x.y when that is a module)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("widen")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("widen"):
            for a in node.names:
                full = f"{node.module}.{a.name}"
                out.add(full if full in known else node.module)
    return {m for m in out if m != name}


def part(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2])


def test_no_import_cycle():
    trees = modules()
    known = set(trees)
    graph = {name: imports(name, tree, known) & known for name, tree in trees.items()}
    # A package's __init__ importing its own submodules (the factories) is not a cycle of layers.
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == [], cycles


def test_layers_import_only_what_is_below_them():
    trees = modules()
    known = set(trees)
    wrong = []
    for name, tree in trees.items():
        layer = part(name)
        if layer not in ALLOWED:
            continue
        allowed = ALLOWED[layer] | {layer} | UTILITIES
        for imported in imports(name, tree, known):
            if part(imported) not in allowed and imported not in allowed:
                wrong.append(f"{name} imports {imported}")
    assert wrong == [], wrong


def test_the_core_is_pure():
    for name, tree in modules().items():
        if not name.startswith("widen.core"):
            continue
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for imported in names:
                assert not imported.startswith("psycopg2"), f"{name} imports {imported}"
                if imported.startswith("pyspark"):
                    assert name == "widen.core.transforms" and not imported.startswith("pyspark.sql.session"), name
            if isinstance(node, ast.ImportFrom) and node.module == "pyspark.sql":
                assert "SparkSession" not in [a.name for a in node.names], name


def test_no_target_kind_branch_outside_targets():
    """``.kind`` / ``is_delta`` compared outside ``targets/`` (config validates it; sources pick theirs)."""
    found = []
    for name, tree in modules().items():
        if name.startswith(("widen.targets", "widen.sources")) or name == "widen.config":
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "is_delta":
                found.append(f"{name}:{node.lineno}")
            if isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                if any(isinstance(s, ast.Attribute) and s.attr == "kind" for s in sides) or any(
                        isinstance(s, ast.Constant) and s.value in ("delta", "postgres") for s in sides):
                    found.append(f"{name}:{node.lineno}")
    assert found == [], found


def test_the_narrow_table_is_named_in_sql_only_by_the_sources():
    """``sql.Identifier(<...source...>.schema, <...>.table)`` outside ``sources/``."""
    found = []
    for name, tree in modules().items():
        if name.startswith("widen.sources"):
            continue
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "Identifier"
                    and any("source" in ast.unparse(arg) for arg in node.args)):
                found.append(f"{name}:{node.lineno}: {ast.unparse(node)}")
    assert found == [], found
