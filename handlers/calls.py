"""The calls a handler process is running, by correlation id: every request record goes here.

    calls = Calls(dispatcher, send)
    work = calls.accept(record, peer="kafka:topic/0@42", partition=("topic", 0))
    if work is not None:
        await work          # the call's final reply has been sent (or there is none)

A record that opens a call (a whole unary or server-streaming request, or the opening
of a client stream) starts it; a frame (message, half-close, cancel) is routed at once
to its call. No Kafka here: `send` produces a reply record, `handlers.worker` does the I/O.

Longer than our modules should be (~350 lines): one call's life, unary and the three kinds of
stream, with the bookkeeping the frames of a stream share (ordering, buffers, cancellation).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import grpc

from adapter.errors import RecordRefused, TransactionAborted, TransportError
from adapter.protocol import wire
from adapter.runtime.logs import call_fields, peer_location
from adapter.runtime.metrics import DEADLINE_SLACK, HandlerMetrics
from handlers.context import HandlerContext
from handlers.dedupe import KeyReused, ReplyCache, request_digest
from handlers.dispatcher import Dispatcher

log = logging.getLogger(__name__)

#: Produce one reply record for `request` (to its reply topic and partition, with the request's key).
Send = Callable[[wire.Request, wire.Reply | wire.Frame, bytes | None], Awaitable[None]]
#: The same for a unary call's reply, from any thread: True if it was handed to Kafka, whose answer
#: (None: acknowledged) then goes to the callback, on the event loop. False: use `Send`.
SendNow = Callable[[wire.Request, wire.Reply, bytes | None, Callable[[Exception | None], None]], bool]
Partition = tuple[str, int]


class RequestStream:
    """The raw request messages of one client stream, fed by frames, read by the handler."""

    def __init__(self, limit_bytes: int) -> None:
        self._queue: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue()
        self._limit = limit_bytes
        self._queued_bytes = 0
        self._next_seq = 0
        self._failed = False

    def feed(self, frame: wire.Frame) -> str | None:
        """Queue a frame; returns why the call must end, if it must."""
        if self._failed:
            return None
        if frame.kind == wire.HALF_CLOSE:
            self._queue.put_nowait(None)
            return None
        if frame.seq < self._next_seq:
            return None  # a duplicate: already delivered
        if frame.seq > self._next_seq:
            return f"request message {self._next_seq} is missing (got {frame.seq})"
        if self._queued_bytes + len(frame.payload) > self._limit:
            return f"over {self._limit} bytes of request messages wait for the handler to read them"
        self._next_seq += 1
        self._queued_bytes += len(frame.payload) + _OVERHEAD
        self._queue.put_nowait(frame.payload)
        return None

    def fail(self, exc: BaseException) -> None:
        self._failed = True
        self._queue.put_nowait(exc)

    def __aiter__(self) -> RequestStream:
        return self

    async def __anext__(self) -> bytes:
        item = await self._queue.get()
        if item is None:
            self._queue.put_nowait(None)  # stays ended for any later reader
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            self._queue.put_nowait(item)
            raise item
        self._queued_bytes -= len(item) + _OVERHEAD
        return item


#: Bytes counted per queued message besides its payload, so empty messages are bounded too.
_OVERHEAD = 64


def refused_status(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status a call ends with when Kafka refused one of its replies with `error`."""
    too_large = any(marker in str(error) for marker in ("TOO_LARGE", "TooLarge", "too large"))
    code = grpc.StatusCode.RESOURCE_EXHAUSTED if too_large else grpc.StatusCode.INTERNAL
    return code, f"the handler's reply could not be written to Kafka: {error}"


class CallCancelled(Exception):
    """Raised to a handler that reads the requests of a call its caller cancelled."""


@dataclass(eq=False)
class _Call:
    request: wire.Request
    context: HandlerContext
    partition: Partition | None
    key: bytes | None = None
    requests: RequestStream | None = None
    task: asyncio.Task[None] | None = None
    sent: int = 0
    ended: bool = False
    #: A server or bidi stream: its messages go out one by one, so it cannot be replayed elsewhere.
    streams_out: bool = False
    #: A client or bidi stream whose caller has not half-closed yet: it waits for request frames.
    reading: bool = False
    timer: asyncio.TimerHandle | None = field(default=None, repr=False)


