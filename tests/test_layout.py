"""The package layout shows the architecture: the engine modules import no tooling, and no two
modules of ``collapsekit`` import each other, directly or through others."""
from __future__ import annotations

import ast
from pathlib import Path

CORE = Path(__file__).resolve().parents[1] / "core"
TOOLING = ("collapsekit.cli", "collapsekit.bench", "collapsekit.testing", "collapsekit.template")


def module_name(path: Path) -> str:
    parts = ["collapsekit", *path.relative_to(CORE).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Modules of ``collapsekit`` that ``path`` imports anywhere (also inside functions)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("collapsekit"):
                found.add(target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("collapsekit"))
    return found - {name}


GRAPH = {module_name(p): imports(p) for p in CORE.rglob("*.py")}


def test_no_import_cycle_in_core():
    modules = {m for m in GRAPH if m != "collapsekit"}      # the package __init__ only re-exports, lazily

    def visit(node: str, path: list[str]) -> None:
        for dep in sorted(GRAPH.get(node, ())):
            if dep not in modules:
                continue
            assert dep not in path, f"import cycle: {' -> '.join(path[path.index(dep):] + [dep])}"
            visit(dep, path + [dep])

    for module in sorted(modules):
        visit(module, [module])


def test_engine_modules_import_no_tooling():
    engine = [m for m in GRAPH if not m.startswith(TOOLING) and m != "collapsekit"]
    assert len(engine) >= 15
    offenders = {m: sorted(d for d in GRAPH[m] if d.startswith(TOOLING)) for m in engine}
    assert {m: d for m, d in offenders.items() if d} == {}
