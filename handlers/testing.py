"""Test your handlers in-process: generated stubs call them through the real request path.

`serve_in_memory` collects the targets as ``python -m handlers`` does and yields a
channel for generated ``*Stub`` classes. Each call runs the frontend's request/reply
core (`adapter.requester`), the wire encoding and the handler `Dispatcher`; only
Kafka is replaced, by `adapter.memory`. Failed calls raise ``grpc.aio.AioRpcError``::

    async with serve_in_memory(MailService(OutboxSender(tmp_path))) as channel:
        stub = mail_pb2_grpc.MailServiceStub(channel)
        reply = await stub.SendMail(mail_pb2.SendMailRequest(user_id="u1", to="a@b.c"))
        assert reply.result == mail_pb2.SENT

As with ``grpc.aio``, a call can also be kept to read its trailing metadata::

    call = stub.SendMail(request)
    reply = await call
    trailers = await call.trailing_metadata()
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Generator
from contextlib import asynccontextmanager
from typing import Any, NoReturn

import grpc
import grpc.aio

from adapter import wire
from adapter.errors import CallError
from adapter.memory import MemoryTransport, ReplyRecord
from adapter.requester import Requester
from adapter.routing import Route, routes_for
from handlers.dispatcher import Dispatcher
from handlers.registry import collect

_STREAMING = "streaming methods are not carried over Kafka yet"


@asynccontextmanager
async def serve_in_memory(*targets: object, default_timeout: float = 5.0) -> AsyncIterator[Channel]:
    """Serve `targets` (servicers, their classes, `ServiceRegistry`s) for the block's duration."""
    methods, services = collect(targets)
    dispatcher = Dispatcher(methods)
    offsets = itertools.count()

    async def serve(topic: str, key: bytes | None, value: bytes, headers: wire.Headers) -> ReplyRecord | None:
        # What handlers.worker does with each record, minus Kafka.
        request = wire.Request.decode(headers, value)
        reply = await dispatcher.handle(request, peer=f"memory:{topic}/0@{next(offsets)}")
        if reply is None or not request.reply_topic:
            return None
        return reply.encode_headers(), reply.payload

    requester = Requester(MemoryTransport(serve), default_timeout)
    await requester.start(timeout=1.0)
    try:
        yield Channel(requester, routes_for(services))
    finally:
        await requester.stop()
        dispatcher.close()


class Channel:
    """Enough of ``grpc.aio.Channel`` for generated stubs: unary calls, by method path."""

    def __init__(self, requester: Requester, routes: dict[str, Route]) -> None:
        self.requester = requester
        self.routes = routes

    def unary_unary(
        self,
        method: str,
        request_serializer: Callable[[Any], bytes] | None = None,
        response_deserializer: Callable[[bytes], Any] | None = None,
        **_: Any,
    ) -> UnaryUnaryMultiCallable:
        return UnaryUnaryMultiCallable(self, method, request_serializer, response_deserializer)

    def _streaming(self, method: str, *args: Any, **kwargs: Any) -> Callable[..., Call]:
        async def unimplemented() -> Any:
            _raise(grpc.StatusCode.UNIMPLEMENTED, _STREAMING)

        return lambda *args, **kwargs: Call(unimplemented())

    unary_stream = stream_unary = stream_stream = _streaming


class UnaryUnaryMultiCallable:
    """One method of a stub: calling it starts a `Call`."""

    def __init__(
        self,
        channel: Channel,
        path: str,
        serializer: Callable[[Any], bytes] | None,
        deserializer: Callable[[bytes], Any] | None,
    ) -> None:
        self._channel = channel
        self._path = path
        self._serialize = serializer or (lambda message: message)
        self._deserialize = deserializer or (lambda data: data)

    def __call__(self, request: Any, *, timeout: float | None = None, metadata: Any = None, **_: Any) -> Call:
        return Call(self._invoke(request, timeout, wire.call_metadata(tuple(metadata or ()))))

    async def _invoke(self, request: Any, timeout: float | None, metadata: wire.Metadata) -> tuple[Any, wire.Reply]:
        route = self._channel.routes.get(self._path)
        if route is None:
            _raise(grpc.StatusCode.UNIMPLEMENTED, "Method not found!")
        if route.client_streaming or route.server_streaming:
            _raise(grpc.StatusCode.UNIMPLEMENTED, _STREAMING)
        payload = self._serialize(request)
        try:
            reply = await self._channel.requester.call(
                route.path, payload, topic=route.topic, key=route.key_for(payload), metadata=metadata, timeout=timeout
            )
        except CallError as exc:
            _raise(exc.code, exc.details)
        if reply.code is not grpc.StatusCode.OK:
            _raise(reply.code, reply.message, reply.trailing_metadata)
        return self._deserialize(reply.payload), reply


class Call:
    """A call in progress, like ``grpc.aio.UnaryUnaryCall``: await it for the response."""

    def __init__(self, outcome: Any) -> None:
        self._task: asyncio.Task[tuple[Any, wire.Reply]] = asyncio.ensure_future(outcome)

    def __await__(self) -> Generator[Any, None, Any]:
        response, _ = yield from self._task.__await__()
        return response

    async def code(self) -> grpc.StatusCode:
        return (await self._reply()).code

    async def details(self) -> str:
        return (await self._reply()).message

    async def initial_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        return grpc.aio.Metadata(*(await self._reply()).trailing_metadata)

    def cancel(self) -> bool:
        return self._task.cancel()

    def cancelled(self) -> bool:
        return self._task.cancelled()

    def done(self) -> bool:
        return self._task.done()

    async def _reply(self) -> wire.Reply:
        await asyncio.wait([self._task])  # the outcome, without raising it
        if self._task.cancelled():
            return wire.Reply(b"", grpc.StatusCode.CANCELLED, "Locally cancelled by application!")
        error = self._task.exception()
        if isinstance(error, grpc.aio.AioRpcError):
            return wire.Reply(b"", error.code(), error.details() or "", tuple(error.trailing_metadata()))
        if error is not None:
            raise error
        return self._task.result()[1]


def _raise(code: grpc.StatusCode, details: str, trailing: wire.Metadata = ()) -> NoReturn:
    raise grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)