class _EarlyReply:
    """Sends a unary call's reply from its def handler's thread (`Dispatcher.handle`'s `reply_now`).

    The reply goes to Kafka without waiting for the event loop to wake up and take the handler's
    result: that hop is a good part of a def handler's cost. What follows the send (the
    delivery report, the call's end, its offset) still happens on the event loop."""

    def __init__(self, call: _Call, send_now: SendNow) -> None:
        self._call = call
        self._send_now = send_now
        self.sent = False
        #: Kafka's answer to the reply: None once acknowledged, else the error.
        self.delivered: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def __call__(self, reply: wire.Reply) -> None:
        # Cancelled meanwhile: no reply. A cancel just after this check lets the reply go, as if
        # it came first; no lock: kafka-python's produce may block.
        if self._call.ended:
            return
        try:
            self.sent = self._send_now(self._call.request, reply, self._call.key, self._settle)
        except TransportError as exc:
            # Refused at once (too large, producer closed...): the event loop sends it again,
            # and that path tells the caller or dead-letters the request.
            log.debug("call %s: its reply goes through the event loop: %s", reply.correlation_id.hex(), exc)
        except Exception:
            log.warning("call %s: sending its reply from the handler's thread failed; the event loop sends it",
                        reply.correlation_id.hex(), exc_info=True)

    def _settle(self, error: Exception | None) -> None:
        if not self.delivered.done():
            self.delivered.set_result(error)


