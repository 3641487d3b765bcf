"""The exactly-once mode (`--exactly-once`) through a real broker and real processes.

What it promises: each request's reply is committed to the reply topic once, together with the
request's offset, even when a handler process dies with calls in flight. The tests read the reply
topic with a read_committed consumer and count the replies per correlation id.
"""

from __future__ import annotations

import re
import signal
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from rpctest.v1 import kitchen_pb2, kitchen_pb2_grpc

from adapter.protocol import wire
from handlers.offsets import decode_done
from tests import procs

#: Runs on every Kafka engine (.ci/run repeats it with KAFKA_RPC_KAFKA_CLIENT=kafka-python).
pytestmark = [pytest.mark.kafka, pytest.mark.engines]
KITCHEN = ["tests.kitchen_service:Kitchen"]


def _handler(tmp_path: Path, log: str, bootstrap: str, prefix: str, transactional_id: str, *extra: str) -> procs.Proc:
    """A handler process serving the Kitchen in the exactly-once mode."""
    return procs.handler(tmp_path / f"{log}.log", bootstrap, prefix, "--exactly-once",
                         "--transactional-id", f"{prefix}{transactional_id}", *extra, targets=KITCHEN)


def _replies(bootstrap: str, topic: str, isolation: str) -> Counter[bytes]:
    """Reply records per correlation id in `topic`, as a consumer with `isolation` sees them."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level=isolation, enable_auto_commit=False)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        # read_committed stops at the last stable offset, which may lie below the end offset.
        ends = consumer.end_offsets(partitions)
        seen: Counter[bytes] = Counter()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    reply = wire.decode_reply(record.headers, record.value)
                    if isinstance(reply, wire.Reply):
                        seen[reply.correlation_id] += 1
            if all(consumer.position(tp) >= ends[tp] for tp in partitions):
                break
        return seen
    finally:
        consumer.close()


def _dead_letters(bootstrap: str, source: bytes) -> int:
    """Committed dead letters copied from the request record at `source` (TOPIC/PARTITION@OFFSET)."""
    consumer = KafkaConsumer("kafka-rpc.dead-letters", bootstrap_servers=bootstrap, isolation_level="read_committed",
                             auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=5000)
    try:
        return sum((wire.DEAD_LETTER_SOURCE, source) in [(n, bytes(v)) for n, v in record.headers] for record in consumer)
    finally:
        consumer.close()


def _committed(bootstrap: str, group: str, topic: str) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
    """The group's committed offsets (0 where none) and the topic's end offsets."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        committed = admin.list_group_offsets({group: None})[group]
        offsets = {tp: committed[tp].offset if tp in committed else 0 for tp in partitions}
        for tp in partitions:
            if tp in committed:
                assert decode_done(committed[tp].offset, committed[tp].metadata) == set(), "records left half-done"
        return offsets, consumer.end_offsets(partitions)
    finally:
        consumer.close()
        admin.close()


def _stop_and_count(bootstrap: str, prefix: str, *handlers: procs.Proc, wait: float = 30) -> Counter[bytes]:
    """Stop `handlers` (SIGTERM: they drain and commit), check the offsets committed are the end
    offsets with nothing half-done, and count the committed replies per correlation id."""
    for proc in handlers:
        proc.popen.send_signal(signal.SIGTERM)
        assert proc.popen.wait(wait) == 0
    committed, ends = _committed(bootstrap, f"{prefix}handlers", f"{prefix}rpctest.v1.Kitchen")
    assert committed == ends
    return _replies(bootstrap, f"{prefix}replies", "read_committed")


