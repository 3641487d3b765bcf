"""The Kafka layer's contract (adapter.kafka.contract), the same on every engine, against a real broker.

Each test runs once per engine; the requester-level contract (`Transport`) runs on both
engines and on `adapter.caller.memory.MemoryTransport`.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from adapter.caller.memory import MemoryTransport
from adapter.caller.transport import KafkaTransport, Transport
from adapter.errors import MissingTopic, TransportError
from adapter.kafka import Consumer, Engine, Partition, Record, open_engine
from adapter.kafka.handoff import Handoff, deliver
from adapter.protocol import wire
from adapter.runtime.config import KAFKA_CLIENTS, KafkaConfig, ReplyConfig

pytestmark = pytest.mark.kafka


@pytest.fixture(params=KAFKA_CLIENTS)
def engine(request: pytest.FixtureRequest, kafka_bootstrap: str) -> Engine:
    return open_engine(KafkaConfig(bootstrap_servers=(kafka_bootstrap,), client=request.param))


@pytest.fixture
def topic(engine: Engine) -> str:
    name = f"layer-{uuid.uuid4().hex[:10]}"
    admin = engine.admin()
    try:
        admin.ensure_topics({name: 2})
    finally:
        admin.close()
    return name


def _produce(engine: Engine, topic: str, records: list[tuple[bytes, int]], headers: list[tuple[str, bytes]]) -> list:
    producer = engine.producer()
    outcomes: list[Exception | None] = []
    try:
        for value, partition in records:
            producer.produce(topic, value, b"k", headers, partition, outcomes.append)
        producer.flush(10)
    finally:
        producer.close(5)
    return outcomes


def _poll_until(consumer: Consumer, done: Callable[[list[Record]], bool], timeout: float = 20) -> list[Record]:
    got: list[Record] = []
    deadline = time.monotonic() + timeout
    while not done(got) and time.monotonic() < deadline:
        got += consumer.poll(0.2, 100)
    return got


@pytest.fixture
def consumers(engine: Engine) -> Iterator[list[Consumer]]:
    made: list[Consumer] = []
    yield made
    for consumer in made:
        consumer.close()


def test_produce_then_consume_keeps_key_value_headers_and_partition(engine: Engine, topic: str,
                                                                    consumers: list[Consumer]) -> None:
    outcomes = _produce(engine, topic, [(b"a", 0), (b"b", 1), (b"c", 1)], [("h", b"1"), ("h", b"2")])
    assert outcomes == [None, None, None]  # each delivery reported, as acknowledged
    consumer = engine.consumer(f"{topic}.g", from_end=False, read_committed=False, session_timeout=10)
    consumers.append(consumer)
    assigned: list[Partition] = []
    consumer.subscribe([topic], assigned.extend, lambda parts, lost: None)
    got = _poll_until(consumer, lambda got: len(got) >= 3)
    assert sorted((r.partition, r.offset, r.value) for r in got) == [(0, 0, b"a"), (1, 0, b"b"), (1, 1, b"c")]
    assert all(r.key == b"k" and r.headers == [("h", b"1"), ("h", b"2")] and r.topic == topic for r in got)
    assert sorted(assigned) == [(topic, 0), (topic, 1)] == consumer.assignment()


def test_commit_with_metadata_then_a_new_member_starts_there(engine: Engine, topic: str,
                                                             consumers: list[Consumer]) -> None:
    _produce(engine, topic, [(b"%d" % i, 0) for i in range(5)], [])
    group = f"{topic}.g"
    first = engine.consumer(group, from_end=False, read_committed=False, session_timeout=10)
    consumers.append(first)
    first.subscribe([topic], lambda parts: None, lambda parts, lost: None)
    _poll_until(first, lambda got: len(got) >= 5)
    first.commit({(topic, 0): (3, "rpc-done1:abc")}, asynchronous=False)
    assert first.committed([(topic, 0), (topic, 1)]) == {(topic, 0): (3, "rpc-done1:abc"), (topic, 1): None}
    first.seek((topic, 0), 1)
    assert [r.offset for r in _poll_until(first, lambda got: len(got) >= 4)] == [1, 2, 3, 4]
    first.close()
    consumers.remove(first)
    second = engine.consumer(group, from_end=False, read_committed=False, session_timeout=10)
    consumers.append(second)
    second.subscribe([topic], lambda parts: None, lambda parts, lost: None)
    assert [r.offset for r in _poll_until(second, lambda got: len(got) >= 2)] == [3, 4]


def test_a_failed_asynchronous_commit_is_reported(engine: Engine, topic: str, consumers: list[Consumer]) -> None:
    """#12.10: the worker marks offsets committed when it asks; a failure must reach it to ask again."""
    failed: list[tuple[list[Partition], str]] = []
    consumer = engine.consumer(f"{topic}.g", from_end=False, read_committed=False, session_timeout=10,
                               on_commit_failed=lambda parts, why: failed.append((parts, why)))
    consumers.append(consumer)
    consumer.subscribe([topic], lambda parts: None, lambda parts, lost: None)
    _poll_until(consumer, lambda got: bool(consumer.assignment()))
    consumer.commit({(topic, 0): (0, "")}, asynchronous=True)
    _poll_until(consumer, lambda got: False, timeout=1)
    assert failed == []  # a commit that works reports nothing
    consumer.commit({(topic, 99): (5, "")}, asynchronous=True)  # no such partition: the broker refuses it
    _poll_until(consumer, lambda got: bool(failed), timeout=10)
    assert failed and failed[0][0] == [(topic, 99)], failed


