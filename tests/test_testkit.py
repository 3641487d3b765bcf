"""The test kit (handlers.testing): generated stubs call handlers through the real request path."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import any_pb2, duration_pb2, empty_pb2, struct_pb2, timestamp_pb2, wrappers_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rpctest.v1 import kitchen_pb2, kitchen_pb2_grpc

from handlers.registry import ServiceRegistry
from handlers.testing import Channel, serve_in_memory
from tests.kitchen_service import Kitchen

KITCHEN = kitchen_pb2.DESCRIPTOR.services_by_name["Kitchen"]
Everything = kitchen_pb2.Everything  # a short name for building messages


def with_kitchen(test: Callable[[kitchen_pb2_grpc.KitchenStub, Channel], Awaitable[Any]], *targets: object,
                 default_timeout: float = 5.0) -> Any:
    async def run() -> Any:
        async with serve_in_memory(*(targets or (Kitchen,)), default_timeout=default_timeout) as channel:
            return await test(kitchen_pb2_grpc.KitchenStub(channel), channel)

    return asyncio.run(run())


def everything() -> kitchen_pb2.Everything:
    detail = any_pb2.Any()
    detail.Pack(wrappers_pb2.Int64Value(value=-5))
    doc = struct_pb2.Struct()
    doc.update({"name": "ünï", "n": 1.5, "ok": True, "nothing": None, "list": [1, "two"], "nested": {"a": "b"}})
    message = Everything(
        scalars=kitchen_pb2.Scalars(
            d=-1.25, f=0.5, i32=-(2**31), i64=-(2**63), u32=2**32 - 1, u64=2**64 - 1, s32=-7, s64=-(2**40),
            fx32=2**32 - 1, fx64=2**64 - 1, sfx32=-3, sfx64=-(2**62), b=True, s="straße ✓ 日本", by=b"\x00\xff\x80",
        ),
        color=kitchen_pb2.GREEN,
        inner=Everything.Inner(name="in", values=[1, -2, 3]),
        inners=[Everything.Inner(name="a"), Everything.Inner(name="b", values=[0])],
        tags=["x", "", "z"],
        counts={"a": 1, "b": -(2**63)},
        by_id={-1: Everything.Inner(name="neg"), 7: Everything.Inner(values=[7])},
        nested=Everything.Inner(name="chosen"),
        at=timestamp_pb2.Timestamp(seconds=1_700_000_000, nanos=123_456_789),
        took=duration_pb2.Duration(seconds=-3, nanos=-500),
        doc=doc,
        any=detail,
        maybe=wrappers_pb2.StringValue(value=""),
        opt=0,  # explicit presence of a zero value
        blob=bytes(range(256)),
        colors=[kitchen_pb2.RED, kitchen_pb2.COLOR_UNSPECIFIED, kitchen_pb2.GREEN],
    )
    return message


@pytest.mark.parametrize("method", ["Echo", "AsyncEcho"])
def test_echo_everything(method: str) -> None:
    sent = everything()

    async def test(stub: kitchen_pb2_grpc.KitchenStub, channel: Channel) -> kitchen_pb2.Everything:
        return await getattr(stub, method)(sent)

    got = with_kitchen(test)
    assert got == sent
    assert got.HasField("opt") and got.HasField("maybe") and got.WhichOneof("choice") == "nested"
    assert got.SerializeToString(deterministic=True) == sent.SerializeToString(deterministic=True)


def test_error_status_with_details() -> None:
    async def test(stub: kitchen_pb2_grpc.KitchenStub, channel: Channel) -> grpc.aio.AioRpcError:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Fail(kitchen_pb2.FailRequest(
                mode=kitchen_pb2.FailRequest.RICH, code=grpc.StatusCode.INVALID_ARGUMENT.value[0], message="too salty"
            ))
        return raised.value

    error = with_kitchen(test)
    assert isinstance(error, grpc.RpcError)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "too salty")
    status = rpc_status.from_call(error)
    assert status is not None and status.message == "too salty"
    violations = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(violations)
    assert violations.field_violations[0].field == "message"


@pytest.mark.parametrize(
    ("mode", "code", "details"),
    [
        (kitchen_pb2.FailRequest.ABORT, grpc.StatusCode.NOT_FOUND, "no such dish"),
        (kitchen_pb2.FailRequest.SET_CODE, grpc.StatusCode.ALREADY_EXISTS, "cooked already"),
        (kitchen_pb2.FailRequest.RAISE, grpc.StatusCode.UNKNOWN, "Exception calling application: burnt"),
    ],
)
def test_error_status(mode: int, code: grpc.StatusCode, details: str) -> None:
    message = "burnt" if mode == kitchen_pb2.FailRequest.RAISE else details

    async def test(stub: kitchen_pb2_grpc.KitchenStub, channel: Channel) -> tuple[Any, ...]:
        call = stub.Fail(kitchen_pb2.FailRequest(mode=mode, code=code.value[0], message=message))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call
        return raised.value.code(), raised.value.details(), await call.code(), await call.details()

    assert with_kitchen(test) == (code, details, code, details)


def test_metadata_both_ways() -> None:
    async def test(stub: kitchen_pb2_grpc.KitchenStub, channel: Channel) -> tuple[Any, ...]:
        call = stub.Meta(empty_pb2.Empty(), metadata=(("x-user", "ünï"), ("x-raw-bin", b"\x00\xff")))
        reply = await call
        return reply, await call.trailing_metadata(), await call.code(), await call.initial_metadata()

    reply, trailing, code, initial = with_kitchen(test)
    assert dict(reply.text) == {"x-user": "ünï"}
    assert dict(reply.binary) == {"x-raw-bin": b"\x00\xff"}
    assert isinstance(trailing, grpc.aio.Metadata)
    assert set(trailing.keys()) == {"x-handled-by", "x-trace-bin"}
    assert trailing["x-trace-bin"] == b"\x00\xff\x10"
    assert code is grpc.StatusCode.OK
    assert len(initial) == 0


def test_deadline_exceeded_and_time_remaining() -> None:
    async def test(stub: kitchen_pb2_grpc.KitchenStub, channel: Channel) -> tuple[Any, ...]:
        began = time.monotonic()
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Sleep(kitchen_pb2.SleepRequest(seconds=5), timeout=0.05)
        elapsed = time.monotonic() - began
        seen = await stub.Sleep(kitchen_pb2.SleepRequest(), timeout=2.0)
        default = await stub.Sleep(kitchen_pb2.SleepRequest())
        return raised.value.code(), elapsed, seen.time_remaining, default.time_remaining

    code, elapsed, remaining, default_remaining = with_kitchen(test, default_timeout=3.0)
    assert code is grpc.StatusCode.DEADLINE_EXCEEDED
    assert elapsed < 1.0
    assert 1.5 < remaining <= 2.001  # the deadline travels rounded to milliseconds
    assert 2.5 < default_remaining <= 3.001


def test_unimplemented() -> None:
    async def test(stub: kitchen_pb2_grpc.KitchenStub, channel: Channel) -> list[tuple[Any, Any]]:
        errors = []
        unknown = channel.unary_unary("/rpctest.v1.Kitchen/Nope", empty_pb2.Empty.SerializeToString,
                                      empty_pb2.Empty.FromString)
        for call in (stub.NotImplemented(empty_pb2.Empty()), unknown(empty_pb2.Empty())):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await call
            errors.append((raised.value.code(), raised.value.details()))
        return errors

    assert with_kitchen(test) == [
        (grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!"),
        (grpc.StatusCode.UNIMPLEMENTED, "Method not found!"),
    ]


def test_partition_key_route_and_peer() -> None:
    async def test(stub: kitchen_pb2_grpc.KitchenStub, channel: Channel) -> tuple[str, str]:
        keyed = await stub.Keyed(kitchen_pb2.KeyedRequest(customer="c1"))
        plain = await stub.Whoami(empty_pb2.Empty())
        return keyed.peer, plain.peer

    keyed_peer, plain_peer = with_kitchen(test)
    assert keyed_peer.startswith("memory:rpctest.keyed/")
    assert plain_peer.startswith("memory:rpctest.v1.Kitchen/")


def test_idempotency_key_metadata_replays_the_first_reply() -> None:
    async def test(stub: kitchen_pb2_grpc.KitchenStub, channel: Channel) -> tuple[str, ...]:
        first = await stub.Whoami(empty_pb2.Empty(), metadata=(("idempotency-key", "k1"),))
        again = await stub.Whoami(empty_pb2.Empty(), metadata=(("idempotency-key", "k1"),))
        other = await stub.Whoami(empty_pb2.Empty(), metadata=(("idempotency-key", "k2"),))
        return first.peer, again.peer, other.peer  # the peer names the request's offset

    first, again, other = with_kitchen(test)
    assert first == again != other


def test_registry_target_and_concurrent_calls() -> None:
    registry = ServiceRegistry(KITCHEN)

    @registry.method("Echo")
    async def echo(request: kitchen_pb2.Everything, context: Any) -> kitchen_pb2.Everything:
        await asyncio.sleep(0.001 * (len(request.tags[0]) % 5))
        return request

    async def test(stub: kitchen_pb2_grpc.KitchenStub, channel: Channel) -> list[kitchen_pb2.Everything]:
        return list(await asyncio.gather(*(stub.Echo(Everything(tags=[f"{i}" * (i % 7 + 1)])) for i in range(50))))

    replies = with_kitchen(test, registry)
    assert [r.tags[0] for r in replies] == [f"{i}" * (i % 7 + 1) for i in range(50)]


def test_unregistered_method_of_a_registry_is_unimplemented() -> None:
    registry = ServiceRegistry(KITCHEN)
    registry.method("Echo")(lambda request, context: request)

    async def test(stub: kitchen_pb2_grpc.KitchenStub, channel: Channel) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Nothing(empty_pb2.Empty())
        return raised.value.code()

    assert with_kitchen(test, registry) is grpc.StatusCode.UNIMPLEMENTED


def test_invalid_trailing_metadata_fails_fast() -> None:
    registry = ServiceRegistry(KITCHEN)

    @registry.method("Nothing")
    def nothing(request: empty_pb2.Empty, context: Any) -> empty_pb2.Empty:
        context.set_trailing_metadata((("x-note", b"\xff\xfe"),))
        return empty_pb2.Empty()

    async def test(stub: kitchen_pb2_grpc.KitchenStub, channel: Channel) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Nothing(empty_pb2.Empty())
        return raised.value.code()

    assert with_kitchen(test, registry, default_timeout=0.3) is grpc.StatusCode.INTERNAL


def test_cancel_unary() -> None:
    async def test(stub: kitchen_pb2_grpc.KitchenStub, channel: Channel) -> tuple[Any, ...]:
        call = stub.Sleep(kitchen_pb2.SleepRequest(seconds=5))
        await asyncio.sleep(0.01)
        assert call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert call.cancelled() and call.done() and not call.cancel()
        return await call.code(), await call.details()

    assert with_kitchen(test) == (grpc.StatusCode.CANCELLED, "Locally cancelled by application!")


@pytest.mark.parametrize("method", ["CountUp", "AsyncCountUp"])
@pytest.mark.parametrize("n", [0, 1, 500])
def test_server_streaming(method: str, n: int) -> None:
    async def test(stub: kitchen_pb2_grpc.KitchenStub, channel: Channel) -> tuple[list[int], Any, Any]:
        call = getattr(stub, method)(kitchen_pb2.Count(n=n, size=2))
        items = [item async for item in call]
        assert all(item.data == b"xx" for item in items)
        return [item.i for item in items], await call.code(), await call.trailing_metadata()

    numbers, code, trailing = with_kitchen(test)
    assert numbers == list(range(n))
    assert code is grpc.StatusCode.OK
    if method == "CountUp":
        assert trailing["x-count"] == str(n)


def test_server_streaming_read_and_error_mid_stream() -> None:
    async def test(stub: kitchen_pb2_grpc.KitchenStub, channel: Channel) -> tuple[Any, ...]:
        call = stub.CountUp(kitchen_pb2.Count(n=10, fail_at=3))
        got = [(await call.read()).i for _ in range(3)]
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call.read()
        with pytest.raises(grpc.aio.AioRpcError):
            await call.read()  # it stays failed
        return got, raised.value.code(), raised.value.details(), await call.code(), call.done()

    assert with_kitchen(test) == ([0, 1, 2], grpc.StatusCode.FAILED_PRECONDITION, "failed at 3",
                                  grpc.StatusCode.FAILED_PRECONDITION, True)


@pytest.mark.parametrize("method", ["Collect", "AsyncCollect"])
@pytest.mark.parametrize("n", [0, 1, 500])
def test_client_streaming(method: str, n: int) -> None:
    async def requests() -> AsyncIterator[kitchen_pb2.Item]:
        for i in range(n):
            yield kitchen_pb2.Item(i=i, data=b"ab")

    async def test(stub: kitchen_pb2_grpc.KitchenStub, channel: Channel) -> list[kitchen_pb2.Summary]:
        from_async = await getattr(stub, method)(requests())
        from_plain = await getattr(stub, method)(kitchen_pb2.Item(i=i, data=b"ab") for i in range(n))
        call = getattr(stub, method)()
        for i in range(n):
            await call.write(kitchen_pb2.Item(i=i, data=b"ab"))
        await call.done_writing()
        return [from_async, from_plain, await call]

    for summary in with_kitchen(test):
        assert (summary.count, summary.total_bytes) == (n, 2 * n)
        assert list(summary.order) == list(range(min(n, 100)))


@pytest.mark.parametrize("method", ["Chat", "SyncChat"])
@pytest.mark.parametrize("n", [0, 1, 300])
def test_bidi_streaming(method: str, n: int) -> None:
    async def test(stub: kitchen_pb2_grpc.KitchenStub, channel: Channel) -> list[int]:
        call = getattr(stub, method)(kitchen_pb2.Item(i=i) for i in range(n))
        return [reply.i async for reply in call]

    assert with_kitchen(test) == [2 * i for i in range(n)]


def test_bidi_responses_flow_while_requests_arrive_and_error_mid_stream() -> None:
    async def test(stub: kitchen_pb2_grpc.KitchenStub, channel: Channel) -> tuple[Any, ...]:
        call = stub.Chat()
        replies = []
        for i in range(3):
            await call.write(kitchen_pb2.Item(i=i))
            replies.append((await call.read()).i)  # each answer comes before the next request
        await call.write(kitchen_pb2.Item(i=3, tag="fail"))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call.read()
        with pytest.raises(grpc.aio.AioRpcError):
            await call.write(kitchen_pb2.Item(i=4))
        return replies, raised.value.code(), raised.value.details()

    assert with_kitchen(test) == ([0, 2, 4], grpc.StatusCode.ABORTED, "asked to fail at 3")


# A sync generator that is suspended at a yield when its call is cancelled is not resumed (nor
# is it under grpc.server), so whether Watch logs "inactive" is a race; its callback always runs.
@pytest.mark.parametrize(("method", "seen"), [("Watch", ["callback"]), ("AsyncWatch", ["task-cancelled", "callback"])])
def test_cancel_mid_stream_reaches_the_handler(method: str, seen: list[str], tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    events = tmp_path / "events"
    monkeypatch.setenv("KITCHEN_EVENTS", str(events))

    async def test(stub: kitchen_pb2_grpc.KitchenStub, channel: Channel) -> tuple[Any, ...]:
        call = getattr(stub, method)(kitchen_pb2.Count(tag="t1"))
        first = [(await call.read()).i for _ in range(3)]
        assert call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call.read()
        await _until(lambda: all(f"{what} t1" in _lines(events) for what in seen))
        return first, await call.code(), call.cancelled()

    assert with_kitchen(test) == ([0, 1, 2], grpc.StatusCode.CANCELLED, True)


def test_deadline_mid_stream() -> None:
    async def test(stub: kitchen_pb2_grpc.KitchenStub, channel: Channel) -> tuple[Any, ...]:
        began = time.monotonic()
        received = 0
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in stub.Watch(kitchen_pb2.Count(tag="d"), timeout=0.3):
                received += 1
        return raised.value.code(), received > 2, time.monotonic() - began < 2

    assert with_kitchen(test) == (grpc.StatusCode.DEADLINE_EXCEEDED, True, True)


def test_streaming_unknown_method_and_raw_bytes() -> None:
    async def test(stub: kitchen_pb2_grpc.KitchenStub, channel: Channel) -> tuple[Any, ...]:
        unknown = channel.unary_stream("/rpctest.v1.Kitchen/Nope")
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in unknown(b""):
                pass
        raw = channel.unary_stream("/rpctest.v1.Kitchen/CountUp")  # no (de)serializers: bytes pass through
        items = [kitchen_pb2.Item.FromString(data) async for data in raw(kitchen_pb2.Count(n=2).SerializeToString())]
        return raised.value.code(), raised.value.details(), [item.i for item in items]

    assert with_kitchen(test) == (grpc.StatusCode.UNIMPLEMENTED, "Method not found!", [0, 1])


def test_leaving_the_block_ends_running_calls() -> None:
    registry = ServiceRegistry(KITCHEN)
    started, ended = threading.Event(), threading.Event()

    @registry.method("Watch")
    def watch(request: kitchen_pb2.Count, context: Any) -> Iterator[kitchen_pb2.Item]:
        started.set()
        while context.is_active():
            time.sleep(0.005)
        ended.set()
        yield from ()

    async def run() -> grpc.StatusCode:
        async with serve_in_memory(registry) as channel:
            call = kitchen_pb2_grpc.KitchenStub(channel).Watch(kitchen_pb2.Count())
            assert await asyncio.to_thread(started.wait, 5)
        return await call.code()

    assert asyncio.run(run()) is grpc.StatusCode.CANCELLED  # closed with the channel, as in grpc.aio
    assert ended.wait(5), "the handler still runs"


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)
