"""The layout's rules (docs/architecture.md), read from every import of the product's code.

- `adapter.protocol` imports nothing of the project but `adapter.errors`;
- each part of `adapter/` imports only the parts below it;
- only the Kafka layer (`adapter.kafka`) imports a Kafka client library;
- `handlers` never imports the frontend, and `adapter` never imports `handlers`;
- no two modules import each other, directly or through others (`TYPE_CHECKING` and
  function-level imports included).
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLIENTS = {"kafka", "confluent_kafka", "aiokafka"}
#: What each part of adapter/ may import from the project, besides itself.
ALLOWED = {
    "adapter.errors": set(),
    "adapter.protocol": {"adapter.errors"},
    "adapter.runtime": {"adapter.errors", "adapter.protocol"},
    "adapter.kafka": {"adapter.errors", "adapter.runtime"},
    "adapter.caller": {"adapter.errors", "adapter.protocol", "adapter.runtime", "adapter.kafka"},
    "adapter.frontend": {"adapter.errors", "adapter.protocol", "adapter.runtime", "adapter.caller"},
}


def _module(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    return {_module(p): p for folder in ("adapter", "handlers") for p in (REPO / folder).rglob("*.py")}


def _imports(path: Path) -> set[str]:
    """Every module name imported anywhere in the file (`from a import b` counts as `a.b` too:
    b may be a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _project_imports(path: Path, modules: set[str]) -> set[str]:
    return {name for name in _imports(path) if name in modules}


def _part(module: str) -> str:
    for part in sorted(ALLOWED, key=len, reverse=True):
        if module == part or module.startswith(part + "."):
            return part
    return module


def test_each_part_of_adapter_imports_only_the_parts_below_it() -> None:
    sources = _sources()
    offenders = {}
    for module, path in sources.items():
        part = _part(module)
        if part not in ALLOWED:
            continue
        bad = {m for m in _project_imports(path, set(sources)) if _part(m) not in ALLOWED[part] | {part}}
        if bad:
            offenders[module] = sorted(bad)
    assert offenders == {}


def test_the_rules_can_fail() -> None:
    # The check above must see real imports: the frontend uses the caller core and the runtime.
    sources = _sources()
    imported = _project_imports(sources["adapter.frontend.gateway"], set(sources))
    assert {"adapter.caller.requester", "adapter.runtime.config"} <= imported


def test_only_adapter_kafka_imports_a_kafka_client() -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted({n.split(".")[0] for n in _imports(path)} & CLIENTS)
        for folder in ("adapter", "handlers", "examples")
        for path in (REPO / folder).rglob("*.py")
        if (REPO / "adapter" / "kafka") not in path.parents and {n.split(".")[0] for n in _imports(path)} & CLIENTS
    }
    assert offenders == {}


def test_the_kafka_layer_does_import_both_engines() -> None:
    layer = REPO / "adapter" / "kafka"
    assert "confluent_kafka" in {n.split(".")[0] for n in _imports(layer / "confluent.py")}
    assert "kafka" in {n.split(".")[0] for n in _imports(layer / "kafka_python.py")}


def test_handlers_never_import_the_frontend_and_adapter_never_imports_handlers() -> None:
    sources = _sources()
    offenders = {}
    for module, path in sources.items():
        imported = _project_imports(path, set(sources))
        if module.startswith("handlers") and any(m.startswith("adapter.frontend") for m in imported):
            offenders[module] = "imports the frontend"
        if module.startswith("adapter") and any(m.startswith("handlers") for m in imported):
            offenders[module] = "imports handlers"
    assert offenders == {}


def test_no_import_cycles() -> None:
    sources = _sources()
    # A module importing its own package (for a sibling: `from adapter.kafka import schemas`) is
    # not a cycle through the package's __init__.
    graph = {m: {i for i in _project_imports(p, set(sources)) if i != m and not m.startswith(i + ".")}
             for m, p in sources.items()}
    cycles = set()

    def visit(module: str, path: list[str]) -> None:
        for target in graph[module]:
            if target in path:
                cycle = path[path.index(target):]
                cycles.add(" -> ".join([*cycle, target]))
            elif len(path) < 12:
                visit(target, [*path, target])

    for module in graph:
        visit(module, [module])
    assert sorted(cycles) == []
