"""KafkaChannel and AioKafkaChannel: generated stubs call a real handler process through a real broker."""

from __future__ import annotations

import asyncio
import os
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import grpc.aio
import pytest
from google.protobuf import empty_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rpctest.v1 import kitchen_pb2, kitchen_pb2_grpc

from adapter import AioKafkaChannel, KafkaChannel
from adapter.runtime.config import KafkaConfig
from tests import procs
from tests.conftest import engine

#: Runs on every Kafka engine (.ci/run repeats it with KAFKA_RPC_KAFKA_CLIENT=kafka-python).
pytestmark = [pytest.mark.kafka, pytest.mark.engines]
Count, Item = kitchen_pb2.Count, kitchen_pb2.Item


@dataclass
class Stack:
    bootstrap: str
    prefix: str
    handler: procs.Proc
    events: Path
    channel: KafkaChannel
    kitchen: kitchen_pb2_grpc.KitchenStub

    async def aio_channel(self) -> AioKafkaChannel:
        return await AioKafkaChannel.connect([kitchen_pb2], bootstrap_servers=self.bootstrap, topic_prefix=self.prefix,
                                             kafka_client=engine(),
                                             reply_topic=f"{self.prefix}replies", reply_partitions=4)

    def wait_for_event(self, line: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while line not in _lines(self.events):
            assert time.monotonic() < deadline, f"handler never recorded {line!r}; it recorded {_lines(self.events)}"
            time.sleep(0.05)


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("channel")
    prefix = f"t{uuid.uuid4().hex[:10]}."  # the `prefix` fixture's recipe, for the whole module
    events = tmp / "events"
    worker = procs.handler(tmp / "handler.log", kafka_bootstrap, prefix, env={"KITCHEN_EVENTS": str(events)},
                           targets=["tests.kitchen_service:Kitchen"])
    worker.wait_for(rf"partitions assigned: .*{prefix.replace('.', '[.]')}rpctest[.]v1[.]Kitchen/", timeout=60)
    try:
        # Routes from the stub class, as a caller that has only the *_pb2_grpc module would give them.
        with KafkaChannel.connect([kitchen_pb2_grpc.KitchenStub], bootstrap_servers=kafka_bootstrap, topic_prefix=prefix,
                                  kafka_client=engine(),
                                  reply_topic=f"{prefix}replies", reply_partitions=4) as channel:
            yield Stack(kafka_bootstrap, prefix, worker, events, channel, kitchen_pb2_grpc.KitchenStub(channel))
    finally:
        assert worker.stop() == 0, worker.output()


# The blocking flavour.

def test_unary_metadata_in_trailers_out_and_routing(stack: Stack) -> None:
    reply, call = stack.kitchen.Meta.with_call(empty_pb2.Empty(), timeout=20,
                                               metadata=(("x-user", "ünï"), ("x-raw-bin", b"\x00\xff")))
    assert (dict(reply.text), dict(reply.binary)) == ({"x-user": "ünï"}, {"x-raw-bin": b"\x00\xff"})
    assert call.code() is grpc.StatusCode.OK
    assert dict(call.trailing_metadata()) == {"x-handled-by": str(stack.handler.pid), "x-trace-bin": b"\x00\xff\x10"}
    sent = kitchen_pb2.Everything(number=42, tags=["a", ""], blob=bytes(range(256)))
    assert stack.kitchen.Echo(sent, timeout=10) == sent
    # The method's own topic (kafka_rpc.topic) under the prefix, as the frontend and handlers route it.
    keyed = stack.kitchen.Keyed.future(kitchen_pb2.KeyedRequest(customer="c1"), timeout=10)
    assert keyed.result().peer.startswith(f"kafka:{stack.prefix}rpctest.keyed/")
    assert keyed.done() and not keyed.cancelled()


@pytest.mark.parametrize(
    ("mode", "code", "details"),
    [
        (kitchen_pb2.FailRequest.ABORT, grpc.StatusCode.NOT_FOUND, "no such dish"),
        (kitchen_pb2.FailRequest.SET_CODE, grpc.StatusCode.ALREADY_EXISTS, "cooked already"),
        (kitchen_pb2.FailRequest.RAISE, grpc.StatusCode.UNKNOWN, "Exception calling application: no such dish"),
        (kitchen_pb2.FailRequest.RICH, grpc.StatusCode.INVALID_ARGUMENT, "too salty"),
    ],
)
def test_error_statuses(stack: Stack, mode: int, code: grpc.StatusCode, details: str) -> None:
    message = details.removeprefix("Exception calling application: ")
    with pytest.raises(grpc.RpcError) as raised:
        stack.kitchen.Fail(kitchen_pb2.FailRequest(mode=mode, code=code.value[0], message=message), timeout=10)
    error = raised.value
    assert isinstance(error, grpc.Call)
    assert (error.code(), error.details()) == (code, details)
    if mode == kitchen_pb2.FailRequest.RICH:
        status = rpc_status.from_call(error)
        violations = error_details_pb2.BadRequest()
        assert status is not None and status.details[0].Unpack(violations)
        assert violations.field_violations[0].description == "too salty"
    future = stack.kitchen.Fail.future(kitchen_pb2.FailRequest(mode=mode, code=code.value[0], message=message))
    assert future.exception().code() is code and future.code() is code and future.details() == details


def test_unimplemented(stack: Stack) -> None:
    unknown = stack.channel.unary_unary("/rpctest.v1.Kitchen/Nope")
    for call in (lambda: stack.kitchen.NotImplemented(empty_pb2.Empty(), timeout=10), lambda: unknown(b"")):
        with pytest.raises(grpc.RpcError) as raised:
            call()
        assert raised.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_deadlines(stack: Stack) -> None:
    began = time.monotonic()
    with pytest.raises(grpc.RpcError) as raised:
        stack.kitchen.Sleep(kitchen_pb2.SleepRequest(seconds=5), timeout=0.5)
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    assert time.monotonic() - began < 2
    seen = stack.kitchen.Sleep(kitchen_pb2.SleepRequest(), timeout=3.0)
    assert 2.0 < seen.time_remaining <= 3.001  # the handler sees the caller's deadline


@pytest.mark.parametrize("method", ["CountUp", "AsyncCountUp"])
def test_server_streaming(stack: Stack, method: str) -> None:
    call = getattr(stack.kitchen, method)(Count(n=300, size=3), timeout=30)
    items = list(call)
    assert [item.i for item in items] == list(range(300)) and all(item.data == b"xxx" for item in items)
    assert call.code() is grpc.StatusCode.OK
    if method == "CountUp":
        assert dict(call.trailing_metadata())["x-count"] == "300"
    received = []
    with pytest.raises(grpc.RpcError) as raised:
        for item in getattr(stack.kitchen, method)(Count(n=10, fail_at=5), timeout=30):
            received.append(item.i)
    assert received == [0, 1, 2, 3, 4]
    assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.FAILED_PRECONDITION, "failed at 5")


