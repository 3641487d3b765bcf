"""Backpressure for a handler process: stop fetching while too many records wait for their reply.

    flow = FlowControl(config, tracker, calls)
    flow.attach(fetcher, consumer)      # once the consumer exists
    flow.check()                        # after each batch, each call's end, each housekeeping tick

First the consumer's thread just stops polling: the client keeps what it prefetched (bounded),
and fetching goes on the moment there is room. Pausing the partitions would make librdkafka
drop its prefetched records and fetch them again late (about 1 s after a resume, measured), so
they are paused only when the process stays full longer than HOLD_BEFORE_PAUSE, and polling
goes on: a consumer that does not poll for max.poll.interval.ms (5 min) is put out of its group.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from adapter.kafka import Consumer
from adapter.runtime.config import WorkerConfig
from handlers.calls import Calls
from handlers.fetcher import Fetcher
from handlers.offsets import OffsetTracker

log = logging.getLogger(__name__)

#: While client streams wait for their request messages, fetching goes on up to this many times
#: --max-pending records held (the messages sit behind other records in the same partitions).
STREAMING_HOLD = 4
#: Seconds a full process holds its polls before it pauses its partitions (and polls on).
HOLD_BEFORE_PAUSE = 30.0


class FlowControl:
    """Whether the consumer's thread polls, and whether its partitions are paused."""

    def __init__(self, config: WorkerConfig, tracker: OffsetTracker, calls: Calls) -> None:
        self._config = config
        self._tracker = tracker
        self._calls = calls
        self._fetcher: Fetcher[Any] | None = None
        self._consumer: Consumer | None = None
        self._paused = False
        #: Since when too many records wait for their reply (None: there is room).
        self._full_since: float | None = None
        #: Set by a drain: nothing is fetched any more, whatever the room.
        self.stopped = False

    def attach(self, fetcher: Fetcher[Any], consumer: Consumer) -> None:
        self._fetcher, self._consumer = fetcher, consumer

    @property
    def full(self) -> bool:
        """Whether fetching is held for lack of room (a call's end may make some)."""
        return self._full_since is not None

    def check(self) -> None:
        """Hold or resume fetching for the records held now."""
        fetcher, consumer = self._fetcher, self._consumer
        if fetcher is None or consumer is None or self.stopped:
            return
        # A client stream still reading waits for records behind it in the same partitions, and may
        # hold a concurrency slot meanwhile: stopping the fetches then stalls the process until
        # deadlines (#12.8). So streams still reading do not count, and while there are any,
        # fetching goes on up to STREAMING_HOLD x max_pending records held.
        pending, reading = self._tracker.pending, self._calls.reading
        max_pending = self._config.max_pending
        full = pending - reading >= max_pending and (reading == 0 or pending >= STREAMING_HOLD * max_pending)
        if full and reading and self._full_since is None:
            log.warning("fetching stops with %d records held, %d of them client streams still reading: their "
                        "request messages wait until calls end (raise --concurrency or --max-pending)",
                        pending, reading)
        since = self._full_since
        if full and since is None:
            self._full_since = time.monotonic()
            fetcher.set_polling(False)
        elif full and since is not None and not self._paused and time.monotonic() - since > HOLD_BEFORE_PAUSE:
            self._paused = True
            fetcher.post(lambda: consumer.pause(consumer.assignment()))
            fetcher.set_polling(True)
        elif not full and self._full_since is not None:
            self._full_since = None
            if self._paused:
                self._paused = False
                fetcher.post(lambda: consumer.resume(consumer.assignment()))
            fetcher.set_polling(True)