def test_from_end_starts_after_what_was_there_and_reports_lag(engine: Engine, topic: str,
                                                              consumers: list[Consumer]) -> None:
    _produce(engine, topic, [(b"old", 0), (b"old", 1)], [])
    reader = engine.consumer(f"{topic}.r", from_end=True, read_committed=True, session_timeout=6)
    consumers.append(reader)
    ready = threading.Event()
    reader.subscribe([topic], lambda parts: ready.set(), lambda parts, lost: None)
    _poll_until(reader, lambda got: ready.is_set())
    assert ready.is_set()
    _produce(engine, topic, [(b"new", 1)], [])
    got = _poll_until(reader, lambda got: bool(got))
    assert [(r.partition, r.offset, r.value) for r in got] == [(1, 1, b"new")]
    lags = reader.lag()
    assert lags is not None and lags.get((topic, 1)) == 0


def test_pause_holds_records_until_resume(engine: Engine, topic: str, consumers: list[Consumer]) -> None:
    consumer = engine.consumer(f"{topic}.g", from_end=False, read_committed=False, session_timeout=10)
    consumers.append(consumer)
    ready = threading.Event()
    consumer.subscribe([topic], lambda parts: ready.set(), lambda parts, lost: None)
    _poll_until(consumer, lambda got: ready.is_set())
    consumer.pause(consumer.assignment())
    _produce(engine, topic, [(b"x", 0)], [])
    assert _poll_until(consumer, lambda got: bool(got), timeout=2) == []
    consumer.resume(consumer.assignment())
    assert [r.value for r in _poll_until(consumer, lambda got: bool(got))] == [b"x"]


def test_a_refused_record_reports_a_transport_error(engine: Engine, kafka_bootstrap: str) -> None:
    small = open_engine(KafkaConfig(bootstrap_servers=(kafka_bootstrap,), client=engine.name, max_message_bytes=1024))
    producer = small.producer()
    outcomes: list[Exception | None] = []
    try:
        with pytest.raises(TransportError, match="producing to"):
            producer.produce("any-topic", b"x" * 200_000, None, [], None, outcomes.append)
            producer.flush(5)
            raise outcomes[0] if outcomes and outcomes[0] else AssertionError("the oversized record was accepted")
    finally:
        producer.close(1)


def test_missing_topics_are_created_or_named(engine: Engine, kafka_bootstrap: str) -> None:
    name = f"layer-{uuid.uuid4().hex[:10]}"
    strict = open_engine(KafkaConfig(bootstrap_servers=(kafka_bootstrap,), client=engine.name, create_topics=False))
    admin = strict.admin()
    try:
        with pytest.raises(MissingTopic, match=name):
            admin.ensure_topics({name: 1})
        assert admin.healthy(3)
    finally:
        admin.close()


