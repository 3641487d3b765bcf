"""The Dispatcher (handlers.dispatcher) and collecting targets (handlers.registry), without Kafka."""

from __future__ import annotations

import asyncio
import dataclasses
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2
from google.rpc import error_details_pb2, status_pb2
from rpctest.v1 import kitchen_pb2, kitchen_pb2_grpc

from adapter.errors import ConfigError
from adapter.protocol import wire
from handlers.dispatcher import Dispatcher
from handlers.registry import ServiceRegistry, collect, load_target
from tests.kitchen_service import Kitchen

KITCHEN = kitchen_pb2.DESCRIPTOR.services_by_name["Kitchen"]
PEER = "kafka:rpctest.v1.Kitchen/3@42"


def request(method: str, message: Any = None, *, payload: bytes | None = None, timeout: float | None = 30.0,
            metadata: wire.Metadata = ()) -> wire.Request:
    return wire.Request(
        method=method,
        correlation_id=wire.new_correlation_id(),
        reply_topic="replies",
        reply_partition=0,
        deadline=None if timeout is None else time.time() + timeout,
        metadata=metadata,
        payload=payload if payload is not None else (message or empty_pb2.Empty()).SerializeToString(),
    )


def kitchen(method: str, message: Any = None, **kwargs: Any) -> wire.Reply:
    reply, _ = dispatch(collect([Kitchen])[0], request(f"/rpctest.v1.Kitchen/{method}", message, **kwargs))
    assert reply is not None
    return reply


def dispatch(methods: Any, req: wire.Request, concurrency: int = 4) -> tuple[wire.Reply | None, Dispatcher]:
    async def run() -> tuple[wire.Reply | None, Dispatcher]:
        dispatcher = Dispatcher(methods, concurrency)
        try:
            return await dispatcher.handle(req, peer=PEER), dispatcher
        finally:
            dispatcher.close()

    return asyncio.run(run())


def fail(mode: int, code: grpc.StatusCode, message: str) -> wire.Reply:
    return kitchen("Fail", kitchen_pb2.FailRequest(mode=mode, code=code.value[0], message=message))


# Servicers written for grpc.server.


@pytest.mark.parametrize("method", ["Echo", "AsyncEcho"])
def test_ok_reply_carries_the_response(method: str) -> None:
    message = kitchen_pb2.Everything(tags=["a", "b"], number=7, blob=b"\x00\xff")
    reply = kitchen(method, message)
    assert reply.code is grpc.StatusCode.OK
    assert reply.message == ""
    assert kitchen_pb2.Everything.FromString(reply.payload) == message


def test_reply_echoes_the_correlation_id() -> None:
    req = request("/rpctest.v1.Kitchen/Nothing")
    reply, _ = dispatch(collect([Kitchen])[0], req)
    assert reply is not None and reply.correlation_id == req.correlation_id


def test_abort_keeps_code_and_details() -> None:
    reply = fail(kitchen_pb2.FailRequest.ABORT, grpc.StatusCode.NOT_FOUND, "no such dish")
    assert (reply.code, reply.message, reply.payload) == (grpc.StatusCode.NOT_FOUND, "no such dish", b"")


def test_abort_with_ok_becomes_unknown() -> None:
    reply = fail(kitchen_pb2.FailRequest.ABORT, grpc.StatusCode.OK, "not really ok")
    assert (reply.code, reply.message) == (grpc.StatusCode.UNKNOWN, "not really ok")


def test_set_code_and_return_none() -> None:
    reply = fail(kitchen_pb2.FailRequest.SET_CODE, grpc.StatusCode.FAILED_PRECONDITION, "oven is cold")
    assert (reply.code, reply.message) == (grpc.StatusCode.FAILED_PRECONDITION, "oven is cold")


def test_raise_is_unknown_exception_calling_application() -> None:
    reply = fail(kitchen_pb2.FailRequest.RAISE, grpc.StatusCode.OK, "the soufflé fell")
    assert reply.code is grpc.StatusCode.UNKNOWN
    assert reply.message == "Exception calling application: the soufflé fell"


