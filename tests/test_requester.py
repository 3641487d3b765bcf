"""The request/reply core (adapter.caller.requester) over the in-memory transport (adapter.caller.memory)."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import pytest

from adapter.caller.memory import MemoryTransport, ReplyRecord
from adapter.caller.replies import OnPartitions, OnReplies
from adapter.caller.requester import REPLY_RUN, Requester
from adapter.caller.transport import OnError
from adapter.errors import CallError, CallTimeout, TransportError
from adapter.protocol import wire

METHOD = "/pkg.Svc/Do"


def reply_to(headers: wire.Headers, value: bytes, **fields: Any) -> ReplyRecord:
    request = wire.Request.decode(headers, value)
    reply = wire.Reply(correlation_id=request.correlation_id, **{"payload": value, **fields})
    return reply.encode_headers(), reply.payload


async def echo(topic: str, key: bytes | None, value: bytes, headers: wire.Headers) -> ReplyRecord | None:
    return reply_to(headers, value)


async def started(serve: Callable[..., Awaitable[ReplyRecord | None]],
                  default_timeout: float = 5.0) -> tuple[Requester, MemoryTransport]:
    async def calls_only(topic: str, key: bytes | None, value: bytes, headers: wire.Headers) -> ReplyRecord | None:
        if isinstance(wire.decode_request(headers, value), wire.Frame):
            return None  # a cancel after a timeout: these handlers are unary
        return await serve(topic, key, value, headers)

    transport = MemoryTransport(calls_only)
    requester = Requester(transport, default_timeout)
    await requester.start(timeout=1.0)
    return requester, transport


def test_echo_and_the_request_record() -> None:
    seen: list[tuple[str, bytes | None, wire.Request, float]] = []

    async def serve(topic: str, key: bytes | None, value: bytes, headers: wire.Headers) -> ReplyRecord | None:
        seen.append((topic, key, wire.Request.decode(headers, value), time.time()))
        return reply_to(headers, value, trailing_metadata=(("x-t", "1"),))

    async def run() -> wire.Reply:
        requester, transport = await started(serve)
        reply = await requester.call(METHOD, b"payload", topic="pkg.Svc", key=b"k1",
                                     metadata=(("x-user", "a"), ("x-b-bin", b"\x00")), timeout=7.0)
        assert (requester.counters.sent, requester.counters.replied, requester.in_flight) == (1, 1, 0)
        assert requester.ready and await requester.transport_healthy()
        await requester.stop()
        assert not await transport.healthy()
        return reply

    reply = asyncio.run(run())
    assert (reply.code, reply.payload, reply.trailing_metadata) == (grpc.StatusCode.OK, b"payload", (("x-t", "1"),))
    [(topic, key, request, at)] = seen
    assert (topic, key, request.method, request.payload) == ("pkg.Svc", b"k1", METHOD, b"payload")
    assert (request.reply_topic, request.reply_partition) == ("memory.replies", 0)
    assert request.metadata == (("x-user", "a"), ("x-b-bin", b"\x00"))
    assert request.deadline is not None and 6.5 < request.deadline - at <= 7.001  # rounded to ms
    assert len(request.correlation_id) == 16


def test_200_concurrent_calls_get_their_own_replies() -> None:
    async def shuffled_echo(topic: str, key: bytes | None, value: bytes, headers: wire.Headers) -> ReplyRecord:
        await asyncio.sleep(random.random() / 100)  # replies come back in another order
        return reply_to(headers, value)

    async def run() -> tuple[list[bytes], Requester]:
        requester, _ = await started(shuffled_echo)
        payloads = [f"call {i}".encode() for i in range(200)]
        replies = await asyncio.gather(*(requester.call(METHOD, p, topic="t") for p in payloads))
        await requester.stop()
        return [r.payload for r in replies], requester

    got, requester = asyncio.run(run())
    assert got == [f"call {i}".encode() for i in range(200)]
    counters = requester.counters
    assert (counters.sent, counters.replied, counters.dropped, counters.timed_out) == (200, 200, 0, 0)


def test_no_reply_times_out_and_a_late_reply_is_dropped() -> None:
    async def run() -> tuple[wire.Reply, Requester, float]:
        delivered = asyncio.Event()

        async def serve(topic: str, key: bytes | None, value: bytes, headers: wire.Headers) -> ReplyRecord | None:
            if value == b"slow":
                await asyncio.sleep(0.2)
                asyncio.get_running_loop().call_soon(delivered.set)  # after on_replies has run
                return reply_to(headers, b"late reply for the slow call")
            await delivered.wait()
            return reply_to(headers, value)

        requester, _ = await started(serve)
        began = time.monotonic()
        with pytest.raises(CallTimeout) as timed_out:
            await requester.call(METHOD, b"slow", topic="t", timeout=0.05)
        elapsed = time.monotonic() - began
        assert timed_out.value.code is grpc.StatusCode.DEADLINE_EXCEEDED
        assert "'t'" in timed_out.value.details
        other = await requester.call(METHOD, b"other", topic="t")
        await asyncio.sleep(0.01)
        await requester.stop()
        return other, requester, elapsed

    other, requester, elapsed = asyncio.run(run())
    assert elapsed < 0.15
    assert other.payload == b"other"
    counters = requester.counters
    assert (counters.timed_out, counters.dropped, counters.replied) == (1, 1, 1)


def test_default_timeout_applies_without_a_timeout() -> None:
    async def never(topic: str, key: bytes | None, value: bytes, headers: wire.Headers) -> None:
        await asyncio.sleep(10)

    async def run() -> None:
        requester, _ = await started(never, default_timeout=0.05)
        with pytest.raises(CallTimeout):
            await asyncio.wait_for(requester.call(METHOD, b"", topic="t"), 1.0)
        await requester.stop()

    asyncio.run(run())


def test_unknown_correlation_id_is_dropped_and_counted() -> None:
    async def stranger(topic: str, key: bytes | None, value: bytes, headers: wire.Headers) -> ReplyRecord:
        reply = wire.Reply(correlation_id=wire.new_correlation_id(), payload=b"not yours")
        return reply.encode_headers(), reply.payload

    async def run() -> Requester:
        requester, _ = await started(stranger)
        with pytest.raises(CallTimeout):
            await requester.call(METHOD, b"", topic="t", timeout=0.1)
        await requester.stop()
        return requester

    counters = asyncio.run(run()).counters
    assert (counters.dropped, counters.replied, counters.timed_out) == (1, 0, 1)


def test_malformed_reply_is_dropped_by_the_transport() -> None:
    async def garbage(topic: str, key: bytes | None, value: bytes, headers: wire.Headers) -> ReplyRecord:
        return [(wire.STATUS, b"0")], b"no correlation id"

    async def run() -> tuple[Requester, MemoryTransport]:
        requester, transport = await started(garbage)
        with pytest.raises(CallTimeout):
            await requester.call(METHOD, b"", topic="t", timeout=0.1)
        await requester.stop()
        return requester, transport

    requester, transport = asyncio.run(run())
    assert transport.malformed == 1
    assert requester.counters.dropped == 0


@pytest.mark.parametrize("error", [TransportError("broker says no"), RuntimeError("broker says no")])
def test_send_error_is_unavailable(error: Exception) -> None:
    async def refuse(topic: str, key: bytes | None, value: bytes, headers: wire.Headers) -> None:
        raise error

    async def run() -> CallError:
        requester, _ = await started(refuse)
        began = time.monotonic()
        with pytest.raises(CallError) as failed:
            await requester.call(METHOD, b"", topic="t", timeout=5)
        assert time.monotonic() - began < 1
        await requester.stop()
        return failed.value

    failed = asyncio.run(run())
    assert failed.code is grpc.StatusCode.UNAVAILABLE
    assert "broker says no" in failed.details


class ScriptedTransport:
    """A Transport whose send() does what a test says, synchronously."""

    reply_topic = "scripted"

    def __init__(self, on_send: Callable[[ScriptedTransport, wire.Request, OnError], None]) -> None:
        self.on_send = on_send
        self.on_replies: OnReplies | None = None

    async def start(self, on_replies: OnReplies, on_partitions: OnPartitions) -> None:
        self.on_replies = on_replies
        on_partitions(frozenset({3}))

    def send(self, topic: str, key: bytes | None, value: bytes, headers: wire.Headers, on_error: OnError) -> None:
        self.on_send(self, wire.Request.decode(headers, value), on_error)

    async def healthy(self) -> bool:
        return True

    async def stop(self) -> None:
        pass


def test_send_raising_is_unavailable() -> None:
    def refuse(transport: ScriptedTransport, request: wire.Request, on_error: OnError) -> None:
        raise TransportError("producing to t: buffer full")

    async def run() -> None:
        requester = Requester(ScriptedTransport(refuse))
        await requester.start(timeout=1)
        with pytest.raises(CallError, match="buffer full") as failed:
            await requester.call(METHOD, b"", topic="t")
        assert failed.value.code is grpc.StatusCode.UNAVAILABLE
        assert requester.in_flight == 0

    asyncio.run(run())


def test_waiter_is_registered_before_send() -> None:
    requesters: list[Requester] = []
    in_flight_at_send: list[int] = []

    def reply_at_once(transport: ScriptedTransport, request: wire.Request, on_error: OnError) -> None:
        in_flight_at_send.append(requesters[0].in_flight)
        assert transport.on_replies is not None and request.reply_partition == 3
        transport.on_replies([wire.Reply(request.correlation_id, payload=b"instant " + request.payload)])

    def reply_from_another_thread(transport: ScriptedTransport, request: wire.Request, on_error: OnError) -> None:
        in_flight_at_send.append(requesters[0].in_flight)
        assert transport.on_replies is not None
        thread = threading.Thread(target=transport.on_replies, args=([wire.Reply(request.correlation_id)],))
        thread.start()
        thread.join()

    async def run(on_send: Callable[[ScriptedTransport, wire.Request, OnError], None]) -> wire.Reply:
        requesters[:] = [Requester(ScriptedTransport(on_send))]
        await requesters[0].start(timeout=1)
        return await requesters[0].call(METHOD, b"x", topic="t", timeout=1)

    assert asyncio.run(run(reply_at_once)).payload == b"instant x"
    assert asyncio.run(run(reply_from_another_thread)).code is grpc.StatusCode.OK
    assert in_flight_at_send == [1, 1]


def test_losing_the_reply_partition_fails_its_pending_calls() -> None:
    async def run() -> None:
        release = asyncio.Event()
        partitions: list[int | None] = []

        async def held(topic: str, key: bytes | None, value: bytes, headers: wire.Headers) -> ReplyRecord:
            partitions.append(wire.Request.decode(headers, value).reply_partition)
            await release.wait()
            return reply_to(headers, value)

        requester, transport = await started(held)
        transport.assign(frozenset({0, 1}))
        await asyncio.sleep(0)
        calls = [asyncio.create_task(requester.call(METHOD, bytes([i]), topic="t")) for i in range(2 * REPLY_RUN)]
        await asyncio.sleep(0.01)
        assert sorted(p for p in partitions if p is not None) == [0] * REPLY_RUN + [1] * REPLY_RUN
        transport.assign(frozenset({0}))
        await asyncio.sleep(0.01)
        lost = [c for c, p in zip(calls, partitions, strict=True) if p == 1]
        kept = [c for c, p in zip(calls, partitions, strict=True) if p == 0]
        for call in lost:
            error = call.exception()
            assert isinstance(error, CallError) and error.code is grpc.StatusCode.UNAVAILABLE
            assert "reply partition moved" in error.details
        assert not any(call.done() for call in kept)
        release.set()
        assert [r.code for r in await asyncio.gather(*kept)] == [grpc.StatusCode.OK] * REPLY_RUN
        assert requester.counters.dropped == REPLY_RUN  # the replies of the failed calls

        transport.assign(frozenset())
        await asyncio.sleep(0)
        assert not requester.ready
        with pytest.raises(CallError, match="owns no reply partition") as failed:
            await requester.call(METHOD, b"", topic="t")
        assert failed.value.code is grpc.StatusCode.UNAVAILABLE
        transport.assign(frozenset({5}))
        await asyncio.sleep(0)
        assert (await requester.call(METHOD, b"back", topic="t")).payload == b"back"
        await requester.stop()

    asyncio.run(run())


def test_stop_fails_pending_calls() -> None:
    async def never(topic: str, key: bytes | None, value: bytes, headers: wire.Headers) -> None:
        await asyncio.sleep(10)

    async def run() -> None:
        requester, _ = await started(never)
        call = asyncio.create_task(requester.call(METHOD, b"", topic="t"))
        await asyncio.sleep(0.01)
        await requester.stop()
        with pytest.raises(CallError, match="shutting down") as failed:
            await call
        assert failed.value.code is grpc.StatusCode.UNAVAILABLE

    asyncio.run(run())


def test_start_without_a_reply_partition_is_a_transport_error() -> None:
    class Unassigned(ScriptedTransport):
        async def start(self, on_replies: OnReplies, on_partitions: OnPartitions) -> None:
            pass

    async def run() -> None:
        requester = Requester(Unassigned(lambda *_: None))
        with pytest.raises(TransportError, match="'scripted'"):
            await requester.start(timeout=0.05)
        with pytest.raises(CallError, match="owns no reply partition"):
            await requester.call(METHOD, b"", topic="t")

    asyncio.run(run())


def test_memory_transport_send_before_start_is_a_transport_error() -> None:
    async def run() -> None:
        with pytest.raises(TransportError, match="not started"):
            MemoryTransport(echo).send("t", None, b"", [], lambda exc: None)

    asyncio.run(run())


def test_a_timed_out_call_sends_a_cancel_with_the_same_key() -> None:
    seen: list[tuple[bytes | None, wire.Request | wire.Frame]] = []

    async def record(topic: str, key: bytes | None, value: bytes, headers: wire.Headers) -> None:
        seen.append((key, wire.decode_request(headers, value)))

    async def run() -> None:
        transport = MemoryTransport(record)
        requester = Requester(transport, 5.0)
        await requester.start(timeout=1.0)
        with pytest.raises(CallTimeout):
            await requester.call(METHOD, b"x", topic="t", timeout=0.05)
        await asyncio.sleep(0.01)
        await requester.stop()

    asyncio.run(run())
    (key, request), (cancel_key, cancel) = seen
    assert isinstance(request, wire.Request) and isinstance(cancel, wire.Frame)
    assert cancel.kind == wire.CANCEL and cancel.correlation_id == request.correlation_id
    assert key == cancel_key == request.correlation_id


def test_calls_ask_for_their_replies_on_one_partition_in_runs() -> None:
    # librdkafka puts one partition in each produce request: a handler's replies to calls sent
    # together share requests only if they go to one partition (docs/performance.md).
    seen: list[tuple[bytes | None, wire.Request]] = []

    async def serve(topic: str, key: bytes | None, value: bytes, headers: wire.Headers) -> ReplyRecord | None:
        seen.append((key, wire.Request.decode(headers, value)))
        return reply_to(headers, value)

    async def run() -> None:
        requester, transport = await started(serve)
        transport.assign(frozenset({0, 1, 2}))
        await asyncio.sleep(0)
        for _ in range(4 * REPLY_RUN):
            await requester.call(METHOD, b"x", topic="t")
        await requester.stop()

    asyncio.run(run())
    partitions = [request.reply_partition for _, request in seen]
    runs = [set(partitions[i:i + REPLY_RUN]) for i in range(0, len(partitions), REPLY_RUN)]
    assert runs == [{0}, {1}, {2}, {0}]
    # The record keys still spread the calls one by one over the request topic's partitions.
    assert all(key == request.correlation_id for key, request in seen)


async def _silent(topic: str, key: bytes | None, value: bytes, headers: wire.Headers) -> ReplyRecord | None:
    return None


def _messages(stream: Any, payloads: list[bytes]) -> None:
    for seq, payload in enumerate(payloads):
        stream.deliver(wire.Frame(stream.correlation_id, wire.MESSAGE, seq, payload), lambda: None)


def test_empty_response_messages_are_bounded_too() -> None:
    """#12.10: each buffered message counts its size plus an overhead, so 0-byte ones are bounded."""
    async def run() -> CallError:
        requester, _ = await started(_silent)
        requester.max_stream_buffer = 64 * 100
        stream = requester.open_stream(METHOD, topic="t", request=b"", timeout=5)
        _messages(stream, [b""] * 200)  # nobody reads
        with pytest.raises(CallError) as failed:
            async for _ in stream:
                pass
        await requester.stop()
        return failed.value

    error = asyncio.run(run())
    assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "slower" in error.details


