"""The test kit (handlers.testing): generated stubs call handlers through the real request path."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
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


def test_cancel_and_streaming_calls() -> None:
    async def test(stub: kitchen_pb2_grpc.KitchenStub, channel: Channel) -> tuple[Any, ...]:
        call = stub.Sleep(kitchen_pb2.SleepRequest(seconds=5))
        await asyncio.sleep(0.01)
        assert call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert call.cancelled() and call.done()
        streaming = channel.unary_stream("/rpctest.v1.Kitchen/Watch", request_serializer=None,
                                         response_deserializer=None, _registered_method=True)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await streaming(empty_pb2.Empty())
        return await call.code(), raised.value.code(), raised.value.details()

    assert with_kitchen(test) == (
        grpc.StatusCode.CANCELLED, grpc.StatusCode.UNIMPLEMENTED, "streaming methods are not carried over Kafka yet"
    )