class Calls:
    """Starts calls, routes their frames, cancels and aborts them."""

    def __init__(self, dispatcher: Dispatcher, send: Send, max_queued: int = 64 * 1024 * 1024,
                 replies: ReplyCache | None = None, metrics: HandlerMetrics | None = None,
                 max_reading: int | None = None, send_now: SendNow | None = None) -> None:
        """`send_now`, if given, lets a def handler's thread send its call's final reply itself."""
        self.dispatcher = dispatcher
        self._send_now = send_now
        #: Client and bidi streams still reading requests; `max_reading` of them at most (None: no limit).
        self.reading = 0
        self._max_reading = max_reading
        self._send = send
        self.replies = replies
        self._max_queued = max_queued
        self._calls: dict[bytes, _Call] = {}
        #: Frames for no running call (their call ended, or ran elsewhere).
        self.orphan_frames = 0
        self.cancelled = 0
        self.metrics = metrics if metrics is not None else dispatcher.metrics
        self.metrics.streams_open.set_function(self._streams_open)

    def __len__(self) -> int:
        return len(self._calls)

    def accept(self, record: wire.Request | wire.Frame, peer: str, partition: Partition | None = None,
               key: bytes | None = None) -> asyncio.Future[None] | None:
        """Start a call (returns the task that ends when its reply is sent) or route a frame (None)."""
        if isinstance(record, wire.Frame):
            self._route(record)
            return None
        if record.correlation_id in self._calls:
            log.warning("ignored a second opening of call %s (%s)", record.correlation_id.hex(), peer,
                        extra=call_fields(record.method, record.correlation_id, *peer_location(peer)))
            return None
        if record.opens_stream and self._max_reading is not None and self.reading >= self._max_reading:
            self.metrics.records_rejected.labels("too_many_streams").inc()
            why = f"this handler process has {self.reading} client streams open, its limit (--max-client-streams)"
            log.warning("refused call %s (%s): %s", record.correlation_id.hex(), peer, why,
                        extra=call_fields(record.method, record.correlation_id, *peer_location(peer)))
            if not record.reply_topic:
                return None
            refusal = wire.Reply(record.correlation_id, code=grpc.StatusCode.RESOURCE_EXHAUSTED, message=why)
            return asyncio.ensure_future(self._send(record, refusal, key))
        dedupe = self._dedupe_key(record)
        if dedupe is not None and self.replies is not None:
            digest = request_digest(record)
            try:
                first = self.replies.get(dedupe, digest)
            except KeyReused as exc:
                log.warning("refused call %s (%s): %s", record.correlation_id.hex(), peer, exc,
                            extra=call_fields(record.method, record.correlation_id, *peer_location(peer)))
                if not record.reply_topic:
                    return None
                refusal = wire.Reply(record.correlation_id, code=grpc.StatusCode.FAILED_PRECONDITION, message=str(exc))
                return asyncio.ensure_future(self._send(record, refusal, key))
            if first is not None:
                self.metrics.dedupe_hits.inc()
                return asyncio.get_running_loop().create_task(self._replay(record, first, peer, partition, key))
            self.replies.begin(dedupe, digest)
        return self._start(record, peer, partition, key)

    def _start(self, record: wire.Request, peer: str, partition: Partition | None, key: bytes | None) -> asyncio.Task[None]:
        call = _Call(record, HandlerContext(record, peer), partition, key)
        method = self.dispatcher.methods.get(record.method)
        call.streams_out = method is not None and method.server_streaming
        if record.opens_stream:
            call.requests = RequestStream(self._max_queued)
            call.reading = True
            self.reading += 1
        self._calls[record.correlation_id] = call
        call.task = asyncio.get_running_loop().create_task(self._serve(call))
        call.task.add_done_callback(lambda _: self._never_ran(call))
        return call.task

    def _never_ran(self, call: _Call) -> None:
        # A task cancelled before its first step (a CANCEL frame in the same batch as the call,
        # a rewind) runs no `finally`: without this its call would stay open for good, and
        # retries with its idempotency key would wait for it for ever.
        if self._calls.get(call.request.correlation_id) is call:
            self._end(call, None)

    def _dedupe_key(self, record: wire.Request) -> tuple[str, str, bytes] | None:
        method = self.dispatcher.methods.get(record.method)
        if record.idempotency_key is None or method is None or method.client_streaming or method.server_streaming:
            return None  # streams are not replayed: their messages went out one by one
        # Scoped by the verified caller where there is one: another caller's key is another call.
        return b",".join(record.peer_identities() or ()).decode(errors="replace"), record.method, record.idempotency_key

    async def _replay(self, record: wire.Request, first: asyncio.Future[wire.Reply | None], peer: str,
                      partition: Partition | None, key: bytes | None) -> None:
        reply = await asyncio.shield(first)
        if reply is None:
            await self._start(record, peer, partition, key)
            return
        log.debug("call %s is a retry of %s: replaying its reply", record.correlation_id.hex(), record.method)
        if record.reply_topic:
            await self._send(record, dataclasses.replace(reply, correlation_id=record.correlation_id), key)

    def cancel(self, correlation_id: bytes, why: str = "cancelled by the caller",
               code: grpc.StatusCode = grpc.StatusCode.CANCELLED) -> None:
        """The caller is gone: the handler sees is_active() false, its task is cancelled, nothing more is sent.

        `code` is the call's outcome in the metrics (no reply carries it)."""
        call = self._calls.get(correlation_id)
        if call is None or call.ended:
            return
        self.cancelled += 1
        self.metrics.calls_cancelled.inc()
        log.debug("call %s %s", correlation_id.hex(), why)
        call.ended = True
        self._done_reading(call)
        call.context.set_code(code)
        call.context.cancel()
        if call.requests is not None:
            call.requests.fail(CallCancelled(why))
        if call.task is not None:
            call.task.cancel()

    async def abort(self, partitions: set[Partition], code: grpc.StatusCode, message: str) -> None:
        """End the streams that came from `partitions` with a status (their partition moved away)."""
        await self._abort([c for c in self._calls.values()
                           if c.partition in partitions and not c.ended and (c.requests is not None or c.streams_out)],
                          code, message)

    async def abort_reading(self, code: grpc.StatusCode, message: str) -> None:
        """End the streams still waiting for request messages with a status (none will be fetched)."""
        await self._abort([c for c in self._calls.values() if c.reading and not c.ended], code, message)

    async def _abort(self, doomed: list[_Call], code: grpc.StatusCode, message: str) -> None:
        for call in doomed:
            if call.ended:
                # It finished, and replied, while the calls before it were being aborted (each
                # send may wait for a commit): a second final reply would be committed too.
                continue
            self.cancel(call.request.correlation_id, message, code)
            if call.request.reply_topic:
                reply = wire.Reply(call.request.correlation_id, code=code, message=message)
                try:
                    await self._send(call.request, reply, call.key)
                except Exception as exc:
                    log.warning("could not send %s to call %s: %s", code.name, call.request.correlation_id.hex(), exc,
                                extra=call_fields(call.request.method, call.request.correlation_id,
                                                  *peer_location(call.context.peer())))
        await asyncio.gather(*(c.task for c in doomed if c.task is not None), return_exceptions=True)

    def running_in(self, partitions: set[Partition]) -> list[bytes]:
        """The correlation ids of the calls from `partitions` whose task has not ended."""
        return [cid for cid, c in self._calls.items()
                if c.partition in partitions and c.task is not None and not c.task.done()]

    async def drop(self, partitions: set[Partition], why: str) -> None:
        """End the calls that came from `partitions` without a reply of theirs, whatever they were doing.

        For calls whose reply could no longer be committed with their request's offset (their
        partition moved on, exactly-once mode): their next owner runs them again and answers.
        A call already sending its final reply is stopped before the send, if it has not happened."""
        doomed = [self._calls[cid] for cid in self.running_in(partitions)]
        for call in doomed:
            if call.ended:
                assert call.task is not None
                call.task.cancel()
            else:
                self.cancel(call.request.correlation_id, why, grpc.StatusCode.ABORTED)
        await asyncio.gather(*(c.task for c in doomed if c.task is not None), return_exceptions=True)

    async def finish(self, partitions: set[Partition], timeout: float) -> None:
        """Wait up to `timeout` seconds for the calls that came from `partitions` to end."""
        tasks = [c.task for c in self._calls.values() if c.partition in partitions and c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)

    def _route(self, frame: wire.Frame) -> None:
        call = self._calls.get(frame.correlation_id)
        if call is None or call.ended:
            self.orphan_frames += 1
            self.metrics.frames_dropped.inc()
            log.debug("dropped %s frame of call %s that is not running here", frame.kind, frame.correlation_id.hex())
            return
        if frame.kind == wire.CANCEL:
            remaining = call.request.time_remaining()
            timed_out = remaining is not None and remaining < DEADLINE_SLACK  # the caller's deadline, most likely
            self.cancel(frame.correlation_id, "cancelled by the caller",
                        grpc.StatusCode.DEADLINE_EXCEEDED if timed_out else grpc.StatusCode.CANCELLED)
            return
        if call.requests is None:
            self.orphan_frames += 1
            self.metrics.frames_dropped.inc()
            return
        if frame.kind == wire.HALF_CLOSE:
            self._done_reading(call)
        problem = call.requests.feed(frame)
        if problem is not None:
            call.context.set_code(grpc.StatusCode.ABORTED if "missing" in problem else grpc.StatusCode.RESOURCE_EXHAUSTED)
            call.context.set_details(problem)
            call.requests.fail(CallCancelled(problem))

    async def _serve(self, call: _Call) -> None:
        request = call.request
        remaining = request.time_remaining()
        if remaining is not None and remaining > 0:
            call.timer = asyncio.get_running_loop().call_later(remaining, self.cancel, request.correlation_id,
                                                               "deadline passed", grpc.StatusCode.DEADLINE_EXCEEDED)

        async def emit(payload: bytes) -> None:
            if call.ended:
                raise asyncio.CancelledError()
            if request.reply_topic:
                frame = wire.Frame(request.correlation_id, wire.MESSAGE, call.sent, payload)
                try:
                    await self._send(request, frame, call.key)
                except TransportError as exc:
                    if not isinstance(exc, TransactionAborted):
                        # The stream ends with this status, in a reply small enough to get through (#12.3).
                        code, details = refused_status(exc)
                        self.metrics.reply_errors.inc()
                        log.warning("a stream message of call %s refused by Kafka: %s", request.correlation_id.hex(),
                                    exc, extra=call_fields(request.method, request.correlation_id,
                                                           *peer_location(call.context.peer())))
                        call.context.set_code(code)
                        call.context.set_details(details)
                    raise
            call.sent += 1

        reply = None
        # Unary calls only: a stream can be aborted with a final reply of its own (`abort`) while
        # its handler's thread sends one.
        method = self.dispatcher.methods.get(request.method)
        early = _EarlyReply(call, self._send_now) \
            if self._send_now is not None and request.reply_topic and method is not None and method.blocking \
            and not call.streams_out and call.requests is None else None
        try:
            reply = await self.dispatcher.handle(request, call.context.peer(), requests=call.requests, emit=emit,
                                                 context=call.context, reply_now=early)
            if reply is not None and request.reply_topic and not call.ended:
                call.ended = True
                try:
                    if early is not None and early.sent:
                        error = await early.delivered
                        if error is not None:
                            raise error
                    else:
                        await self._send(request, reply, call.key)
                except RecordRefused as exc:
                    # Refused for what it is (too large, say): retries with the call's
                    # idempotency key get the status its caller is told, not a reply that
                    # cannot be sent (and would hold the dedupe cache's bytes for nothing).
                    code, reason = refused_status(exc)
                    reply = wire.Reply(request.correlation_id, code=code, message=reason)
                    raise
        except asyncio.CancelledError:
            if not call.ended:
                raise  # not our cancel: shutdown
            call.context.run_callbacks()
        finally:
            # The handler ran: its reply is kept for retries even if Kafka refused it (a passing
            # refusal: sent anew to a retry), so that a retry does not run it again.
            self._end(call, reply if reply is not None and not call.context.cancelled else None)

    def _end(self, call: _Call, kept: wire.Reply | None) -> None:
        """The call is over; `kept`: its reply, for retries with its idempotency key (None: they run)."""
        call.ended = True
        self._done_reading(call)
        dedupe = self._dedupe_key(call.request)
        if dedupe is not None and self.replies is not None:
            self.replies.finish(dedupe, kept)
        if call.timer is not None:
            call.timer.cancel()
        self._calls.pop(call.request.correlation_id, None)

    def _done_reading(self, call: _Call) -> None:
        if call.reading:
            call.reading = False
            self.reading -= 1

    def _streams_open(self) -> int:
        # Called on the scraping thread: list() copies the values at once, under the GIL.
        return sum(c.requests is not None or c.streams_out for c in list(self._calls.values()))
