"""Replies of recent calls by method and idempotency key, so a retried call is not run twice.

    replies = ReplyCache(window=300, max_entries=10_000)
    first = replies.get(key)             # a Future of the first call's reply, or None
    if first is None:
        replies.begin(key)
        ...
        replies.finish(key, reply)       # None: no reply to share (cancelled, expired)
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict

from adapter import wire

Key = tuple[str, bytes]


class ReplyCache:
    """Bounded in time and size; a call still running is shared too (its retry waits for it)."""

    def __init__(self, window: float, max_entries: int) -> None:
        self._window = window
        self._max = max_entries
        self._entries: OrderedDict[Key, tuple[float, asyncio.Future[wire.Reply | None]]] = OrderedDict()
        self.hits = 0

    def get(self, key: Key) -> asyncio.Future[wire.Reply | None] | None:
        self._expire()
        entry = self._entries.get(key)
        if entry is None:
            return None
        self.hits += 1
        return entry[1]

    def begin(self, key: Key) -> None:
        if self._max == 0 or self._window == 0:
            return
        self._entries[key] = (time.monotonic() + self._window, asyncio.get_running_loop().create_future())
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            _, (_, dropped) = self._entries.popitem(last=False)
            if not dropped.done():
                dropped.set_result(None)

    def finish(self, key: Key, reply: wire.Reply | None) -> None:
        entry = self._entries.get(key)
        if entry is None:
            return
        if reply is None:
            del self._entries[key]  # nothing to share: a retry runs the call again
        if not entry[1].done():
            entry[1].set_result(reply)

    def _expire(self) -> None:
        now = time.monotonic()
        while self._entries:
            key, (expires, future) = next(iter(self._entries.items()))
            if expires > now or not future.done():
                return
            del self._entries[key]
