"""A broker outage, with a private broker this test stops and starts: health, errors, recovery."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rpctest.v1 import kitchen_pb2, kitchen_pb2_grpc

from tests import procs
from tests.brokers import Broker

#: Runs on every Kafka engine (.ci/run repeats it with KAFKA_RPC_KAFKA_CLIENT=kafka-python).
pytestmark = [pytest.mark.kafka, pytest.mark.engines]


@pytest.fixture
def broker(tmp_path: Path, kafka_bootstrap: str) -> Iterator[Broker]:
    # An id of the user's that starts with '-' (Kafka never makes one) must still format.
    broker = Broker(tmp_path / "kafka", KAFKA_CLUSTER_ID="-AbCdEfGhIjKlMnOpQrStU")
    broker.up()
    yield broker
    broker.down()


def _health(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5).status


def _wait(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.25)
    return False


def test_broker_outage_health_errors_and_recovery(broker: Broker, prefix: str, tmp_path: Path) -> None:
    front, address = procs.frontend(tmp_path / "f.log", broker.bootstrap, prefix)
    worker = procs.handler(tmp_path / "h.log", broker.bootstrap, prefix, targets=["tests.kitchen_service:Kitchen"])
    channel = grpc.insecure_channel(address)
    kitchen = kitchen_pb2_grpc.KitchenStub(channel)
    try:
        assert kitchen.Nothing(empty_pb2.Empty(), timeout=30) == empty_pb2.Empty()
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING

        # Calls under way when the broker stops, and calls made while it is down, end within
        # their deadline with UNAVAILABLE or DEADLINE_EXCEEDED.
        sleepers = [kitchen.Sleep.future(kitchen_pb2.SleepRequest(seconds=0.5), timeout=3) for _ in range(20)]
        broker.down()
        stopped = time.monotonic()
        during = []
        for _ in range(5):
            started = time.monotonic()
            try:
                kitchen.Nothing(empty_pb2.Empty(), timeout=2)
                during.append((grpc.StatusCode.OK, time.monotonic() - started))
            except grpc.RpcError as exc:
                during.append((exc.code(), time.monotonic() - started))
        assert {code for code, _ in during} <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
        assert max(took for _, took in during) < 2.5
        for future in sleepers:
            try:
                future.result()
            except grpc.RpcError as exc:
                assert exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
        assert _wait(lambda: _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING, 30), front.output()
        print(f"outage: longest failed call {max(took for _, took in during):.2f}s; "
              f"NOT_SERVING {time.monotonic() - stopped:.1f}s after the broker stopped")

        broker.up()
        restarted = time.monotonic()
        assert _wait(lambda: _health(channel) == health_pb2.HealthCheckResponse.SERVING, 60), front.output()
        print(f"outage: SERVING {time.monotonic() - restarted:.1f}s after the broker was up again")

        def call_ok() -> bool:
            try:
                return kitchen.Nothing(empty_pb2.Empty(), timeout=5) == empty_pb2.Empty()
            except grpc.RpcError:
                return False

        # Same processes, no restart: calls succeed again.
        assert _wait(call_ok, 60), front.output() + worker.output()
        print(f"outage: first OK call {time.monotonic() - restarted:.1f}s after the broker was up again")
    finally:
        channel.close()
        worker.stop()
        front.stop()