def test_rich_status_travels_in_trailing_metadata() -> None:
    reply = fail(kitchen_pb2.FailRequest.RICH, grpc.StatusCode.INVALID_ARGUMENT, "too salty")
    assert (reply.code, reply.message) == (grpc.StatusCode.INVALID_ARGUMENT, "too salty")
    [(key, value)] = reply.trailing_metadata
    assert key == "grpc-status-details-bin"
    assert isinstance(value, bytes)
    status = status_pb2.Status.FromString(value)
    assert (status.code, status.message) == (grpc.StatusCode.INVALID_ARGUMENT.value[0], "too salty")
    bad_request = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(bad_request)
    assert bad_request.field_violations[0].description == "too salty"


def test_base_class_method_is_unimplemented() -> None:
    reply = kitchen("NotImplemented")
    assert (reply.code, reply.message) == (grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")


@pytest.mark.parametrize("method", ["/rpctest.v1.Kitchen/Nope", "/other.Service/Echo", ""])
def test_unknown_method_is_unimplemented(method: str) -> None:
    reply, _ = dispatch(collect([Kitchen])[0], request(method))
    assert reply is not None and reply.code is grpc.StatusCode.UNIMPLEMENTED
    assert (method or "no rpc-method header") in reply.message


def test_undecodable_payload_is_invalid_argument() -> None:
    reply = kitchen("Echo", payload=b"\x0a\x05ab")  # field 1 claims 5 bytes, has 2
    assert reply.code is grpc.StatusCode.INVALID_ARGUMENT
    assert "/rpctest.v1.Kitchen/Echo" in reply.message


def test_invocation_metadata_and_trailing_metadata() -> None:
    metadata = (("x-user", "ünï"), ("x-raw-bin", b"\x00\x01"), ("x-user", "second"))
    reply = kitchen("Meta", metadata=metadata)
    assert reply.code is grpc.StatusCode.OK
    seen = kitchen_pb2.MetaReply.FromString(reply.payload)
    assert dict(seen.text) == {"x-user": "second"}  # a map keeps the last; the context saw both
    assert dict(seen.binary) == {"x-raw-bin": b"\x00\x01"}
    assert dict(reply.trailing_metadata).keys() == {"x-handled-by", "x-trace-bin"}
    assert dict(reply.trailing_metadata)["x-trace-bin"] == b"\x00\xff\x10"


def test_time_remaining_seen_by_the_handler() -> None:
    with_deadline = kitchen_pb2.SleepReply.FromString(kitchen("Sleep", kitchen_pb2.SleepRequest(), timeout=10).payload)
    assert 9.0 < with_deadline.time_remaining <= 10.0
    assert with_deadline.active_after
    without = kitchen_pb2.SleepReply.FromString(kitchen("Sleep", kitchen_pb2.SleepRequest(), timeout=None).payload)
    assert without.time_remaining == -1


def test_peer() -> None:
    reply = kitchen_pb2.WhoamiReply.FromString(kitchen("Whoami").payload)
    assert reply.peer == PEER


def test_expired_deadline_gets_no_reply_and_is_counted() -> None:
    calls: list[str] = []
    registry = ServiceRegistry(KITCHEN)

    @registry.method("Nothing")
    def nothing(req: Any, ctx: Any) -> Any:
        calls.append("ran")
        return empty_pb2.Empty()

    reply, dispatcher = dispatch(registry.methods, request("/rpctest.v1.Kitchen/Nothing", timeout=-0.5))
    assert reply is None
    assert dispatcher.expired == 1
    assert calls == []


def test_deadline_is_checked_after_waiting_for_a_slot() -> None:
    registry = ServiceRegistry(KITCHEN)

    @registry.method("Sleep")
    async def sleep(req: Any, ctx: Any) -> Any:
        await asyncio.sleep(req.seconds)
        return kitchen_pb2.SleepReply()

    async def run() -> tuple[list[wire.Reply | None], int]:
        dispatcher = Dispatcher(registry.methods, concurrency=1)
        slow = request("/rpctest.v1.Kitchen/Sleep", kitchen_pb2.SleepRequest(seconds=0.3))
        quick = request("/rpctest.v1.Kitchen/Sleep", kitchen_pb2.SleepRequest(seconds=0), timeout=0.1)
        first = asyncio.create_task(dispatcher.handle(slow, PEER))
        await asyncio.sleep(0.01)
        replies = await asyncio.gather(first, dispatcher.handle(quick, PEER))
        dispatcher.close()
        return list(replies), dispatcher.expired

    (slow_reply, quick_reply), expired = asyncio.run(run())
    assert slow_reply is not None and slow_reply.code is grpc.StatusCode.OK
    assert quick_reply is None and expired == 1


# ServiceRegistry functions.


def registry_of(name: str, func: Callable[..., Any]) -> dict[str, Any]:
    registry = ServiceRegistry(KITCHEN)
    registry.method(name)(func)
    return registry.methods


def test_registry_def_runs_on_a_thread_and_async_def_on_the_loop() -> None:
    where: dict[str, str] = {}

    def sync_whoami(req: Any, ctx: Any) -> Any:
        where["def"] = threading.current_thread().name
        return kitchen_pb2.WhoamiReply(peer=ctx.peer())

    async def async_whoami(req: Any, ctx: Any) -> Any:
        where["async def"] = threading.current_thread().name
        return kitchen_pb2.WhoamiReply(peer=ctx.method())

    for func, expected in ((sync_whoami, PEER), (async_whoami, "/rpctest.v1.Kitchen/Whoami")):
        reply, _ = dispatch(registry_of("Whoami", func), request("/rpctest.v1.Kitchen/Whoami"))
        assert reply is not None and reply.code is grpc.StatusCode.OK
        assert kitchen_pb2.WhoamiReply.FromString(reply.payload).peer == expected
    assert where["def"].startswith("handler")
    assert where["async def"] == "MainThread"


def test_registry_def_returning_an_awaitable_is_awaited() -> None:
    async def later() -> Any:
        return kitchen_pb2.WhoamiReply(pid=5)

    reply, _ = dispatch(registry_of("Whoami", lambda req, ctx: later()), request("/rpctest.v1.Kitchen/Whoami"))
    assert reply is not None and kitchen_pb2.WhoamiReply.FromString(reply.payload).pid == 5


@pytest.mark.parametrize("is_async", [False, True])
def test_returning_none_is_internal(is_async: bool) -> None:
    async def async_none(req: Any, ctx: Any) -> None:
        return None

    func = async_none if is_async else (lambda req, ctx: None)
    reply, _ = dispatch(registry_of("Nothing", func), request("/rpctest.v1.Kitchen/Nothing"))
    assert reply is not None and reply.code is grpc.StatusCode.INTERNAL
    assert reply.message == "handler returned no response message"


def test_unserializable_response_is_internal() -> None:
    reply, _ = dispatch(registry_of("Nothing", lambda req, ctx: "not a message"), request("/rpctest.v1.Kitchen/Nothing"))
    assert reply is not None and reply.code is grpc.StatusCode.INTERNAL
    assert reply.message.startswith("cannot serialize response")


def test_async_abort_and_callbacks() -> None:
    ran: list[str] = []

    async def refuse(req: Any, ctx: Any) -> Any:
        ctx.add_callback(lambda: ran.append("callback"))
        await ctx.abort(grpc.StatusCode.PERMISSION_DENIED, "staff only")

    reply, _ = dispatch(registry_of("Nothing", refuse), request("/rpctest.v1.Kitchen/Nothing"))
    assert reply is not None
    assert (reply.code, reply.message) == (grpc.StatusCode.PERMISSION_DENIED, "staff only")
    assert ran == ["callback"]


def test_set_code_with_a_response_drops_the_response() -> None:
    def partial(req: Any, ctx: Any) -> Any:
        ctx.set_code(grpc.StatusCode.RESOURCE_EXHAUSTED)
        ctx.set_details("too many orders")
        return kitchen_pb2.WhoamiReply(pid=1)

    reply, _ = dispatch(registry_of("Whoami", partial), request("/rpctest.v1.Kitchen/Whoami"))
    assert reply is not None
    assert (reply.code, reply.message, reply.payload) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "too many orders", b"")


