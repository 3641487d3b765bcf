"""Which gRPC metadata a frontend writes to Kafka (#12.13): credentials stay out by default."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2
from kafka import KafkaConsumer
from rpctest.v1 import kitchen_pb2_grpc

from tests import procs

pytestmark = [pytest.mark.kafka, pytest.mark.engines]
KITCHEN = ["tests.kitchen_service:Kitchen"]
SENT = (("authorization", "Bearer s3cr3t-1"), ("x-session-token", "s3cr3t-2"), ("cookie", "id=s3cr3t-3"),
        ("x-user", "ann"), ("x-trace-bin", b"\x01\x02"))


def _seen(address: str) -> dict[str, str]:
    with grpc.insecure_channel(address) as channel:
        reply = kitchen_pb2_grpc.KitchenStub(channel).Meta(empty_pb2.Empty(), metadata=SENT, timeout=30)
    return {**dict(reply.text), **{k: v.hex() for k, v in reply.binary.items()}}


def _request_headers(bootstrap: str, topic: str) -> list[bytes]:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=3000)
    try:
        return [bytes(name.encode()) + b"=" + bytes(value or b"") for record in consumer for name, value in record.headers]
    finally:
        consumer.close()


def test_credentials_are_not_written_to_kafka_by_default(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, targets=KITCHEN)
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix)
    try:
        seen = _seen(address)
        assert seen["x-user"] == "ann" and seen["x-trace-bin"] == "0102"
        assert not {"authorization", "x-session-token", "cookie"} & set(seen), seen
        headers = _request_headers(kafka_bootstrap, f"{prefix}rpctest.v1.Kitchen")
        assert any(h.startswith(b"rpc-md-x-user=") for h in headers)
        assert not [h for h in headers if b"s3cr3t" in h]
        front.wait_for(r"metadata 'authorization' is not passed on")
    finally:
        front.stop()
        worker.stop()


def test_the_policy_is_the_operators_choice(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, targets=KITCHEN)
    everything, address = procs.frontend(tmp_path / "f1.log", kafka_bootstrap, prefix, "--drop-metadata", "")
    only, only_address = procs.frontend(tmp_path / "f2.log", kafka_bootstrap, prefix, "--forward-metadata", "x-*",
                                        reply_topic=f"{prefix}replies-2")
    try:
        assert {"authorization", "x-session-token", "cookie", "x-user"} <= set(_seen(address))
        # Only x-*, and of those not what the default drop list names.
        assert set(_seen(only_address)) == {"x-user", "x-trace-bin"}
    finally:
        everything.stop()
        only.stop()
        worker.stop()
