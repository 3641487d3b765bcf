"""`KafkaChannel`: a blocking ``grpc.Channel`` over Kafka, for code without an event loop.

It runs an `adapter.caller.aio_channel.AioKafkaChannel` on an event loop of its own, on a
background thread, and offers what ``grpc.Channel`` offers to generated stubs::

    with KafkaChannel.connect([kitchen_pb2], bootstrap_servers="127.0.0.1:9092") as channel:
        kitchen = kitchen_pb2_grpc.KitchenStub(channel)
        reply = kitchen.Echo(request, timeout=5, metadata=(("x-user", "ann"),))
        reply, call = kitchen.Echo.with_call(request)        # call.trailing_metadata()
        future = kitchen.Echo.future(request)                # future.result(), future.cancel()
        for item in kitchen.CountUp(kitchen_pb2.Count(n=3)):
            ...
        summary = kitchen.Collect(iter(items), timeout=5)    # request iterators may block

Failed calls raise ``grpc.RpcError`` that is also a ``grpc.Call`` (``code()``,
``details()``, ``trailing_metadata()``), as with grpc.

Longer than our modules should be (~420 lines), on purpose: it is grpc's blocking API (four
multi-callables, their futures and iterators) over the async core on one loop thread, and every
piece of it needs that thread's internals.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio

from adapter.caller.aio_channel import AioKafkaChannel
from adapter.caller.stub_calls import StreamStreamCall, StreamUnaryCall, UnaryStreamCall
from adapter.runtime.config import KafkaConfig

log = logging.getLogger(__name__)

T = TypeVar("T")
_CANCELLED = "Locally cancelled by application!"
_Outcome = tuple[Any, grpc.StatusCode, str, tuple[tuple[str, str | bytes], ...]]


class _LoopThread:
    """An event loop running on a daemon thread of its own; coroutines are submitted to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.stopped = False
        self.thread = threading.Thread(target=self._run, name="kafka-channel", daemon=True)
        self.thread.start()

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("a blocking KafkaChannel call on its own event loop would deadlock; use AioKafkaChannel")
        if self.stopped:
            coro.close()
            raise ValueError("Cannot invoke RPC on closed channel!")  # grpc.Channel's words
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.submit(coro).result()

    def call(self, func: Callable[..., T], *args: Any) -> T:
        return self.run(_called(func, *args))

    def stop(self) -> None:
        self.stopped = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)

    def _run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            # Stopped: what is left ends now, as asyncio.run would end it.
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()


class KafkaChannel(grpc.Channel):
    """A ``grpc.Channel`` over Kafka; its requester runs on a background event-loop thread."""

    def __init__(self, aio: AioKafkaChannel, loop: _LoopThread) -> None:
        self.aio = aio
        self._loop = loop
        self._closed = False

    @classmethod
    def connect(
        cls,
        services: Iterable[object],
        *,
        bootstrap_servers: str | Sequence[str] | None = None,
        topic_prefix: str | None = None,
        kafka_client: str | None = None,
        kafka: KafkaConfig | None = None,
        reply_topic: str | None = None,
        reply_partitions: int = 16,
        default_timeout: float = 30.0,
        start_timeout: float = 60.0,
    ) -> KafkaChannel:
        """Connect as `AioKafkaChannel.connect` does (same arguments), on a new event-loop thread."""
        loop = _LoopThread()
        try:
            aio = loop.run(AioKafkaChannel.connect(
                services, bootstrap_servers=bootstrap_servers, topic_prefix=topic_prefix, kafka_client=kafka_client,
                kafka=kafka,
                reply_topic=reply_topic, reply_partitions=reply_partitions, default_timeout=default_timeout,
                start_timeout=start_timeout,
            ))
        except BaseException:
            loop.stop()
            raise
        return cls(aio, loop)

    def close(self) -> None:
        """Cancel calls in flight, disconnect, stop the event-loop thread."""
        if not self._closed:
            self._closed = True
            try:
                self._loop.run(self.aio.close())
            finally:
                self._loop.stop()

    def __enter__(self) -> KafkaChannel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def subscribe(self, callback: Callable[[grpc.ChannelConnectivity], None], try_to_connect: bool = False) -> None:
        callback(self.aio.get_state())

    def unsubscribe(self, callback: Callable[[grpc.ChannelConnectivity], None]) -> None:
        pass

    def unary_unary(self, method: str, request_serializer: Callable[[Any], bytes] | None = None,
                    response_deserializer: Callable[[bytes], Any] | None = None,
                    _registered_method: bool | None = False) -> _UnaryUnary:
        return _UnaryUnary(self._loop, self.aio.unary_unary(method, request_serializer, response_deserializer))

    def unary_stream(self, method: str, request_serializer: Callable[[Any], bytes] | None = None,
                     response_deserializer: Callable[[bytes], Any] | None = None,
                     _registered_method: bool | None = False) -> _UnaryStream:
        return _UnaryStream(self._loop, self.aio.unary_stream(method, request_serializer, response_deserializer))

    def stream_unary(self, method: str, request_serializer: Callable[[Any], bytes] | None = None,
                     response_deserializer: Callable[[bytes], Any] | None = None,
                     _registered_method: bool | None = False) -> _StreamUnary:
        return _StreamUnary(self._loop, self.aio.stream_unary(method, request_serializer, response_deserializer))

    def stream_stream(self, method: str, request_serializer: Callable[[Any], bytes] | None = None,
                      response_deserializer: Callable[[bytes], Any] | None = None,
                      _registered_method: bool | None = False) -> _StreamStream:
        return _StreamStream(self._loop, self.aio.stream_stream(method, request_serializer, response_deserializer))


