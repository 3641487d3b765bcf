"""When a request counts as done in Kafka: the two delivery guarantees behind one interface.

    policy = AtLeastOnce(...) or ExactlyOnce(...)      # WorkerConfig.exactly_once chooses
    await policy.start(consumer, fetcher, handoff)
    future = await policy.produce(topic, value, key, headers)   # a reply, a dead letter...
    policy.reply_handed(correlation_id)                # a call's final reply went to the producer
    await policy.tick()                                # the consume loop's housekeeping
    offsets = await policy.revoke(partitions, lost)    # a rebalance takes partitions away
    await policy.drain(); ...; await policy.close()

`AtLeastOnce` commits each partition's offset, every COMMIT_INTERVAL, up to its first record
whose reply is not yet in Kafka (`handlers.offsets`): a crash runs again what came after.
`handlers.exactly_once.ExactlyOnce` puts replies and the offsets of the requests they answer in one
Kafka transaction; an aborted transaction rewinds every partition to what was committed and runs
everything since again, so a request has exactly one committed reply.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import grpc

from adapter.kafka import Consumer, Engine, Producer, Record
from adapter.kafka.handoff import Handoff, deliver
from handlers.calls import Calls
from handlers.fetcher import Fetcher
from handlers.inflight import InFlight
from handlers.offsets import OffsetTracker, Partition

log = logging.getLogger(__name__)

#: Seconds a rebalance waits for the running calls of partitions moving away.
REVOKE_GRACE = 5.0
#: Seconds between offset commits while consuming (revocation and shutdown commit at once).
COMMIT_INTERVAL = 0.2
#: Why the calls of a revoked partition end.
MOVED = "the call's partition moved to another handler process"

Headers = list[tuple[str, bytes]]


class CommitPolicy(Protocol):
    """What the consume loop asks of a delivery guarantee. Every method runs on the event loop,
    except those that say they run on the consumer thread."""

    #: Whether the consumer reads only committed records (replies of aborted transactions never are).
    read_committed: bool
    #: Whether a stream's messages must be in Kafka before its final reply is sent.
    settle_before_final: bool

    async def start(self, consumer: Consumer, fetcher: Fetcher[Any], handoff: Handoff) -> None:
        """Open the producer; `consumer` is used on `fetcher`'s thread only."""

    async def produce(self, topic: str, value: bytes, key: bytes | None, headers: Headers,
                      partition: int | None = None) -> asyncio.Future[None]:
        """Hand a record to the producer; the future ends when Kafka acknowledged it."""

    def produce_now(self, topic: str, value: bytes, key: bytes | None, headers: Headers, partition: int | None,
                    done: Callable[[Exception | None], None]) -> bool:
        """From any thread: hand a call's final reply to the producer at once, if this guarantee
        allows it (False: use `produce`); `done` runs on the event loop with Kafka's answer."""

    def reply_handed(self, correlation_id: bytes) -> None:
        """A call's final reply was just handed to the producer."""

    def polled(self, consumer: Consumer, records: list[Record]) -> dict[Partition, set[int]]:
        """On the consumer thread, after each poll: offsets of these records' partitions that
        their previous owner already answered."""

    def leaving(self, partitions: set[Partition]) -> None:
        """On the consumer thread, first thing in a revocation."""

    def batch_taken(self) -> None:
        """A poll's records were taken (some may be done without a reply: expired, cancelled)."""

    async def tick(self) -> None:
        """The consume loop's housekeeping, every few hundred milliseconds."""

    def reply_lost(self, where: str, error: BaseException) -> bool:
        """A call's reply failed for a reason not about its record; True if handled here."""

    async def revoke(self, partitions: set[Partition], lost: bool) -> dict[Partition, int] | None:
        """Settle the calls of `partitions`, which leave this process; the offsets to commit."""

    def commit_failed(self, partitions: list[Partition], reason: str) -> None:
        """On the consumer thread: an asynchronous offset commit failed."""

    async def drain(self) -> None:
        """Stopping, the calls finished: make what is done durable (the consumer is still open)."""

    async def close(self) -> None:
        """After the consumer closed: release the producer."""