def test_concurrency_limit() -> None:
    running = 0
    most = 0

    async def busy(req: Any, ctx: Any) -> Any:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.02)
        running -= 1
        return empty_pb2.Empty()

    async def run() -> list[wire.Reply | None]:
        dispatcher = Dispatcher(registry_of("Nothing", busy), concurrency=3)
        replies = await asyncio.gather(
            *(dispatcher.handle(request("/rpctest.v1.Kitchen/Nothing"), PEER) for _ in range(10))
        )
        dispatcher.close()
        return replies

    replies = asyncio.run(run())
    assert all(r is not None and r.code is grpc.StatusCode.OK for r in replies)
    assert most == 3


def test_server_streaming_emits_each_message_then_an_empty_ok() -> None:
    async def run() -> tuple[wire.Reply | None, list[bytes]]:
        dispatcher = Dispatcher(collect([Kitchen])[0], 4)
        emitted: list[bytes] = []

        async def emit(payload: bytes) -> None:
            emitted.append(payload)

        try:
            reply = await dispatcher.handle(request("/rpctest.v1.Kitchen/CountUp", kitchen_pb2.Count(n=3)), PEER, emit=emit)
        finally:
            dispatcher.close()
        return reply, emitted

    reply, emitted = asyncio.run(run())
    assert reply is not None and reply.code is grpc.StatusCode.OK and reply.payload == b""
    assert [kitchen_pb2.Item.FromString(p).i for p in emitted] == [0, 1, 2]


