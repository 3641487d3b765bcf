"""A Node.js gRPC client (@grpc/grpc-js, tests/interop/node/client.js) calling our frontend.

The client loads kitchen.proto with @grpc/proto-loader and calls a real frontend process,
which forwards over the real broker to a real handler process. Its npm dependencies are
installed once (`npm ci`, into tests/interop/node/node_modules) from the pinned lock file.
"""

from __future__ import annotations

import base64
import importlib.resources
import json
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest
from google.rpc import error_details_pb2, status_pb2

from tests import procs

pytestmark = pytest.mark.kafka

NODE = procs.REPO / "tests" / "interop" / "node"


@pytest.fixture(scope="session")
def node_client() -> Path:
    """client.js, with its dependencies installed from package-lock.json when they are missing or stale."""
    installed = NODE / "node_modules" / ".package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < (NODE / "package-lock.json").stat().st_mtime:
        npm = subprocess.run(["npm", "ci", "--prefer-offline", "--no-audit", "--no-fund"], cwd=NODE,
                             capture_output=True, text=True, timeout=600, check=False)
        assert npm.returncode == 0, f"npm ci failed:\n{npm.stdout}\n{npm.stderr}"
    return NODE / "client.js"


@pytest.fixture(scope="module")
def node_run(kafka_bootstrap: str, node_client: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Run client.js once against a frontend and a handler process; its results by case name."""
    tmp = tmp_path_factory.mktemp("node")
    prefix = f"t{uuid.uuid4().hex[:10]}."
    front, address = procs.frontend(tmp / "frontend.log", kafka_bootstrap, prefix)
    worker = procs.handler(tmp / "handler.log", kafka_bootstrap, prefix, targets=["tests.kitchen_service:Kitchen"])
    well_known = importlib.resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    try:
        run = subprocess.run(["node", str(node_client), address, str(procs.REPO / "protos"), str(well_known)],
                             capture_output=True, text=True, timeout=120, check=False)
    finally:
        assert worker.stop() == 0, worker.output()
        assert front.stop() == 0, front.output()
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    lines = [json.loads(line) for line in run.stdout.splitlines()]
    assert lines[-1] == {"event": "done"}, run.stdout
    return {"handler_pid": worker.pid, **{line["case"]: line for line in lines if "case" in line}}


def test_unary_echo_with_unicode_bytes_and_64_bit_numbers(node_run: dict[str, Any]) -> None:
    case = node_run["echo"]
    assert "error" not in case, case
    reply = {k: v for k, v in case["reply"].items() if k != "choice"}  # proto-loader's oneof name
    assert reply == case["sent"]
    assert case["reply"]["choice"] == "text"
    assert reply["scalars"]["s"] == "héllo wörld ✓ 日本 🎉"
    assert base64.b64decode(reply["scalars"]["by"]) == bytes(range(256))
    assert reply["scalars"]["i64"] == str(-(2**63)) and reply["scalars"]["u64"] == str(2**64 - 1)
    assert reply["counts"] == {"x": "1", "ключ": str(-(2**62))}


def test_error_status_with_unicode_details(node_run: dict[str, Any]) -> None:
    error = node_run["abort"]["error"]
    assert (error["code"], error["details"]) == (5, "nicht gefunden ✗")


def test_error_status_with_rich_details(node_run: dict[str, Any]) -> None:
    error = node_run["rich"]["error"]
    assert (error["code"], error["details"]) == (3, "bad field")
    [raw] = error["metadata"]["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(base64.b64decode(raw))
    bad = error_details_pb2.BadRequest()
    assert status.code == 3 and status.message == "bad field" and status.details[0].Unpack(bad)
    assert bad.field_violations[0].description == "bad field"


def test_metadata_sent_and_trailing_metadata_received(node_run: dict[str, Any]) -> None:
    case = node_run["meta"]
    assert case["code"] == 0 and "error" not in case, case
    assert case["reply"]["text"]["x-user"] == "ann"
    assert case["reply"]["text"]["traceparent"] == "00-abc-def-01"
    assert base64.b64decode(case["reply"]["binary"]["x-token-bin"]) == b"\x00\x01\xfe\xff"
    assert case["trailers"]["x-handled-by"] == [str(node_run["handler_pid"])]
    assert [base64.b64decode(v) for v in case["trailers"]["x-trace-bin"]] == [b"\x00\xff\x10"]


def test_client_deadline_gives_deadline_exceeded(node_run: dict[str, Any]) -> None:
    case = node_run["deadline"]
    assert case["error"]["code"] == 4  # DEADLINE_EXCEEDED
    assert case["seconds"] < 2