@pytest.mark.parametrize("method", ["Collect", "AsyncCollect"])
def test_client_streaming(stack: Stack, method: str) -> None:
    summary, call = getattr(stack.kitchen, method).with_call((Item(i=i, data=b"ab") for i in range(300)), timeout=30)
    assert (summary.count, summary.total_bytes, list(summary.order)) == (300, 600, list(range(100)))
    assert call.code() is grpc.StatusCode.OK
    empty = getattr(stack.kitchen, method).future(iter(()), timeout=30)
    assert empty.result().count == 0


def test_client_streaming_large_messages(stack: Stack) -> None:
    summary = stack.kitchen.Collect((Item(i=i, data=os.urandom(1 << 20)) for i in range(3)), timeout=60)
    assert (summary.count, summary.total_bytes) == (3, 3 << 20)


@pytest.mark.parametrize("method", ["Chat", "SyncChat"])
def test_bidi_streaming(stack: Stack, method: str) -> None:
    replies = list(getattr(stack.kitchen, method)((Item(i=i) for i in range(300)), timeout=30))
    assert [r.i for r in replies] == [2 * i for i in range(300)]


def test_bidi_responses_flow_while_a_blocking_request_iterator_waits(stack: Stack) -> None:
    got_first = threading.Event()

    def requests() -> Iterator[kitchen_pb2.Item]:
        yield Item(i=1)
        assert got_first.wait(20), "no reply while the request stream was open"
        yield Item(i=2)

    replies = []
    for reply in stack.kitchen.Chat(requests(), timeout=30):
        replies.append(reply.i)
        got_first.set()
    assert replies == [2, 4]


def test_request_iterator_that_raises(stack: Stack) -> None:
    def requests() -> Iterator[kitchen_pb2.Item]:
        yield Item(i=1)
        raise RuntimeError("the caller's bug")

    with pytest.raises(grpc.RpcError) as raised:
        stack.kitchen.Collect(requests(), timeout=30)
    assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.UNKNOWN, "Exception iterating requests!")


def test_cancel(stack: Stack) -> None:
    future = stack.kitchen.Sleep.future(kitchen_pb2.SleepRequest(seconds=5), timeout=30)
    time.sleep(0.1)
    assert future.cancel() and future.cancelled()
    with pytest.raises(grpc.FutureCancelledError):
        future.result()
    assert future.code() is grpc.StatusCode.CANCELLED
    tag = uuid.uuid4().hex[:8]
    call = stack.kitchen.Watch(Count(tag=tag), timeout=30)
    assert [next(call).i for _ in range(3)] == [0, 1, 2]
    assert call.cancel()
    with pytest.raises(grpc.RpcError) as raised:
        next(call)
    assert raised.value.code() is grpc.StatusCode.CANCELLED and call.code() is grpc.StatusCode.CANCELLED
    stack.wait_for_event(f"callback {tag}")  # the cancel record reached the handler