def test_client_stream_reads_the_request_iterator() -> None:
    async def messages() -> Any:
        for i in range(5):
            yield kitchen_pb2.Item(i=i, data=b"ab").SerializeToString()

    async def run() -> wire.Reply | None:
        dispatcher = Dispatcher(collect([Kitchen])[0], 4)
        opening = dataclasses.replace(request("/rpctest.v1.Kitchen/Collect"), opens_stream=True, payload=b"")
        try:
            return await dispatcher.handle(opening, PEER, requests=messages())
        finally:
            dispatcher.close()

    reply = asyncio.run(run())
    assert reply is not None and reply.code is grpc.StatusCode.OK
    assert kitchen_pb2.Summary.FromString(reply.payload) == kitchen_pb2.Summary(count=5, total_bytes=10, order=range(5))


def test_a_record_of_the_wrong_kind_for_the_method_is_invalid_argument() -> None:
    reply = kitchen("Collect")  # a whole-call record for a client-streaming method
    assert reply.code is grpc.StatusCode.INVALID_ARGUMENT and "client streaming" in reply.message


# collect() and load_target().


def test_collect_servicer_class_instance_and_registry() -> None:
    methods, services = collect([Kitchen])
    assert set(methods) == {f"/rpctest.v1.Kitchen/{m.name}" for m in KITCHEN.methods}
    assert services == [KITCHEN]
    methods, _ = collect([Kitchen()])
    assert len(methods) == len(KITCHEN.methods)
    registry = ServiceRegistry(KITCHEN)
    registry.method("Echo")(lambda req, ctx: req)
    methods, services = collect([registry])
    assert list(methods) == ["/rpctest.v1.Kitchen/Echo"]
    assert services == [KITCHEN]


def test_collect_base_servicer_is_accepted() -> None:
    methods, _ = collect([kitchen_pb2_grpc.KitchenServicer])
    assert "/rpctest.v1.Kitchen/Echo" in methods


class NotAServicer:
    def Echo(self, request: Any, context: Any) -> Any:
        return request


@pytest.mark.parametrize("target", [NotAServicer, NotAServicer(), 42, lambda: None])
def test_collect_non_servicer_is_a_config_error(target: object) -> None:
    with pytest.raises(ConfigError, match=r"is not a generated \*Servicer subclass"):
        collect([target])


