"""Fault injection with real processes and a real broker: nothing lost, nothing hangs."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from rpctest.v1 import kitchen_pb2, kitchen_pb2_grpc

from tests import procs

#: Runs on every Kafka engine (.ci/run repeats it with KAFKA_RPC_KAFKA_CLIENT=kafka-python).
pytestmark = [pytest.mark.kafka, pytest.mark.engines]
KITCHEN = ["tests.kitchen_service:Kitchen"]


def test_kill_9_of_one_handler_loses_no_call(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix)
    first = procs.handler(tmp_path / "h1.log", kafka_bootstrap, prefix, targets=KITCHEN)
    second = procs.handler(tmp_path / "h2.log", kafka_bootstrap, prefix, targets=KITCHEN)
    try:
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            # Slow calls, so that hundreds are in flight when the first handler dies.
            started = time.monotonic()
            # Each handler runs 16 calls at a time: most of these wait in Kafka when one dies.
            futures = [kitchen.Sleep.future(kitchen_pb2.SleepRequest(seconds=0.5), timeout=60) for _ in range(200)]
            echoes = [kitchen.Echo.future(kitchen_pb2.Everything(number=i), timeout=60) for i in range(200)]
            time.sleep(1.0)
            done_before = sum(f.done() for f in futures + echoes)
            survivor_before = len(second.output())
            first.popen.send_signal(signal.SIGKILL)
            codes = [procs.status_of(f) for f in futures + echoes]
            took = time.monotonic() - started
            print(f"kill -9 with {len(codes) - done_before} of {len(codes)} calls in flight: "
                  f"{codes.count(grpc.StatusCode.OK)} OK, all done after {took:.1f}s")
            assert done_before < len(codes) / 2, "too few calls were in flight at the kill"
            assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.DEADLINE_EXCEEDED}
            assert codes.count(grpc.StatusCode.OK) == len(codes), "a deadline of 60 s outlasts the takeover"
            assert [f.result().number for f in echoes] == list(range(200))
            # The survivor took the dead process's partitions over (a new assignment, logged after
            # the kill) and redelivered its calls.
            assert "partitions assigned" in second.output()[survivor_before:]
    finally:
        for proc in (first, second, front):
            proc.stop()


def test_sigterm_on_a_handler_finishes_replies_and_commits(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix)
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, targets=KITCHEN)
    try:
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            futures = [kitchen.Sleep.future(kitchen_pb2.SleepRequest(seconds=1.5), timeout=30) for _ in range(10)]
            time.sleep(0.7)  # the calls are running in the handler
            worker.popen.send_signal(signal.SIGTERM)
            assert [procs.status_of(f) for f in futures] == [grpc.StatusCode.OK] * 10
        assert worker.popen.wait(30) == 0
        assert "finishing 10 calls in progress" in worker.output()
        topic = f"{prefix}rpctest.v1.Kitchen"
        consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
            ends = consumer.end_offsets(partitions)
            group = f"{prefix}handlers"
            committed = admin.list_group_offsets({group: None})[group]
            assert {tp: committed[tp].offset if tp in committed else 0 for tp in partitions} == ends
        finally:
            consumer.close()
            admin.close()
    finally:
        worker.stop()
        front.stop()


@pytest.mark.parametrize(("method", "mode"), [("SyncChat", ()), ("Chat", ("--exactly-once",))])
def test_sigterm_on_a_handler_ends_client_streams_still_reading(kafka_bootstrap: str, prefix: str, tmp_path: Path,
                                                                 method: str, mode: tuple[str, ...]) -> None:
    """A draining handler fetches nothing more, so a stream waiting for request messages would
    wait out the drain (holding its partition) for messages it can never get: it ends at once,
    UNAVAILABLE, while a server stream and a unary call in flight finish."""
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix)
    mode = (*mode, "--transactional-id", f"{prefix}h") if mode else ()
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, "--drain-timeout", "120", *mode,
                           targets=KITCHEN)
    release = threading.Event()

    def requests() -> Iterator[kitchen_pb2.Item]:
        yield kitchen_pb2.Item(i=1)
        release.wait(150)  # the client never half-closes while the test runs

    try:
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            chat = getattr(kitchen, method)(requests(), timeout=150)
            assert next(chat).i == 2  # the stream is open in the handler
            watch = kitchen.CountUp(kitchen_pb2.Count(n=20, delay=0.1), timeout=60)
            assert next(watch).i == 0
            sleeper = kitchen.Sleep.future(kitchen_pb2.SleepRequest(seconds=1.5), timeout=60)
            time.sleep(0.5)
            worker.popen.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.RpcError) as ended:
                next(chat)
            assert ended.value.code() == grpc.StatusCode.UNAVAILABLE, ended.value
            assert "stopping" in (ended.value.details() or "")
            assert len(list(watch)) == 19 and procs.status_of(sleeper) == grpc.StatusCode.OK
            assert worker.popen.wait(60) == 0  # not the 120 s drain timeout
    finally:
        release.set()
        worker.stop()
        front.stop()


def test_sigterm_on_a_frontend_drains_calls_in_flight(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, targets=KITCHEN)
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix, "--grace", "10")
    try:
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            futures = [kitchen.Sleep.future(kitchen_pb2.SleepRequest(seconds=1.0), timeout=30) for _ in range(10)]
            time.sleep(0.3)
            front.popen.send_signal(signal.SIGTERM)
            assert [procs.status_of(f) for f in futures] == [grpc.StatusCode.OK] * 10
            assert front.popen.wait(30) == 0
            with pytest.raises(grpc.RpcError) as info:
                kitchen.Nothing(empty_pb2.Empty(), timeout=3)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        front.stop()
        worker.stop()


def test_a_killed_frontend_fails_its_calls_and_a_new_one_serves(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    reply_topic = f"{prefix}replies"
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, targets=KITCHEN)
    front, address = procs.frontend(tmp_path / "f1.log", kafka_bootstrap, prefix, reply_topic=reply_topic)
    try:
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            futures = [kitchen.Sleep.future(kitchen_pb2.SleepRequest(seconds=2.0), timeout=30) for _ in range(10)]
            time.sleep(0.5)
            front.popen.send_signal(signal.SIGKILL)
            assert {procs.status_of(f) for f in futures} == {grpc.StatusCode.UNAVAILABLE}
        # A new instance takes the reply partitions over; the dead one's late replies find no caller.
        again, address = procs.frontend(tmp_path / "f2.log", kafka_bootstrap, prefix, reply_topic=reply_topic)
        try:
            with grpc.insecure_channel(address) as channel:
                kitchen = kitchen_pb2_grpc.KitchenStub(channel)
                futures = [kitchen.Echo.future(kitchen_pb2.Everything(number=i), timeout=30) for i in range(50)]
                assert [f.result().number for f in futures] == list(range(50))
        finally:
            again.stop()
    finally:
        front.stop()
        worker.stop()


def test_retries_with_an_idempotency_key_run_once(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, targets=KITCHEN)
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix)
    try:
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            key = [("idempotency-key", f"order-{prefix}")]
            first = kitchen.Whoami(empty_pb2.Empty(), metadata=key, timeout=20)
            # The peer names the record that ran: a retry gets the first call's reply back.
            retries = {kitchen.Whoami(empty_pb2.Empty(), metadata=key, timeout=20).peer for _ in range(3)}
            assert retries == {first.peer}
            other = kitchen.Whoami(empty_pb2.Empty(), metadata=[("idempotency-key", "another")], timeout=20)
            plain = {kitchen.Whoami(empty_pb2.Empty(), timeout=20).peer for _ in range(3)}
            assert other.peer != first.peer and len(plain) == 3
    finally:
        front.stop()
        worker.stop()


def test_an_idempotency_key_reused_with_another_request_is_refused(kafka_bootstrap: str, prefix: str,
                                                                   tmp_path: Path) -> None:
    """#12.11: a key names one request; naming it with another gets FAILED_PRECONDITION, never the
    first caller's reply."""
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, targets=KITCHEN)
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix)
    try:
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            key = [("idempotency-key", f"pay-{prefix}")]
            assert kitchen.Echo(kitchen_pb2.Everything(tags=["ann"]), metadata=key, timeout=20).tags == ["ann"]
            with pytest.raises(grpc.RpcError) as reused:
                kitchen.Echo(kitchen_pb2.Everything(tags=["bob"]), metadata=key, timeout=20)
            assert reused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "idempotency key reused with a different request" in reused.value.details()
            # The same request with the same key still gets the first reply.
            assert kitchen.Echo(kitchen_pb2.Everything(tags=["ann"]), metadata=key, timeout=20).tags == ["ann"]
    finally:
        front.stop()
        worker.stop()


