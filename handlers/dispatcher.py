"""From a decoded request to its reply: find the method, decode, run, encode. No Kafka here.

    dispatcher = Dispatcher(methods, concurrency=16)
    reply = await dispatcher.handle(request, peer="kafka:topic/0@42")

Streaming methods get their request messages from `requests` (an async iterator of
raw messages, see `handlers.calls`) and hand each response message to `emit`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import grpc

from adapter.protocol import wire
from adapter.runtime.handoff import Handoff
from adapter.runtime.logs import call_fields, peer_location
from adapter.runtime.metrics import UNKNOWN_METHOD, HandlerMetrics
from adapter.runtime.tracing import CallSpan, Tracing
from handlers.context import HandlerContext
from handlers.registry import Method

log = logging.getLogger(__name__)

Emit = Callable[[bytes], Awaitable[None]]
#: Offered a call's final reply on its def handler's thread: it may hand it to Kafka at once.
ReplyNow = Callable[[wire.Reply], None]
T = TypeVar("T")
_DONE = object()


#: Name prefix of the threads that run def handlers.
THREAD_PREFIX = "handler"


class Dispatcher:
    """Runs handler functions, at most `concurrency` at once."""

    def __init__(self, methods: dict[str, Method], concurrency: int = 16, metrics: HandlerMetrics | None = None,
                 tracing: Tracing | None = None) -> None:
        self.methods = methods
        self._slots = asyncio.Semaphore(concurrency)
        self._threads = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=THREAD_PREFIX)
        self._handoffs: Handoff | None = None
        self.expired = 0
        #: Handler functions running now (holding one of the `concurrency` slots).
        self.running = 0
        self.metrics = metrics if metrics is not None else HandlerMetrics()
        self.metrics.concurrency_limit.set(concurrency)
        self.metrics.concurrency_in_use.set_function(lambda: self.running)
        for path in methods:
            self.metrics.method(path)  # their series exist before the first call
        self.tracing = tracing if tracing is not None else Tracing()

    async def handle(
        self,
        request: wire.Request,
        peer: str,
        *,
        requests: AsyncIterator[bytes] | None = None,
        emit: Emit | None = None,
        context: HandlerContext | None = None,
        reply_now: ReplyNow | None = None,
    ) -> wire.Reply | None:
        """The final reply to `request`, or None when its deadline passed before it could start.

        `reply_now`, if given, is offered the reply of a unary def handler that returns a message,
        on the handler's thread, as soon as it is built: the reply need not wait for the event loop
        to wake up (`handlers.calls`). The reply returned is then the one it was offered."""
        context = context or HandlerContext(request, peer)
        with self.tracing.handling(request, peer) as span:  # current while the handler runs
            try:
                reply = await self._handle(request, context, requests, emit, span, reply_now)
            except BaseException:
                span.end(context.code() or grpc.StatusCode.CANCELLED)  # cancelled, or the process stops
                raise
            if context.cancelled:  # as in the metrics: why `Calls.cancel` stopped it
                span.end(context.code() or grpc.StatusCode.CANCELLED)
            elif reply is None:
                span.end(grpc.StatusCode.DEADLINE_EXCEEDED, "the deadline passed before the call could start")
            else:
                span.end(reply.code, reply.message)
        return reply

    async def _handle(self, request: wire.Request, context: HandlerContext, requests: AsyncIterator[bytes] | None,
                      emit: Emit | None, span: CallSpan, reply_now: ReplyNow | None) -> wire.Reply | None:
        method = self.methods.get(request.method)
        if method is None:
            missing = request.method or "(no rpc-method header, and the topic carries several methods)"
            return self._refuse(request, grpc.StatusCode.UNIMPLEMENTED, f"method {missing} is not served here")
        if method.client_streaming != request.opens_stream or (method.server_streaming and emit is None):
            return self._refuse(request, grpc.StatusCode.INVALID_ARGUMENT,
                                f"{request.method} is {_kind(method)}, the record does not open such a call")
        if method.client_streaming:
            argument: Any = _decoded(requests or _empty(), method, context)
        else:
            try:
                argument = method.request_deserializer(request.payload)
            except Exception as exc:
                return self._refuse(request, grpc.StatusCode.INVALID_ARGUMENT,
                                    f"cannot decode request of {request.method}: {exc}")
        await self._slots.acquire()
        remaining = request.time_remaining()
        if remaining is not None and remaining <= 0:
            self._slots.release()
            self.expired += 1
            self.metrics.calls_expired.inc()
            log.debug("skipped %s: deadline passed %.3fs ago", request.method, -remaining)
            return None
        self.running += 1
        slot = _Slot()
        started = time.perf_counter()
        code = grpc.StatusCode.CANCELLED  # unless _run returns
        try:
            reply = await self._run(method, argument, context, emit, span, slot, reply_now)
            code = reply.code
        finally:
            if context.cancelled:  # `Calls.cancel` set why: caller gone, deadline passed, partition moved
                code = context.code() or grpc.StatusCode.CANCELLED
            self.metrics.method(request.method).observe(code, time.perf_counter() - started)
            thread = slot.thread
            if thread is not None and not thread.done():
                # A cancelled def handler runs on (Python cannot stop a thread): it keeps its
                # slot until it returns, so the limit holds for the calls that come next.
                thread.add_done_callback(self._freer(asyncio.get_running_loop()))
            else:
                self._free()
        context.run_callbacks()
        return reply

    def _free(self) -> None:
        self.running -= 1
        self._slots.release()

    def _freer(self, loop: asyncio.AbstractEventLoop) -> Callable[[Any], None]:
        def on_thread_done(_: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is closed: the process is stopping
                loop.call_soon_threadsafe(self._free)

        return on_thread_done

    def _refuse(self, request: wire.Request, code: grpc.StatusCode, message: str) -> wire.Reply:
        """A call answered without running: unknown method, wrong kind of call, undecodable request."""
        self.metrics.method(request.method if request.method in self.methods else UNKNOWN_METHOD).observe(code, 0.0)
        return wire.Reply(correlation_id=request.correlation_id, code=code, message=message)

    async def _run(self, method: Method, argument: Any, context: HandlerContext, emit: Emit | None,
                   span: CallSpan, slot: _Slot, reply_now: ReplyNow | None) -> wire.Reply:
        loop = asyncio.get_running_loop()
        if method.blocking and isinstance(argument, _decoded):
            argument = argument.blocking(loop)  # a sync handler iterates its requests on its own thread
        # A def handler and its generator run on threads, in one copy of this task's context
        # variables: the handler span is current there too, and their own spans nest.
        variables = contextvars.copy_context()
        try:
            if not method.blocking:
                result = method.func(argument, context)
            elif reply_now is not None and not method.server_streaming and not method.client_streaming:
                result = await slot.in_thread(self._threads, self._handoff(loop), variables.run, _call_and_reply,
                                              method, argument, context, reply_now, span)
                if isinstance(result, _Replied):
                    return result.reply
            else:
                result = await slot.in_thread(self._threads, self._handoff(loop), variables.run, method.func, argument,
                                              context)
            if inspect.isawaitable(result):
                result = await result
            if method.server_streaming:
                assert emit is not None
                await self._stream(method, result, emit, variables, slot)
                result = _DONE
        except Exception as exc:
            if not context.aborted:
                log.warning("%s raised %s: %s (call %s from %s)", method.path, type(exc).__name__, exc,
                            context.correlation_id().hex(), context.peer(),
                            extra=call_fields(method.path, context.correlation_id(), *peer_location(context.peer())))
                span.record_exception(exc)
            return context.reply(None, exc)
        if result is _DONE:
            return context.reply(b"")
        if result is None:
            return context.reply(None)
        try:
            payload = method.response_serializer(result)
        except Exception as exc:
            context.set_code(grpc.StatusCode.INTERNAL)
            context.set_details(f"cannot serialize response: {exc}")
            return context.reply(None)
        return context.reply(payload)

    async def _stream(self, method: Method, responses: Any, emit: Emit, variables: contextvars.Context,
                      slot: _Slot) -> None:
        if responses is None:
            return
        if hasattr(responses, "__aiter__"):
            async for message in responses:
                await emit(method.response_serializer(message))
            return
        iterator = iter(responses)
        try:
            while True:
                # The handler's generator may block (sleep, read its requests): run it on a thread.
                message = await slot.in_thread(self._threads, self._handoff(asyncio.get_running_loop()),
                                               variables.run, _next, iterator)
                if message is _DONE:
                    return
                await emit(method.response_serializer(message))
        except asyncio.CancelledError:
            # Close the generator, so its finally blocks and the code after its loop run now.
            self._threads.submit(_close, iterator, variables)
            raise

    def _handoff(self, loop: asyncio.AbstractEventLoop) -> Handoff:
        if self._handoffs is None or self._handoffs.loop is not loop:
            self._handoffs = Handoff(loop)
        return self._handoffs

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


class _Slot:
    """One call's concurrency slot, and the thread its def handler last ran on."""

    def __init__(self) -> None:
        self.thread: concurrent.futures.Future[Any] | None = None

    async def in_thread(self, threads: ThreadPoolExecutor, handoff: Handoff, func: Callable[..., T], *args: Any) -> T:
        """Run `func(*args)` on `threads`; its result comes back through `handoff`, with others that end
        meanwhile (asyncio.wrap_future would wake the loop once per call)."""
        thread = self.thread = threads.submit(func, *args)
        future: asyncio.Future[T] = handoff.loop.create_future()

        def settle(done: concurrent.futures.Future[T]) -> None:
            if future.done():
                return
            if done.cancelled():
                future.cancel()
            elif (error := done.exception()) is not None:
                future.set_exception(error)
            else:
                future.set_result(done.result())

        thread.add_done_callback(lambda done: handoff.call(settle, done))
        try:
            return await future
        except asyncio.CancelledError:
            thread.cancel()  # if it has not started yet
            raise


