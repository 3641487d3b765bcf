"""Which request topics handler processes consume now, as Kafka's consumer groups say.

The frontend asks Kafka every `interval` seconds (one group listing per broker, one
description per group coordinator) and answers from memory in between:

    watch = ConsumerWatch(transport.consumers, topics, grace=30.0)
    changed = await watch.refresh()   # at start, then every `watch.interval` seconds
    watch.groups("shop.mail")         # {"shop"}: consumed; set(): nobody; None: not known yet
    watch.abandoned("shop.mail")      # nobody for over `grace` seconds: fail calls at once

A topic is *abandoned* only on fresh knowledge, and only after `grace` seconds of looks that
all found it unconsumed: while Kafka cannot be asked, calls wait for their deadline as they
always did, and after an outage the grace starts again. The grace lets a handler restart or a rolling deploy
queue calls in Kafka instead of failing them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Collection

log = logging.getLogger(__name__)

#: Seconds between two looks at the consumer groups.
INTERVAL = 3.0
#: What answers "which groups consume these topics": `Transport.consumers` (None: cannot tell).
Lookup = Callable[[Collection[str]], Awaitable[dict[str, set[str]] | None]]


class ConsumerWatch:
    """What the last look at Kafka's consumer groups said about each request topic."""

    def __init__(self, lookup: Lookup, topics: Collection[str], grace: float, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lookup = lookup
        self._topics = sorted(set(topics))
        self.grace = grace
        self.interval = interval
        self._clock = clock
        self._groups: dict[str, set[str]] = {}
        started = clock()
        #: When each topic was last seen consumed (the watch's start stands for "just now").
        self._seen: dict[str, float] = dict.fromkeys(self._topics, started)
        #: When a look last succeeded.
        self._fresh_at: float | None = None

    def groups(self, topic: str) -> set[str] | None:
        """The groups consuming `topic` at the last look; None when nothing is known."""
        if not self.fresh():
            return None
        return self._groups.get(topic, set())

    def fresh(self) -> bool:
        """Whether a look succeeded within the last three intervals."""
        return self._fresh_at is not None and self._clock() - self._fresh_at <= 3 * self.interval

    def unconsumed_for(self, topic: str) -> float:
        """Seconds since `topic` was last seen consumed (or since the watch started); 0 if consumed."""
        if self._groups.get(topic):
            return 0.0
        return self._clock() - self._seen.get(topic, self._clock())

    def abandoned(self, topic: str) -> bool:
        """Whether calls to `topic` should fail at once: no consumer for over `grace` seconds, per
        a fresh look. Never with a grace of 0 (calls then always wait for their deadline)."""
        return self.grace > 0 and self.fresh() and self.unconsumed_for(topic) > self.grace

    async def refresh(self) -> list[str] | None:
        """Look once. Returns the topics that became consumed or unconsumed (all of them at the first
        look), or None if Kafka could not tell: what was known stays, and goes stale."""
        try:
            found = await self._lookup(self._topics)
        except Exception as exc:  # Kafka unreachable: the health watch says so; here, only stale
            log.debug("cannot list the consumers of the request topics: %s", exc)
            return None
        if found is None:
            return None
        now = self._clock()
        if not self.fresh():
            # Time in which nobody could look does not count: after a broker outage, handler
            # processes get the grace again to rejoin their groups.
            self._seen = dict.fromkeys(self._topics, now)
        changed = [t for t in self._topics if bool(found.get(t)) != bool(self._groups.get(t)) or self._fresh_at is None]
        for topic in self._topics:
            if found.get(topic):
                self._seen[topic] = now
        self._groups = {t: set(found.get(t, ())) for t in self._topics}
        self._fresh_at = now
        return changed