def test_an_unreachable_cluster_is_a_transport_error_not_a_hang(engine: Engine) -> None:
    from tests.brokers import free_port

    nowhere = open_engine(KafkaConfig(bootstrap_servers=(f"127.0.0.1:{free_port()}",), client=engine.name,
                                      client_options={"bootstrap_timeout_ms": 3000} if engine.name == "kafka-python" else {}))
    began = time.monotonic()
    with pytest.raises(TransportError, match="connecting to Kafka at"):
        nowhere.admin(timeout=3)
    assert time.monotonic() - began < 20


def test_transactions_commit_offsets_with_replies_and_abort_hides_them(engine: Engine, topic: str,
                                                                       consumers: list[Consumer]) -> None:
    _produce(engine, topic, [(b"req", 0)], [])
    group = f"{topic}.g"
    consumer = engine.consumer(group, from_end=False, read_committed=True, session_timeout=10)
    consumers.append(consumer)
    consumer.subscribe([topic], lambda parts: None, lambda parts, lost: None)
    _poll_until(consumer, lambda got: bool(got))
    txn = engine.transactional_producer(f"{topic}.txn", 10)
    try:
        txn.begin()
        txn.produce(topic, b"aborted", None, [], 1)
        txn.abort()
        txn.begin()
        txn.produce(topic, b"committed", None, [], 1)
        txn.commit({(topic, 0): (1, "meta")}, consumer.group_metadata())
    finally:
        txn.close(5)
    assert consumer.committed([(topic, 0)]) == {(topic, 0): (1, "meta")}
    reader = engine.consumer(f"{topic}.reader", from_end=False, read_committed=True, session_timeout=10)
    consumers.append(reader)
    reader.subscribe([topic], lambda parts: None, lambda parts, lost: None)
    got = _poll_until(reader, lambda got: any(r.value == b"committed" for r in got))
    assert [r.value for r in got if r.partition == 1] == [b"committed"]


def test_delivery_reports_reach_the_loop_in_batches(engine: Engine, topic: str) -> None:
    async def run() -> int:
        loop = asyncio.get_running_loop()
        wakeups = 0
        handoff = Handoff(loop)
        original = handoff._run

        def counted() -> None:
            nonlocal wakeups
            wakeups += 1
            original()

        handoff._run = counted  # type: ignore[method-assign]
        producer = engine.producer()
        try:
            futures = [deliver(producer, handoff, topic, b"x", None, [], 0) for _ in range(500)]
            await asyncio.wait_for(asyncio.gather(*futures), 20)
        finally:
            await asyncio.to_thread(producer.close, 5)
        return wakeups

    wakeups = asyncio.run(run())
    assert 1 <= wakeups < 500, wakeups


# ---- the requester's contract (`Transport`): both engines, and memory ----


def _echo_transport(kind: str, bootstrap: str) -> tuple[Transport, Callable[[], Any] | None]:
    """A transport whose request topic is answered by an echo: in memory, or a thread on Kafka."""
    if kind == "memory":
        async def serve(topic: str, key: bytes | None, value: bytes, headers: wire.Headers) -> Any:
            request = wire.decode_request(headers, value)
            assert isinstance(request, wire.Request)
            reply = wire.Reply(request.correlation_id, payload=request.payload)
            return reply.encode_headers(), reply.payload

        return MemoryTransport(serve), None
    prefix = f"layer-{uuid.uuid4().hex[:8]}."
    kafka = KafkaConfig(bootstrap_servers=(bootstrap,), client=kind, topic_prefix=prefix, topic_partitions=2)
    transport = KafkaTransport(ReplyConfig(kafka, f"{prefix}replies", 2), {f"{prefix}echo"})
    stop = threading.Event()

    def echo() -> None:
        engine = open_engine(kafka)
        consumer = engine.consumer(f"{prefix}echo", from_end=False, read_committed=False, session_timeout=10)
        producer = engine.producer()
        consumer.subscribe([f"{prefix}echo"], lambda parts: None, lambda parts, lost: None)
        while not stop.is_set():
            for record in consumer.poll(0.1, 100):
                request = wire.decode_request(record.headers, record.value)
                if isinstance(request, wire.Request) and request.reply_topic:
                    reply = wire.Reply(request.correlation_id, payload=request.payload)
                    producer.produce(request.reply_topic, reply.payload, None, list(reply.encode_headers()),
                                     request.reply_partition)
        producer.close(5)
        consumer.close()

    thread = threading.Thread(target=echo, daemon=True)
    thread.start()

    def stopper() -> None:
        stop.set()
        thread.join(20)

    return transport, stopper


