"""The calls a generated stub makes on an `adapter.caller.aio_channel.AioKafkaChannel`.

Each is a ``grpc.aio`` call object (``UnaryUnaryCall``, ``UnaryStreamCall``,
``StreamUnaryCall``, ``StreamStreamCall``) made by the frontend's own request/reply core, so a
caller sees what ``grpc.aio`` shows it: awaitable responses, async iteration, ``code()``,
``details()``, trailing metadata, ``cancel()`` and done callbacks.

Longer than our modules should be (~440 lines), on purpose: the stub's four method objects and
four call kinds are short classes on two bases (`Call`, `_StreamingCall`) whose state they share;
they read together.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Generator, Mapping, MutableSet
from typing import TYPE_CHECKING, Any, Protocol

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from adapter.caller.stream import Stream
from adapter.errors import CallError, MalformedRecord, TransportError
from adapter.protocol import wire

if TYPE_CHECKING:
    from adapter.caller.requester import Requester
    from adapter.protocol.routing import Route

log = logging.getLogger(__name__)

_CANCELLED = "Locally cancelled by application!"
_OK = grpc.StatusCode.OK


class CallOwner(Protocol):
    """What a call needs of the channel it runs on (`adapter.caller.aio_channel.AioKafkaChannel`)."""

    requester: Requester
    routes: Mapping[str, Route]
    #: The calls in progress, which the channel cancels when it closes.
    calls: MutableSet[Call]

    @property
    def closed(self) -> bool: ...

class StubMethod:
    """One method as a stub sees it: where it goes and how its messages are (de)serialized."""

    def __init__(self, channel: CallOwner, path: str, serializer: Callable[[Any], bytes] | None,
                 deserializer: Callable[[bytes], Any] | None) -> None:
        self.channel = channel
        self.path = path
        self.serialize: Callable[[Any], bytes] = serializer or _same
        self.deserialize: Callable[[bytes], Any] = deserializer or _same

    def check_open(self) -> None:
        if self.channel.closed:
            raise grpc.aio.UsageError("Channel is closed.")


class _MultiCallable:
    # Keyword arguments a stub may pass that mean nothing over Kafka (credentials, wait_for_ready,
    # compression) are accepted and ignored.
    def __init__(self, method: StubMethod) -> None:
        self._method = method


class UnaryUnaryMethod(_MultiCallable, grpc.aio.UnaryUnaryMultiCallable):
    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Any = None, **_: Any) -> UnaryUnaryCall:
        self._method.check_open()
        return UnaryUnaryCall(self._method, request, timeout, metadata)


class UnaryStreamMethod(_MultiCallable, grpc.aio.UnaryStreamMultiCallable):
    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Any = None, **_: Any) -> UnaryStreamCall:
        self._method.check_open()
        return UnaryStreamCall(self._method, timeout, metadata, request=request)


class StreamUnaryMethod(_MultiCallable, grpc.aio.StreamUnaryMultiCallable):
    def __call__(self, request_iterator: Any = None, timeout: float | None = None, metadata: Any = None,
                 **_: Any) -> StreamUnaryCall:
        self._method.check_open()
        return StreamUnaryCall(self._method, timeout, metadata, requests=request_iterator)


class StreamStreamMethod(_MultiCallable, grpc.aio.StreamStreamMultiCallable):
    def __call__(self, request_iterator: Any = None, timeout: float | None = None, metadata: Any = None,
                 **_: Any) -> StreamStreamCall:
        self._method.check_open()
        return StreamStreamCall(self._method, timeout, metadata, requests=request_iterator)


class Call:
    """What every call offers, as ``grpc.aio.Call``: its final status, cancel, done callbacks."""

    #: The response comes with the final status (unary and client-streaming calls).
    unary_response = False

    def __init__(self, method: StubMethod, timeout: float | None, metadata: Any) -> None:
        self._method = method
        self._timeout = timeout
        self._deadline = None if timeout is None else time.monotonic() + timeout
        self._status: wire.Reply | None = None
        self._response: Any = None
        self._cancelled = False
        self._ended = asyncio.Event()
        self._callbacks: list[Callable[[Any], None]] = []
        self._metadata: wire.Metadata = ()
        method.channel.calls.add(self)
        route = method.channel.routes.get(method.path)
        if route is None:
            self._end(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
            return
        self._route = route
        try:
            self._metadata = wire.call_metadata(tuple(metadata or ()))
            wire.check_metadata(self._metadata)
        except (MalformedRecord, ValueError, TypeError) as exc:
            self._end(grpc.StatusCode.INTERNAL, f"invalid metadata: {exc}")

    @property
    def _requester(self) -> Requester:
        return self._method.channel.requester

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._status is not None

    def time_remaining(self) -> float | None:
        """Seconds left before the deadline the caller set; None when it set none."""
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())

    def cancel(self) -> bool:
        """End the call with CANCELLED; the handler is told to stop."""
        if self.done():
            return False
        self._cancelled = True
        self._end(grpc.StatusCode.CANCELLED, _CANCELLED)
        return True

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        if self.done():
            callback(self)
        else:
            self._callbacks.append(callback)

    async def wait_for_connection(self) -> None:
        return None

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()  # Kafka replies carry no initial metadata

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata(*(await self._final()).trailing_metadata)

    async def code(self) -> grpc.StatusCode:
        return (await self._final()).code

    async def details(self) -> str:
        return (await self._final()).message

    async def wait_ended(self) -> None:
        """Wait until the call has its status (the channel's graceful close waits so)."""
        await self._ended.wait()

    async def _final(self) -> wire.Reply:
        await self._ended.wait()
        assert self._status is not None
        return self._status

    def _end(self, code: grpc.StatusCode, details: str) -> None:
        self._finish(wire.Reply(b"", code, details))

    def _finish(self, reply: wire.Reply) -> None:
        """Record the final status (the first one counts), stop the call's work, run callbacks."""
        if self._status is not None:
            return
        if reply.code is _OK and self.unary_response:
            try:
                self._response = self._method.deserialize(reply.payload)
            except Exception:
                reply = wire.Reply(b"", grpc.StatusCode.INTERNAL, "Exception deserializing response!")
        self._status = reply
        self._ended.set()
        self._method.channel.calls.discard(self)
        self._abandon()
        for callback in self._callbacks:
            try:
                callback(self)
            except Exception:
                log.exception("done callback of a call to %s failed", self._method.path)

    def _abandon(self) -> None:
        """Stop whatever still works for the call once it has ended."""

    def _error(self) -> BaseException:
        """What awaiting or reading the ended call raises, as in grpc.aio."""
        assert self._status is not None
        if self._cancelled:
            return asyncio.CancelledError()
        if self._status.code is _OK:
            return asyncio.InvalidStateError("RPC already finished.")
        return grpc.aio.AioRpcError(self._status.code, grpc.aio.Metadata(),
                                    grpc.aio.Metadata(*self._status.trailing_metadata), self._status.message)

    def _result(self) -> Any:
        assert self._status is not None
        if self._status.code is not _OK or self._cancelled:
            raise self._error()
        return self._response


class UnaryUnaryCall(Call, grpc.aio.UnaryUnaryCall):
    """A unary call in progress: await it for the response."""

    unary_response = True

    def __init__(self, method: StubMethod, request: Any, timeout: float | None, metadata: Any) -> None:
        self._task: asyncio.Task[Any] | None = None
        super().__init__(method, timeout, metadata)
        self._task = asyncio.get_running_loop().create_task(self._run(request))
        self._task.add_done_callback(_retrieved)

    def __await__(self) -> Generator[Any, None, Any]:
        assert self._task is not None
        return self._task.__await__()

    async def _run(self, request: Any) -> Any:
        try:
            if self._status is None:
                self._finish(await self._invoke(request))
        except asyncio.CancelledError:
            self.cancel()  # cancelling the task that awaits the call cancels the call, as in grpc.aio
            raise
        except Exception as exc:  # a bug of ours: still end the call, so that code() does not hang
            self._end(grpc.StatusCode.UNKNOWN, f"{type(exc).__name__}: {exc}")
            raise
        return self._result()

    async def _invoke(self, request: Any) -> wire.Reply:
        try:
            payload = self._method.serialize(request)
        except Exception:
            return wire.Reply(b"", grpc.StatusCode.INTERNAL, "Exception serializing request!")
        try:
            key, idempotency_key = self._route.call_keys(payload, self._metadata)
            return await self._requester.call(self._route.path, payload, topic=self._route.topic, key=key,
                                              metadata=self._metadata, timeout=self._timeout,
                                              idempotency_key=idempotency_key)
        except CallError as exc:
            return wire.Reply(b"", exc.code, exc.details)
        except TransportError as exc:
            return wire.Reply(b"", grpc.StatusCode.UNAVAILABLE, str(exc))

    def _abandon(self) -> None:
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()  # requester.call sends the cancel record


class _StreamingCall(Call):
    """A call carried by an `adapter.caller.stream.Stream`: server, client or bidi streaming."""

    def __init__(self, method: StubMethod, timeout: float | None, metadata: Any, *, request: Any = None,
                 requests: Any = None, client_streaming: bool = False) -> None:
        self._stream: Stream | None = None
        self._pump: asyncio.Task[None] | None = None
        self._half_closed = False
        super().__init__(method, timeout, metadata)
        if self._status is None:
            self._stream = self._open(None if client_streaming else self._serialized(request))
        if requests is not None and self._stream is not None:
            self._pump = asyncio.get_running_loop().create_task(self._consume(requests))
            self._pump.add_done_callback(_retrieved)

    def _serialized(self, request: Any) -> bytes | None:
        try:
            return self._method.serialize(request)
        except Exception:
            self._end(grpc.StatusCode.INTERNAL, "Exception serializing request!")
            return None

    def _open(self, payload: bytes | None) -> Stream | None:
        if self._status is not None:
            return None
        try:
            key = None if payload is None else self._route.key_for(payload)
            return self._requester.open_stream(self._route.path, topic=self._route.topic, request=payload, key=key,
                                               metadata=self._metadata, timeout=self._timeout)
        except DecodeError as exc:
            self._end(grpc.StatusCode.INVALID_ARGUMENT, f"request is not a valid {self._route.input_type.full_name}: {exc}")
        except CallError as exc:
            self._end(exc.code, exc.details)
        except TransportError as exc:
            self._end(grpc.StatusCode.UNAVAILABLE, str(exc))
        return None

    async def _read(self) -> Any:
        """The next response message, or ``grpc.aio.EOF`` after an OK end."""
        if self._status is not None:
            if self._status.code is _OK and not self._cancelled:
                return grpc.aio.EOF
            raise self._error()
        assert self._stream is not None
        try:
            payload = await self._stream.__anext__()
        except StopAsyncIteration:
            assert self._stream.reply is not None
            self._finish(self._stream.reply)
            return grpc.aio.EOF
        except CallError as exc:
            self._finish(self._stream.reply or wire.Reply(b"", exc.code, exc.details))
            raise self._error() from None
        except asyncio.CancelledError:
            self.cancel()  # the reader's task was cancelled: so is the call, as in grpc.aio
            raise
        try:
            return self._method.deserialize(payload)
        except Exception:
            self._end(grpc.StatusCode.INTERNAL, "Exception deserializing response!")
            raise self._error() from None

    async def _messages(self) -> AsyncIterator[Any]:
        while (message := await self._read()) is not grpc.aio.EOF:
            yield message

    async def write(self, request: Any) -> None:
        """Send one request message (client and bidi streams)."""
        if self._status is not None:
            raise self._error()
        if self._half_closed:
            raise asyncio.InvalidStateError("RPC is half closed after calling done_writing.")
        payload = self._serialized(request)
        assert self._stream is not None
        try:
            if payload is not None:
                await self._stream.send(payload)
        except CallError as exc:
            self._end(exc.code, exc.details)
        except TransportError as exc:
            self._end(grpc.StatusCode.UNAVAILABLE, str(exc))
        if self._status is not None:
            raise self._error()

    async def done_writing(self) -> None:
        """Tell the handler that no more request messages will come."""
        if self._status is not None or self._half_closed:
            return
        self._half_closed = True
        assert self._stream is not None
        try:
            await self._stream.close_send()
        except TransportError as exc:
            self._end(grpc.StatusCode.UNAVAILABLE, str(exc))

    async def _consume(self, requests: Any) -> None:
        # Requests flow while responses do: a bidi handler may answer before the client is done.
        try:
            if hasattr(requests, "__aiter__"):
                async for request in requests:
                    await self.write(request)
            else:
                for request in requests:  # a plain iterable is read on the event loop, as grpc.aio does
                    await self.write(request)
            await self.done_writing()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            pass  # the call has ended; its status comes with its responses
        except Exception:
            log.debug("request iterator of a call to %s raised", self._method.path, exc_info=True)
            self.cancel()

    def fail(self, code: grpc.StatusCode, details: str) -> None:
        """End the call with a status of the caller's own (the handler is told to stop)."""
        self._end(code, details)

    def _abandon(self) -> None:
        stream = self._stream
        if stream is not None and not stream.done:
            assert self._status is not None
            stream.fail(CallError(self._status.code, self._status.message))  # wakes a waiting reader
            try:
                stream.cancel()
            except Exception as exc:
                log.debug("could not send the cancel record of a call to %s: %s", self._method.path, exc)
        if self._pump is not None and self._pump is not asyncio.current_task():
            self._pump.cancel()


class UnaryStreamCall(_StreamingCall, grpc.aio.UnaryStreamCall):
    """A server-streaming call: ``async for`` its responses, or `read` them one at a time."""

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._messages()

    async def read(self) -> Any:
        return await self._read()


class StreamStreamCall(_StreamingCall, grpc.aio.StreamStreamCall):
    """A bidi call: `write` (or give a request iterator), `done_writing`, read the responses."""

    def __init__(self, method: StubMethod, timeout: float | None, metadata: Any, *, requests: Any = None) -> None:
        super().__init__(method, timeout, metadata, requests=requests, client_streaming=True)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._messages()

    async def read(self) -> Any:
        return await self._read()


class StreamUnaryCall(_StreamingCall, grpc.aio.StreamUnaryCall):
    """A client-streaming call: `write` (or give a request iterator), then await the response."""

    unary_response = True

    def __init__(self, method: StubMethod, timeout: float | None, metadata: Any, *, requests: Any = None) -> None:
        super().__init__(method, timeout, metadata, requests=requests, client_streaming=True)
        self._task = asyncio.get_running_loop().create_task(self._run())
        self._task.add_done_callback(_retrieved)

    def __await__(self) -> Generator[Any, None, Any]:
        return self._task.__await__()

    async def _run(self) -> Any:
        while await self._read() is not grpc.aio.EOF:
            pass  # the one response of a client stream comes with its final status
        return self._result()


def _same(value: Any) -> Any:
    return value


def _retrieved(task: asyncio.Task[Any]) -> None:
    # The outcome is the call's to report; an un-awaited call must not log "never retrieved".
    if not task.cancelled():
        task.exception()