class _Blocking:
    """A blocking multicallable: the aio one does the work, on the channel's loop thread, which its
    calls belong to."""

    def __init__(self, loop: _LoopThread, aio: Callable[..., Any]) -> None:
        self._loop = loop
        self._aio = aio

    def _start(self, *args: Any, timeout: float | None, metadata: Any) -> Any:
        return self._loop.call(lambda: self._aio(*args, timeout=timeout, metadata=metadata))


class _UnaryUnary(_Blocking, grpc.UnaryUnaryMultiCallable):
    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None, **_: Any) -> Any:
        return self.future(request, timeout, metadata).result()

    def with_call(self, request: Any, timeout: float | None = None, metadata: Any = None, **_: Any) -> tuple[Any, _Future]:
        future = self.future(request, timeout, metadata)
        return future.result(), future

    def future(self, request: Any, timeout: float | None = None, metadata: Any = None, **_: Any) -> _Future:
        return _Future(self._loop, self._start(request, timeout=timeout, metadata=metadata))


class _StreamUnary(_Blocking, grpc.StreamUnaryMultiCallable):
    def __call__(self, request_iterator: Iterable[Any], timeout: float | None = None, metadata: Any = None,
                 **_: Any) -> Any:
        return self.future(request_iterator, timeout, metadata).result()

    def with_call(self, request_iterator: Iterable[Any], timeout: float | None = None, metadata: Any = None,
                  **_: Any) -> tuple[Any, _Future]:
        future = self.future(request_iterator, timeout, metadata)
        return future.result(), future

    def future(self, request_iterator: Iterable[Any], timeout: float | None = None, metadata: Any = None,
               **_: Any) -> _Future:
        call = self._start(None, timeout=timeout, metadata=metadata)
        _feed(self._loop, call, request_iterator)
        return _Future(self._loop, call)


class _UnaryStream(_Blocking, grpc.UnaryStreamMultiCallable):
    def __call__(self, request: Any, timeout: float | None = None, metadata: Any = None, **_: Any) -> _Responses:
        return _Responses(self._loop, self._start(request, timeout=timeout, metadata=metadata))


class _StreamStream(_Blocking, grpc.StreamStreamMultiCallable):
    def __call__(self, request_iterator: Iterable[Any], timeout: float | None = None, metadata: Any = None,
                 **_: Any) -> _Responses:
        call = self._start(None, timeout=timeout, metadata=metadata)
        _feed(self._loop, call, request_iterator)
        return _Responses(self._loop, call)


class _Future(grpc.Call, grpc.Future):
    """A call with one response (``.future()``, ``.with_call()``): its outcome and status."""

    def __init__(self, loop: _LoopThread, call: Any) -> None:
        self._loop = loop
        self._call = call
        self._outcome = loop.submit(_outcome(call))

    def result(self, timeout: float | None = None) -> Any:
        try:
            return self._outcome.result(timeout)[0]
        except concurrent.futures.TimeoutError:
            raise grpc.FutureTimeoutError() from None
        except concurrent.futures.CancelledError:
            raise grpc.FutureCancelledError() from None

    def exception(self, timeout: float | None = None) -> BaseException | None:
        try:
            self.result(timeout)
        except grpc.RpcError as exc:
            return exc
        return None

    def traceback(self, timeout: float | None = None) -> Any:
        error = self.exception(timeout)
        return None if error is None else error.__traceback__

    def add_done_callback(self, fn: Callable[[Any], None]) -> None:
        self._outcome.add_done_callback(lambda _: fn(self))

    def cancel(self) -> bool:
        return bool(self._loop.call(self._call.cancel))

    def cancelled(self) -> bool:
        return bool(self._call.cancelled())

    def running(self) -> bool:
        return not self._outcome.done()

    def done(self) -> bool:
        return self._outcome.done()

    def is_active(self) -> bool:
        return not self._outcome.done()

    def time_remaining(self) -> float | None:
        return self._call.time_remaining()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self._outcome.add_done_callback(lambda _: callback())
        return True

    def initial_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return ()

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._final()[3]

    def code(self) -> grpc.StatusCode:
        return self._final()[1]

    def details(self) -> str:
        return self._final()[2]

    def _final(self) -> _Outcome:
        concurrent.futures.wait([self._outcome])
        if self._outcome.cancelled():
            return None, grpc.StatusCode.CANCELLED, _CANCELLED, ()
        error = self._outcome.exception()
        if isinstance(error, _RpcError):
            return None, error.code(), error.details(), error.trailing_metadata()
        return self._outcome.result()