def test_deadline_mid_stream(stack: Stack) -> None:
    tag = uuid.uuid4().hex[:8]
    received = 0
    with pytest.raises(grpc.RpcError) as raised:
        for _ in stack.kitchen.Watch(Count(tag=tag), timeout=1.0):
            received += 1
    assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED and received > 3
    stack.wait_for_event(f"callback {tag}")


# The asyncio flavour.

def test_aio_unary_metadata_errors_deadline_and_cancel(stack: Stack) -> None:
    async def run() -> None:
        async with await stack.aio_channel() as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            call = kitchen.Meta(empty_pb2.Empty(), timeout=20, metadata=(("x-user", "ann"),))
            assert dict((await call).text) == {"x-user": "ann"}
            trailing = await call.trailing_metadata()
            assert isinstance(trailing, grpc.aio.Metadata) and trailing["x-handled-by"] == str(stack.handler.pid)
            assert await call.code() is grpc.StatusCode.OK
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await kitchen.Fail(kitchen_pb2.FailRequest(mode=kitchen_pb2.FailRequest.RICH, code=3, message="salty"))
            assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "salty")
            assert rpc_status.from_call(raised.value) is not None  # rich details ride in the trailers
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await kitchen.Sleep(kitchen_pb2.SleepRequest(seconds=5), timeout=0.3)
            assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
            sleeping = kitchen.Sleep(kitchen_pb2.SleepRequest(seconds=5))
            await asyncio.sleep(0.1)
            assert sleeping.cancel()
            with pytest.raises(asyncio.CancelledError):
                await sleeping
            assert await sleeping.code() is grpc.StatusCode.CANCELLED
            many = await asyncio.gather(*(kitchen.Echo(kitchen_pb2.Everything(number=i)) for i in range(50)))
            assert [m.number for m in many] == list(range(50))

    asyncio.run(run())


def test_aio_streaming_kinds_and_cancel(stack: Stack) -> None:
    async def requests(n: int) -> AsyncIterator[kitchen_pb2.Item]:
        for i in range(n):
            yield Item(i=i, data=b"ab")

    async def run() -> None:
        async with await stack.aio_channel() as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            call = kitchen.CountUp(Count(n=100), timeout=30)
            assert [item.i async for item in call] == list(range(100))
            assert (await call.trailing_metadata())["x-count"] == "100"
            summary = await kitchen.AsyncCollect(requests(100), timeout=30)
            assert (summary.count, summary.total_bytes) == (100, 200)
            chat = kitchen.Chat(timeout=30)
            for i in range(3):  # each answer arrives before the next request is written
                await chat.write(Item(i=i))
                assert (await chat.read()).i == 2 * i
            await chat.write(Item(i=3, tag="fail"))
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await chat.read()
            assert (raised.value.code(), raised.value.details()) == (grpc.StatusCode.ABORTED, "asked to fail at 3")
            tag = uuid.uuid4().hex[:8]
            watch = kitchen.AsyncWatch(Count(tag=tag), timeout=30)
            assert [(await watch.read()).i for _ in range(3)] == [0, 1, 2]
            assert watch.cancel()
            with pytest.raises(asyncio.CancelledError):
                await watch.read()
            await asyncio.to_thread(stack.wait_for_event, f"task-cancelled {tag}")

    asyncio.run(run())


def test_nobody_serving_and_other_ways_to_name_services(kafka_bootstrap: str, prefix: str) -> None:
    # A fresh prefix: no handler consumes these topics, so calls end at their deadline.
    kafka = KafkaConfig(bootstrap_servers=(kafka_bootstrap,), topic_prefix=prefix, client=engine())
    with KafkaChannel.connect(["rpctest.v1.Kitchen"], kafka=kafka, reply_topic=f"{prefix}replies",
                              reply_partitions=2) as channel:
        kitchen = kitchen_pb2_grpc.KitchenStub(channel)
        began = time.monotonic()
        with pytest.raises(grpc.RpcError) as raised:
            kitchen.Echo(kitchen_pb2.Everything(), timeout=0.5)
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED and time.monotonic() - began < 2
        with pytest.raises(grpc.RpcError) as raised:
            list(kitchen.CountUp(Count(n=1), timeout=0.5))
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    with pytest.raises(ValueError, match="closed channel"):
        kitchen.Echo(kitchen_pb2.Everything(), timeout=0.5)
