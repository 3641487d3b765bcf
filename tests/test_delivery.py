"""Replies that Kafka refuses (#12.3): never silently lost, in both delivery modes.

A refused reply is answered with an error status when an error reply still gets through (a
reply too large for Kafka), else the request goes to the dead-letter topic; either way counted,
logged at WARNING with the call's fields, and only then committed past.
"""

from __future__ import annotations

import re
import signal
import urllib.request
from pathlib import Path

import grpc
import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from rpctest.v1 import kitchen_pb2, kitchen_pb2_grpc

from adapter.protocol import wire
from tests import procs
from tests.test_exactly_once import _committed, _dead_letters

pytestmark = [pytest.mark.kafka, pytest.mark.engines]
KITCHEN = ["tests.kitchen_service:Kitchen"]
MODES = {"at-least-once": (), "exactly-once": ("--exactly-once",)}


def _mode(mode: str, prefix: str) -> tuple[str, ...]:
    return (*MODES[mode], "--transactional-id", f"{prefix}h") if MODES[mode] else ()


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    found = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(found[1]) if found else 0.0


@pytest.mark.parametrize("mode", MODES)
def test_a_reply_to_a_partition_that_does_not_exist_is_dead_lettered(kafka_bootstrap: str, prefix: str,
                                                                    tmp_path: Path, mode: str) -> None:
    replies = f"{prefix}replies"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(replies, 1, 1)])
    admin.close()
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, "--metrics-port", "0",
                           *_mode(mode, prefix), targets=KITCHEN)
    try:
        port = int(worker.wait_for(r"metrics on http://\S+:(\d+)/metrics").group(1))
        assert _metric(port, "kafka_rpc_handler_reply_errors_total") == 0
        request = wire.Request("/rpctest.v1.Kitchen/Echo", wire.new_correlation_id(), replies, reply_partition=7,
                               payload=kitchen_pb2.Everything(number=5).SerializeToString())
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        sent = producer.send(f"{prefix}rpctest.v1.Kitchen", value=request.payload,
                             headers=request.encode_headers()).get(timeout=30)
        producer.close()
        line = worker.wait_for(r"WARNING.*reply.*refused.*", timeout=60).group(0)
        assert request.correlation_id.hex() in line and "/rpctest.v1.Kitchen/Echo" in line
        # At least once: the error reply to the same partition is refused too, so it is dead-lettered.
        # Exactly once: the refusal aborts the transaction; the call's run again is dead-lettered.
        worker.wait_for(r"dead-lettering the request|rejected .*could not be written to Kafka", timeout=60)
        assert _metric(port, "kafka_rpc_handler_reply_errors_total") >= 1
        worker.popen.send_signal(signal.SIGTERM)
        assert worker.popen.wait(60) == 0
        source = f"{prefix}rpctest.v1.Kitchen/{sent.partition}@{sent.offset}".encode()
        assert _dead_letters(kafka_bootstrap, source) == 1, worker.output()
        committed, ends = _committed(kafka_bootstrap, f"{prefix}handlers", f"{prefix}rpctest.v1.Kitchen")
        assert committed == ends
    finally:
        worker.stop()


@pytest.mark.parametrize("mode", MODES)
def test_a_reply_too_large_for_kafka_ends_the_call_with_an_error(kafka_bootstrap: str, prefix: str,
                                                               tmp_path: Path, mode: str) -> None:
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix)
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, "--metrics-port", "0",
                           *_mode(mode, prefix), targets=KITCHEN)
    try:
        port = int(worker.wait_for(r"metrics on http://\S+:(\d+)/metrics").group(1))
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            too_big = 6 * 1024 * 1024  # the adapter's records stop at 4 MiB and a little
            for call in (lambda: kitchen.Grow(kitchen_pb2.Count(n=1, size=too_big), timeout=20),
                         lambda: list(kitchen.CountUp(kitchen_pb2.Count(n=2, size=too_big), timeout=20))):
                with pytest.raises(grpc.RpcError) as failed:
                    call()
                assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, failed.value
                assert "reply" in failed.value.details() and "Kafka" in failed.value.details()
            # The handler goes on serving.
            assert kitchen.Grow(kitchen_pb2.Count(n=3, size=10), timeout=20).data == b"x" * 10
        assert _metric(port, "kafka_rpc_handler_reply_errors_total") == 2
        worker.wait_for(r"WARNING.*reply.*refused")
        worker.popen.send_signal(signal.SIGTERM)
        assert worker.popen.wait(60) == 0
        committed, ends = _committed(kafka_bootstrap, f"{prefix}handlers", f"{prefix}rpctest.v1.Kitchen")
        assert committed == ends
    finally:
        worker.stop()
        front.stop()


@pytest.mark.parametrize("mode", MODES)
def test_a_retry_of_a_call_whose_reply_kafka_refused_does_not_run_again(kafka_bootstrap: str, prefix: str,
                                                                         tmp_path: Path, mode: str) -> None:
    """The handler ran; only its reply could not be written. A retry with the same key gets the
    same answer from the kept reply, and the handler's work is not done twice."""
    events = tmp_path / "events"
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, *_mode(mode, prefix),
                           env={"KITCHEN_EVENTS": str(events)}, targets=KITCHEN)
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix)
    try:
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            key = (("idempotency-key", f"k-{prefix}"),)
            too_big = kitchen_pb2.Count(n=1, size=6 * 1024 * 1024)  # records stop at 4 MiB and a little
            for _ in range(2):
                with pytest.raises(grpc.RpcError) as failed:
                    kitchen.Grow(too_big, metadata=key, timeout=30)
                assert failed.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, failed.value
            # The same key with a reply that fits: still the first call's answer, not a run.
            with pytest.raises(grpc.RpcError) as reused:
                kitchen.Grow(kitchen_pb2.Count(n=2, size=10), metadata=key, timeout=30)
            assert reused.value.code() == grpc.StatusCode.FAILED_PRECONDITION, reused.value
            assert kitchen.Grow(kitchen_pb2.Count(n=3, size=10), timeout=30).data == b"x" * 10
        assert [line.split()[:2] for line in procs.events(events)] == [["grew", "1"], ["grew", "3"]]
    finally:
        front.stop()
        worker.stop()
