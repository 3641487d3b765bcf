"""The exactly-once mode: replies and the offsets of the requests they answer, in one Kafka transaction.

    txn = Transactions(config, engine, consumer.group_metadata, tracker, metrics, handoff)
    await txn.start()
    future = await txn.send(topic, value, key, headers)       # into the open transaction, commits soon
    tracker.done(topic, partition, offset)                    # in the same step as the send
    txn.kick()                                                # commit soon: offsets changed
    if txn.failed:                                            # aborted: the caller rewinds, then
        txn.resume()

A send into an aborted transaction (until `resume`) raises `TransactionAborted`: the call it
belongs to runs again after the caller's rewind, so its reply must not reach the next
transaction. Nothing here waits for the rewind, so a rebalance callback that sends (the
ABORTED replies of moving streams) can never wait for the event loop's rewind, which waits
for the consumer thread the callback holds (#12.1).

A request's record is marked done in the step that hands its final reply to the producer, and
sends wait while a commit runs, so each commit covers exactly the replies it makes visible.
Commits run as soon as there is something to commit, one at a time: what arrives during one
commit goes into the next, so they batch themselves under load.
Offsets are committed as each partition's first record not yet done, with the records after it
that are done listed in the commit's metadata (`handlers.offsets.encode_done`): one slow call
holds back nothing but itself, and the next owner of the partition skips what was answered.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from adapter.errors import TransactionAborted, TransportError
from adapter.kafka import Engine, TransactionalProducer
from adapter.kafka.handoff import Handoff, deliver
from adapter.runtime.config import WorkerConfig
from adapter.runtime.metrics import HandlerMetrics
from handlers.fetcher import settle
from handlers.offsets import OffsetTracker, Partition, encode_done

__all__ = ["TransactionAborted", "Transactions"]

log = logging.getLogger(__name__)

#: Longest commit metadata we write: brokers refuse more than offset.metadata.max.bytes (4096 by default).
MAX_METADATA = 4000
#: Longest a transactional call may block before the producer counts as stuck and is replaced.
#: The engines give each call 30 s, but librdkafka's send_offsets_to_transaction does not always
#: keep its timeout when the group coordinator dies (librdkafka issues 5456 and 5511): a handler
#: stalled for good in the cluster fault tests.
STUCK_AFTER = 45.0
#: A commit or abort still blocked this long after the transaction's own timeout is stuck: the
#: broker has aborted that transaction by then, so waiting longer only delays the calls' rerun.
STUCK_PAST_TIMEOUT = 10.0


class _Lane:
    """One daemon thread that runs blocking calls in order. A call stuck for good can be left
    behind with its lane: daemon threads do not hold up the process's exit, as an executor's do."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[[], Any]] | None] = \
            queue.SimpleQueue()
        threading.Thread(target=self._run, name="transactions", daemon=True).start()

    def run(self, func: Callable[[], Any]) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queue.put((loop, future, func))
        return future

    def close(self) -> None:
        self._queue.put(None)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            loop, future, func = item
            try:
                result, error = func(), None
            except BaseException as exc:
                result, error = None, exc
            try:
                loop.call_soon_threadsafe(settle, future, result, error)
            except RuntimeError:  # the loop is closed
                return


