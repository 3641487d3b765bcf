"""A def handler's thread sends its call's final reply itself (`Calls`' `send_now`), without Kafka.

The reply must leave from the handler's thread, the call must end only once Kafka answered, and
every case the fast path does not cover (errors, None, async def, streams, a refusal at once,
a cancelled call) must still be answered through the event loop, as before.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2
from prometheus_client import CollectorRegistry
from rpctest.v1 import kitchen_pb2

from adapter.errors import TransportError
from adapter.protocol import wire
from adapter.runtime.metrics import HandlerMetrics
from handlers.calls import Calls
from handlers.dispatcher import Dispatcher
from handlers.registry import collect
from tests.kitchen_service import Kitchen

Done = Callable[[Exception | None], None]
NOT_FOUND = grpc.StatusCode.NOT_FOUND.value[0]
ECHO = kitchen_pb2.Everything(inner=kitchen_pb2.Everything.Inner(name="x", values=[7]))


def _request(method: str, message: Any) -> wire.Request:
    return wire.Request(f"/rpctest.v1.Kitchen/{method}", wire.new_correlation_id(), "replies",
                        payload=message.SerializeToString())


class Kafka:
    """Stands in for the producer: records what went through which path, from which thread."""

    def __init__(self, refuse_at_once: bool = False, error: Exception | None = None, errors: int = 1000) -> None:
        self.loop = asyncio.get_running_loop()
        self.refuse_at_once, self.error, self.errors = refuse_at_once, error, errors
        self.sent: list[tuple[str, wire.Reply | wire.Frame, str]] = []
        self.pending: list[Done] = []
        self.acknowledge = True

    async def send(self, request: wire.Request, record: wire.Reply | wire.Frame, key: bytes | None) -> None:
        self.sent.append(("loop", record, threading.current_thread().name))

    def send_now(self, request: wire.Request, reply: wire.Reply, key: bytes | None, done: Done) -> bool:
        if self.refuse_at_once:
            raise TransportError("producing to replies: the local send queue is full")
        self.sent.append(("now", reply, threading.current_thread().name))
        if self.acknowledge:
            self.errors -= 1
            self.loop.call_soon_threadsafe(done, self.error if self.errors >= 0 else None)
        else:
            self.pending.append(done)
        return True


async def _serve(kafka: Kafka, request: wire.Request, cancel_after: float | None = None) -> Calls:
    dispatcher = Dispatcher(collect([Kitchen])[0], 4, HandlerMetrics(CollectorRegistry()))
    calls = Calls(dispatcher, kafka.send, metrics=HandlerMetrics(CollectorRegistry()), send_now=kafka.send_now)
    try:
        work = calls.accept(request, peer="memory", partition=("requests", 0))
        assert work is not None
        if cancel_after is not None:
            await asyncio.sleep(cancel_after)
            calls.cancel(request.correlation_id)
        await work
    finally:
        dispatcher.close()
    return calls


def test_a_def_handler_sends_its_reply_from_its_own_thread() -> None:
    async def run() -> Kafka:
        kafka = Kafka()
        await _serve(kafka, _request("Echo", ECHO))
        return kafka

    kafka = asyncio.run(run())
    [(path, reply, thread)] = kafka.sent
    assert path == "now" and thread.startswith("handler"), kafka.sent
    assert isinstance(reply, wire.Reply) and reply.code == grpc.StatusCode.OK
    assert kitchen_pb2.Everything.FromString(reply.payload) == ECHO


def test_the_call_ends_only_once_kafka_acknowledged_the_reply() -> None:
    async def run() -> tuple[bool, bool]:
        kafka = Kafka()
        kafka.acknowledge = False
        dispatcher = Dispatcher(collect([Kitchen])[0], 4, HandlerMetrics(CollectorRegistry()))
        calls = Calls(dispatcher, kafka.send, send_now=kafka.send_now)
        try:
            work = calls.accept(_request("Echo", ECHO), peer="memory")
            assert work is not None
            await asyncio.sleep(0.2)
            waiting = not work.done() and len(kafka.pending) == 1
            kafka.pending[0](None)
            await asyncio.wait_for(work, 1)
            return waiting, work.done()
        finally:
            dispatcher.close()

    waiting, ended = asyncio.run(run())
    assert waiting, "the call ended before Kafka acknowledged its reply (its offset would be committed too early)"
    assert ended


def test_a_reply_kafka_refuses_fails_the_call_as_through_the_loop() -> None:
    async def run() -> None:
        await _serve(Kafka(error=TransportError("MSG_SIZE_TOO_LARGE")), _request("Echo", ECHO))

    # The worker's refusal path (tell the caller, or dead-letter the request) takes it from here.
    with pytest.raises(TransportError, match="MSG_SIZE_TOO_LARGE"):
        asyncio.run(run())


def test_a_reply_refused_at_once_goes_through_the_loop() -> None:
    async def run() -> Kafka:
        kafka = Kafka(refuse_at_once=True)
        await _serve(kafka, _request("Echo", ECHO))
        return kafka

    [(path, reply, _)] = asyncio.run(run()).sent
    assert path == "loop" and isinstance(reply, wire.Reply) and reply.code == grpc.StatusCode.OK


@pytest.mark.parametrize("method, message, code", [
    ("AsyncEcho", ECHO, grpc.StatusCode.OK),  # async def: already on the loop
    ("Fail", kitchen_pb2.FailRequest(code=NOT_FOUND, message="raised", mode=kitchen_pb2.FailRequest.RAISE),
     grpc.StatusCode.UNKNOWN),
    ("Fail", kitchen_pb2.FailRequest(code=NOT_FOUND, message="gone", mode=kitchen_pb2.FailRequest.ABORT),
     grpc.StatusCode.NOT_FOUND),
    ("Fail", kitchen_pb2.FailRequest(code=NOT_FOUND, message="gone", mode=kitchen_pb2.FailRequest.SET_CODE),
     grpc.StatusCode.NOT_FOUND),  # returned None
])
def test_other_outcomes_are_answered_through_the_loop(method: str, message: Any, code: grpc.StatusCode) -> None:
    async def run() -> Kafka:
        kafka = Kafka()
        await _serve(kafka, _request(method, message))
        return kafka

    [(path, reply, _)] = asyncio.run(run()).sent
    assert path == "loop" and isinstance(reply, wire.Reply) and reply.code == code, reply


def test_a_def_client_stream_goes_through_the_loop() -> None:
    async def run() -> Kafka:
        kafka = Kafka()
        dispatcher = Dispatcher(collect([Kitchen])[0], 4, HandlerMetrics(CollectorRegistry()))
        calls = Calls(dispatcher, kafka.send, send_now=kafka.send_now)
        try:
            opening = wire.Request("/rpctest.v1.Kitchen/Collect", wire.new_correlation_id(), "replies",
                                   opens_stream=True)
            work = calls.accept(opening, peer="memory")
            assert work is not None
            item = kitchen_pb2.Item(i=5).SerializeToString()
            calls.accept(wire.Frame(opening.correlation_id, wire.MESSAGE, 0, item), peer="memory")
            calls.accept(wire.Frame(opening.correlation_id, wire.HALF_CLOSE, 1, b""), peer="memory")
            await asyncio.wait_for(work, 5)
        finally:
            dispatcher.close()
        return kafka

    [(path, reply, _)] = asyncio.run(run()).sent
    # Calls.abort may end a stream with a reply of its own while its handler's thread returns.
    assert path == "loop" and isinstance(reply, wire.Reply) and reply.code == grpc.StatusCode.OK, reply


def test_a_def_server_stream_goes_through_the_loop() -> None:
    async def run() -> Kafka:
        kafka = Kafka()
        await _serve(kafka, _request("CountUp", kitchen_pb2.Count(n=3)))
        return kafka

    sent = asyncio.run(run()).sent
    assert [path for path, _, _ in sent] == ["loop"] * 4, sent
    assert isinstance(sent[-1][1], wire.Reply) and sent[-1][1].code == grpc.StatusCode.OK


class Blocking(Kitchen):
    """Whoami waits until the test lets it return."""

    def __init__(self) -> None:
        self.started, self.release = threading.Event(), threading.Event()

    def Whoami(self, request, context):  # type: ignore[no-untyped-def]
        self.started.set()
        self.release.wait(5)
        return kitchen_pb2.WhoamiReply(pid=1)


def test_a_call_cancelled_while_its_def_handler_runs_sends_nothing() -> None:
    async def run() -> Kafka:
        kafka = Kafka()
        servicer = Blocking()
        dispatcher = Dispatcher(collect([servicer])[0], 4, HandlerMetrics(CollectorRegistry()))
        calls = Calls(dispatcher, kafka.send, send_now=kafka.send_now)
        request = _request("Whoami", empty_pb2.Empty())
        try:
            work = calls.accept(request, peer="memory")
            assert work is not None
            assert await asyncio.to_thread(servicer.started.wait, 5)
            calls.cancel(request.correlation_id)
            servicer.release.set()
            await work
        finally:
            dispatcher.close()
        # The handler's thread returns after the call ended: wait for it, and for what it sends.
        await asyncio.to_thread(dispatcher._threads.shutdown, True)
        await asyncio.sleep(0.05)
        return kafka

    assert asyncio.run(run()).sent == []