def test_limits_give_resource_exhausted_at_once(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, targets=KITCHEN)
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix, "--max-in-flight", "5",
                                    "--max-message-bytes", str(1 << 20))
    try:
        with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 8 << 20)]) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                kitchen.Echo(kitchen_pb2.Everything(blob=b"x" * (2 << 20)), timeout=20)
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert str(1 << 20) in info.value.details()
            futures = [kitchen.Sleep.future(kitchen_pb2.SleepRequest(seconds=1.0), timeout=20) for _ in range(20)]
            codes = [procs.status_of(f) for f in futures]
            assert codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED) >= 10
            assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    finally:
        front.stop()
        worker.stop()


def test_a_def_handler_that_never_returns_does_not_keep_the_process_alive(kafka_bootstrap: str, prefix: str,
                                                                          tmp_path: Path) -> None:
    """#12.10: after the drain timeout the process exits, whatever its handler threads do."""
    events = tmp_path / "events"
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, "--drain-timeout", "1", targets=KITCHEN,
                           env={"KITCHEN_EVENTS": str(events)})
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix)
    try:
        with grpc.insecure_channel(address) as channel:
            hung = kitchen_pb2_grpc.KitchenStub(channel).Hang.future(empty_pb2.Empty(), timeout=60)
            procs.wait_for_event(events, "hanging", timeout=30)
            worker.popen.send_signal(signal.SIGTERM)
            assert worker.popen.wait(60) == 0, worker.output()
            assert "still running" in worker.output()
            hung.cancel()
    finally:
        front.stop()
        worker.stop()
