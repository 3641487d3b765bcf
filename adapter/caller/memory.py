"""`MemoryTransport`: the `Transport` contract with no broker, for tests.

Each request record is handed to a ``serve`` coroutine function, as a Kafka consumer
would see it; what it returns, ``(headers, value)``, is the reply record, decoded
with `wire.decode_reply` like a real reply (None: no reply); `reply` delivers
more, e.g. the messages of a stream. ``handlers.testing``
builds on it; it can also stand in for a whole handler fleet::

    async def echo(topic, key, value, headers):
        request = wire.Request.decode(headers, value)
        reply = wire.Reply(request.correlation_id, payload=request.payload)
        return reply.encode_headers(), reply.payload

    requester = Requester(MemoryTransport(echo))
    await requester.start()
    reply = await requester.call("/pkg.Echo/Echo", b"hi", topic="pkg.Echo")
    assert reply.payload == b"hi"
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Collection

from adapter.caller.replies import OnPartitions, OnReplies
from adapter.caller.transport import OnError
from adapter.errors import MalformedRecord, TransportError
from adapter.protocol import wire

log = logging.getLogger(__name__)

ReplyRecord = tuple[list[tuple[str, bytes]], bytes]
Serve = Callable[[str, bytes | None, bytes, list[tuple[str, bytes]]], Awaitable[ReplyRecord | None]]


class MemoryTransport:
    """A `Transport` whose "broker" is one coroutine function, run once per record."""

    def __init__(self, serve: Serve, reply_topic: str = "memory.replies") -> None:
        self.reply_topic = reply_topic
        self._serve = serve
        self._on_replies: OnReplies | None = None
        self._on_partitions: OnPartitions | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        #: Records sent, and replies dropped because they did not follow the wire protocol.
        self.sent = 0
        self.malformed = 0

    async def start(self, on_replies: OnReplies, on_partitions: OnPartitions) -> None:
        self._on_replies, self._on_partitions = on_replies, on_partitions
        on_partitions(frozenset({0}))

    def assign(self, partitions: frozenset[int]) -> None:
        """Pretend a rebalance gave this instance `partitions` of the reply topic."""
        assert self._on_partitions is not None, "transport is not started"
        self._on_partitions(partitions)

    def send(self, topic: str, key: bytes | None, value: bytes, headers: wire.Headers, on_error: OnError,
             on_ack: Callable[[], None] | None = None) -> None:
        if self._on_replies is None:
            raise TransportError("transport is not started")
        if on_ack is not None:
            on_ack()
        task = asyncio.get_running_loop().create_task(self._deliver(topic, key, value, list(headers), on_error))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.sent += 1

    async def _deliver(
        self, topic: str, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]], on_error: OnError
    ) -> None:
        try:
            record = await self._serve(topic, key, value, headers)
        except Exception as exc:
            # A failing `serve` plays a broker refusing the record: the call fails fast.
            on_error(exc if isinstance(exc, TransportError) else TransportError(f"serving {topic}: {exc!r}"))
            return
        if record is not None:
            self.reply(*record)

    def reply(self, headers: wire.Headers, value: bytes | None) -> None:
        """Deliver one reply record (a final reply or a stream message) to the requester."""
        if self._on_replies is None:
            return
        try:
            reply = wire.decode_reply(headers, value)
        except MalformedRecord as exc:
            self.malformed += 1
            log.warning("dropped malformed reply: %s", exc)
            return
        self._on_replies([reply])

    async def healthy(self) -> bool:
        return self._on_replies is not None

    async def consumers(self, topics: Collection[str]) -> dict[str, set[str]] | None:
        return None  # one coroutine serves every topic: there are no groups to tell of

    async def stop(self) -> None:
        """Stop serving: requests still being served get no reply."""
        self._on_replies = None
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
