"""The Kafka layer is the only code of the product that imports a Kafka client library."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CLIENTS = {"kafka", "confluent_kafka", "aiokafka"}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_only_adapter_kafka_imports_a_kafka_client() -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(_imports(path) & CLIENTS)
        for folder in ("adapter", "handlers", "examples")
        for path in (REPO / folder).rglob("*.py")
        if (REPO / "adapter" / "kafka") not in path.parents and _imports(path) & CLIENTS
    }
    assert offenders == {}


def test_the_kafka_layer_does_import_both_engines() -> None:
    # The check above must be able to fail: the engines themselves are found by it.
    layer = REPO / "adapter" / "kafka"
    assert "confluent_kafka" in _imports(layer / "confluent.py")
    assert "kafka" in _imports(layer / "kafka_python.py")
