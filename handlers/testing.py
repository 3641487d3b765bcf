"""Test your handlers in-process: generated stubs call them through the caller's and the handler's call paths.

`serve_in_memory` collects the targets as ``python -m handlers`` does and yields an
`adapter.caller.aio_channel.AioKafkaChannel`, the channel Python callers use against Kafka. Each
call runs the request/reply core (`adapter.caller.requester`, `adapter.caller.stream`), the wire
encoding and the handler's call handling (`handlers.calls`, `Dispatcher`, `HandlerContext`),
with Kafka replaced by `adapter.caller.memory`. What a handler process does around that with Kafka
(`handlers.worker`: consuming in a group, offsets, flow control, dead letters, rebalances,
exactly-once) is not run here; the broker tests cover it. All four kinds of call work, with deadlines,
metadata, statuses and cancellation, as in grpc.aio::

    async with serve_in_memory(MailService(OutboxSender(tmp_path))) as channel:
        stub = mail_pb2_grpc.MailServiceStub(channel)
        reply = await stub.SendMail(mail_pb2.SendMailRequest(user_id="u1", to="a@b.c"))
        assert reply.result == mail_pb2.SENT

        call = stub.SendMail(request)           # keep the call to read its status
        reply = await call
        trailers = await call.trailing_metadata()

        async for item in stub.Watch(request):  # server streams; client streams take iterators
            ...

Failed calls raise ``grpc.aio.AioRpcError``; a cancelled call raises ``asyncio.CancelledError``.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import grpc

from adapter.caller.aio_channel import AioKafkaChannel
from adapter.caller.memory import MemoryTransport, ReplyRecord
from adapter.caller.requester import Requester
from adapter.protocol import wire
from adapter.protocol.routing import routes_for
from adapter.runtime.config import WorkerConfig
from adapter.runtime.tracing import Tracing
from handlers.calls import Calls, Partition
from handlers.dedupe import ReplyCache
from handlers.dispatcher import Dispatcher
from handlers.registry import collect

#: The channel `serve_in_memory` yields (the name this kit gave it first).
Channel = AioKafkaChannel


@asynccontextmanager
async def serve_in_memory(*targets: object, default_timeout: float = 5.0,
                          tracer_provider: Any = None) -> AsyncIterator[AioKafkaChannel]:
    """Serve `targets` (servicers, their classes, `ServiceRegistry`s) for the block's duration.

    Both sides make their spans with `tracer_provider` (an OpenTelemetry ``TracerProvider``;
    default: the global one), e.g. one whose ``InMemorySpanExporter`` a test reads.
    """
    methods, services = collect(targets)
    tracing = Tracing(tracer_provider)
    dispatcher = Dispatcher(methods, tracing=tracing)
    offsets = itertools.count()
    partitions: set[Partition] = set()

    async def send(request: wire.Request, record: wire.Reply | wire.Frame, key: bytes | None) -> None:
        transport.reply(record.encode_headers(), record.payload)
        if isinstance(record, wire.Frame):
            await asyncio.sleep(0)  # a stream's reader runs between messages, as with a broker

    loop = asyncio.get_running_loop()

    def send_now(request: wire.Request, reply: wire.Reply, key: bytes | None,
                 done: Callable[[Exception | None], None]) -> bool:
        # As a handler process does: a def handler's thread hands its reply over itself.
        def deliver() -> None:
            try:
                transport.reply(reply.encode_headers(), reply.payload)
            except Exception as exc:
                done(exc)  # fails the call, as the loop's `send` would
            else:
                done(None)

        loop.call_soon_threadsafe(deliver)
        return True

    # As a handler process has them: retries with the same idempotency key share one reply.
    calls = Calls(dispatcher, send, replies=ReplyCache(WorkerConfig.dedupe_window, WorkerConfig.dedupe_entries),
                  send_now=send_now)

    async def serve(topic: str, key: bytes | None, value: bytes, headers: wire.Headers) -> ReplyRecord | None:
        # What handlers.worker does with each record, minus Kafka. Records are accepted in the
        # order they were sent (before any await), so a stream's frames reach its call in order.
        partition = (topic, 0)
        partitions.add(partition)
        work = calls.accept(wire.decode_request(headers, value), peer=f"memory:{topic}/0@{next(offsets)}",
                            partition=partition, key=key)
        if work is not None:
            await work  # a failure to reply fails the call, as a refused record would
        return None  # replies went through `send`

    transport = MemoryTransport(serve)
    channel = AioKafkaChannel(Requester(transport, default_timeout, tracing=tracing), routes_for(services))
    await channel.start(timeout=1.0)
    try:
        yield channel
    finally:
        # Streams still open end as when a handler process loses their partition: their handlers
        # see is_active() false. The channel then cancels whatever else is in flight.
        await calls.abort(partitions, grpc.StatusCode.UNAVAILABLE, "the in-memory server is shutting down")
        await channel.close()
        dispatcher.close()