def test_calls_are_answered_and_committed_in_transactions(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix)
    worker = _handler(tmp_path, "h", kafka_bootstrap, prefix, "h1", "--metrics-port", "0")
    try:
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            assert kitchen.Echo(kitchen_pb2.Everything(number=7), timeout=30).number == 7
            futures = [kitchen.Echo.future(kitchen_pb2.Everything(number=i), timeout=30) for i in range(100)]
            assert [f.result().number for f in futures] == list(range(100))
            with pytest.raises(grpc.RpcError) as failed:
                kitchen.Fail(kitchen_pb2.FailRequest(code=grpc.StatusCode.NOT_FOUND.value[0], message="no such"),
                             timeout=30)
            assert failed.value.code() == grpc.StatusCode.NOT_FOUND
            # A slow call does not hold back the replies of the calls after it.
            slow = kitchen.Sleep.future(kitchen_pb2.SleepRequest(seconds=3), timeout=30)
            quick = [kitchen.Echo.future(kitchen_pb2.Everything(number=i), timeout=30) for i in range(20)]
            assert [f.result().number for f in quick] == list(range(20))
            assert not slow.done(), "the quick calls were answered while the slow one ran"
            assert procs.status_of(slow) == grpc.StatusCode.OK
            # Streams: their messages go out in whichever transaction is open.
            items = [item.i for item in kitchen.CountUp(kitchen_pb2.Count(n=500), timeout=30)]
            assert items == list(range(500))
            chat = kitchen.Chat(iter([kitchen_pb2.Item(i=i) for i in range(50)]), timeout=30)
            assert [item.i for item in chat] == [2 * i for i in range(50)]
            summary = kitchen.Collect(iter([kitchen_pb2.Item(i=i, data=b"ab") for i in range(300)]), timeout=30)
            assert (summary.count, summary.total_bytes) == (300, 600)
        # A record that cannot be answered goes to the dead-letter topic inside a transaction too.
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        bad = producer.send(f"{prefix}rpctest.v1.Kitchen", value=b"?", headers=[("rpc-method", b"x")]).get(timeout=30)
        producer.close()
        worker.wait_for("rejected")
        port = int(worker.wait_for(r"metrics on http://\S+:(\d+)/metrics").group(1))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            metrics = response.read().decode()
        committed_txns = re.search(r'^kafka_rpc_handler_transactions_total\{outcome="committed"\} (\S+)$', metrics, re.M)
        commits_timed = re.search(r"^kafka_rpc_handler_transaction_commit_seconds_count (\S+)$", metrics, re.M)
        assert committed_txns and commits_timed and float(committed_txns[1]) == float(commits_timed[1]) > 0
        assert 'outcome="aborted"' not in metrics
        replies = _stop_and_count(kafka_bootstrap, prefix, worker)
        output = worker.output()
        assert f"transactional id {prefix}h1" in output
        assert sum(replies.values()) == 126 and set(replies.values()) == {1}  # 123 unary, 3 streams
        source = f"{prefix}rpctest.v1.Kitchen/{bad.partition}@{bad.offset}".encode()
        assert _dead_letters(kafka_bootstrap, source) == 1
    finally:
        worker.stop()
        front.stop()


def test_kill_9_mid_flight_commits_each_reply_once(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix)
    first = _handler(tmp_path, "h1", kafka_bootstrap, prefix, "h1")
    second = _handler(tmp_path, "h2", kafka_bootstrap, prefix, "h2")
    restarted = None
    try:
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            started = time.monotonic()
            # Each handler runs 16 calls at a time: most of these wait in Kafka when one dies.
            futures = [kitchen.Sleep.future(kitchen_pb2.SleepRequest(seconds=0.5), timeout=90) for _ in range(200)]
            echoes = [kitchen.Echo.future(kitchen_pb2.Everything(number=i), timeout=90) for i in range(200)]
            time.sleep(0.7)
            done_before = sum(f.done() for f in futures + echoes)
            first.popen.send_signal(signal.SIGKILL)
            first.popen.wait()
            # The same transactional id fences the dead process and aborts its open transaction at once.
            restarted = _handler(tmp_path, "h1b", kafka_bootstrap, prefix, "h1")
            codes = [procs.status_of(f) for f in futures + echoes]
            took = time.monotonic() - started
            print(f"exactly-once, kill -9 with {len(codes) - done_before} of {len(codes)} calls in flight: "
                  f"{codes.count(grpc.StatusCode.OK)} OK, all done after {took:.1f}s")
            assert done_before < len(codes) / 2, "too few calls were in flight at the kill"
            assert codes == [grpc.StatusCode.OK] * len(codes)
            assert [f.result().number for f in echoes] == list(range(200))
        replies = _stop_and_count(kafka_bootstrap, prefix, second, restarted, wait=30)
        assert sum(replies.values()) == len(codes), replies.most_common(3)
        assert set(replies.values()) == {1}, f"replies committed twice: {[c for c, n in replies.items() if n > 1][:5]}"
        # Read uncommitted, the dead process's aborted replies are there too: what the mode hides.
        print(f"replies read uncommitted: {sum(_replies(kafka_bootstrap, f'{prefix}replies', 'read_uncommitted').values())}")
    finally:
        for proc in (first, second, restarted, front):
            if proc is not None:
                proc.stop()


def test_a_fenced_handler_aborts_rewinds_and_answers_each_call_once(kafka_bootstrap: str, prefix: str,
                                                                      tmp_path: Path) -> None:
    """Another producer taking the handler's transactional id aborts the open transaction:
    the handler starts a new producer, runs the uncommitted calls again, and every reply is
    still committed once."""
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix)
    worker = _handler(tmp_path, "h", kafka_bootstrap, prefix, "h1")
    try:
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            futures = [kitchen.Sleep.future(kitchen_pb2.SleepRequest(seconds=0.5), timeout=60) for _ in range(40)]
            echoes = [kitchen.Echo.future(kitchen_pb2.Everything(number=i), timeout=60) for i in range(100)]
            time.sleep(0.6)
            intruder = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"{prefix}h1")
            intruder.init_transactions()  # bumps the epoch: the handler's producer is fenced
            intruder.close()
            assert [procs.status_of(f) for f in futures + echoes] == [grpc.StatusCode.OK] * 140
            assert [f.result().number for f in echoes] == list(range(100))
        replies = _stop_and_count(kafka_bootstrap, prefix, worker)
        output = worker.output()
        assert "transaction aborted" in output
        assert "transactional producer replaced" in output
        assert sum(replies.values()) == 140 and set(replies.values()) == {1}
    finally:
        worker.stop()
        front.stop()