def test_collect_same_method_twice_is_a_config_error() -> None:
    registry = ServiceRegistry(KITCHEN)
    registry.method("Echo")(lambda req, ctx: req)
    with pytest.raises(ConfigError, match=re.escape("/rpctest.v1.Kitchen/Echo is served by two targets")):
        collect([Kitchen, registry])


def test_registry_unknown_method_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=re.escape("rpctest.v1.Kitchen has no method 'Cook'")):
        ServiceRegistry(KITCHEN).method("Cook")


def test_load_target() -> None:
    assert load_target("tests.kitchen_service:Kitchen") is Kitchen


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("tests.kitchen_service", "must be MODULE:ATTR"),
        (":Kitchen", "must be MODULE:ATTR"),
        ("tests.kitchen_service:", "must be MODULE:ATTR"),
        ("no_such_module_here:Kitchen", "cannot import 'no_such_module_here'"),
        ("tests.kitchen_service:Pantry", "has no attribute 'Pantry'"),
    ],
)
def test_load_target_bad_spec_is_a_config_error(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_target(spec)


def test_a_cancelled_def_handler_keeps_its_slot_until_its_thread_returns() -> None:
    # Python cannot stop the thread of a cancelled def handler: it still counts against the limit.
    events: list[str] = []
    released = threading.Event()

    def stubborn(req: Any, ctx: Any) -> Any:
        events.append("def started")
        released.wait(10)
        events.append("def returned")
        return empty_pb2.Empty()

    async def quick(req: Any, ctx: Any) -> Any:
        events.append("async started")
        return empty_pb2.Empty()

    methods = {**registry_of("Nothing", stubborn), **registry_of("Whoami", quick)}

    async def run() -> wire.Reply | None:
        dispatcher = Dispatcher(methods, concurrency=1)
        try:
            first = asyncio.create_task(dispatcher.handle(request("/rpctest.v1.Kitchen/Nothing"), PEER))
            while dispatcher.running == 0 or "def started" not in events:
                await asyncio.sleep(0.01)
            first.cancel()
            await asyncio.gather(first, return_exceptions=True)
            assert dispatcher.running == 1, "the thread still runs"
            second = asyncio.create_task(dispatcher.handle(request("/rpctest.v1.Kitchen/Whoami"), PEER))
            await asyncio.sleep(0.2)
            assert not second.done() and "async started" not in events
            released.set()
            return await second
        finally:
            released.set()
            dispatcher.close()

    reply = asyncio.run(run())
    assert reply is not None and reply.code is grpc.StatusCode.OK
    assert events == ["def started", "def returned", "async started"]


def test_a_callback_added_after_the_call_ended_is_refused_not_lost() -> None:
    """#12.10: a def handler's thread may add a callback while the loop runs them: grpc's rule,
    add_callback returns False once the call has ended, and a callback it accepted always runs."""
    from handlers.context import HandlerContext

    context = HandlerContext(wire.Request("/s.S/M", b"c", None), "test")
    ran: list[str] = []
    assert context.add_callback(lambda: ran.append("before"))
    context.run_callbacks()
    assert not context.add_callback(lambda: ran.append("after"))
    context.run_callbacks()
    assert ran == ["before"]


def test_callbacks_added_from_threads_while_they_run_are_never_lost() -> None:
    from handlers.context import HandlerContext

    for _ in range(200):
        context = HandlerContext(wire.Request("/s.S/M", b"c", None), "test")
        ran: list[int] = []
        accepted: list[bool] = []
        go = threading.Event()

        def add(i: int, context: HandlerContext = context, ran: list[int] = ran, accepted: list[bool] = accepted,
                go: threading.Event = go) -> None:
            go.wait()
            accepted.append(context.add_callback(lambda: ran.append(i)))

        threads = [threading.Thread(target=add, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        go.set()
        context.run_callbacks()
        for thread in threads:
            thread.join()
        assert len(ran) == sum(accepted)  # every accepted callback ran, exactly once