class Transactions:
    """A transactional producer that always has a transaction open, committed on request."""

    def __init__(self, config: WorkerConfig, engine: Engine, group_metadata: Callable[[], Any], tracker: OffsetTracker,
                 metrics: HandlerMetrics, handoff: Handoff) -> None:
        self.config = config
        self._engine = engine
        self._handoff = handoff
        self.transactional_id = config.transactional_id or f"{config.group}-{socket.gethostname()}-{os.getpid()}"
        self._group_metadata = group_metadata
        self._tracker = tracker
        self._metrics = metrics
        self._producer: TransactionalProducer | None = None
        self._open = False  # sends may go into the open transaction (no commit runs, none failed)
        #: Set, and replaced, each time `_open` or `failed` changes: what waiting sends wake on.
        self._changed = asyncio.Event()
        self._lock = asyncio.Lock()
        self._dirty = False  # something was sent since the last commit
        self._committed: dict[Partition, tuple[int, str]] = {}
        self._closed = False
        #: A transaction was aborted: sends raise `TransactionAborted` until the caller rewinds and resumes.
        self.failed = False
        self._committer: asyncio.Task[None] | None = None
        self._abandoning: set[asyncio.Task[None]] = set()
        self._again = False
        self._held_logged = 0.0
        # One thread: the producer's transactional calls block, and must never run at once.
        self._lane = _Lane()

    async def start(self) -> None:
        """Create the producer, fence an earlier process with the same id, open a transaction."""
        self._producer = await self._blocking(self._new_producer)
        self._set_open(True)
        log.info("exactly-once mode: transactional id %s", self.transactional_id)

    @property
    def transaction_timeout(self) -> float:
        """Seconds Kafka lets a transaction stay open before it aborts it. A dead process's open
        transaction hides every later record of its reply partitions from read_committed readers
        until then: short, like the session timeout."""
        return max(self.config.session_timeout, 10.0)

    def _new_producer(self) -> TransactionalProducer:
        producer = self._engine.transactional_producer(self.transactional_id, self.transaction_timeout)
        try:
            producer.begin()
        except BaseException:
            producer.close(0)
            raise
        return producer

    async def send(self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]],
                   partition: int | None = None) -> asyncio.Future[None]:
        """Produce a record in the open transaction (waiting while a commit runs); the future ends
        when Kafka acknowledged the record (it counts once the transaction commits)."""
        # A sender woken when one commit ended may find the next one started: wait again.
        while not self._open:
            if self.failed:
                raise TransactionAborted("the transaction was aborted; the call runs again")
            await self._changed.wait()
        self._dirty = True
        assert self._producer is not None
        future = deliver(self._producer, self._handoff, topic, value, key, headers, partition)
        self.kick()
        return future

    def kick(self) -> None:
        """Commit soon: now, or again as soon as the running commit ends."""
        if self._committer is None or self._committer.done():
            self._committer = asyncio.get_running_loop().create_task(self._commit_soon())
        else:
            self._again = True

    async def _commit_soon(self) -> None:
        self._again = True
        while self._again and not self.failed:
            self._again = False
            await self.commit()

    def resume(self) -> None:
        """After an abort and the caller's rewind: let sends into the new transaction."""
        self.failed = False
        self._set_open(True)

    def _set_open(self, open_: bool) -> None:
        self._open = open_
        self._changed.set()
        self._changed = asyncio.Event()

    async def commit(self) -> bool:
        """Commit what was sent and the offsets done so far, then open the next transaction.

        False when the transaction had to be aborted: its replies are gone and the offsets were
        not committed, so the caller must run the uncommitted records again (`Worker._rewind`)."""
        async with self._lock:
            if self._closed:
                return True
            if self.failed:
                return False
            changed: dict[Partition, tuple[int, str]] = {}
            for tp, (position, done) in self._tracker.positions().items():
                entry = (position, encode_done(position, done))
                if self._committed.get(tp) != entry:
                    changed[tp] = entry
            if not self._dirty and not changed:
                return True
            if any(len(meta) > MAX_METADATA for _, meta in changed.values()):
                # Too many records done behind a slow one to name them all: wait for it.
                if time.monotonic() >= self._held_logged + 10:
                    self._held_logged = time.monotonic()
                    log.warning("a slow call holds back %d records; the transaction stays open until it ends",
                                sum(len(d) for _, d in self._tracker.positions().values()))
                return True
            self._open = False
            started = time.perf_counter()
            try:
                await self._blocking(self._commit, changed, limit=self._ending_limit)
            except Exception as exc:
                log.warning("transaction aborted, its calls will run again: %s: %s", type(exc).__name__, exc)
                self._metrics.transactions.labels("aborted").inc()
                try:
                    await self._abort()
                finally:
                    self._committed.clear()
                    # Only now, with a producer ready for the next transaction, may the caller
                    # rewind and resume; sends fail meanwhile (the finally below leaves them shut).
                    self.failed = True
                    self._set_open(False)  # waiting sends wake, and fail
                return False
            else:
                self._committed.update(changed)
                self._metrics.transactions.labels("committed").inc()
                self._metrics.transaction_seconds.observe(time.perf_counter() - started)
                return True
            finally:
                self._dirty = False
                if not self.failed:
                    self._set_open(True)

    def abandon_soon(self, why: str) -> None:
        """`abandon`, in a task of its own (kept here: nothing else may cancel it halfway)."""
        task = asyncio.get_running_loop().create_task(self.abandon(why))
        self._abandoning.add(task)
        task.add_done_callback(self._abandoning.discard)

    async def abandon(self, why: str) -> None:
        """Abort the open transaction because something sent into it was lost: like a failed
        commit, it sets `failed`, and the caller rewinds so that its calls run again."""
        async with self._lock:
            if self._closed or self.failed:
                return
            self._set_open(False)
            log.warning("transaction aborted, its calls will run again: %s", why)
            self._metrics.transactions.labels("aborted").inc()
            try:
                await self._abort()
            finally:
                self._committed.clear()
                self._dirty = False
                self.failed = True
                self._set_open(False)

    def _commit(self, changed: dict[Partition, tuple[int, str]]) -> None:
        assert self._producer is not None
        self._producer.commit(changed, self._group_metadata() if changed else None)
        self._producer.begin()

    async def _abort(self) -> None:
        try:
            if self._producer is None:  # left behind, stuck: a new one fences it
                raise TransportError("the transactional producer was stuck")
            await self._blocking(self._abort_and_begin, limit=self._ending_limit)
        except Exception as exc:
            # Fenced by a newer process with our id, or the producer is broken: start afresh.
            log.warning("transactional producer replaced after %s: %s", type(exc).__name__, exc)
            if "Fenced" in str(exc):
                log.error("another producer took transactional id %s: give each handler process its own "
                          "--transactional-id, or two of them keep fencing each other", self.transactional_id)
            old, self._producer = self._producer, None
            try:
                if old is not None:
                    await self._blocking(old.close, 0)
            except Exception as close_error:  # a fenced producer may refuse even this
                log.debug("closing the old transactional producer: %s", close_error)
            while self._producer is None:
                try:
                    self._producer = await self._blocking(self._new_producer)
                except Exception as retry:
                    log.warning("cannot start a transactional producer yet, retrying in 1s: %s", retry)
                    await asyncio.sleep(1.0)

    def _abort_and_begin(self) -> None:
        assert self._producer is not None
        self._producer.abort()
        self._producer.begin()

    def forget(self, partitions: set[Partition]) -> None:
        """Partitions now owned elsewhere: what we committed for them says nothing any more."""
        for tp in partitions:
            self._committed.pop(tp, None)

    async def close(self) -> None:
        """Commit what is left, then close the producer."""
        if self._producer is None:
            return
        if self._committer is not None:
            await asyncio.gather(self._committer, return_exceptions=True)
        await self.commit()
        self._closed = True
        await self._blocking(self._producer.close, 5)
        self._lane.close()

    @property
    def _ending_limit(self) -> float:
        return self.transaction_timeout + STUCK_PAST_TIMEOUT

    async def _blocking(self, func: Any, *args: Any, limit: float = STUCK_AFTER) -> Any:
        """`func(*args)` on the lane; a call still blocked after `limit` seconds leaves the lane
        and the producer behind (neither is used again) and raises TransportError."""
        future = self._lane.run(lambda: func(*args))
        try:
            return await asyncio.wait_for(asyncio.shield(future), limit)
        except TimeoutError:
            name = getattr(func, "__name__", repr(func))
            log.error("the transactional producer has not returned from %s for %gs (a Kafka client bug): leaving "
                      "it behind; a new producer fences it and the calls run again", name, limit)
            self._lane.close()
            self._lane = _Lane()
            self._producer = None
            raise TransportError(f"{name} did not return within {limit:g}s") from None