class _Replied:
    """The reply a def handler's thread built, and offered to `ReplyNow`."""

    def __init__(self, reply: wire.Reply) -> None:
        self.reply = reply


def _call_and_reply(method: Method, argument: Any, context: HandlerContext, reply_now: ReplyNow,
                    span: CallSpan) -> Any:
    """On a def handler's thread: run it and, if it returned a message, build its reply and offer
    it to `reply_now`. Anything else (None, an awaitable, a message that does not serialize, an
    exception) goes back to the event loop as the handler's own result, to be answered there."""
    result = method.func(argument, context)
    if result is None or inspect.isawaitable(result):
        return result
    try:
        payload = method.response_serializer(result)
    except Exception:
        return result  # the event loop serializes it again, and answers INTERNAL with the reason
    reply = context.reply(payload)
    span.end(reply.code, reply.message)  # before the reply leaves, as on the loop: the caller's span ends after
    reply_now(reply)
    return _Replied(reply)


class _decoded:
    """The request messages of a client stream, decoded, as an async iterator."""

    def __init__(self, raw: AsyncIterator[bytes], method: Method, context: HandlerContext) -> None:
        self._raw, self._method, self._context = raw, method, context

    def __aiter__(self) -> _decoded:
        return self

    async def __anext__(self) -> Any:
        payload = await self._raw.__anext__()
        try:
            return self._method.request_deserializer(payload)
        except Exception as exc:
            self._context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot decode request of {self._method.path}: {exc}")

    def blocking(self, loop: asyncio.AbstractEventLoop) -> Iterator[Any]:
        """The same messages for a handler running on another thread."""
        while True:
            try:
                yield asyncio.run_coroutine_threadsafe(self.__anext__(), loop).result()
            except StopAsyncIteration:
                return


async def _empty() -> AsyncIterator[bytes]:
    return
    yield b""  # pragma: no cover - makes this an async generator


def _next(iterator: Iterator[Any]) -> Any:
    return next(iterator, _DONE)


def _close(iterator: Any, variables: contextvars.Context) -> None:
    close = getattr(iterator, "close", None)
    for _ in range(100):
        try:
            if close is not None:
                variables.run(close)
            return
        except (ValueError, RuntimeError) as exc:
            if isinstance(exc, RuntimeError) and "already entered" not in str(exc):
                log.exception("closing a cancelled response generator failed")
                return
            time.sleep(0.05)  # its next() is still running: "generator already executing", or its context "already entered"
        except Exception:
            log.exception("closing a cancelled response generator failed")
            return


def _kind(method: Method) -> str:
    return {(False, False): "unary", (False, True): "server streaming",
            (True, False): "client streaming", (True, True): "bidi streaming"}[
        (method.client_streaming, method.server_streaming)]

