"""Replies of recent calls by method and idempotency key, so a retried call is not run twice.

    replies = ReplyCache(window=300, max_entries=10_000, max_bytes=64 << 20)
    first = replies.get(key, digest)     # a Future of the first call's reply, or None
    if first is None:
        replies.begin(key, digest)
        ...
        replies.finish(key, reply)       # None: no reply to share (cancelled, expired)

A key names one request: `digest` is the request's (`request_digest`), and the same key with
another request raises `KeyReused`, as payment APIs answer a reused key. Without that, anyone
who learnt a key would be handed the first caller's reply by naming it with any request.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict

from adapter.protocol import wire

#: (caller identity or "", method, idempotency key)
Key = tuple[str, str, bytes]


class KeyReused(Exception):
    """The idempotency key was used before with a different request."""


def request_digest(request: wire.Request) -> bytes:
    """What makes two requests the same call: the method and the request message."""
    return hashlib.sha256(request.method.encode() + b"\0" + request.payload).digest()


def _size(reply: wire.Reply) -> int:
    return len(reply.payload) + len(reply.message) + sum(len(k) + len(v) for k, v in reply.trailing_metadata) + 256


class ReplyCache:
    """Bounded in time, entries and bytes; a call still running is shared too (its retry waits for it)."""

    def __init__(self, window: float, max_entries: int, max_bytes: int = 64 * 1024 * 1024) -> None:
        self._window = window
        self._max = max_entries
        self._max_bytes = max_bytes
        self._entries: OrderedDict[Key, tuple[float, bytes, asyncio.Future[wire.Reply | None]]] = OrderedDict()
        self._sizes: dict[Key, int] = {}
        self.bytes = 0
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Key, digest: bytes) -> asyncio.Future[wire.Reply | None] | None:
        """The first call's reply (a future while it runs), None if there is none; raises
        `KeyReused` when the key came with another request."""
        self._expire()
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] != digest:
            raise KeyReused("idempotency key reused with a different request")
        self.hits += 1
        return entry[2]

    def begin(self, key: Key, digest: bytes) -> None:
        if self._max == 0 or self._window == 0:
            return
        self._entries[key] = (time.monotonic() + self._window, digest, asyncio.get_running_loop().create_future())
        self._entries.move_to_end(key)
        self._evict()

    def finish(self, key: Key, reply: wire.Reply | None) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        if reply is None:
            self._drop(key)  # nothing to share: a retry runs the call again
        else:
            size = _size(reply)
            self._sizes[key] = size
            self.bytes += size
            self._evict()
        if not entry[2].done():
            entry[2].set_result(reply)

    def _evict(self) -> None:
        while self._entries and (len(self._entries) > self._max or self.bytes > self._max_bytes):
            self._drop(next(iter(self._entries)))

    def _drop(self, key: Key) -> None:
        _, _, future = self._entries.pop(key)
        self.bytes -= self._sizes.pop(key, 0)
        if not future.done():
            future.set_result(None)  # a retry waiting for it runs the call itself

    def _expire(self) -> None:
        now = time.monotonic()
        while self._entries:
            key, (expires, _, future) = next(iter(self._entries.items()))
            if expires > now or not future.done():
                return
            self._drop(key)
