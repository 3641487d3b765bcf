"""`Stream`: one streaming call in progress, as its caller sees it.

    stream = requester.open_stream("/pkg.Svc/Chat", topic="pkg.Svc", client_streaming=True)
    await stream.send(b"...")        # client and bidi streams
    await stream.close_send()
    async for message in stream:     # server and bidi streams; raises CallError at a bad end
        ...
    stream.reply                     # the final status and trailing metadata

Response messages wait in a queue bounded in bytes: a client that reads slower than
the handler writes ends with RESOURCE_EXHAUSTED rather than growing memory.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol

import grpc

from adapter.errors import CallError, CallTimeout
from adapter.protocol import wire
from adapter.runtime.tracing import CallSpan, code_when_cancelled

#: Request messages sent and not yet acknowledged by Kafka, per stream.
SEND_WINDOW = 64
#: Bytes a buffered response message counts besides its payload, so empty messages are bounded too.
MESSAGE_OVERHEAD = 64



class StreamOwner(Protocol):
    """What a stream needs of the requester that opened it (`adapter.caller.requester.Requester`)."""

    #: Bytes of response messages held for slow clients, by all streams; and the most allowed.
    buffered_total: int
    max_buffered_total: int

    def send_frame(self, stream: Stream, frame: wire.Frame, on_ack: Callable[[], None] | None = None) -> None: ...

    def forget(self, stream: Stream) -> None: ...

class Stream:
    """A streaming call: send request messages, iterate response messages."""

    def __init__(self, requester: StreamOwner, request: wire.Request, topic: str, key: bytes, partition: int,
                 max_buffered: int, span: CallSpan | None = None) -> None:
        self.request = request
        self.topic = topic
        self.key = key
        self.partition = partition
        self.reply: wire.Reply | None = None
        self._requester = requester
        self._queue: asyncio.Queue[bytes | wire.Reply | BaseException] = asyncio.Queue()
        self._buffered = 0
        self._max_buffered = max_buffered
        self._next_seq = 0
        self._sent = 0
        self._window = asyncio.Semaphore(SEND_WINDOW)
        self._error: BaseException | None = None
        self.done = False
        #: Ended with the call's outcome: its final record, its failure, or its cancel.
        self._span = span or CallSpan()

    @property
    def correlation_id(self) -> bytes:
        return self.request.correlation_id

    def time_remaining(self) -> float:
        assert self.request.deadline is not None
        return self.request.deadline - time.time()

    async def send(self, payload: bytes) -> None:
        """Send one request message (waits while too many are unacknowledged)."""
        if self._error is not None:
            raise self._error
        await self._window.acquire()
        frame = wire.Frame(self.correlation_id, wire.MESSAGE, self._sent, payload)
        self._sent += 1
        self._requester.send_frame(self, frame, on_ack=self._window.release)

    async def close_send(self) -> None:
        """Tell the handler no more request messages will come."""
        if self._error is None:
            self._requester.send_frame(self, wire.Frame(self.correlation_id, wire.HALF_CLOSE))

    def cancel(self) -> None:
        """Give up: the handler is told to stop, nothing more is delivered here."""
        self._hold(-self._buffered)  # what nobody will read any more
        if not self.done:
            self.done = True
            self._span.end(code_when_cancelled(self.time_remaining()))
            try:
                self._requester.send_frame(self, wire.Frame(self.correlation_id, wire.CANCEL))
            finally:
                self._requester.forget(self)

    def __aiter__(self) -> Stream:
        return self

    async def __anext__(self) -> bytes:
        item: bytes | wire.Reply | BaseException
        try:
            item = self._queue.get_nowait()
        except asyncio.QueueEmpty:
            try:
                item = await asyncio.wait_for(self._queue.get(), max(0.0, self.time_remaining()))
            except TimeoutError:
                self.cancel()
                raise CallTimeout(f"stream on topic {self.topic!r} passed its deadline") from None
        if isinstance(item, bytes):
            self._hold(-(len(item) + MESSAGE_OVERHEAD))
            return item
        if isinstance(item, BaseException):
            raise item
        self.reply = item
        if item.code is not grpc.StatusCode.OK:
            raise CallError(item.code, item.message)
        raise StopAsyncIteration

    async def result(self) -> wire.Reply:
        """Wait for the final reply (client streaming: it carries the one response message)."""
        async for _ in self:
            pass
        assert self.reply is not None
        return self.reply

    # Called by the requester on the event loop.
    def deliver(self, record: wire.Reply | wire.Frame, drop: Callable[[], None]) -> None:
        if self.done:
            drop()
            return
        if isinstance(record, wire.Reply):
            self.done = True
            self._span.end(record.code, record.message)
            self._queue.put_nowait(record)
            return
        if record.seq != self._next_seq:
            why = "restarted by another handler process" if record.seq < self._next_seq else "lost messages"
            self.fail(CallError(grpc.StatusCode.ABORTED, f"the response stream was {why}"))
            self.cancel()
            return
        self._next_seq += 1
        size = len(record.payload) + MESSAGE_OVERHEAD
        requester = self._requester
        if self._buffered + size > self._max_buffered:
            why = f"the client reads slower than the handler writes: over {self._max_buffered} bytes buffered"
        elif requester.buffered_total + size > requester.max_buffered_total:
            why = (f"this frontend holds over {requester.max_buffered_total} bytes of response messages for slow "
                   "clients")
        else:
            self._hold(size)
            self._queue.put_nowait(record.payload)
            return
        self.fail(CallError(grpc.StatusCode.RESOURCE_EXHAUSTED, why))
        self.cancel()

    def _hold(self, size: int) -> None:
        self._buffered += size
        self._requester.buffered_total += size

    def fail(self, exc: BaseException) -> None:
        if self._error is None:
            self._error = exc
            if isinstance(exc, CallError):
                self._span.end(exc.code, exc.details)
            else:
                self._span.end(grpc.StatusCode.UNKNOWN, str(exc))
            self._queue.put_nowait(exc)
