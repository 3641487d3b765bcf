"""Through a real frontend process, a real handler process and a real Kafka broker."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2, empty_pb2, struct_pb2, timestamp_pb2, wrappers_pb2
from google.rpc import error_details_pb2, status_pb2
from kafka import KafkaConsumer, KafkaProducer
from rpctest.v1 import kitchen_pb2, kitchen_pb2_grpc

from adapter.protocol import wire
from tests import procs

#: Runs on every Kafka engine (.ci/run repeats it with KAFKA_RPC_KAFKA_CLIENT=kafka-python).
pytestmark = [pytest.mark.kafka, pytest.mark.engines]


@dataclass
class Stack:
    prefix: str
    address: str
    channel: grpc.Channel
    kitchen: kitchen_pb2_grpc.KitchenStub
    handler_pid: int
    outbox: Path


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("stack")
    prefix = f"t{uuid.uuid4().hex[:10]}."
    front, address = procs.frontend(tmp / "frontend.log", kafka_bootstrap, prefix)
    outbox = tmp / "outbox"
    worker = procs.handler(tmp / "handler.log", kafka_bootstrap, prefix,
                           env={"COUPON_MAIL_TARGET": address, "MAIL_OUTBOX": str(outbox)})
    channel = grpc.insecure_channel(address, options=[("grpc.max_receive_message_length", 8 << 20),
                                                      ("grpc.max_send_message_length", 8 << 20)])
    try:
        yield Stack(prefix, address, channel, kitchen_pb2_grpc.KitchenStub(channel), worker.pid, outbox)
    finally:
        channel.close()
        assert worker.stop() == 0, worker.output()
        assert front.stop() == 0, front.output()


def everything() -> kitchen_pb2.Everything:
    msg = kitchen_pb2.Everything(
        scalars=kitchen_pb2.Scalars(
            d=1.5, f=-2.25, i32=-(2**31), i64=-(2**63), u32=2**32 - 1, u64=2**64 - 1, s32=-7, s64=-(2**40),
            fx32=123, fx64=2**50, sfx32=-5, sfx64=-(2**60), b=True, s="héllo wörld ✓ 日本", by=bytes(range(256)),
        ),
        color=kitchen_pb2.GREEN,
        inner=kitchen_pb2.Everything.Inner(name="in", values=[1, 2, 3]),
        inners=[kitchen_pb2.Everything.Inner(name=str(i)) for i in range(5)],
        tags=["a", "", "ç"],
        counts={"x": 1, "y": -(2**62)},
        by_id={7: kitchen_pb2.Everything.Inner(name="seven")},
        number=42,
        at=timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=5),
        took=duration_pb2.Duration(seconds=3, nanos=1000),
        maybe=wrappers_pb2.StringValue(value="maybe"),
        opt=0,
        blob=b"\x00\xff" * 10,
        colors=[kitchen_pb2.RED, kitchen_pb2.GREEN],
    )
    msg.doc.update({"k": [1, "two", None, True], "n": {"deep": 1.5}})
    msg.any.Pack(duration_pb2.Duration(seconds=9))
    return msg


@pytest.mark.parametrize("method", ["Echo", "AsyncEcho"])
def test_every_field_kind_round_trips(stack: Stack, method: str) -> None:
    request = everything()
    reply = getattr(stack.kitchen, method)(request, timeout=20)
    assert reply == request
    assert reply.HasField("opt") and reply.WhichOneof("choice") == "number"
    assert isinstance(reply.doc, struct_pb2.Struct) and reply.doc["n"]["deep"] == 1.5


def test_oneof_message_branch_and_empty_messages(stack: Stack) -> None:
    request = kitchen_pb2.Everything(nested=kitchen_pb2.Everything.Inner(name="n"))
    assert stack.kitchen.Echo(request, timeout=20).WhichOneof("choice") == "nested"
    assert stack.kitchen.Echo(kitchen_pb2.Everything(), timeout=20) == kitchen_pb2.Everything()
    assert stack.kitchen.Nothing(empty_pb2.Empty(), timeout=20) == empty_pb2.Empty()


def test_one_mebibyte_message(stack: Stack) -> None:
    request = kitchen_pb2.Everything(blob=os.urandom(1 << 20))
    assert stack.kitchen.Echo(request, timeout=30).blob == request.blob


def test_metadata_in_and_trailing_metadata_out(stack: Stack) -> None:
    reply, call = stack.kitchen.Meta.with_call(
        empty_pb2.Empty(), timeout=20,
        metadata=[("x-user", "ann"), ("x-token-bin", b"\x00\x01\xfe\xff"), ("traceparent", "00-abc-def-01")],
    )
    assert reply.text["x-user"] == "ann"
    assert reply.text["traceparent"] == "00-abc-def-01"
    assert reply.binary["x-token-bin"] == b"\x00\x01\xfe\xff"
    trailers = dict(call.trailing_metadata())
    assert trailers["x-handled-by"] == str(stack.handler_pid)
    assert trailers["x-trace-bin"] == b"\x00\xff\x10"


@pytest.mark.parametrize(
    ("mode", "code"),
    [
        (kitchen_pb2.FailRequest.ABORT, grpc.StatusCode.NOT_FOUND),
        (kitchen_pb2.FailRequest.SET_CODE, grpc.StatusCode.FAILED_PRECONDITION),
        (kitchen_pb2.FailRequest.ABORT, grpc.StatusCode.PERMISSION_DENIED),
    ],
)
def test_abort_and_set_code_keep_code_and_details(stack: Stack, mode: int, code: grpc.StatusCode) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stack.kitchen.Fail(kitchen_pb2.FailRequest(mode=mode, code=code.value[0], message="détails ✓"), timeout=20)
    assert info.value.code() == code
    assert info.value.details() == "détails ✓"


def test_uncaught_exception_is_unknown_with_message(stack: Stack) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stack.kitchen.Fail(kitchen_pb2.FailRequest(mode=kitchen_pb2.FailRequest.RAISE, message="boom"), timeout=20)
    assert info.value.code() == grpc.StatusCode.UNKNOWN
    assert info.value.details() == "Exception calling application: boom"


def test_rich_error_details_arrive(stack: Stack) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stack.kitchen.Fail(kitchen_pb2.FailRequest(mode=kitchen_pb2.FailRequest.RICH, code=3, message="bad"), timeout=20)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    raw = dict(info.value.trailing_metadata())["grpc-status-details-bin"]
    status = status_pb2.Status.FromString(raw)
    bad = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad)
    assert bad.field_violations[0].description == "bad"


def test_unimplemented_in_servicer(stack: Stack) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stack.kitchen.NotImplemented(empty_pb2.Empty(), timeout=20)
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_undecodable_request_is_invalid_argument(stack: Stack) -> None:
    raw = stack.channel.unary_unary("/rpctest.v1.Kitchen/Echo")
    with pytest.raises(grpc.RpcError) as info:
        raw(b"\xff\xff\xff", timeout=20)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "rpctest.v1.Everything" in info.value.details() or "decode" in info.value.details()


def test_unknown_method_on_request_topic_gets_unimplemented(stack: Stack, kafka_bootstrap: str) -> None:
    # A record no frontend would send: the handler must answer it, not crash.
    reply_topic = f"{stack.prefix}raw-replies"
    consumer = KafkaConsumer(reply_topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=20000)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    cid = wire.new_correlation_id()
    request = wire.Request(method="/rpctest.v1.Kitchen/NoSuchMethod", correlation_id=cid, reply_topic=reply_topic)
    producer.send(f"{stack.prefix}rpctest.v1.Kitchen", value=b"", headers=request.encode_headers()).get(10)
    producer.close()
    replies = []
    for record in consumer:
        replies.append(wire.Reply.decode(record.headers, record.value))
        break
    consumer.close()
    assert replies and replies[0].correlation_id == cid
    assert replies[0].code == grpc.StatusCode.UNIMPLEMENTED
    # ...and the process still serves.
    assert stack.kitchen.Nothing(empty_pb2.Empty(), timeout=20) == empty_pb2.Empty()


def test_deadline_exceeded_and_seen_by_handler(stack: Stack) -> None:
    with pytest.raises(grpc.RpcError) as info:
        stack.kitchen.Sleep(kitchen_pb2.SleepRequest(seconds=3), timeout=0.5)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    reply = stack.kitchen.Sleep(kitchen_pb2.SleepRequest(seconds=0), timeout=10)
    assert 5 < reply.time_remaining <= 10.5  # grpc rounds the grpc-timeout header up
    assert reply.active_after


def test_replies_for_no_waiting_call_never_reach_another_call(stack: Stack, kafka_bootstrap: str) -> None:
    with pytest.raises(grpc.RpcError):
        stack.kitchen.Sleep(kitchen_pb2.SleepRequest(seconds=1.0), timeout=0.3)
    # Replies nobody waits for (late, forged, another instance's) land on every reply partition
    # while these calls run: each call still gets its own reply.
    futures = [stack.kitchen.Echo.future(kitchen_pb2.Everything(number=i), timeout=20) for i in range(50)]
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    stray = kitchen_pb2.Everything(number=-1).SerializeToString()
    for partition in range(4):
        for _ in range(5):
            reply = wire.Reply(wire.new_correlation_id(), payload=stray)
            producer.send(f"{stack.prefix}replies", value=stray, headers=reply.encode_headers(), partition=partition)
    producer.flush(10)
    producer.close()
    assert [f.result().number for f in futures] == list(range(50))


def test_hundreds_of_concurrent_calls_each_get_their_own_reply(stack: Stack) -> None:
    futures = [
        stack.kitchen.Echo.future(kitchen_pb2.Everything(number=i, text=None, tags=[str(i)] * (i % 5)), timeout=60)
        for i in range(500)
    ]
    for i, future in enumerate(futures):
        reply = future.result()
        assert reply.number == i and list(reply.tags) == [str(i)] * (i % 5)


def test_partition_key_pins_calls_to_one_partition(stack: Stack) -> None:
    peers = {stack.kitchen.Keyed(kitchen_pb2.KeyedRequest(customer="c-42", seq=i), timeout=20).peer for i in range(20)}
    partitions = {peer.split("@")[0] for peer in peers}
    assert len(partitions) == 1
    assert partitions.pop().startswith(f"kafka:{stack.prefix}rpctest.keyed/")


def test_health_is_serving(stack: Stack) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(stack.channel)
    # A service is SERVING once the frontend has seen its handler in the group (looks every 3 s).
    deadline = time.monotonic() + 20
    for service in ("", "rpctest.v1.Kitchen", "shop.mail.v1.MailService"):
        while True:
            status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10).status
            if status == health_pb2.HealthCheckResponse.SERVING or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert status == health_pb2.HealthCheckResponse.SERVING, service


def test_coupon_example_sends_mail_over_kafka(stack: Stack) -> None:
    from shop.coupon.v1 import coupon_pb2, coupon_pb2_grpc
    from shop.mail.v1 import mail_pb2

    coupons = coupon_pb2_grpc.CouponServiceStub(stack.channel)
    reply = coupons.IssueCoupon(
        coupon_pb2.IssueCouponRequest(user_id="u1", email="ann@example.com", campaign="spring", percent_off=15),
        timeout=30,
    )
    assert reply.code.startswith("SPRING-")
    assert reply.mail_result == mail_pb2.SENT
    mails = [p.read_text() for p in stack.outbox.glob("*.eml")]
    assert any(reply.code in m and "ann@example.com" in m for m in mails)
    failed = coupons.IssueCoupon(
        coupon_pb2.IssueCouponRequest(user_id="u2", email="bob@nowhere.invalid"), timeout=30
    )
    assert failed.mail_result == mail_pb2.FAILED
    assert "does not exist" in failed.mail_detail


def test_any_and_struct_survive(stack: Stack) -> None:
    request = kitchen_pb2.Everything()
    request.any.Pack(kitchen_pb2.Everything.Inner(name="packed"))
    request.doc.update({"list": [1, 2], "s": "x"})
    reply = stack.kitchen.Echo(request, timeout=20)
    inner = kitchen_pb2.Everything.Inner()
    assert reply.any.Unpack(inner) and inner.name == "packed"
    assert isinstance(reply.any, any_pb2.Any)


def test_offsets_are_committed_once_replied(stack: Stack, kafka_bootstrap: str) -> None:
    import time

    from kafka import KafkaAdminClient

    futures = [stack.kitchen.Whoami.future(empty_pb2.Empty(), timeout=30) for _ in range(40)]
    assert all(f.result().pid == stack.handler_pid for f in futures)
    topic = f"{stack.prefix}rpctest.v1.Kitchen"
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        ends = consumer.end_offsets(_partitions(consumer, topic))
        deadline = time.monotonic() + 15
        while True:
            group = f"{stack.prefix}handlers"
            offsets = admin.list_group_offsets({group: None})[group]
            committed = {tp: meta.offset for tp, meta in offsets.items() if tp.topic == topic}
            if all(committed.get(tp, 0) == end for tp, end in ends.items()) or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert sum(ends.values()) >= 40
        assert {tp: committed.get(tp, 0) for tp in ends} == ends
    finally:
        consumer.close()
        admin.close()


def _partitions(consumer: KafkaConsumer, topic: str) -> list:
    from kafka import TopicPartition

    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