@pytest.mark.parametrize("kind", ["memory", *KAFKA_CLIENTS])
def test_transport_contract_send_replies_partitions_health(kind: str, kafka_bootstrap: str) -> None:
    from adapter.caller.requester import Requester

    transport, stop = _echo_transport(kind, kafka_bootstrap)

    async def run() -> None:
        requester = Requester(transport, default_timeout=20)
        await requester.start(timeout=30)
        try:
            assert requester.ready and await requester.transport_healthy()
            topic = next(iter(getattr(transport, "_request_topics", {"memory.echo"})))
            replies = await asyncio.gather(*(requester.call("/x.Echo/Echo", b"%d" % i, topic=topic) for i in range(20)))
            assert [r.payload for r in replies] == [b"%d" % i for i in range(20)]
        finally:
            await requester.stop()

    try:
        asyncio.run(run())
    finally:
        if stop is not None:
            stop()


def test_a_key_lands_on_the_same_partition_on_every_engine(kafka_bootstrap: str) -> None:
    """murmur2 on both (as Java clients): per-key order holds across engines and languages."""
    placements = []
    for client in KAFKA_CLIENTS:
        engine = open_engine(KafkaConfig(bootstrap_servers=(kafka_bootstrap,), client=client))
        name = f"layer-{uuid.uuid4().hex[:10]}"
        admin = engine.admin()
        admin.ensure_topics({name: 8})
        admin.close()
        producer = engine.producer()
        for i in range(16):
            producer.produce(name, b"", b"customer-%d" % i, [])
        producer.close(10)
        consumer = engine.consumer(f"{name}.g", from_end=False, read_committed=False, session_timeout=10)
        try:
            consumer.subscribe([name], lambda parts: None, lambda parts, lost: None)
            got = _poll_until(consumer, lambda got: len(got) >= 16)
        finally:
            consumer.close()
        placements.append({r.key: r.partition for r in got})
    assert len(placements[0]) == 16 and placements[0] == placements[1]
    assert len(set(placements[0].values())) > 1


def test_consumers_names_the_groups_with_live_members_on_either_protocol(engine: Engine, kafka_bootstrap: str,
                                                                         consumers: list[Consumer]) -> None:
    # Each engine's admin must see groups of both protocols, whichever engine runs them: a
    # frontend on kafka-python watches handlers on confluent, whose groups use KIP-848.
    names = [f"layer-{uuid.uuid4().hex[:10]}" for _ in range(3)]
    creator = engine.admin()
    try:
        creator.ensure_topics(dict.fromkeys(names, 2))
    finally:
        creator.close()
    members = {}
    for client, protocol, topic in (("confluent", "consumer", names[0]), ("kafka-python", "classic", names[1])):
        group = f"{topic}-{protocol}"
        member = open_engine(KafkaConfig(bootstrap_servers=(kafka_bootstrap,), client=client)).consumer(
            group, from_end=False, read_committed=False, session_timeout=10, protocol=protocol)
        member.subscribe([topic], lambda partitions: None, lambda partitions, lost: None)
        consumers.append(member)
        members[topic] = (group, member)
    admin = engine.admin()
    try:
        found: dict[str, set[str]] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for _group, member in members.values():
                member.poll(0.1, 10)  # joins the group; the assignment comes during poll
            found = admin.consumers(names, 5)
            if all(found[t] for t in members):
                break
        assert found == {names[0]: {members[names[0]][0]}, names[1]: {members[names[1]][0]}, names[2]: set()}
        # A member that leaves takes its group off the list.
        members[names[1]][1].close()
        consumers.remove(members[names[1]][1])
        deadline = time.monotonic() + 30
        while found[names[1]] and time.monotonic() < deadline:
            members[names[0]][1].poll(0.1, 10)
            found = admin.consumers(names, 5)
        assert found == {names[0]: {members[names[0]][0]}, names[1]: set(), names[2]: set()}
    finally:
        admin.close()


