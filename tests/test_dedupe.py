"""handlers.dedupe: a key names one request, and the cache stays within its bounds (#12.11)."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from adapter.protocol import wire
from handlers.dedupe import KeyReused, ReplyCache, request_digest


def _request(payload: bytes, method: str = "/s.S/M") -> wire.Request:
    return wire.Request(method, b"c", "replies", payload=payload, idempotency_key=b"k")


def test_the_same_key_with_another_request_is_refused() -> None:
    async def run() -> None:
        cache = ReplyCache(60, 100)
        key = ("", "/s.S/M", b"k")
        cache.begin(key, request_digest(_request(b"one")))
        reply = wire.Reply(b"c", code=grpc.StatusCode.OK, payload=b"first")
        cache.finish(key, reply)
        first = cache.get(key, request_digest(_request(b"one")))
        assert first is not None and await first == reply
        with pytest.raises(KeyReused):
            cache.get(key, request_digest(_request(b"two")))
        # Scoped: the same key of another caller is another entry.
        assert cache.get(("someone else", "/s.S/M", b"k"), request_digest(_request(b"two"))) is None

    asyncio.run(run())


def test_the_digest_tells_methods_and_messages_apart() -> None:
    assert request_digest(_request(b"a")) == request_digest(_request(b"a"))
    assert request_digest(_request(b"a")) != request_digest(_request(b"b"))
    assert request_digest(_request(b"a", "/s.S/M")) != request_digest(_request(b"a", "/s.S/N"))


def test_replies_are_bounded_by_bytes_as_well_as_entries() -> None:
    async def run() -> None:
        cache = ReplyCache(60, 1000, max_bytes=10_000)
        for i in range(100):
            key = ("", "/s.S/M", str(i).encode())
            cache.begin(key, b"d")
            cache.finish(key, wire.Reply(b"c", code=grpc.StatusCode.OK, payload=b"x" * 1000))
        assert cache.bytes <= 10_000
        assert 0 < len(cache) < 10
        assert cache.get(("", "/s.S/M", b"99"), b"d") is not None  # the newest stay
        assert cache.get(("", "/s.S/M", b"0"), b"d") is None
        cache = ReplyCache(60, 5)
        for i in range(20):
            cache.begin(("", "/s.S/M", str(i).encode()), b"d")
        assert len(cache) == 5

    asyncio.run(run())


def test_an_entry_evicted_while_its_call_runs_lets_a_waiting_retry_run() -> None:
    async def run() -> None:
        cache = ReplyCache(60, 1)
        cache.begin(("", "/s.S/M", b"a"), b"d")
        waiting = cache.get(("", "/s.S/M", b"a"), b"d")
        assert waiting is not None and not waiting.done()
        cache.begin(("", "/s.S/M", b"b"), b"d")  # evicts a
        assert await waiting is None

    asyncio.run(run())
