"""From a decoded request to its reply: find the method, decode, run, encode. No Kafka here.

    dispatcher = Dispatcher(methods, concurrency=16)
    reply = await dispatcher.handle(request, peer="kafka:topic/0@42")
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from adapter import wire
from handlers.context import HandlerContext
from handlers.registry import Method

log = logging.getLogger(__name__)


class Dispatcher:
    """Runs handler functions, at most `concurrency` at once."""

    def __init__(self, methods: dict[str, Method], concurrency: int = 16) -> None:
        self.methods = methods
        self._slots = asyncio.Semaphore(concurrency)
        self._threads = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="handler")
        self.expired = 0

    async def handle(self, request: wire.Request, peer: str) -> wire.Reply | None:
        """The reply to `request`, or None when its deadline passed before it could start."""
        method = self.methods.get(request.method)
        if method is None:
            missing = request.method or "(no rpc-method header, and the topic carries several methods)"
            return _error(request, grpc.StatusCode.UNIMPLEMENTED, f"method {missing} is not served here")
        if method.client_streaming or method.server_streaming:
            return _error(request, grpc.StatusCode.UNIMPLEMENTED, "streaming methods are not carried over Kafka yet")
        try:
            message = method.request_deserializer(request.payload)
        except Exception as exc:
            return _error(request, grpc.StatusCode.INVALID_ARGUMENT, f"cannot decode request of {request.method}: {exc}")
        async with self._slots:
            remaining = request.time_remaining()
            if remaining is not None and remaining <= 0:
                self.expired += 1
                log.debug("skipped %s: deadline passed %.3fs ago", request.method, -remaining)
                return None
            context = HandlerContext(request, peer)
            reply = await self._run(method, message, context)
        context.run_callbacks()
        return reply

    async def _run(self, method: Method, message: Any, context: HandlerContext) -> wire.Reply:
        try:
            if inspect.iscoroutinefunction(method.func):
                result = await method.func(message, context)
            else:
                loop = asyncio.get_running_loop()
                result = await loop.run_in_executor(self._threads, method.func, message, context)
                if inspect.isawaitable(result):
                    result = await result
        except Exception as exc:
            if not context.aborted:
                log.warning("%s raised %s: %s", method.path, type(exc).__name__, exc)
            return context.reply(None, exc)
        if result is None:
            return context.reply(None)
        try:
            payload = method.response_serializer(result)
        except Exception as exc:
            context.set_code(grpc.StatusCode.INTERNAL)
            context.set_details(f"cannot serialize response: {exc}")
            return context.reply(None)
        return context.reply(payload)

    def close(self) -> None:
        self._threads.shutdown(wait=False, cancel_futures=True)


def _error(request: wire.Request, code: grpc.StatusCode, message: str) -> wire.Reply:
    return wire.Reply(correlation_id=request.correlation_id, code=code, message=message)