def test_a_group_lookup_process_that_dies_costs_one_lookup(kafka_bootstrap: str) -> None:
    # librdkafka aborts a process whose admin client loses a group coordinator mid-request
    # (adapter.kafka.group_lookup): the confluent engine describes groups in a child process.
    import os
    import signal

    admin = open_engine(KafkaConfig(bootstrap_servers=(kafka_bootstrap,), client="confluent")).admin()
    try:
        assert admin.consumers(["nothing-here"], 5) == {"nothing-here": set()}
        lookup = admin._lookup  # type: ignore[attr-defined]
        [child] = list(lookup._pool._processes)
        os.kill(child, signal.SIGKILL)  # as librdkafka's abort() would
        with pytest.raises(TransportError, match="lookup process died"):
            admin.consumers(["nothing-here"], 5)
        assert admin.consumers(["nothing-here"], 5) == {"nothing-here": set()}
        assert child not in lookup._pool._processes
    finally:
        admin.close()


def test_a_frontend_killed_with_sigkill_leaves_no_lookup_process_behind(kafka_bootstrap: str, prefix: str,
                                                                         tmp_path: Path) -> None:
    # A frontend on the confluent engine looks groups up in a child process; killed with
    # SIGKILL, it never shuts that child down, so the child must notice on its own.
    import signal

    from tests import procs

    front, _ = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix, env={"KAFKA_RPC_KAFKA_CLIENT": "confluent"})
    try:
        children = _children(front.pid)
        assert children, f"no group-lookup process under the frontend:\n{front.output()}"
    finally:
        front.stop(signal.SIGKILL)
    deadline = time.monotonic() + 15
    while (alive := [pid for pid in children if _alive(pid)]) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive, f"lookup process(es) {alive} outlived their frontend"


def _children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (from /proc)."""
    found = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":\t", 1) for line in status.read_text().splitlines() if ":\t" in line)
        except OSError:
            continue
        if fields.get("PPid", "").strip() == str(pid):
            found.append(int(status.parent.name))
    return found


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie, dead but not reaped by its new parent, does not)."""
    try:
        state = Path(f"/proc/{pid}/status").read_text().split("State:\t", 1)[1][0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_a_producer_whose_records_wait_with_no_delivery_report_warns(monkeypatch: pytest.MonkeyPatch,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Records stuck in a confluent producer are not silent: after STALLED_AFTER seconds with no
    delivery report the producer warns how many wait, with librdkafka's last errors (a handler's
    replies once sat in a producer for a minute after a broker restart, and nothing said so)."""
    import socket

    from adapter.kafka import confluent

    monkeypatch.setattr(confluent, "STALLED_AFTER", 1.0)
    with socket.socket() as sock:  # a port nobody listens on: the records can only wait
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    producer = open_engine(KafkaConfig(bootstrap_servers=(f"127.0.0.1:{port}",), client="confluent")).producer()
    try:
        with caplog.at_level("WARNING", logger=confluent.__name__):
            for i in range(3):
                producer.produce("stalled", b"v%d" % i, None, [], 0, None)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and not any("waited" in r.getMessage() for r in caplog.records):
                time.sleep(0.1)
        warnings = [r.getMessage() for r in caplog.records if "waited" in r.getMessage()]
        assert warnings, "no warning about records waiting for Kafka"
        assert warnings[0].startswith("producer: 3 records have waited"), warnings[0]
        assert "Connection refused" in warnings[0], warnings[0]  # librdkafka's reason, from its error callback
    finally:
        producer.close(0)