class AtLeastOnce:
    """`CommitPolicy` with plain offset commits: a reply may be sent twice, never lost."""

    read_committed = False
    # A caller must never read OK after a message Kafka refused (the call's refusal path answers instead).
    settle_before_final = True

    def __init__(self, engine: Engine, tracker: OffsetTracker, calls: Calls, inflight: InFlight) -> None:
        self._engine = engine
        self._tracker = tracker
        self._calls = calls
        self._inflight = inflight
        self._producer: Producer | None = None
        self._consumer: Consumer | None = None
        self._fetcher: Fetcher[Any] | None = None
        self._handoff: Handoff | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._commit_due = 0.0

    async def start(self, consumer: Consumer, fetcher: Fetcher[Any], handoff: Handoff) -> None:
        self._consumer, self._fetcher, self._handoff = consumer, fetcher, handoff
        self._loop = asyncio.get_running_loop()
        self._producer = await asyncio.to_thread(self._engine.producer)

    async def produce(self, topic: str, value: bytes, key: bytes | None, headers: Headers,
                      partition: int | None = None) -> asyncio.Future[None]:
        assert self._producer is not None and self._handoff is not None
        return deliver(self._producer, self._handoff, topic, value, key, headers, partition)

    def produce_now(self, topic: str, value: bytes, key: bytes | None, headers: Headers, partition: int | None,
                    done: Callable[[Exception | None], None]) -> bool:
        producer, handoff = self._producer, self._handoff
        if producer is None or handoff is None:
            return False
        producer.produce(topic, value, key, headers, partition, lambda error: handoff.call(done, error))
        return True

    def reply_handed(self, correlation_id: bytes) -> None:
        pass  # its record is done once Kafka acknowledged the reply (the call's task ends then)

    def polled(self, consumer: Consumer, records: list[Record]) -> dict[Partition, set[int]]:
        return {}

    def leaving(self, partitions: set[Partition]) -> None:
        pass

    def batch_taken(self) -> None:
        pass

    async def tick(self) -> None:
        if time.monotonic() >= self._commit_due:
            # Committing after every batch costs the handler and the broker CPU for nothing: a
            # few hundred milliseconds late changes only what a crash redoes.
            self._commit_due = time.monotonic() + COMMIT_INTERVAL
            await self._commit(sync=False)

    def reply_lost(self, where: str, error: BaseException) -> bool:
        return False  # the call's refusal path tells the caller or dead-letters the request

    async def revoke(self, partitions: set[Partition], lost: bool) -> dict[Partition, int] | None:
        # Streams still open on these partitions end here, so the new owner starts after them
        # rather than replaying half a stream; unary calls get a moment to finish and reply,
        # so that the new owner does not run them again.
        await self._calls.abort(partitions, grpc.StatusCode.ABORTED, MOVED)
        await self._calls.finish(partitions, REVOKE_GRACE)
        await asyncio.sleep(0)  # let the done-callbacks mark their offsets
        offsets = self._tracker.committable(partitions)
        self._tracker.forget(partitions)
        return offsets

    def commit_failed(self, partitions: list[Partition], reason: str) -> None:
        log.warning("commit of %s failed (committed again next time): %s",
                    ", ".join(f"{t}/{p}" for t, p in sorted(partitions)), reason)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._tracker.uncommitted, partitions)

    async def drain(self) -> None:
        if self._producer is not None:
            await asyncio.to_thread(self._producer.flush, 10)
        await self._commit(sync=True)

    async def close(self) -> None:
        if self._producer is not None:
            await asyncio.to_thread(self._producer.close, 5)

    async def _commit(self, sync: bool) -> None:
        offsets = self._tracker.committable()
        if not offsets or self._consumer is None or self._fetcher is None:
            return
        try:
            await self._fetcher.call(self._consumer.commit, {tp: (o, "") for tp, o in offsets.items()}, not sync)
            self._tracker.committed(offsets)
        except Exception as exc:
            log.warning("commit failed (the records will be redelivered): %s", exc)
