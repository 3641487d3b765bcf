"""Where a handler may reply (#12.9): by default only to the deployment's reply topics; never
creating a topic a request names; a forged reply topic costs nothing but a dead letter."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import grpc
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from rpctest.v1 import kitchen_pb2, kitchen_pb2_grpc

from adapter.caller.aio_channel import AioKafkaChannel
from adapter.protocol import wire
from tests import procs
from tests.test_exactly_once import _dead_letters

pytestmark = [pytest.mark.kafka, pytest.mark.engines]
KITCHEN = ["tests.kitchen_service:Kitchen"]


def _request(prefix: str, bootstrap: str, reply_topic: str, number: int) -> tuple[wire.Request, bytes]:
    """Produce an Echo request naming `reply_topic`; return it and its TOPIC/PARTITION@OFFSET."""
    request = wire.Request("/rpctest.v1.Kitchen/Echo", wire.new_correlation_id(), reply_topic,
                           payload=kitchen_pb2.Everything(number=number).SerializeToString())
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    sent = producer.send(f"{prefix}rpctest.v1.Kitchen", value=request.payload,
                         headers=request.encode_headers()).get(timeout=30)
    producer.close()
    return request, f"{prefix}rpctest.v1.Kitchen/{sent.partition}@{sent.offset}".encode()


def _records(bootstrap: str, topic: str) -> int:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, consumer_timeout_ms=3000)
    try:
        return sum(1 for _ in consumer)
    finally:
        consumer.close()


def test_by_default_replies_go_only_to_the_default_reply_topics(kafka_bootstrap: str, prefix: str, kafka_client: str,
                                                               tmp_path: Path) -> None:
    # An existing topic that the old default (*replies*) let anyone name as a reply topic.
    other = f"{prefix}billing-replies"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(other, 1, 1)])
    admin.close()
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, targets=KITCHEN, default_allow_list=True)
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix, reply_topic=f"{prefix}kafka-rpc.replies")
    try:
        # The frontend's and the channel's default reply topics (after the prefix) are allowed.
        with grpc.insecure_channel(address) as channel:
            assert kitchen_pb2_grpc.KitchenStub(channel).Echo(kitchen_pb2.Everything(number=1), timeout=30).number == 1

        async def through_a_channel() -> int:
            async with await AioKafkaChannel.connect([kitchen_pb2], bootstrap_servers=kafka_bootstrap,
                                                     topic_prefix=prefix, kafka_client=kafka_client) as kafka:
                reply = await kitchen_pb2_grpc.KitchenStub(kafka).Echo(kitchen_pb2.Everything(number=2), timeout=30)
                return reply.number

        assert asyncio.run(through_a_channel()) == 2
        _, source = _request(prefix, kafka_bootstrap, other, 3)
        worker.wait_for(r"reply topic .*billing-replies.* is not allowed")
        worker.popen.send_signal(signal.SIGTERM)
        assert worker.popen.wait(60) == 0
        assert _dead_letters(kafka_bootstrap, source) == 1
        assert _records(kafka_bootstrap, other) == 0
    finally:
        worker.stop()
        front.stop()


def test_a_reply_topic_that_does_not_exist_is_never_created(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    missing = f"{prefix}nobody-replies"
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, targets=KITCHEN)  # allows {prefix}*
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix)
    try:
        _, source = _request(prefix, kafka_bootstrap, missing, 4)
        # The handler goes on serving while that record waits for a topic that never comes.
        with grpc.insecure_channel(address) as channel:
            assert kitchen_pb2_grpc.KitchenStub(channel).Echo(kitchen_pb2.Everything(number=5), timeout=30).number == 5
        worker.wait_for(r"dead-lettering the request", timeout=60)
        worker.popen.send_signal(signal.SIGTERM)
        assert worker.popen.wait(60) == 0
        assert _dead_letters(kafka_bootstrap, source) == 1
        admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        try:
            assert missing not in admin.list_topics()
        finally:
            admin.close()
    finally:
        worker.stop()
        front.stop()


def test_a_rejected_request_is_answered_on_the_partition_it_names(kafka_bootstrap: str, prefix: str,
                                                                  tmp_path: Path) -> None:
    """#12.10: with several frontends on one reply topic, only the caller's partition reaches it."""
    replies = f"{prefix}replies"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(replies, 4, 1)])
    admin.close()
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, targets=KITCHEN)
    try:
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        sent = {}
        for i in range(8):
            cid = wire.new_correlation_id()
            sent[cid] = i % 4
            producer.send(f"{prefix}rpctest.v1.Kitchen", value=b"", headers=[
                (wire.CORRELATION_ID, cid), (wire.METHOD, b"/rpctest.v1.Kitchen/Echo"), (wire.REPLY_TOPIC, replies.encode()),
                (wire.REPLY_PARTITION, (i % 4).to_bytes(4, "big")), (wire.DEADLINE, b"soon")])  # malformed deadline
        producer.flush(30)
        producer.close()
        consumer = KafkaConsumer(replies, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                                 enable_auto_commit=False, consumer_timeout_ms=15000)
        placed = {}
        for record in consumer:
            reply = wire.decode_reply(record.headers, record.value)
            assert isinstance(reply, wire.Reply) and reply.code == grpc.StatusCode.INVALID_ARGUMENT
            placed[reply.correlation_id] = record.partition
            if len(placed) == len(sent):
                break
        consumer.close()
        assert placed == sent
    finally:
        worker.stop()
