"""The Kitchen servicer the tests run in real handler processes: a mix of def and async def."""

from __future__ import annotations

import asyncio
import os
import threading
import time

import grpc
from google.protobuf import any_pb2, empty_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from rpctest.v1 import kitchen_pb2, kitchen_pb2_grpc


class Kitchen(kitchen_pb2_grpc.KitchenServicer):
    def Echo(self, request, context):
        return request

    async def AsyncEcho(self, request, context):
        await asyncio.sleep(0)
        return request

    def Nothing(self, request, context):
        return empty_pb2.Empty()

    def Fail(self, request, context):
        code = _code(request.code)
        if request.mode == kitchen_pb2.FailRequest.ABORT:
            context.abort(code, request.message)
        if request.mode == kitchen_pb2.FailRequest.SET_CODE:
            context.set_code(code)
            context.set_details(request.message)
            return None
        if request.mode == kitchen_pb2.FailRequest.RICH:
            detail = any_pb2.Any()
            detail.Pack(error_details_pb2.BadRequest(field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field="message", description=request.message)
            ]))
            status = status_pb2.Status(code=code.value[0], message=request.message, details=[detail])
            context.abort_with_status(rpc_status.to_status(status))
        raise RuntimeError(request.message)

    async def Sleep(self, request, context):
        remaining = context.time_remaining()
        await asyncio.sleep(request.seconds)
        return kitchen_pb2.SleepReply(
            time_remaining=-1 if remaining is None else remaining, active_after=context.is_active()
        )

    def Meta(self, request, context):
        reply = kitchen_pb2.MetaReply()
        for key, value in context.invocation_metadata():
            if key.endswith("-bin"):
                reply.binary[key] = value
            else:
                reply.text[key] = value
        for name, values in context.auth_context().items():
            reply.text[f"auth:{name}"] = ",".join(v.decode(errors="replace") for v in values)
        if context.peer_identities():
            reply.text["auth:peer"] = ",".join(v.decode() for v in context.peer_identities())
        context.set_trailing_metadata((("x-handled-by", str(os.getpid())), ("x-trace-bin", b"\x00\xff\x10")))
        return reply

    def Whoami(self, request, context):
        time.sleep(0.005)
        return kitchen_pb2.WhoamiReply(pid=os.getpid(), peer=context.peer())

    def Keyed(self, request, context):
        return kitchen_pb2.WhoamiReply(pid=os.getpid(), peer=context.peer())

    def Once(self, request, context):
        _event(f"once {request.customer} {os.getpid()}")
        return kitchen_pb2.WhoamiReply(pid=os.getpid(), peer=context.peer())

    def Hang(self, request, context):
        _event("hanging")
        threading.Event().wait()  # a def handler stuck for good (a lost lock, a call with no timeout)

    def Grow(self, request, context):
        _event(f"grew {request.n} {os.getpid()}")
        return kitchen_pb2.Item(i=request.n, data=b"x" * request.size)

    def Tally(self, request, context):
        _event(f"ran {request.tag} {os.getpid()}")
        return kitchen_pb2.Item(i=os.getpid(), tag=request.tag)

    def KeyedCountUp(self, request, context):
        yield from self.CountUp(request, context)

    def CountUp(self, request, context):
        for i in range(request.n):
            if request.fail_at and i == request.fail_at:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"failed at {i}")
            if request.delay:
                time.sleep(request.delay)
            yield kitchen_pb2.Item(i=i, data=b"x" * request.size, tag=request.tag)
        context.set_trailing_metadata((("x-count", str(request.n)),))

    async def AsyncCountUp(self, request, context):
        for i in range(request.n):
            if request.fail_at and i == request.fail_at:
                await context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"failed at {i}")
            if request.delay:
                await asyncio.sleep(request.delay)
            yield kitchen_pb2.Item(i=i, data=b"x" * request.size)

    def Collect(self, request_iterator, context):
        summary = kitchen_pb2.Summary()
        for item in request_iterator:
            summary.count += 1
            summary.total_bytes += len(item.data)
            if len(summary.order) < 100:
                summary.order.append(item.i)
        return summary

    async def AsyncCollect(self, request_iterator, context):
        summary = kitchen_pb2.Summary()
        async for item in request_iterator:
            summary.count += 1
            summary.total_bytes += len(item.data)
            if len(summary.order) < 100:
                summary.order.append(item.i)
        return summary

    async def SlowCollect(self, request_iterator, context):
        # The request messages pile up in the handler meanwhile: for 10 s, or the seconds of a
        # "hold" metadata entry, or until the call ends (a limit ended it).
        hold = float(dict(context.invocation_metadata() or ()).get("hold", "10"))
        deadline = time.monotonic() + hold
        while context.is_active() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return await self.AsyncCollect(request_iterator, context)

    async def Chat(self, request_iterator, context):
        async for item in request_iterator:
            if item.tag == "fail":
                await context.abort(grpc.StatusCode.ABORTED, f"asked to fail at {item.i}")
            yield kitchen_pb2.Item(i=item.i * 2, data=item.data, tag="reply")

    def SyncChat(self, request_iterator, context):
        for item in request_iterator:
            yield kitchen_pb2.Item(i=item.i * 2, data=item.data, tag="reply")

    def Watch(self, request, context):
        context.add_callback(lambda: _event(f"callback {request.tag}"))
        i = 0
        try:
            while context.is_active():
                yield kitchen_pb2.Item(i=i, tag=f"{os.getpid()} {context.peer()}")
                i += 1
                time.sleep(request.delay or 0.02)
        finally:
            # Reached when is_active() turns false, or when the cancelled generator is closed.
            _event(f"inactive {request.tag}")

    async def AsyncWatch(self, request, context):
        context.add_callback(lambda: _event(f"callback {request.tag}"))
        i = 0
        try:
            while True:
                yield kitchen_pb2.Item(i=i, tag=f"{os.getpid()} {context.peer()}")
                i += 1
                await asyncio.sleep(request.delay or 0.02)
        except asyncio.CancelledError:
            _event(f"task-cancelled {request.tag}")
            raise


def _event(line: str) -> None:
    path = os.environ.get("KITCHEN_EVENTS")
    if path:
        with open(path, "a") as events:
            events.write(line + "\n")


def _code(number: int) -> grpc.StatusCode:
    for code in grpc.StatusCode:
        if code.value[0] == number:
            return code
    return grpc.StatusCode.UNKNOWN


assert code_pb2  # google.rpc.code is imported so its descriptors are in the pool for rich details
