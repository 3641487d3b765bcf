"""Conformance vectors (tests/vectors/*.json, format in tests/vectors/README.md).

`adapter.protocol.wire` must read every vector's records as the vector says and write the canonical
ones byte for byte; a real handler process, given the request records on a real broker,
must answer with exactly the reply records and dead letters (less the fields a vector lists
in `ignore`).
"""

from __future__ import annotations

import base64
import json
import re
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from adapter.errors import MalformedRecord
from adapter.protocol import wire
from tests import procs

VECTORS = [json.loads(path.read_text()) for path in sorted((Path(__file__).parent / "vectors").glob("*.json"))]
FIELDS = ["name", "description", "handler", "canonical", "request", "request_frames", "reply_frames", "reply",
          "dead_letter", "ignore", "implementation_specific"]
REPLY_PARTITIONS = 4
DEAD_LETTERS = "dead-letters"


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


def requests_of(vector: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The request-topic records of a vector, in the order they are produced: (part, record)."""
    first = [("request", vector["request"])] if vector["request"] else []
    return first + [("request_frames", record) for record in vector["request_frames"]]


def replies_of(vector: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """The reply-topic records of a vector, in the order a handler sends them: (part, record)."""
    last = [("reply", vector["reply"])] if vector["reply"] else []
    return [("reply_frames", record) for record in vector["reply_frames"]] + last


def cases(records_of: Any, canonical_only: bool = False) -> dict[str, Any]:
    """Parameters (vector, part, record) for every record of every vector, named NAME/PART/INDEX."""
    values, ids = [], []
    for vector in VECTORS:
        if canonical_only and not vector["canonical"]:
            continue
        for index, (part, record) in enumerate(records_of(vector)):
            values.append((vector, part, record))
            ids.append(f"{vector['name']}/{part}/{index}")
    return {"argnames": ("vector", "part", "record"), "argvalues": values, "ids": ids}


def test_vectors_are_present_and_named_after_their_file() -> None:
    assert len(VECTORS) >= 20
    assert len({v["name"] for v in VECTORS}) == len(VECTORS)
    for path in (Path(__file__).parent / "vectors").glob("*.json"):
        assert json.loads(path.read_text())["name"] == path.stem
    for vector in VECTORS:
        assert list(vector) == FIELDS, vector["name"]


# What adapter.protocol.wire reads and writes.


def frame_json(frame: wire.Frame) -> dict[str, Any]:
    return {"kind": frame.kind, "correlation_id": b64(frame.correlation_id),
            "seq": frame.seq if frame.kind == wire.MESSAGE else None, "payload": b64(frame.payload)}


@pytest.mark.parametrize(**cases(requests_of))
def test_request_decodes(vector: dict[str, Any], part: str, record: dict[str, Any]) -> None:
    if "error" in record:
        with pytest.raises(MalformedRecord) as info:
            wire.decode_request(headers_of(record), raw(record["value"]))
        assert str(info.value) == record["error"]
        return
    decoded = wire.decode_request(headers_of(record), raw(record["value"]))
    if part == "request_frames":
        assert isinstance(decoded, wire.Frame)
        assert frame_json(decoded) == record["decoded"]
        return
    assert isinstance(decoded, wire.Request)
    assert {
        "kind": wire.OPEN if decoded.opens_stream else None,
        "method": decoded.method,
        "correlation_id": b64(decoded.correlation_id),
        "reply_topic": decoded.reply_topic,
        "reply_partition": decoded.reply_partition,
        "deadline_ms": None if decoded.deadline is None else round(decoded.deadline * 1000),
        "metadata": metadata_json(decoded.metadata),
        "payload": b64(decoded.payload),
    } == record["decoded"]


def frame_from(decoded: dict[str, Any]) -> wire.Frame:
    return wire.Frame(correlation_id=raw(decoded["correlation_id"]) or b"", kind=decoded["kind"],
                      seq=decoded["seq"] or 0, payload=raw(decoded["payload"]) or b"")


@pytest.mark.parametrize(**cases(requests_of, canonical_only=True))
def test_canonical_request_encodes_exactly(vector: dict[str, Any], part: str, record: dict[str, Any]) -> None:
    decoded = record["decoded"]
    encoded: wire.Request | wire.Frame
    if part == "request_frames":
        encoded = frame_from(decoded)
    else:
        encoded = wire.Request(
            method=decoded["method"],
            correlation_id=raw(decoded["correlation_id"]) or b"",
            reply_topic=decoded["reply_topic"],
            reply_partition=decoded["reply_partition"],
            deadline=None if decoded["deadline_ms"] is None else decoded["deadline_ms"] / 1000,
            metadata=metadata_from(decoded["metadata"]),
            payload=raw(decoded["payload"]) or b"",
            opens_stream=decoded["kind"] == wire.OPEN,
        )
    assert [[name, b64(value)] for name, value in encoded.encode_headers()] == record["headers"]
    assert b64(encoded.payload) == record["value"]


@pytest.mark.parametrize(**cases(replies_of))
def test_reply_decodes(vector: dict[str, Any], part: str, record: dict[str, Any]) -> None:
    if "error" in record:
        with pytest.raises(MalformedRecord) as info:
            wire.decode_reply(headers_of(record), raw(record["value"]))
        assert str(info.value) == record["error"]
        return
    decoded = wire.decode_reply(headers_of(record), raw(record["value"]))
    if part == "reply_frames":
        assert isinstance(decoded, wire.Frame) and decoded.kind == wire.MESSAGE
        assert frame_json(decoded) == record["decoded"]
        return
    assert isinstance(decoded, wire.Reply)
    expected = dict(record["decoded"])
    got = {
        "correlation_id": b64(decoded.correlation_id),
        "code": decoded.code.value[0],
        "code_name": decoded.code.name,
        "message": decoded.message,
        "trailing_metadata": metadata_json(decoded.trailing_metadata),
        "payload": b64(decoded.payload),
    }
    if "reply.value" in vector["ignore"]:
        got.pop("payload")
        expected.pop("payload")
    assert got == expected


@pytest.mark.parametrize(**cases(replies_of, canonical_only=True))
def test_canonical_reply_encodes_exactly(vector: dict[str, Any], part: str, record: dict[str, Any]) -> None:
    decoded = record["decoded"]
    encoded: wire.Reply | wire.Frame
    if part == "reply_frames":
        encoded = frame_from(decoded)
    else:
        encoded = wire.Reply(
            correlation_id=raw(decoded["correlation_id"]) or b"",
            code=wire.status_code(decoded["code"]),
            message=decoded["message"],
            trailing_metadata=metadata_from(decoded["trailing_metadata"]),
            payload=raw(decoded["payload"]) or b"",
        )
    assert [[name, b64(value)] for name, value in encoded.encode_headers()] == record["headers"]


@pytest.mark.parametrize("vector", [v for v in VECTORS if v["dead_letter"]], ids=lambda v: v["name"])
def test_dead_letter_is_the_request_and_why(vector: dict[str, Any]) -> None:
    # The copy keeps the rejected record's key, value and headers, and adds the reason and the source.
    dead = vector["dead_letter"]
    [(_, rejected)] = [(part, r) for part, r in requests_of(vector) if "error" in r] or requests_of(vector)
    assert (dead["key"], dead["value"]) == (rejected["key"], rejected["value"])
    assert dead["headers"] == [*rejected["headers"], [wire.DEAD_LETTER_REASON, b64(dead["decoded"]["reason"].encode())],
                               [wire.DEAD_LETTER_SOURCE, b64(dead["decoded"]["source"].encode())]]
    if "error" in rejected:
        assert dead["decoded"]["reason"] == f"malformed request: {rejected['error']}"


# A real handler process, given the request records.

HANDLED = [v for v in VECTORS if v["handler"]]


def prefixed(prefix: str, headers: list[tuple[str, bytes | None]]) -> list[tuple[str, bytes]]:
    # Topic names in vectors are relative, so reply topics get the test's prefix too, also where a
    # handler's message quotes one.
    out = []
    for name, value in headers:
        assert value is not None, "kafka-python cannot produce null header values; mark such vectors handler: false"
        if name == wire.REPLY_TOPIC:
            value = prefix.encode() + value
        elif name in (wire.STATUS_MESSAGE, wire.DEAD_LETTER_REASON):
            value = value.replace(b"reply topic '", b"reply topic '" + prefix.encode())
        out.append((name, value))
    return out


def correlation_of(vector: dict[str, Any]) -> str | None:
    """The correlation id a vector's replies carry (that of its last request-topic record)."""
    found = None
    for _, record in requests_of(vector):
        found = b64(wire.correlation_id_of(headers_of(record))) or found
    return found


def expected_replies(vectors: list[dict[str, Any]]) -> dict[str | None, int]:
    return {correlation_of(v): len(replies_of(v)) for v in vectors if replies_of(v)}


class Handled:
    def __init__(self, prefix: str, replies: list[Any], dead_letters: list[Any], sources: dict[str, list[str]],
                 log: str) -> None:
        self.prefix = prefix
        self.log = log
        #: Where each vector's request records landed: TOPIC/PARTITION@OFFSET, by vector name.
        self.sources = sources
        self.by_correlation: dict[str | None, list[Any]] = {}
        for record in replies:
            self.by_correlation.setdefault(b64(wire.correlation_id_of(record.headers)), []).append(record)
        self.by_source: dict[str | None, list[Any]] = {}
        for record in dead_letters:
            source = dict(record.headers).get(wire.DEAD_LETTER_SOURCE)
            self.by_source.setdefault(source.decode() if source is not None else None, []).append(record)


def wait_until_settled(worker: procs.Proc, quiet: float = 2.0, timeout: float = 60.0) -> None:
    """Wait until the handler's group has stopped rebalancing.

    procs.handler returns at the first assignment, but kafka-python may rejoin the group a
    moment later (its metadata of topics created a moment ago arrives after the first
    assignment), which aborts the calls in flight with ABORTED and replays them.
    """
    deadline = time.monotonic() + timeout
    seen, since = None, time.monotonic()
    while time.monotonic() < deadline:
        events = re.findall(r"partitions (assigned|revoked)", worker.output())
        if events != seen:
            seen, since = events, time.monotonic()
        elif events and events[-1] == "assigned" and time.monotonic() - since >= quiet:
            return
        time.sleep(0.1)
    raise AssertionError(f"the handler's group did not settle:\n{worker.output()}")


@pytest.fixture(scope="module")
def handled(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Handled]:
    """Every handler vector's request records produced to a handler process; every reply and dead letter."""
    prefix = f"t{uuid.uuid4().hex[:10]}."
    reply_topic, dead_letter_topic = f"{prefix}replies", f"{prefix}{DEAD_LETTERS}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(reply_topic, REPLY_PARTITIONS, 1), NewTopic(dead_letter_topic, REPLY_PARTITIONS, 1)])
    admin.close()
    worker = procs.handler(tmp_path_factory.mktemp("vectors") / "handler.log", kafka_bootstrap, prefix,
                           "--dead-letter-topic", dead_letter_topic, "--allow-reply-topic", reply_topic,
                           targets=["tests.kitchen_service:Kitchen"])
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    partitions = [TopicPartition(topic, p) for topic in (reply_topic, dead_letter_topic) for p in range(REPLY_PARTITIONS)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    try:
        wait_until_settled(worker)
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        sent: list[tuple[str, Any]] = []
        for vector in HANDLED:
            # A call's records share a key, hence a partition: they arrive in order.
            for _, record in requests_of(vector):
                sent.append((vector["name"], producer.send(
                    prefix + record["topic"], key=raw(record["key"]), value=raw(record["value"]) or b"",
                    headers=prefixed(prefix, headers_of(record)))))
        producer.flush(10)
        producer.close()
        sources: dict[str, list[str]] = {}
        for name, future in sent:
            where = future.get(10)
            sources.setdefault(name, []).append(f"{where.topic}/{where.partition}@{where.offset}")
        expected = expected_replies(HANDLED)
        dead_expected = sum(1 for v in HANDLED if v["dead_letter"])
        replies: list[Any] = []
        dead_letters: list[Any] = []
        deadline = time.monotonic() + 60
        settle = None  # once everything expected is in, wait a little longer for unexpected records
        while time.monotonic() < (settle or deadline):
            for tp, records in consumer.poll(timeout_ms=200).items():
                (dead_letters if tp.topic == dead_letter_topic else replies).extend(records)
            got: dict[str | None, int] = {}
            for r in replies:
                cid = b64(wire.correlation_id_of(r.headers))
                got[cid] = got.get(cid, 0) + 1
            if settle is None and all(got.get(c, 0) >= n for c, n in expected.items()) \
                    and len(dead_letters) >= dead_expected:
                settle = time.monotonic() + 2
        yield Handled(prefix, replies, dead_letters, sources, worker.output())
    finally:
        consumer.close()
        assert worker.stop() == 0, worker.output()


def assert_record(handled: Handled, vector: dict[str, Any], part: str, got: Any, expected: dict[str, Any]) -> None:
    """A record that came back against the vector's: topic, partition (unless null), key, value, headers."""
    ignore = set(vector["ignore"])
    assert got.topic == handled.prefix + expected["topic"]
    if expected["partition"] is not None:
        assert got.partition == expected["partition"]
    assert b64(got.key) == expected["key"]
    if f"{part}.value" not in ignore:
        assert b64(got.value or b"") == expected["value"]

    def blank(headers: list[tuple[str, bytes | None]]) -> list[list[str | None]]:
        return [[name, None if f"{part}.header:{name}" in ignore else b64(value)] for name, value in headers]

    assert blank(list(got.headers)) == blank(prefixed(handled.prefix, headers_of(expected)))


@pytest.mark.kafka
@pytest.mark.parametrize("vector", HANDLED, ids=[v["name"] for v in HANDLED])
def test_handler_replies_as_the_vector_says(handled: Handled, vector: dict[str, Any]) -> None:
    correlation = correlation_of(vector)
    got = handled.by_correlation.get(correlation, []) if correlation else []
    expected = replies_of(vector)
    if not expected:
        # Nothing may come back for it.
        replies = [(r.topic, r.partition, r.headers) for r in got]
        assert replies == [], "the handler replied to a request that must get no reply"
    else:
        # One partition, so in the order the handler sent them: stream messages, then the final record.
        assert len(got) == len(expected), f"{len(got)} replies; handler log:\n{handled.log}"
        for record, (part, want) in zip(got, expected, strict=True):
            assert_record(handled, vector, part, record, want)
    for _, record in requests_of(vector):
        if "error" in record:
            assert record["error"] in handled.log  # the handler logs why it rejected the record


@pytest.mark.kafka
@pytest.mark.parametrize("vector", HANDLED, ids=[v["name"] for v in HANDLED])
def test_handler_dead_letters_as_the_vector_says(handled: Handled, vector: dict[str, Any]) -> None:
    mine = [(source, record) for source in handled.sources[vector["name"]] for record in handled.by_source.get(source, [])]
    if vector["dead_letter"] is None:
        assert mine == [], "the handler dead-lettered a record it must not"
        return
    assert len(mine) == 1, f"{len(mine)} dead letters; handler log:\n{handled.log}"
    source, record = mine[0]
    assert_record(handled, vector, "dead_letter", record, vector["dead_letter"])
    # rpc-dead-letter-source is where the rejected record was, which only this run knows.
    request_topic = handled.prefix + vector["dead_letter"]["decoded"]["source"].split("/")[0]
    assert re.fullmatch(rf"{re.escape(request_topic)}/\d+@\d+", source)


@pytest.mark.kafka
def test_handler_sends_nothing_else(handled: Handled) -> None:
    expected = expected_replies(HANDLED)
    assert {c: len(r) for c, r in handled.by_correlation.items()} == expected
    dead_letters = {s for v in HANDLED if v["dead_letter"] for s in handled.sources[v["name"]]}
    assert set(handled.by_source) <= dead_letters
    assert sum(map(len, handled.by_source.values())) == sum(1 for v in HANDLED if v["dead_letter"])
