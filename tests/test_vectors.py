"""Conformance vectors (tests/vectors/*.json, format in tests/vectors/README.md).

`adapter.wire` must read every vector's records as the vector says and write the canonical
ones byte for byte; a real handler process, given the request records on a real broker,
must answer with exactly the reply records (less the fields a vector lists in `ignore`).
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka.admin import NewTopic

from adapter import wire
from adapter.errors import MalformedRecord
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from tests import procs

VECTORS = [json.loads(path.read_text()) for path in sorted((Path(__file__).parent / "vectors").glob("*.json"))]
REPLY_PARTITIONS = 4


def b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def raw(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def headers_of(record: dict[str, Any]) -> list[tuple[str, bytes | None]]:
    return [(name, raw(value)) for name, value in record["headers"]]


def metadata_json(metadata: wire.Metadata) -> list[list[str | None]]:
    return [[key, b64(value) if isinstance(value, bytes) else value] for key, value in metadata]


def metadata_from(pairs: list[list[str]]) -> wire.Metadata:
    return tuple((key, (raw(value) or b"") if key.endswith("-bin") else value) for key, value in pairs)


def with_part(part: str) -> list[dict[str, Any]]:
    return [v for v in VECTORS if v.get(part)]


def names(vectors: list[dict[str, Any]]) -> dict[str, Any]:
    return {"argvalues": vectors, "ids": [v["name"] for v in vectors]}


def test_vectors_are_present_and_named_after_their_file() -> None:
    assert len(VECTORS) >= 20
    assert len({v["name"] for v in VECTORS}) == len(VECTORS)
    for path in (Path(__file__).parent / "vectors").glob("*.json"):
        assert json.loads(path.read_text())["name"] == path.stem


# What adapter.wire reads and writes.


@pytest.mark.parametrize("vector", **names(with_part("request")))
def test_request_decodes(vector: dict[str, Any]) -> None:
    record = vector["request"]
    if "error" in record:
        with pytest.raises(MalformedRecord) as info:
            wire.Request.decode(headers_of(record), raw(record["value"]))
        assert str(info.value) == record["error"]
        return
    request = wire.Request.decode(headers_of(record), raw(record["value"]))
    expected = record["decoded"]
    assert {
        "method": request.method,
        "correlation_id": b64(request.correlation_id),
        "reply_topic": request.reply_topic,
        "reply_partition": request.reply_partition,
        "deadline_ms": None if request.deadline is None else round(request.deadline * 1000),
        "metadata": metadata_json(request.metadata),
        "payload": b64(request.payload),
    } == expected


@pytest.mark.parametrize("vector", **names([v for v in with_part("request") if v["canonical"]]))
def test_canonical_request_encodes_exactly(vector: dict[str, Any]) -> None:
    decoded = vector["request"]["decoded"]
    request = wire.Request(
        method=decoded["method"],
        correlation_id=raw(decoded["correlation_id"]) or b"",
        reply_topic=decoded["reply_topic"],
        reply_partition=decoded["reply_partition"],
        deadline=None if decoded["deadline_ms"] is None else decoded["deadline_ms"] / 1000,
        metadata=metadata_from(decoded["metadata"]),
        payload=raw(decoded["payload"]) or b"",
    )
    assert [[name, b64(value)] for name, value in request.encode_headers()] == vector["request"]["headers"]
    assert b64(request.payload) == vector["request"]["value"]


@pytest.mark.parametrize("vector", **names(with_part("reply")))
def test_reply_decodes(vector: dict[str, Any]) -> None:
    record = vector["reply"]
    if "error" in record:
        with pytest.raises(MalformedRecord) as info:
            wire.Reply.decode(headers_of(record), raw(record["value"]))
        assert str(info.value) == record["error"]
        return
    reply = wire.Reply.decode(headers_of(record), raw(record["value"]))
    expected = dict(record["decoded"])
    got = {
        "correlation_id": b64(reply.correlation_id),
        "code": reply.code.value[0],
        "code_name": reply.code.name,
        "message": reply.message,
        "trailing_metadata": metadata_json(reply.trailing_metadata),
        "payload": b64(reply.payload),
    }
    if "reply.value" in vector["ignore"]:
        got.pop("payload")
        expected.pop("payload")
    assert got == expected


@pytest.mark.parametrize("vector", **names([v for v in with_part("reply") if v["canonical"]]))
def test_canonical_reply_encodes_exactly(vector: dict[str, Any]) -> None:
    decoded = vector["reply"]["decoded"]
    reply = wire.Reply(
        correlation_id=raw(decoded["correlation_id"]) or b"",
        code=wire.status_code(decoded["code"]),
        message=decoded["message"],
        trailing_metadata=metadata_from(decoded["trailing_metadata"]),
        payload=raw(decoded["payload"]) or b"",
    )
    assert [[name, b64(value)] for name, value in reply.encode_headers()] == vector["reply"]["headers"]


# A real handler process, given the request records.

HANDLED = [v for v in VECTORS if v["handler"]]


def prefixed(prefix: str, headers: list[tuple[str, bytes | None]]) -> list[tuple[str, bytes]]:
    # Topic names in vectors are relative, so reply topics get the test's prefix too.
    out = []
    for name, value in headers:
        assert value is not None, "kafka-python cannot produce null header values; mark such vectors handler: false"
        out.append((name, prefix.encode() + value if name == wire.REPLY_TOPIC else value))
    return out


class Handled:
    def __init__(self, prefix: str, replies: list[Any], log: str) -> None:
        self.prefix = prefix
        self.log = log
        self.by_correlation: dict[str | None, list[Any]] = {}
        for record in replies:
            self.by_correlation.setdefault(b64(wire.correlation_id_of(record.headers)), []).append(record)


@pytest.fixture(scope="module")
def handled(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Handled]:
    """Every handler vector's request produced to a handler process; every reply record that came back."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    reply_topic = f"{prefix}replies"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(reply_topic, REPLY_PARTITIONS, 1)])
    admin.close()
    worker = procs.handler(tmp_path_factory.mktemp("vectors") / "handler.log", kafka_bootstrap, prefix,
                           targets=["tests.kitchen_service:Kitchen"])
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    partitions = [TopicPartition(reply_topic, p) for p in range(REPLY_PARTITIONS)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    try:
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        for vector in HANDLED:
            record = vector["request"]
            producer.send(prefix + record["topic"], key=raw(record["key"]), value=raw(record["value"]) or b"",
                          headers=prefixed(prefix, headers_of(record)))
        producer.flush(10)
        producer.close()
        expected = {v["reply"]["decoded"]["correlation_id"] for v in HANDLED if v["reply"]}
        replies: list[Any] = []
        deadline = time.monotonic() + 30
        settle = None  # once every expected reply is in, wait a little longer for unexpected ones
        while time.monotonic() < (settle or deadline):
            for records in consumer.poll(timeout_ms=200).values():
                replies.extend(records)
            if settle is None and expected <= {b64(wire.correlation_id_of(r.headers)) for r in replies}:
                settle = time.monotonic() + 2
        yield Handled(prefix, replies, worker.output())
    finally:
        consumer.close()
        assert worker.stop() == 0, worker.output()


@pytest.mark.kafka
@pytest.mark.parametrize("vector", **names(HANDLED))
def test_handler_replies_as_the_vector_says(handled: Handled, vector: dict[str, Any]) -> None:
    expected = vector["reply"]
    if expected is None:
        # Nothing may come back for it; for a malformed request, the handler logs why it skipped it.
        correlation = vector["request"].get("decoded", {}).get("correlation_id")
        assert correlation is None or correlation not in handled.by_correlation
        if "error" in vector["request"]:
            assert vector["request"]["error"] in handled.log
        return
    records = handled.by_correlation.get(expected["decoded"]["correlation_id"], [])
    assert len(records) == 1, f"{len(records)} replies; handler log:\n{handled.log}"
    record = records[0]
    ignore = set(vector["ignore"])
    assert record.topic == handled.prefix + expected["topic"]
    if expected["partition"] is not None:
        assert record.partition == expected["partition"]
    assert b64(record.key) == expected["key"]
    if "reply.value" not in ignore:
        assert b64(record.value or b"") == expected["value"]

    def blank(headers: list[list[str | None]]) -> list[list[str | None]]:
        return [[name, None if f"reply.header:{name}" in ignore else value] for name, value in headers]

    assert blank([[name, b64(value)] for name, value in record.headers]) == blank(expected["headers"])


@pytest.mark.kafka
def test_handler_sends_nothing_else(handled: Handled) -> None:
    expected = {v["reply"]["decoded"]["correlation_id"] for v in HANDLED if v["reply"]}
    assert set(handled.by_correlation) == expected