class _Responses(grpc.Call):
    """A call with a stream of responses: iterate it; it is also the call (status, cancel)."""

    def __init__(self, loop: _LoopThread, call: UnaryStreamCall | StreamStreamCall) -> None:
        self._loop = loop
        self._call = call

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        message = _sync(self._loop, self._call.read())
        if message is grpc.aio.EOF:
            raise StopIteration
        return message

    def cancel(self) -> bool:
        return bool(self._loop.call(self._call.cancel))

    def is_active(self) -> bool:
        return not self._call.done()

    def time_remaining(self) -> float | None:
        return self._call.time_remaining()

    def add_callback(self, callback: Callable[[], None]) -> bool:
        self._loop.call(self._call.add_done_callback, lambda _: callback())
        return True

    def initial_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return ()

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return tuple(self._loop.run(self._call.trailing_metadata()))

    def code(self) -> grpc.StatusCode:
        return self._loop.run(self._call.code())

    def details(self) -> str:
        return self._loop.run(self._call.details())


class _RpcError(grpc.RpcError, grpc.Call):
    """A call that has ended without success, as grpc raises it: an error that is also the call."""

    def __init__(self, code: grpc.StatusCode, details: str, trailing: tuple[tuple[str, str | bytes], ...] = ()) -> None:
        super().__init__(f"{code.name}: {details}")
        self._code, self._details, self._trailing = code, details, trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def trailing_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return self._trailing

    def initial_metadata(self) -> tuple[tuple[str, str | bytes], ...]:
        return ()

    def debug_error_string(self) -> str:
        return f"{self._code.name}: {self._details}"

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> None:
        return None

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: Callable[[], None]) -> bool:
        return False


async def _outcome(call: Awaitable[Any]) -> _Outcome:
    """The response and status of a call, its error as the blocking API raises it."""
    try:
        response = await call
    except grpc.aio.AioRpcError as exc:
        raise _RpcError(exc.code(), exc.details() or "", tuple(exc.trailing_metadata())) from None
    aio: Any = call
    return response, grpc.StatusCode.OK, await aio.details(), tuple(await aio.trailing_metadata())


def _sync(loop: _LoopThread, coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` on the loop; its grpc.aio outcome becomes what a blocking grpc call raises."""
    try:
        return loop.run(_translated(coro))
    except (asyncio.CancelledError, concurrent.futures.CancelledError):
        raise _RpcError(grpc.StatusCode.CANCELLED, _CANCELLED) from None


async def _translated(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return await coro
    except grpc.aio.AioRpcError as exc:
        raise _RpcError(exc.code(), exc.details() or "", tuple(exc.trailing_metadata())) from None


def _feed(loop: _LoopThread, call: StreamUnaryCall | StreamStreamCall, requests: Iterable[Any]) -> None:
    """Send the requests of `call` from a thread of their own: a blocking iterator may wait for responses."""

    def feed() -> None:
        try:
            for request in requests:
                loop.run(call.write(request))
            loop.run(call.done_writing())
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError, asyncio.CancelledError, concurrent.futures.CancelledError,
                ValueError):
            pass  # the call (or the channel) has ended; the call's status comes with its responses
        except Exception:
            log.debug("request iterator raised", exc_info=True)
            with contextlib.suppress(ValueError):  # the channel was closed meanwhile
                loop.call(call.fail, grpc.StatusCode.UNKNOWN, "Exception iterating requests!")

    threading.Thread(target=feed, name="kafka-channel-requests", daemon=True).start()


async def _called(func: Callable[..., T], *args: Any) -> T:
    return func(*args)