def test_a_handler_joining_mid_flight_takes_partitions_without_double_replies(kafka_bootstrap: str, prefix: str,
                                                                             tmp_path: Path) -> None:
    """A graceful rebalance: the first handler commits its transaction as its partitions are revoked."""
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix)
    first = _handler(tmp_path, "h1", kafka_bootstrap, prefix, "h1")
    second = None
    try:
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            futures = [kitchen.Sleep.future(kitchen_pb2.SleepRequest(seconds=0.2), timeout=90) for _ in range(100)]
            echoes = [kitchen.Echo.future(kitchen_pb2.Everything(number=i), timeout=90) for i in range(300)]
            second = _handler(tmp_path, "h2", kafka_bootstrap, prefix, "h2")
            more = [kitchen.Echo.future(kitchen_pb2.Everything(number=i), timeout=90) for i in range(100)]
            assert [procs.status_of(f) for f in futures + echoes + more] == [grpc.StatusCode.OK] * 500
            assert [f.result().number for f in echoes] == list(range(300))
        assert "partitions revoked" in first.output()
        replies = _stop_and_count(kafka_bootstrap, prefix, first, second, wait=30)
        assert sum(replies.values()) == 500 and set(replies.values()) == {1}
    finally:
        for proc in (first, second, front):
            if proc is not None:
                proc.stop()


def test_a_call_slower_than_the_revoke_grace_is_answered_once(kafka_bootstrap: str, prefix: str,
                                                              tmp_path: Path) -> None:
    """#12.2: a unary call still running when its partition is revoked (after the grace) must not
    commit a reply of its own later: its new owner runs it again and commits the only reply."""
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix)
    first = _handler(tmp_path, "h1", kafka_bootstrap, prefix, "h1")
    second = None
    try:
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            # Longer than the worker's REVOKE_GRACE (5 s); keyless, so spread over the partitions.
            slow = [kitchen.Sleep.future(kitchen_pb2.SleepRequest(seconds=7), timeout=90) for _ in range(12)]
            first.wait_for("consuming")
            time.sleep(1.0)
            second = _handler(tmp_path, "h2", kafka_bootstrap, prefix, "h2")
            first.wait_for("partitions revoked")
            assert [procs.status_of(f) for f in slow] == [grpc.StatusCode.OK] * len(slow)
        # The first handler's calls on the moved partitions end without a reply of theirs; let
        # them reach the point where the defect sent one (7 s after they began), then settle.
        time.sleep(3.0)
        replies = _stop_and_count(kafka_bootstrap, prefix, first, second, wait=60)
        twice = [c.hex() for c, n in replies.items() if n > 1]
        assert not twice, f"{len(twice)} of {len(slow)} slow calls had their reply committed twice"
        assert sum(replies.values()) == len(slow)
    finally:
        for proc in (first, second, front):
            if proc is not None:
                proc.stop()


def test_a_handler_stopped_past_its_session_commits_nothing_for_the_partitions_it_lost(
        kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    """SIGSTOP a handler with streams open until the group gives its partitions to another
    process, which runs the streams again; then SIGCONT it. It finds its partitions *lost*: it
    may send and commit nothing for them (no ABORTED reply: the chaos soak found such second
    committed replies), and every request's reply is still committed once."""
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix)
    first = _handler(tmp_path, "h1", kafka_bootstrap, prefix, "h1", "--session-timeout", "6")
    second = _handler(tmp_path, "h2", kafka_bootstrap, prefix, "h2", "--session-timeout", "6")
    try:
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            streams = [kitchen.CountUp(kitchen_pb2.Count(n=120, delay=0.1, tag=f"s{i}"), timeout=90) for i in range(16)]
            readers = [threading.Thread(target=_read_to_end, args=(s,), daemon=True) for s in streams]
            for reader in readers:
                reader.start()
            time.sleep(2)  # every stream is running, on both processes
            first.popen.send_signal(signal.SIGSTOP)
            time.sleep(12)  # past the 6 s session: the second process takes the partitions, runs the streams again
            first.popen.send_signal(signal.SIGCONT)
            first.wait_for(r"partitions lost", timeout=60)
            for reader in readers:
                reader.join(90)
        replies = _stop_and_count(kafka_bootstrap, prefix, first, second, wait=30)
        twice = [c for c, n in replies.items() if n > 1]
        print(f"exactly-once, a handler stopped past its session: {len(replies)} requests answered, {len(twice)} twice")
        assert not twice, f"{len(twice)} requests have two committed replies"
    finally:
        for proc in (first, second, front):
            proc.popen.send_signal(signal.SIGCONT)
            proc.stop()


def _read_to_end(stream: Iterator[kitchen_pb2.Item]) -> None:
    try:
        for _ in stream:
            pass
    except grpc.RpcError:
        pass  # ABORTED when its handler process moves it: counted in Kafka, not here
