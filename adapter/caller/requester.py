"""The request/reply core: send a request record, wait for the reply with its correlation id.

    requester = Requester(transport, default_timeout=30)
    await requester.start()
    reply = await requester.call("/shop.mail.v1.MailService/SendMail", payload,
                                 topic="SEND_MAIL", timeout=5.0)
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from adapter.caller.stream import Stream
from adapter.caller.transport import Transport
from adapter.errors import CallError, CallTimeout, TransportError
from adapter.protocol import wire
from adapter.runtime.logs import call_fields
from adapter.runtime.metrics import FrontendMetrics
from adapter.runtime.tracing import CallSpan, Tracing, code_when_cancelled

log = logging.getLogger(__name__)

#: Calls sent one after another that ask for their replies on the same partition. librdkafka
#: puts one partition in each produce request (librdkafka issue 1700): replies spread one by
#: one over the partitions would cost the broker a request each; in runs, a handler's replies
#: to calls in flight together share requests and fetches (docs/performance.md). Over many
#: runs every partition this requester owns is used alike.
REPLY_RUN = 16


@dataclass
class Counters:
    """What the requester has seen, for logs and tests (`FrontendMetrics` has the exported counts)."""

    sent: int = 0
    replied: int = 0
    timed_out: int = 0
    #: Replies whose call had already ended (late) or that belong to no call of ours.
    dropped: int = 0


@dataclass(eq=False)
class _Pending:
    future: asyncio.Future[wire.Reply]
    partition: int


class Requester:
    """Sends calls through a `Transport` and matches replies to waiting callers."""

    def __init__(self, transport: Transport, default_timeout: float = 30.0, metrics: FrontendMetrics | None = None,
                 tracing: Tracing | None = None) -> None:
        self._transport = transport
        self._default_timeout = default_timeout
        self._pending: dict[bytes, _Pending | Stream] = {}
        #: Bytes of response messages a stream may hold for a slow client (each counted with
        #: MESSAGE_OVERHEAD), and all streams together.
        self.max_stream_buffer = 32 * 1024 * 1024
        self.max_buffered_total = 256 * 1024 * 1024
        #: Bytes the streams of this requester hold now.
        self.buffered_total = 0
        self._partitions: tuple[int, ...] = ()
        self._next = itertools.count()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = asyncio.Event()
        self.counters = Counters()
        self.metrics = metrics if metrics is not None else FrontendMetrics()
        self.metrics.watch(in_flight=lambda: len(self._pending), streams_open=self._streams_open)
        self.tracing = tracing if tracing is not None else Tracing()

    async def start(self, timeout: float = 60.0) -> None:
        """Connect the transport and wait until this instance owns a reply partition."""
        self._loop = asyncio.get_running_loop()
        await self._transport.start(self._replies_from_thread, self._partitions_from_thread)
        try:
            await asyncio.wait_for(self._ready.wait(), timeout)
        except TimeoutError:
            raise TransportError(
                f"no partition of reply topic {self._transport.reply_topic!r} was assigned within {timeout:g}s; "
                "are there more frontends than reply partitions?"
            ) from None

    async def stop(self) -> None:
        """Fail calls still waiting, then disconnect."""
        for cid in list(self._pending):
            self._fail(cid, CallError(grpc.StatusCode.UNAVAILABLE, "the requester is shutting down"))
        await self._transport.stop()

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    @property
    def ready(self) -> bool:
        return bool(self._partitions)

    async def transport_healthy(self) -> bool:
        """Whether the broker answers now."""
        return await self._transport.healthy()

    async def call(
        self,
        method: str,
        payload: bytes,
        *,
        topic: str,
        key: bytes | None = None,
        metadata: wire.Metadata = (),
        timeout: float | None = None,
        idempotency_key: bytes | None = None,
        auth: wire.Auth = (),
        identity_key: str | None = None,
    ) -> wire.Reply:
        """Send one request and return its reply. Raises `CallTimeout` or `CallError`.

        Without a `key`, the idempotency key (so that retries meet on one partition) or the
        correlation id is the record key; a later cancel record goes to the same partition.
        """
        span = self.tracing.call(method, topic, metadata)
        try:
            reply = await self._call(method, payload, topic, key, span, timeout, idempotency_key,
                                     (auth, identity_key))
        except CallError as exc:
            span.end(exc.code, exc.details)
            raise
        except BaseException:
            span.end(grpc.StatusCode.CANCELLED)  # unless _call said DEADLINE_EXCEEDED
            raise
        span.end(reply.code, reply.message)
        return reply

    async def _call(self, method: str, payload: bytes, topic: str, key: bytes | None, span: CallSpan,
                    timeout: float | None, idempotency_key: bytes | None,
                    peer: tuple[wire.Auth, str | None]) -> wire.Reply:
        request, partition = self._request(method, payload, span.metadata, timeout, opens_stream=False, peer=peer)
        if idempotency_key is not None:
            request = dataclasses.replace(request, idempotency_key=idempotency_key)
        cid = request.correlation_id
        span.set_correlation_id(cid)
        key = key if key is not None else idempotency_key if idempotency_key is not None else cid
        future = asyncio.get_running_loop().create_future()
        # The waiter exists before the record does, so even an instant reply finds it.
        self._pending[cid] = _Pending(future, partition)
        try:
            self._transport.send(topic, key, payload, request.encode_headers(), self._failer(cid))
            self.counters.sent += 1
            return await asyncio.wait_for(future, request.time_remaining())
        except TimeoutError:
            self.counters.timed_out += 1
            self._cancel(topic, key, cid)
            raise CallTimeout(f"no reply from topic {topic!r} within the deadline") from None
        except asyncio.CancelledError:
            self._cancel(topic, key, cid)
            span.end(code_when_cancelled(request.time_remaining()))
            raise
        except TransportError as exc:
            log.warning("%s call %s: could not send the request to %s: %s", method, cid.hex(), topic, exc,
                        extra=call_fields(method, cid, topic))
            raise CallError(grpc.StatusCode.UNAVAILABLE, str(exc)) from exc
        finally:
            self._pending.pop(cid, None)

    def open_stream(
        self,
        method: str,
        *,
        topic: str,
        request: bytes | None,
        key: bytes | None = None,
        metadata: wire.Metadata = (),
        timeout: float | None = None,
        auth: wire.Auth = (),
        identity_key: str | None = None,
    ) -> Stream:
        """Start a streaming call. `request` is the single request message of a server stream;
        None opens a client or bidi stream, whose messages go through `Stream.send`."""
        span = self.tracing.call(method, topic, metadata)  # the stream ends it
        try:
            opening, partition = self._request(method, request or b"", span.metadata, timeout, opens_stream=request is None,
                                               peer=(auth, identity_key))
        except CallError as exc:
            span.end(exc.code, exc.details)
            raise
        cid = opening.correlation_id
        span.set_correlation_id(cid)
        stream = Stream(self, opening, topic, cid if key is None else key, partition, self.max_stream_buffer, span)
        self._pending[cid] = stream
        try:
            self._transport.send(topic, stream.key, opening.payload, opening.encode_headers(), self._failer(cid))
        except TransportError as exc:
            self._pending.pop(cid, None)
            log.warning("%s call %s: could not send the request to %s: %s", method, cid.hex(), topic, exc,
                        extra=call_fields(method, cid, topic))
            error = CallError(grpc.StatusCode.UNAVAILABLE, str(exc))
            span.end(error.code, error.details)
            raise error from exc
        self.counters.sent += 1
        return stream

    def send_frame(self, stream: Stream, frame: wire.Frame, on_ack: Callable[[], None] | None = None) -> None:
        """Send a frame of `stream` to its handler (same topic and key as its opening)."""
        loop = self._loop
        assert loop is not None
        acked = None
        if on_ack is not None:
            def acked() -> None:
                loop.call_soon_threadsafe(on_ack)
        self._transport.send(stream.topic, stream.key, frame.payload, frame.encode_headers(),
                             self._failer(stream.correlation_id), acked)

    def forget(self, stream: Stream) -> None:
        self._pending.pop(stream.correlation_id, None)

    def _request(self, method: str, payload: bytes, metadata: wire.Metadata, timeout: float | None,
                 opens_stream: bool, peer: tuple[wire.Auth, str | None] = ((), None)) -> tuple[wire.Request, int]:
        if not self._partitions:
            raise CallError(grpc.StatusCode.UNAVAILABLE, "this requester owns no reply partition right now")
        timeout = self._default_timeout if timeout is None else timeout
        partition = self._partitions[next(self._next) // REPLY_RUN % len(self._partitions)]
        request = wire.Request(
            method=method,
            correlation_id=wire.new_correlation_id(),
            reply_topic=self._transport.reply_topic,
            reply_partition=partition,
            deadline=time.time() + timeout,
            metadata=metadata,
            payload=payload,
            opens_stream=opens_stream,
            auth=peer[0],
            identity_key=peer[1],
        )
        return request, partition

    def _cancel(self, topic: str, key: bytes, cid: bytes) -> None:
        # Best effort: the handler stops working for a caller that is gone.
        frame = wire.Frame(cid, wire.CANCEL)
        try:
            self._transport.send(topic, key, b"", frame.encode_headers(), lambda exc: None)
        except Exception as exc:
            log.debug("could not send cancel for %s: %s", cid.hex(), exc)

    def _failer(self, cid: bytes) -> Callable[[Exception], None]:
        loop = self._loop
        assert loop is not None

        def fail(exc: Exception) -> None:
            loop.call_soon_threadsafe(self._fail, cid, exc)

        return fail

    def _fail(self, cid: bytes, exc: Exception) -> None:
        pending = self._pending.pop(cid, None)
        if isinstance(pending, Stream):
            pending.fail(CallError(grpc.StatusCode.UNAVAILABLE, str(exc)) if isinstance(exc, TransportError) else exc)
        elif pending is not None and not pending.future.done():
            pending.future.set_exception(exc)

    def _deliver(self, replies: list[wire.Reply | wire.Frame]) -> None:
        for reply in replies:
            cid = reply.correlation_id
            pending = self._pending.get(cid)
            if isinstance(pending, Stream):
                if isinstance(reply, wire.Reply):
                    self._pending.pop(cid, None)
                    self.counters.replied += 1
                pending.deliver(reply, self._drop)
                continue
            if pending is None or pending.future.done() or isinstance(reply, wire.Frame):
                self._drop()
                log.debug("dropped reply for no waiting call (correlation id %s)", cid.hex())
                continue
            del self._pending[cid]
            self.counters.replied += 1
            pending.future.set_result(reply)

    def _drop(self) -> None:
        self.counters.dropped += 1
        self.metrics.replies_dropped.inc()

    def _streams_open(self) -> int:
        # Called on the scraping thread: list() copies the values at once, under the GIL.
        return sum(isinstance(p, Stream) for p in list(self._pending.values()))

    def _set_partitions(self, partitions: frozenset[int]) -> None:
        self._partitions = tuple(sorted(partitions))
        if self._partitions:
            self._ready.set()
        lost = [cid for cid, p in self._pending.items() if p.partition not in partitions]
        for cid in lost:
            self._fail(cid, CallError(grpc.StatusCode.UNAVAILABLE,
                                      "reply partition moved to another frontend; the call may be retried"))

    # Called on the transport's thread: hop onto the event loop once per batch.
    def _replies_from_thread(self, replies: list[wire.Reply | wire.Frame]) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._deliver, replies)

    def _partitions_from_thread(self, partitions: frozenset[int]) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._set_partitions, partitions)
