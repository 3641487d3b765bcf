"""A service nobody serves: per-service health, failing fast after the grace, and a handler
starting or restarting (real broker, real frontend and handler processes)."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families
from rpctest.v1 import kitchen_pb2, kitchen_pb2_grpc

from tests import procs

#: Runs on every Kafka engine (.ci/run repeats it with KAFKA_RPC_KAFKA_CLIENT=kafka-python).
pytestmark = [pytest.mark.kafka, pytest.mark.engines]

KITCHEN = "rpctest.v1.Kitchen"
MAIL = "shop.mail.v1.MailService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def health(channel: grpc.Channel, service: str) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.2)


def echo(stub: kitchen_pb2_grpc.KitchenStub, number: int, timeout: float = 60) -> kitchen_pb2.Everything:
    return stub.Echo(kitchen_pb2.Everything(number=number), timeout=timeout)


def no_handler_count(port: int, topic: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "kafka_rpc_frontend_no_handler_total" and sample.labels.get("topic") == topic:
                return sample.value
    return 0.0


def test_no_handler_then_a_handler_starts(tmp_path: Path, kafka_bootstrap: str, prefix: str) -> None:
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix, "--no-handler-grace", "4",
                                    "--metrics-port", "0", "--metrics-address", "127.0.0.1")
    port = int(front.wait_for(r"metrics on http://\S+:(\d+)/metrics").group(1))
    topic = f"{prefix}{KITCHEN}"
    try:
        # The startup lines say, per service, which topic it uses and that nobody consumes it.
        front.wait_for(rf"service {KITCHEN}: .*topic {topic}: NO handler process consumes it yet")
        with grpc.insecure_channel(address) as channel:
            stub = kitchen_pb2_grpc.KitchenStub(channel)
            assert health(channel, "") == SERVING  # Kafka answers
            assert health(channel, KITCHEN) == NOT_SERVING
            assert health(channel, MAIL) == NOT_SERVING

            # Past the grace, a call fails at once instead of waiting out its 60 s deadline.
            def refused() -> bool:
                try:
                    echo(stub, 1, timeout=2)
                except grpc.RpcError as exc:
                    return exc.code() is grpc.StatusCode.UNAVAILABLE
                return False

            wait_until(refused, 30, "calls fail with UNAVAILABLE")
            with pytest.raises(grpc.RpcError) as failed:
                echo(stub, 2, timeout=60)
            assert failed.value.code() is grpc.StatusCode.UNAVAILABLE
            assert f"no handler process consumes topic '{topic}'" in (failed.value.details() or "")
            assert KITCHEN in (failed.value.details() or "")
            assert no_handler_count(port, topic) >= 2
            front.wait_for(rf"topic {topic}: no handler process consumes it; its calls fail with UNAVAILABLE after 4 s"
                           r"|NO handler process consumes it yet")

            # A handler starts: the service turns SERVING within seconds and calls are answered.
            worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, targets=["tests.kitchen_service:Kitchen"])
            try:
                wait_until(lambda: health(channel, KITCHEN) == SERVING, 30, "Kitchen SERVING")
                assert echo(stub, 3).number == 3
                assert health(channel, MAIL) == NOT_SERVING  # still nobody there
                front.wait_for(rf"topic {topic}: handler processes consume it \(group {prefix}handlers\)")
                worker.wait_for(rf"handlers: serving \d+ methods of {KITCHEN} from topics .*{topic}.* in group {prefix}handlers")
            finally:
                worker.stop()
            # The handler left its group: NOT_SERVING again.
            wait_until(lambda: health(channel, KITCHEN) == NOT_SERVING, 30, "Kitchen NOT_SERVING")
    finally:
        front.stop()


def test_a_handler_restarted_within_the_grace_answers_the_calls_queued_meanwhile(
        tmp_path: Path, kafka_bootstrap: str, prefix: str) -> None:
    worker = procs.handler(tmp_path / "h1.log", kafka_bootstrap, prefix, targets=["tests.kitchen_service:Kitchen"])
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix, "--no-handler-grace", "20")
    try:
        with grpc.insecure_channel(address) as channel, ThreadPoolExecutor(8) as pool:
            stub = kitchen_pb2_grpc.KitchenStub(channel)
            wait_until(lambda: health(channel, KITCHEN) == SERVING, 30, "Kitchen SERVING")
            assert echo(stub, 0).number == 0
            worker.stop()
            wait_until(lambda: health(channel, KITCHEN) == NOT_SERVING, 30, "Kitchen NOT_SERVING after the stop")
            # Nobody consumes the topic now, but within the grace calls queue in Kafka...
            queued = [pool.submit(echo, stub, i) for i in range(1, 9)]
            time.sleep(3)
            assert not any(f.done() for f in queued)
            # ...and the restarted handler answers them.
            worker = procs.handler(tmp_path / "h2.log", kafka_bootstrap, prefix, targets=["tests.kitchen_service:Kitchen"])
            assert sorted(f.result().number for f in queued) == list(range(1, 9))
            assert "no handler process consumes" not in front.output() or "UNAVAILABLE after 20 s" in front.output()
    finally:
        front.stop()
        worker.stop()


def test_a_grace_of_zero_waits_for_the_deadline(tmp_path: Path, kafka_bootstrap: str, prefix: str) -> None:
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix, "--no-handler-grace", "0")
    try:
        front.wait_for(rf"service {KITCHEN}: .*topic {prefix}{KITCHEN}: NO handler process consumes it yet")
        with grpc.insecure_channel(address) as channel:
            assert health(channel, KITCHEN) == NOT_SERVING  # health says so all the same
            time.sleep(4)  # beyond what a grace of a few seconds would allow
            with pytest.raises(grpc.RpcError) as failed:
                echo(kitchen_pb2_grpc.KitchenStub(channel), 1, timeout=3)
            assert failed.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        front.stop()
