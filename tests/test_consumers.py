"""ConsumerWatch: when a request topic counts as abandoned (fake clock, fake lookups)."""

from __future__ import annotations

import asyncio
from collections.abc import Collection

from adapter.frontend.consumers import ConsumerWatch


class Fake:
    """A clock and a consumer-group lookup the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0
        self.answer: dict[str, set[str]] | None = {}
        self.fail = False

    def clock(self) -> float:
        return self.now

    async def lookup(self, topics: Collection[str]) -> dict[str, set[str]] | None:
        if self.fail:
            raise OSError("broker unreachable")
        return None if self.answer is None else {t: self.answer.get(t, set()) for t in topics}


def watch(fake: Fake, grace: float = 30.0) -> ConsumerWatch:
    return ConsumerWatch(fake.lookup, ["a", "b"], grace, interval=3.0, clock=fake.clock)


def look(w: ConsumerWatch) -> list[str] | None:
    return asyncio.run(w.refresh())


def test_a_topic_nobody_consumes_is_abandoned_only_after_the_grace() -> None:
    fake = Fake()
    w = watch(fake)
    assert w.groups("a") is None and not w.abandoned("a")  # nothing known before the first look
    assert look(w) == ["a", "b"]  # the first look reports every topic
    assert w.groups("a") == set()
    for _ in range(10):  # 30 s of looks that find nobody: still within the grace
        fake.now += 3
        look(w)
    assert w.unconsumed_for("a") == 30 and not w.abandoned("a")
    fake.now += 3
    assert look(w) == []  # no change: still unconsumed
    assert w.abandoned("a") and w.abandoned("b")


def test_a_consumer_ends_abandonment_at_the_next_look() -> None:
    fake = Fake()
    w = watch(fake, grace=5)
    look(w)
    fake.now += 6
    look(w)
    assert w.abandoned("a")
    fake.answer = {"a": {"shop"}}
    fake.now += 3
    assert look(w) == ["a"]
    assert w.groups("a") == {"shop"} and not w.abandoned("a") and w.unconsumed_for("a") == 0
    assert w.abandoned("b")
    fake.answer = {}  # the handler stops: the grace starts from the last look that saw it
    fake.now += 3
    assert look(w) == ["a"]
    assert w.unconsumed_for("a") == 3 and not w.abandoned("a")


def test_nothing_is_abandoned_while_kafka_cannot_tell() -> None:
    fake = Fake()
    w = watch(fake, grace=5)
    look(w)
    fake.now += 6
    look(w)
    assert w.abandoned("a")
    fake.fail = True
    assert look(w) is None
    fake.now += 10  # the last good look is now stale
    assert look(w) is None
    assert w.groups("a") is None and not w.abandoned("a")
    # After the outage the grace starts again: the handlers may be rejoining their groups.
    fake.fail = False
    fake.now += 3
    look(w)
    assert w.groups("a") == set() and not w.abandoned("a")
    fake.now += 6
    look(w)
    assert w.abandoned("a")


def test_a_lookup_that_cannot_tell_never_fails_calls() -> None:
    fake = Fake()
    fake.answer = None  # e.g. the in-memory transport
    w = watch(fake, grace=1)
    for _ in range(5):
        fake.now += 3
        assert look(w) is None
    assert w.groups("a") is None and not w.abandoned("a")


def test_a_grace_of_zero_never_fails_calls() -> None:
    fake = Fake()
    w = watch(fake, grace=0)
    look(w)
    fake.now += 1000
    look(w)
    assert w.groups("a") == set() and not w.abandoned("a")
