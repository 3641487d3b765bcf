"""The exactly-once commit policy: replies and the offsets of the requests they answer commit together.

A request's offset is done in the step that hands its final reply to the transactional producer
(`handlers.transactions`), so the commit that makes the reply visible also commits the offset. A
new owner of a partition skips the records its previous owner answered, from the commit metadata.
An aborted transaction took replies with it: every call stops, every partition goes back to its
committed offset, and everything since runs again (`ExactlyOnce._rewind`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import grpc

from adapter.errors import RecordRefused, TransportError
from adapter.kafka import Consumer, Engine, Record
from adapter.kafka.handoff import Handoff
from adapter.runtime.config import WorkerConfig
from adapter.runtime.metrics import HandlerMetrics
from handlers.calls import Calls
from handlers.commits import MOVED, REVOKE_GRACE, Headers
from handlers.fetcher import Fetcher
from handlers.inflight import InFlight
from handlers.offsets import OffsetTracker, Partition, decode_done
from handlers.transactions import Transactions

log = logging.getLogger(__name__)


class ExactlyOnce:
    """`CommitPolicy` with Kafka transactions: each request has exactly one committed reply."""

    read_committed = True
    # A refused message aborts the transaction its stream's end is in: no need to wait for it.
    settle_before_final = False

    def __init__(self, config: WorkerConfig, engine: Engine, tracker: OffsetTracker, calls: Calls,
                 inflight: InFlight, metrics: HandlerMetrics) -> None:
        self._config = config
        self._engine = engine
        self._tracker = tracker
        self._calls = calls
        self._inflight = inflight
        self._metrics = metrics
        self._consumer: Consumer | None = None
        self._fetcher: Fetcher[Any] | None = None
        self.txn: Transactions | None = None
        #: The consumer's group metadata (KIP-447), as of its last poll.
        self._group_metadata: Any = None
        #: Partitions whose commit metadata was read, on the consumer thread.
        self._loaded: set[Partition] = set()

    async def start(self, consumer: Consumer, fetcher: Fetcher[Any], handoff: Handoff) -> None:
        self._consumer, self._fetcher = consumer, fetcher
        self.txn = Transactions(self._config, self._engine, lambda: self._group_metadata, self._tracker,
                                self._metrics, handoff)
        await self.txn.start()
        # Refreshed after every poll; a commit with offsets needs records, so a poll came first.
        self._group_metadata = await fetcher.call(consumer.group_metadata)

    async def produce(self, topic: str, value: bytes, key: bytes | None, headers: Headers,
                      partition: int | None = None) -> asyncio.Future[None]:
        assert self.txn is not None
        return await self.txn.send(topic, value, key, headers, partition)

    def produce_now(self, topic: str, value: bytes, key: bytes | None, headers: Headers, partition: int | None,
                    done: Callable[[Exception | None], None]) -> bool:
        return False  # a reply joins the open transaction, which the event loop manages

    def reply_handed(self, correlation_id: bytes) -> None:
        # In the same step as the send: the commit that makes this reply visible also commits its
        # request's offset.
        origin = self._inflight.origins.pop(correlation_id, None)
        if origin is not None:
            self._tracker.done(*origin)

    def polled(self, consumer: Consumer, records: list[Record]) -> dict[Partition, set[int]]:
        # Read here, on the consumer's thread, for the transactions' thread: a consumer call from
        # another thread waits for the poll in progress (confluent-kafka 2.16).
        self._group_metadata = consumer.group_metadata()
        done_before: dict[Partition, set[int]] = {}
        new = sorted({(r.topic, r.partition) for r in records} - self._loaded)
        if new:
            for tp, committed in consumer.committed(new).items():
                if committed is not None:
                    done_before[tp] = decode_done(*committed)
            self._loaded.update(new)
        return done_before

    def leaving(self, partitions: set[Partition]) -> None:
        self._loaded -= partitions

    def batch_taken(self) -> None:
        assert self.txn is not None
        self.txn.kick()  # records done without a reply (expired, cancelled) move offsets too

    async def tick(self) -> None:
        assert self.txn is not None
        if self.txn.failed:
            # A transaction was aborted: everything since the last commit runs again.
            await self._rewind()
            self.txn.resume()

    def reply_lost(self, where: str, error: BaseException) -> bool:
        if isinstance(error, RecordRefused):
            return False  # about this record: the call's refusal path dead-letters it
        # Not about this record (a fenced or broken producer...): the transaction has lost a reply,
        # so it is aborted, and the call runs again after the rewind.
        assert self.txn is not None
        self.txn.abandon_soon(f"a reply of {where} was lost: {error}")
        return True

    async def revoke(self, partitions: set[Partition], lost: bool) -> dict[Partition, int] | None:
        txn = self.txn
        assert txn is not None
        if lost:
            # Another process may own them already and have answered their calls: nothing of
            # theirs may be sent or committed from here. An ABORTED reply to a stream would be a
            # second committed reply to its request (the chaos soak found 22), and their
            # offsets would overwrite the new owner's. Replies of theirs may sit in the open
            # transaction: it is aborted, and the rewind runs the other partitions' calls again.
            self._inflight.dropped.update(self._calls.running_in(partitions))
            await self._calls.drop(partitions, MOVED)
            self._tracker.forget(partitions)
            txn.forget(partitions)
            await txn.abandon(f"partitions lost with the group session: "
                              f"{', '.join(f'{t}/{p}' for t, p in sorted(partitions))}")
            return None
        if not txn.failed:
            # (A transaction that aborts meanwhile makes these sends fail at once, never wait.)
            await self._calls.abort(partitions, grpc.StatusCode.ABORTED, MOVED)
            await self._calls.finish(partitions, REVOKE_GRACE)
        # What is still running cannot reply any more: a later transaction would commit its reply
        # without its offset, while the partition's next owner runs it again (#12.2).
        dropped = self._calls.running_in(partitions)
        self._inflight.dropped.update(dropped)  # before their done-callbacks run
        await self._calls.drop(partitions, MOVED)
        if dropped:
            log.info("%d calls of the revoked partitions stopped without a reply; their next owner runs them",
                     len(dropped))
        await asyncio.sleep(0)
        # If this fails, nothing of these partitions was committed: their next owner runs them
        # again, and the loop's rewind stops the calls still running here.
        await txn.commit()
        self._tracker.forget(partitions)
        txn.forget(partitions)
        return None  # the transaction committed their offsets

    def commit_failed(self, partitions: list[Partition], reason: str) -> None:
        pass  # offsets are committed in transactions, never by the consumer

    async def drain(self) -> None:
        if self.txn is not None:
            await self.txn.close()

    async def close(self) -> None:
        pass  # the transactions closed their producer in `drain`

    async def _rewind(self) -> None:
        """After an aborted transaction: stop every call and fetch again from the committed offsets.

        The aborted transaction took replies with it whose records count as done here; running
        those again needs a position before them, and calls still running would then be
        started twice, so everything starts again from what Kafka committed."""
        inflight = self._inflight
        inflight.generation += 1  # batches already fetched are dropped: they are fetched again
        log.info("running again the %d calls in progress and what the aborted transaction answered",
                 len(inflight.tasks))
        for correlation_id in list(inflight.origins):
            self._calls.cancel(correlation_id, "its transaction was aborted; it runs again", grpc.StatusCode.ABORTED)
        for task in list(inflight.tasks):
            task.cancel()
        await asyncio.gather(*inflight.tasks, return_exceptions=True)
        self._tracker.forget()
        inflight.forget_calls()
        assert self._fetcher is not None
        while True:
            try:
                await self._fetcher.call(self._seek_committed, inflight.generation)
                return
            except TransportError as exc:  # the group's coordinator is moving (a broker failover): ask again
                log.warning("reading the committed offsets to run again from failed, retrying in 1s: %s", exc)
                await asyncio.sleep(1.0)

    def _seek_committed(self, generation: int) -> None:
        """On the consumer thread: every assigned partition back to its committed offset."""
        consumer, fetcher, txn = self._consumer, self._fetcher, self.txn
        assert consumer is not None and fetcher is not None and txn is not None
        txn.forget(set(self._loaded))
        for tp, committed in consumer.committed(consumer.assignment()).items():
            consumer.seek(tp, None if committed is None else committed[0])
            log.debug("rewound %s/%d to %s", tp[0], tp[1], committed)
        self._loaded.clear()
        fetcher.generation = generation  # what is fetched from here on counts again