def test_the_frontends_buffers_are_bounded_in_total() -> None:
    """#12.10: many slow streams, each within its own bound, cannot hold more than the total."""
    async def run() -> tuple[list[grpc.StatusCode | None], int]:
        requester, _ = await started(_silent)
        requester.max_stream_buffer = 10_000
        requester.max_buffered_total = 25_000
        streams = [requester.open_stream(METHOD, topic="t", request=b"", timeout=5) for _ in range(4)]
        for stream in streams:
            _messages(stream, [b"x" * 1000] * 8)  # 8 x (1000 + 64) bytes each: under 10,000
        codes: list[grpc.StatusCode | None] = []
        for stream in streams:
            try:
                got = [m async for m in _take(stream, 8)]
                codes.append(None if len(got) == 8 else grpc.StatusCode.UNKNOWN)
            except CallError as exc:
                codes.append(exc.code)
        for stream in streams:
            stream.cancel()
        left = requester.buffered_total
        await requester.stop()
        return codes, left

    codes, left = asyncio.run(run())
    assert codes[:2] == [None, None] and grpc.StatusCode.RESOURCE_EXHAUSTED in codes[2:], codes
    assert left == 0  # what ended streams held is released


async def _take(stream: Any, n: int) -> Any:
    for _ in range(n):
        yield await stream.__anext__()
