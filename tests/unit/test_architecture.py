"""The architecture of docs/architecture.md, checked: the engine is pure, nothing imports in a
cycle, and no module outgrows one concern."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "poller"
# What the pure core may import besides itself: the standard library, and two libraries that
# only encode data (JSON, base64).
ENGINE_MAY_IMPORT = {"orjson", "pybase64"}
MAX_MODULE_LINES = 500


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at the top or inside functions, as absolute names."""
    names: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def test_the_engine_imports_only_itself_the_standard_library_and_data_codecs() -> None:
    for name, path in MODULES.items():
        if not name.startswith("poller.engine"):
            continue
        for imported in imports_of(path):
            top = imported.split(".")[0]
            allowed = (
                imported.startswith("poller.engine")
                or top in ENGINE_MAY_IMPORT
                or (top in sys.stdlib_module_names and top != "asyncio")
                or imported == "__future__"
            )
            assert allowed, f"{name} imports {imported}: the engine must stay pure"


def test_no_module_imports_in_a_cycle() -> None:
    edges = {
        name: {target for imported in imports_of(path) if (target := resolve(imported)) and target != name}
        for name, path in MODULES.items()
    }
    # A cycle exists if some module reaches itself; report the first one found.
    for start in edges:
        stack, seen = [(start, [start])], set()
        while stack:
            current, trail = stack.pop()
            for target in edges[current]:
                assert target != start, "import cycle: " + " -> ".join([*trail, target])
                if target not in seen:
                    seen.add(target)
                    stack.append((target, [*trail, target]))


def test_no_module_passes_five_hundred_lines() -> None:
    long = {
        name: n
        for name, path in MODULES.items()
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}, "split these into modules of one concern each"
