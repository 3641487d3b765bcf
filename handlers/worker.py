"""A handler process's Kafka side: consume requests in a group, dispatch, reply, commit.

    worker = Worker(config, methods, routes)
    await worker.run(stop_event)

Delivery is at least once: a record's offset is committed only after its reply has
been produced and every earlier record of its partition has been replied to
(`handlers.offsets`). With `exactly_once`, replies and offsets are committed together in
Kafka transactions instead (`handlers.transactions`). The consumer lives on one thread of its own
(`handlers.fetcher`: Kafka consumers are not thread-safe); rebalance callbacks run on that thread
(confluent) or on kafka-python's I/O thread, never on the event loop; handlers run on the event
loop or a thread pool (docs/internals.md).

Backpressure is `handlers.flow`; what answers a record instead of its reply (rejections, refused
replies, dead letters) is `handlers.answers`. Still longer than a module should be (about 480
lines): the consume loop, the two commit policies and the rebalance callbacks share the state of
the calls in progress (their records, windows and generations), and splitting them behind one
commit-policy interface is the next step of the layout issue (#14).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from typing import Any

import grpc

from adapter.errors import MalformedRecord, RecordRefused, TransactionAborted, TransportError
from adapter.kafka import Consumer, Offsets, Producer, Record, open_engine
from adapter.kafka.handoff import Handoff, deliver
from adapter.protocol import wire
from adapter.protocol.routing import Route
from adapter.runtime.config import WorkerConfig
from adapter.runtime.logs import record_fields
from adapter.runtime.metrics import HandlerMetrics
from handlers.answers import Answers
from handlers.calls import Calls
from handlers.dedupe import ReplyCache
from handlers.dispatcher import Dispatcher
from handlers.fetcher import Fetcher
from handlers.flow import FlowControl
from handlers.offsets import OffsetTracker, Partition, decode_done
from handlers.registry import Method
from handlers.transactions import Transactions

log = logging.getLogger(__name__)

#: Stream messages produced before waiting for Kafka's acknowledgements.
STREAM_WINDOW = 64
#: Seconds a rebalance waits for the running calls of partitions moving away.
REVOKE_GRACE = 5.0
#: Seconds between offset commits while consuming (revocation and shutdown commit at once).
COMMIT_INTERVAL = 0.2
#: Seconds between the event loop's checks of commits, flow control and aborted transactions.
HOUSEKEEPING = 0.1
#: Seconds between samples of the consumer lag, for the metrics.
LAG_INTERVAL = 2.0


class Worker:
    """Serves `methods` from their request topics until stopped."""

    def __init__(self, config: WorkerConfig, methods: dict[str, Method], routes: dict[str, Route],
                 metrics: HandlerMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics if metrics is not None else HandlerMetrics()
        self.topics = sorted({routes[path].topic for path in methods if path in routes})
        # A requester that knows only Spring's headers sends no rpc-method: on a topic that
        # carries a single method, that method is meant.
        by_topic: dict[str, list[str]] = {}
        for path in methods:
            if path in routes:
                by_topic.setdefault(routes[path].topic, []).append(path)
        self._sole_method = {topic: paths[0] for topic, paths in by_topic.items() if len(paths) == 1}
        self.dispatcher = Dispatcher(methods, config.concurrency, self.metrics)
        self.calls = Calls(self.dispatcher, self._send,
                           replies=ReplyCache(config.dedupe_window, config.dedupe_entries, config.dedupe_bytes),
                           metrics=self.metrics,
                           max_reading=config.max_client_streams or 4 * config.max_pending)
        self._windows: dict[bytes, list[asyncio.Future[None]]] = {}
        self.tracker = OffsetTracker()
        self.txn: Transactions | None = None
        #: Where each running call's opening record is, to mark it done when its reply is sent.
        self._origins: dict[bytes, tuple[str, int, int, int]] = {}
        #: Calls ended without their reply because their partition moved (exactly-once): not done here.
        self._dropped: set[bytes] = set()
        #: Partitions whose commit metadata was read (exactly-once mode), on the consumer thread.
        self._loaded: set[Partition] = set()
        self.replied = 0
        self._tasks: set[asyncio.Future[None]] = set()
        self._fetcher: Fetcher[tuple[list[Record], dict[Partition, set[int]]]] | None = None
        #: Batches fetched before the last rewind carry an older generation: they are dropped.
        self._generation = 0
        #: Partitions this process owns, as the event loop has learnt (records of others are dropped).
        self._owned: set[Partition] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handoff: Handoff | None = None
        self._engine = open_engine(config.kafka)
        self._consumer: Consumer | None = None
        self._producer: Producer | None = None
        self.answers = Answers(config, self.metrics, self.tracker, self._produce)
        self.flow = FlowControl(config, self.tracker, self.calls)
        self._group_metadata: Any = None
        self._commit_due = 0.0
        self._lag_due = 0.0

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Consume until `stop` is set, then drain: finish, reply, commit, leave the group."""
        self._loop = asyncio.get_running_loop()
        self._handoff = Handoff(self._loop)
        self._fetcher = Fetcher(self._loop, self._poll, self._on_batch)
        self._fetcher.start()
        kafka = self.config.kafka
        topics = {t: kafka.topic_partitions for t in [*self.topics, self.config.dead_letter_topic]}
        admin = await asyncio.to_thread(self._engine.admin)
        try:
            await asyncio.to_thread(admin.ensure_topics, topics)
        finally:
            admin.close()
        self._consumer = await self._on_kafka_thread(
            self._engine.consumer, self.config.group, from_end=False, read_committed=self.config.exactly_once,
            session_timeout=self.config.session_timeout, max_records=self.config.max_pending,
            protocol=self.config.protocol, on_commit_failed=self._commit_failed)
        if self.config.exactly_once:
            self.txn = Transactions(self.config, self._engine, lambda: self._group_metadata, self.tracker,
                                    self.metrics, self._handoff)
            await self.txn.start()
        else:
            self._producer = await asyncio.to_thread(self._engine.producer)
        self.flow.attach(self._fetcher, self._consumer)
        await self._on_kafka_thread(self._consumer.subscribe, self.topics, self._assigned, self._revoked)
        if self.config.exactly_once:
            self._group_metadata = await self._on_kafka_thread(self._consumer.group_metadata)
        log.info("consuming %s in group %s", ", ".join(self.topics), self.config.group)
        if ready is not None:
            ready.set()
        self._fetcher.set_polling(True)
        try:
            while not stop.is_set():
                # Records arrive through _on_batch; this loop only keeps house.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), HOUSEKEEPING)
                if self.txn is not None and self.txn.failed:
                    # A transaction was aborted: everything since the last commit runs again.
                    await self._rewind()
                    self.txn.resume()
                    continue
                self.flow.check()
                if self.txn is None and time.monotonic() >= self._commit_due:
                    # Committing after every batch costs the handler and the broker CPU for
                    # nothing: a few hundred milliseconds late changes only what a crash redoes.
                    self._commit_due = time.monotonic() + COMMIT_INTERVAL
                    await self._commit(sync=False)
        finally:
            await self._drain()

    def _on_batch(self, batch: tuple[list[Record], dict[Partition, set[int]]], generation: int) -> None:
        """On the event loop: one poll's records, in poll order."""
        if generation != self._generation:
            return  # fetched before a rewind: fetched again after it
        records, done_before = batch
        for (topic, partition), offsets in done_before.items():
            self.tracker.skip(topic, partition, offsets)
        for record in records:
            if (record.topic, record.partition) not in self._owned:
                continue  # revoked since it was fetched: its new owner reads it
            self.tracker.add(record.topic, record.partition, record.offset)
            if not self.tracker.skipped(record.topic, record.partition, record.offset):
                self._accept(record)
        self.flow.check()
        if self.txn is not None:
            self.txn.kick()  # records done without a reply (expired, cancelled) move offsets too

    def _accept(self, record: Record) -> None:
        # Runs in poll order, synchronously: a stream's frames reach its call in order.
        where = f"{record.topic}/{record.partition}@{record.offset}"
        try:
            decoded = wire.decode_request(record.headers, record.value)
        except MalformedRecord as exc:
            self._reject(record, where, f"malformed request: {exc}", "malformed")
            return
        if isinstance(decoded, wire.Request):
            if decoded.reply_topic is not None and not self.answers.reply_allowed(decoded.reply_topic):
                self._reject(record, where, f"reply topic {decoded.reply_topic!r} is not allowed", "reply_topic")
                return
            refused = self.answers.refused_before(decoded.correlation_id)
            if refused is not None:
                # It ran, and its reply failed the transaction: running it again would fail the next one.
                self._reject(record, where, refused, "reply_refused")
                return
            if not decoded.method and record.topic in self._sole_method:
                decoded = dataclasses.replace(decoded, method=self._sole_method[record.topic])
        task = self.calls.accept(decoded, peer=f"kafka:{where}", partition=(record.topic, record.partition),
                                 key=record.key)
        if task is None:
            self.tracker.done(record.topic, record.partition, record.offset)
            return
        generation = self.tracker.generation(record.topic, record.partition)
        if isinstance(decoded, wire.Request):
            self._origins[decoded.correlation_id] = (record.topic, record.partition, record.offset, generation)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finished(t, record, where, generation))

    def _reject(self, record: Record, where: str, reason: str, kind: str) -> None:
        """A record we cannot serve: answer it if we can, else move it to the dead-letter topic.

        `kind` is the reason's label in the metrics: ``malformed``, ``reply_topic`` or
        ``reply_refused`` (run before, and Kafka refused its reply: dead-lettered at once)."""
        log.warning("rejected %s: %s", where, reason, extra=record_fields(record))
        self.metrics.records_rejected.labels(kind).inc()
        generation = self.tracker.generation(record.topic, record.partition)
        task = asyncio.ensure_future(self.answers.rejected(record, where, reason, generation, kind != "reply_refused"))
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._finished(t, record, where, generation))

    async def _produce(self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]],
                       partition: int | None = None) -> asyncio.Future[None]:
        """Hand a record to the producer (into the open transaction in the exactly-once mode); the
        future ends when Kafka acknowledged it."""
        if self.txn is not None:
            return await self.txn.send(topic, value, key, headers, partition)
        assert self._producer is not None and self._handoff is not None
        return deliver(self._producer, self._handoff, topic, value, key, headers, partition)

    def _finished(self, task: asyncio.Future[None], record: Record, where: str, generation: int,
                  salvage: bool = True) -> None:
        self._tasks.discard(task)
        headers = record.headers
        cid = wire.correlation_id_of(headers) or b""
        self._origins.pop(cid, None)
        self._windows.pop(cid, None)  # a stream cancelled or timed out sends no final reply (#12.7)
        if cid in self._dropped:
            self._dropped.discard(cid)
            return  # its next owner runs it: its record is not done here
        error = None if task.cancelled() else task.exception()
        if error is not None and not isinstance(error, TransactionAborted):
            fields = record_fields(record)
            if not salvage:  # only a drain gives up: the record stays uncommitted, its next owner runs it
                log.error("gave up on %s, left uncommitted: %s", where, error, extra=fields)
                return
            if self.txn is not None and not isinstance(error, RecordRefused):
                # Not about this record (a fenced or broken producer...): the transaction has lost
                # a reply, so it is aborted, and the call runs again after the rewind.
                self.txn.abandon_soon(f"a reply of {where} was lost: {error}")
                return
            # Kafka refused the call's reply: its record is done only once the caller is told or
            # the request is dead-lettered (#12.3).
            refusal = asyncio.ensure_future(self.answers.refused(record, where, generation, error))
            self._tasks.add(refusal)
            refusal.add_done_callback(lambda t: self._finished(t, record, where, generation, salvage=False))
            return
        # The offset of a call's opening record is done only once its final reply is sent, and
        # only if its partition was not reassigned meanwhile (the record then runs again).
        self.tracker.done(record.topic, record.partition, record.offset, generation)
        if self.flow.full:
            self.flow.check()  # there may be room again: fetch at once
        if error is not None:
            log.debug("call of %s: its transaction was aborted and it runs again", where, extra=record_fields(record))

    async def _send(self, request: wire.Request, record: wire.Reply | wire.Frame, key: bytes | None) -> None:
        """Produce one reply record; stream messages are pipelined, a final reply waits for all."""
        assert self._loop is not None and request.reply_topic is not None
        window = self._windows.setdefault(request.correlation_id, [])
        final = isinstance(record, wire.Reply)
        if final and window and self.txn is None:
            # A stream ends only once its messages are in Kafka: a caller must never read OK after
            # a message Kafka refused (the call's refusal path answers instead). Transactions need
            # no wait: a refused message aborts the transaction its end is in.
            await self._settle(request.correlation_id, window)
        future = await self._produce(request.reply_topic, record.payload, key, record.encode_headers(),
                                     request.reply_partition)
        if self.txn is not None and final:
            # In the same step as the send: the commit that makes this reply visible also
            # commits its request's offset.
            origin = self._origins.pop(request.correlation_id, None)
            if origin is not None:
                self.tracker.done(*origin)
        window.append(future)
        if not final and len(window) < STREAM_WINDOW:
            return
        # The final reply (or a full window) waits: a stream cannot outrun Kafka.
        await self._settle(request.correlation_id, window)
        if final:
            self.replied += 1

    async def _settle(self, correlation_id: bytes, window: list[asyncio.Future[None]]) -> None:
        """Wait for the records of `window`; raise the first refusal."""
        try:
            results = await asyncio.gather(*window, return_exceptions=True)
        finally:
            window.clear()
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    def _poll(self) -> tuple[list[Record], dict[Partition, set[int]]] | None:
        """On the consumer thread: one fetch, and every LAG_INTERVAL a sample of the lag.

        In the exactly-once mode, also the records of newly fetched partitions that their
        previous owner replied to (from its commit metadata)."""
        assert self._consumer is not None
        records = self._consumer.poll(0.1, self.config.max_pending)
        if self.config.exactly_once:
            # Read here, on the consumer's thread, for the transactions' thread: a consumer call
            # from another thread waits for the poll in progress (confluent-kafka 2.16).
            self._group_metadata = self._consumer.group_metadata()
        now = time.monotonic()
        if now >= self._lag_due:
            self._lag_due = now + LAG_INTERVAL
            lags = self._consumer.lag()
            if lags is not None:
                self.metrics.set_lag(lags)
        done_before: dict[Partition, set[int]] = {}
        if self.config.exactly_once:
            new = sorted({(r.topic, r.partition) for r in records} - self._loaded)
            if new:
                for tp, committed in self._consumer.committed(new).items():
                    if committed is not None:
                        done_before[tp] = decode_done(*committed)
                self._loaded.update(new)
        return (records, done_before) if records or done_before else None

    async def _commit(self, sync: bool, only: set[Partition] | None = None) -> None:
        offsets = self.tracker.committable(only)
        if not offsets or self._consumer is None:
            return
        try:
            await self._on_kafka_thread(self._consumer.commit, {tp: (o, "") for tp, o in offsets.items()}, not sync)
            self.tracker.committed(offsets)
        except Exception as exc:
            log.warning("commit failed (the records will be redelivered): %s", exc)

    def _commit_failed(self, partitions: list[Partition], reason: str) -> None:
        """On the consumer thread: an asynchronous commit failed; the next commit sends it again."""
        log.warning("commit of %s failed (committed again next time): %s",
                    ", ".join(f"{t}/{p}" for t, p in sorted(partitions)), reason)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.tracker.uncommitted, partitions)

    async def _rewind(self) -> None:
        """After an aborted transaction: stop every call and fetch again from the committed offsets.

        The aborted transaction took replies with it whose records count as done here; running
        those again needs a position before them, and calls still running would then be
        started twice, so everything starts again from what Kafka committed."""
        self._generation += 1  # batches already fetched are dropped: they are fetched again
        log.info("running again the %d calls in progress and what the aborted transaction answered", len(self._tasks))
        for correlation_id in list(self._origins):
            self.calls.cancel(correlation_id, "its transaction was aborted; it runs again", grpc.StatusCode.ABORTED)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.tracker.forget()
        self._origins.clear()
        self._windows.clear()
        while True:
            try:
                await self._on_kafka_thread(self._seek_committed, self._generation)
                return
            except TransportError as exc:  # the group's coordinator is moving (a broker failover): ask again
                log.warning("reading the committed offsets to run again from failed, retrying in 1s: %s", exc)
                await asyncio.sleep(1.0)

    def _seek_committed(self, generation: int) -> None:
        consumer, fetcher = self._consumer, self._fetcher
        assert consumer is not None and fetcher is not None
        if self.txn is not None:
            self.txn.forget(set(self._loaded))
        assigned = consumer.assignment()
        for tp, committed in consumer.committed(assigned).items():
            consumer.seek(tp, None if committed is None else committed[0])
            log.debug("rewound %s/%d to %s", tp[0], tp[1], committed)
        self._loaded.clear()
        fetcher.generation = generation  # what is fetched from here on counts again

    async def _drain(self) -> None:
        self.answers.draining = self.flow.stopped = True
        self._generation += 1  # batches fetched but not taken yet go to the partitions' next owner
        if self._fetcher is not None:
            self._fetcher.set_polling(False)
        if self._tasks:
            log.info("finishing %d calls in progress", len(self._tasks))
            await asyncio.wait(self._tasks, timeout=self.config.drain_timeout)
        if self.txn is not None:
            await self.txn.close()
        elif self._producer is not None:
            await asyncio.to_thread(self._producer.flush, 10)
        if self._consumer is not None:
            if self.txn is None:
                await self._commit(sync=True)
            await self._on_kafka_thread(self._consumer.close)
        if self._producer is not None:
            await asyncio.to_thread(self._producer.close, 5)
        self.dispatcher.close()
        if self._fetcher is not None:
            await self._fetcher.stop()

    async def _on_kafka_thread(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        assert self._fetcher is not None
        return await self._fetcher.call(func, *args, **kwargs)

    # Rebalance callbacks: they run on the consumer thread inside its poll or close (confluent), or
    # on kafka-python's I/O thread; never on the event loop, which never waits for the consumer
    # thread meanwhile, so the work they hand it runs at once. They wait for it REVOKE_GRACE + 5 s
    # at most: a rebalance goes on whatever the calls or the transaction do.
    def _revoked(self, partitions: list[Partition], lost: bool) -> Offsets | None:
        if not partitions:
            return None
        assert self._loop is not None
        parts = set(partitions)
        self._loaded -= parts
        work = self._revoke_transactional(parts, lost) if self.txn is not None else self._take_committable(parts)
        future = asyncio.run_coroutine_threadsafe(work, self._loop)
        offsets: dict[Partition, int] | None = None
        try:
            offsets = future.result(timeout=REVOKE_GRACE + 5)
        except Exception as exc:  # TimeoutError included: the rebalance must go on
            future.cancel()
            log.warning("partitions revoked before their calls were settled (%s): %s", type(exc).__name__, exc)
        log.info("partitions %s: %s", "lost" if lost else "revoked", ", ".join(f"{t}/{p}" for t, p in sorted(parts)))
        if lost or not offsets:
            return None
        return {tp: (o, "") for tp, o in offsets.items()}

    def _assigned(self, partitions: list[Partition]) -> None:
        assert self._loop is not None
        # Before any batch of this poll reaches the loop (call_soon_threadsafe keeps the order).
        self._loop.call_soon_threadsafe(self._owned.update, partitions)
        if partitions:
            log.info("partitions assigned: %s", ", ".join(f"{t}/{p}" for t, p in sorted(partitions)))

    async def _revoke_transactional(self, parts: set[Partition], lost: bool) -> None:
        assert self.txn is not None
        self._owned -= parts
        moved = "the call's partition moved to another handler process"
        if lost:
            # Another process may own them already and have answered their calls: nothing of
            # theirs may be sent or committed from here. An ABORTED reply to a stream would be a
            # second committed reply to its request (the chaos soak found 22), and their
            # offsets would overwrite the new owner's. Replies of theirs may sit in the open
            # transaction: it is aborted, and the rewind runs the other partitions' calls again.
            self._dropped.update(self.calls.running_in(parts))
            await self.calls.drop(parts, moved)
            self.tracker.forget(parts)
            self.txn.forget(parts)
            await self.txn.abandon(f"partitions lost with the group session: {', '.join(f'{t}/{p}' for t, p in sorted(parts))}")
            return
        if not self.txn.failed:
            # (A transaction that aborts meanwhile makes these sends fail at once, never wait.)
            await self.calls.abort(parts, grpc.StatusCode.ABORTED, moved)
            await self.calls.finish(parts, REVOKE_GRACE)
        # What is still running cannot reply any more: a later transaction would commit its reply
        # without its offset, while the partition's next owner runs it again (#12.2).
        dropped = self.calls.running_in(parts)
        self._dropped.update(dropped)  # before their done-callbacks run
        await self.calls.drop(parts, moved)
        if dropped:
            log.info("%d calls of the revoked partitions stopped without a reply; their next owner runs them",
                     len(dropped))
        await asyncio.sleep(0)
        # If this fails, nothing of these partitions was committed: their next owner runs them
        # again, and the loop's rewind stops the calls still running here.
        await self.txn.commit()
        self.tracker.forget(parts)
        self.txn.forget(parts)

    async def _take_committable(self, parts: set[Partition]) -> dict[Partition, int]:
        # Streams still open on these partitions end here, so the new owner starts after them
        # rather than replaying half a stream; unary calls get a moment to finish and reply,
        # so that the new owner does not run them again.
        self._owned -= parts
        await self.calls.abort(parts, grpc.StatusCode.ABORTED, "the call's partition moved to another handler process")
        await self.calls.finish(parts, REVOKE_GRACE)
        await asyncio.sleep(0)  # let the done-callbacks mark their offsets
        offsets = self.tracker.committable(parts)
        self.tracker.forget(parts)
        return offsets
