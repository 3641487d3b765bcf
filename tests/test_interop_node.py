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
import time
import uuid
from collections.abc import Iterator
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
def node_run(kafka_bootstrap: str, node_client: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Run client.js once against a frontend and a handler process; its results by case name.

    The processes stay up until the module's tests are done, so they can wait for what the handler
    records in its events file (KITCHEN_EVENTS) about cancelled streams.
    """
    tmp = tmp_path_factory.mktemp("node")
    prefix = f"t{uuid.uuid4().hex[:10]}."
    events = tmp / "events"
    front, address = procs.frontend(tmp / "frontend.log", kafka_bootstrap, prefix)
    worker = procs.handler(tmp / "handler.log", kafka_bootstrap, prefix, env={"KITCHEN_EVENTS": str(events)},
                           targets=["tests.kitchen_service:Kitchen"])
    well_known = importlib.resources.files("grpc_tools") / "_proto"  # google/protobuf/*.proto
    try:
        run = subprocess.run(["node", str(node_client), address, str(procs.REPO / "protos"), str(well_known)],
                             capture_output=True, text=True, timeout=120, check=False)
        assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
        lines = [json.loads(line) for line in run.stdout.splitlines()]
        assert lines[-1] == {"event": "done"}, run.stdout
        yield {"handler_pid": worker.pid, "events": events, **{line["case"]: line for line in lines if "case" in line}}
    finally:
        assert worker.stop() == 0, worker.output()
        assert front.stop() == 0, front.output()


def _wait_for_event(path: Path, line: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and line in path.read_text().splitlines():
            return
        time.sleep(0.05)
    raise AssertionError(f"handler never recorded {line!r}; it recorded {path.read_text() if path.exists() else ''!r}")


def _numbers(items: list[dict[str, Any]]) -> list[int]:
    """Item.i of each item; proto-loader (defaults: false) leaves a zero out."""
    return [item.get("i", 0) for item in items]


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


OK, CANCELLED, DEADLINE_EXCEEDED, FAILED_PRECONDITION, ABORTED = 0, 1, 4, 9, 10


@pytest.mark.parametrize("method", ["CountUp", "AsyncCountUp"])
@pytest.mark.parametrize("n", [0, 1, 1000])
def test_server_streaming_in_order(node_run: dict[str, Any], method: str, n: int) -> None:
    case = node_run[f"{method}-{n}"]
    assert case.get("error") is None and case["code"] == OK, case
    assert _numbers(case["items"]) == list(range(n))
    assert all(base64.b64decode(item["data"]) == b"xxx" for item in case["items"])
    if method == "CountUp":  # set after the last item
        assert case["trailers"]["x-count"] == [str(n)]


@pytest.mark.parametrize("method", ["CountUp", "AsyncCountUp"])
def test_server_streaming_error_mid_stream(node_run: dict[str, Any], method: str) -> None:
    case = node_run[f"{method}-fail"]
    assert _numbers(case["items"]) == [0, 1, 2, 3, 4]
    assert (case["error"]["code"], case["error"]["details"]) == (FAILED_PRECONDITION, "failed at 5")
    assert (case["code"], case["details"]) == (FAILED_PRECONDITION, "failed at 5")


@pytest.mark.parametrize("method", ["Collect", "AsyncCollect"])
@pytest.mark.parametrize("n", [0, 500])
def test_client_streaming(node_run: dict[str, Any], method: str, n: int) -> None:
    case = node_run[f"{method}-{n}"]
    assert case.get("error") is None and case["code"] == OK, case
    if n == 0:
        assert case["reply"] == {}  # every field at its default, so proto-loader leaves them all out
    else:
        assert case["reply"] == {"count": n, "total_bytes": str(2 * n), "order": list(range(100))}


def test_bidi_replies_in_order(node_run: dict[str, Any]) -> None:
    case = node_run["chat"]
    assert case.get("error") is None and case["code"] == OK, case
    assert _numbers(case["items"]) == [2 * i for i in range(100)]
    assert [base64.b64decode(item.get("data", "")) for item in case["items"]] == [bytes([i]) for i in range(100)]
    assert {item["tag"] for item in case["items"]} == {"reply"}


def test_bidi_abort_mid_stream(node_run: dict[str, Any]) -> None:
    case = node_run["chat-fail"]
    assert case["written"] == 4  # the request stream was still open when the handler aborted
    assert _numbers(case["items"]) == [0, 2, 4]
    assert (case["error"]["code"], case["error"]["details"]) == (ABORTED, "asked to fail at 3")
    assert case["code"] == ABORTED


@pytest.mark.parametrize(("method", "seen"), [("Watch", ["callback", "inactive"]), ("AsyncWatch", ["task-cancelled", "callback"])])
def test_client_cancel_mid_stream(node_run: dict[str, Any], method: str, seen: list[str]) -> None:
    case = node_run[f"{method}-cancel"]
    assert _numbers(case["items"]) == [0, 1, 2]
    assert case["error"]["code"] == CANCELLED and case["code"] == CANCELLED
    assert case["seconds"] < 5
    for what in seen:  # the cancel reached the handler
        _wait_for_event(node_run["events"], f"{what} {case['tag']}")


def test_deadline_on_server_stream(node_run: dict[str, Any]) -> None:
    case = node_run["Watch-deadline"]
    assert case["error"]["code"] == DEADLINE_EXCEEDED and case["code"] == DEADLINE_EXCEEDED
    assert len(case["items"]) > 3 and _numbers(case["items"]) == list(range(len(case["items"])))
    assert case["seconds"] < 3
    _wait_for_event(node_run["events"], f"inactive {case['tag']}")


def test_deadline_on_bidi_stream_left_open(node_run: dict[str, Any]) -> None:
    case = node_run["chat-deadline"]
    assert _numbers(case["items"]) == [42]
    assert case["error"]["code"] == DEADLINE_EXCEEDED and case["code"] == DEADLINE_EXCEEDED
    assert case["seconds"] < 3
