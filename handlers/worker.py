"""A handler process's consume loop: records in, calls dispatched, replies out.

    worker = Worker(config, methods, routes)
    await worker.run(stop_event)

The parts around it:

- `handlers.fetcher`: the consumer's own thread (Kafka consumers are not thread-safe); records
  reach the event loop once per poll.
- `handlers.commits`: when a request counts as done, at least once or exactly once
  (`handlers.exactly_once`), behind one interface.
- `handlers.rebalance`: the callbacks of partitions arriving and leaving.
- `handlers.flow`: backpressure; `handlers.answers`: rejections, refused replies, dead letters.
- `handlers.calls` and `handlers.dispatcher`: the calls themselves and the servicer methods.
- `handlers.inflight`: the calls in progress, which all of the above share.

Handlers run on the event loop or a thread pool (docs/internals.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable

import grpc

from adapter.errors import MalformedRecord, TransactionAborted
from adapter.kafka import Consumer, Record, open_engine
from adapter.kafka.handoff import Handoff
from adapter.protocol import wire
from adapter.protocol.routing import Route
from adapter.runtime.config import WorkerConfig
from adapter.runtime.logs import record_fields
from adapter.runtime.metrics import HandlerMetrics
from handlers.answers import Answers
from handlers.calls import Calls
from handlers.commits import AtLeastOnce, CommitPolicy
from handlers.dedupe import ReplyCache
from handlers.dispatcher import Dispatcher
from handlers.exactly_once import ExactlyOnce
from handlers.fetcher import Fetcher
from handlers.flow import FlowControl
from handlers.inflight import InFlight
from handlers.offsets import OffsetTracker, Partition
from handlers.rebalance import Rebalance
from handlers.registry import Method

log = logging.getLogger(__name__)

#: The status of client streams still reading when their handler process stops.
STOPPING = "the handler process is stopping; its client streams get no more request messages"

#: Stream messages produced before waiting for Kafka's acknowledgements.
STREAM_WINDOW = 64
#: Seconds between the event loop's checks of commits, flow control and aborted transactions.
HOUSEKEEPING = 0.1
#: Seconds between samples of the consumer lag, for the metrics.
LAG_INTERVAL = 2.0

Batch = tuple[list[Record], dict[Partition, set[int]]]


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
                           max_reading=config.max_client_streams or 4 * config.max_pending,
                           send_now=None if config.exactly_once else self._send_now)
        self.tracker = OffsetTracker()
        self.inflight = InFlight()
        self._engine = open_engine(config.kafka)
        self.policy: CommitPolicy = (
            ExactlyOnce(config, self._engine, self.tracker, self.calls, self.inflight, self.metrics)
            if config.exactly_once else AtLeastOnce(self._engine, self.tracker, self.calls, self.inflight))
        self.answers = Answers(config, self.metrics, self.tracker, self.policy.produce)
        self.flow = FlowControl(config, self.tracker, self.calls)
        self.replied = 0
        self._fetcher: Fetcher[Batch] | None = None
        self._consumer: Consumer | None = None
        self._lag_due = 0.0

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Consume until `stop` is set, then drain: finish, reply, commit, leave the group."""
        loop = asyncio.get_running_loop()
        self._fetcher = fetcher = Fetcher(loop, self._poll, self._on_batch)
        fetcher.start()
        kafka = self.config.kafka
        topics = {t: kafka.topic_partitions for t in [*self.topics, self.config.dead_letter_topic]}
        admin = await asyncio.to_thread(self._engine.admin)
        try:
            await asyncio.to_thread(admin.ensure_topics, topics)
        finally:
            admin.close()
        self._consumer = consumer = await fetcher.call(
            self._engine.consumer, self.config.group, from_end=False, read_committed=self.policy.read_committed,
            session_timeout=self.config.session_timeout, max_records=self.config.max_pending,
            protocol=self.config.protocol, on_commit_failed=self.policy.commit_failed)
        await self.policy.start(consumer, fetcher, Handoff(loop))
        self.flow.attach(fetcher, consumer)
        rebalance = Rebalance(loop, self.inflight, self.policy)
        await fetcher.call(consumer.subscribe, self.topics, rebalance.assigned, rebalance.revoked)
        log.info("consuming %s in group %s", ", ".join(self.topics), self.config.group)
        if ready is not None:
            ready.set()
        fetcher.set_polling(True)
        try:
            while not stop.is_set():
                # Records arrive through _on_batch; this loop only keeps house.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), HOUSEKEEPING)
                await self.policy.tick()
                self.flow.check()
        finally:
            await self._drain()

    def _on_batch(self, batch: Batch, generation: int) -> None:
        """On the event loop: one poll's records, in poll order."""
        if generation != self.inflight.generation:
            return  # fetched before a rewind: fetched again after it
        records, done_before = batch
        for (topic, partition), offsets in done_before.items():
            self.tracker.skip(topic, partition, offsets)
        for record in records:
            if (record.topic, record.partition) not in self.inflight.owned:
                continue  # revoked since it was fetched: its new owner reads it
            self.tracker.add(record.topic, record.partition, record.offset)
            if not self.tracker.skipped(record.topic, record.partition, record.offset):
                self._accept(record)
        self.flow.check()
        self.policy.batch_taken()

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
            self.inflight.origins[decoded.correlation_id] = (record.topic, record.partition, record.offset, generation)
        self.inflight.tasks.add(task)
        task.add_done_callback(lambda t: self._finished(t, record, where, generation))

    def _reject(self, record: Record, where: str, reason: str, kind: str) -> None:
        """A record we cannot serve: answer it if we can, else move it to the dead-letter topic.

        `kind` is the reason's label in the metrics: ``malformed``, ``reply_topic`` or
        ``reply_refused`` (run before, and Kafka refused its reply: dead-lettered at once)."""
        log.warning("rejected %s: %s", where, reason, extra=record_fields(record))
        self.metrics.records_rejected.labels(kind).inc()
        generation = self.tracker.generation(record.topic, record.partition)
        task = asyncio.ensure_future(self.answers.rejected(record, where, reason, generation, kind != "reply_refused"))
        self.inflight.tasks.add(task)
        task.add_done_callback(lambda t: self._finished(t, record, where, generation))

    def _finished(self, task: asyncio.Future[None], record: Record, where: str, generation: int,
                  salvage: bool = True) -> None:
        inflight = self.inflight
        inflight.tasks.discard(task)
        cid = wire.correlation_id_of(record.headers) or b""
        inflight.origins.pop(cid, None)
        inflight.windows.pop(cid, None)  # a stream cancelled or timed out sends no final reply (#12.7)
        if cid in inflight.dropped:
            inflight.dropped.discard(cid)
            return  # its next owner runs it: its record is not done here
        error = None if task.cancelled() else task.exception()
        if error is not None and not isinstance(error, TransactionAborted):
            if not salvage:  # only a drain gives up: the record stays uncommitted, its next owner runs it
                log.error("gave up on %s, left uncommitted: %s", where, error, extra=record_fields(record))
                return
            if self.policy.reply_lost(where, error):
                return
            # Kafka refused the call's reply: its record is done only once the caller is told or
            # the request is dead-lettered (#12.3).
            refusal = asyncio.ensure_future(self.answers.refused(record, where, generation, error))
            inflight.tasks.add(refusal)
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
        assert request.reply_topic is not None
        window = self.inflight.windows.setdefault(request.correlation_id, [])
        final = isinstance(record, wire.Reply)
        if final and window and self.policy.settle_before_final:
            await self._settle(window)
        future = await self.policy.produce(request.reply_topic, record.payload, key, record.encode_headers(),
                                           request.reply_partition)
        if final:
            self.policy.reply_handed(request.correlation_id)
        window.append(future)
        if not final and len(window) < STREAM_WINDOW:
            return
        # The final reply (or a full window) waits: a stream cannot outrun Kafka.
        await self._settle(window)
        if final:
            self.replied += 1

    def _send_now(self, request: wire.Request, reply: wire.Reply, key: bytes | None,
                  done: Callable[[Exception | None], None]) -> bool:
        """From a def handler's thread: produce a unary call's reply at once."""
        assert request.reply_topic is not None

        def delivered(error: Exception | None) -> None:
            if error is None:
                self.replied += 1
            done(error)

        return self.policy.produce_now(request.reply_topic, reply.payload, key, reply.encode_headers(),
                                       request.reply_partition, delivered)

    @staticmethod
    async def _settle(window: list[asyncio.Future[None]]) -> None:
        """Wait for the records of `window`; raise the first refusal."""
        try:
            results = await asyncio.gather(*window, return_exceptions=True)
        finally:
            window.clear()
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            raise errors[0]

    def _poll(self) -> Batch | None:
        """On the consumer thread: one fetch, and every LAG_INTERVAL a sample of the lag."""
        assert self._consumer is not None
        records = self._consumer.poll(0.1, self.config.max_pending)
        done_before = self.policy.polled(self._consumer, records)
        now = time.monotonic()
        if now >= self._lag_due:
            self._lag_due = now + LAG_INTERVAL
            lags = self._consumer.lag()
            if lags is not None:
                self.metrics.set_lag(lags)
        return (records, done_before) if records or done_before else None

    async def _drain(self) -> None:
        self.answers.draining = self.flow.stopped = True
        self.inflight.generation += 1  # batches fetched but not taken yet go to the partitions' next owner
        if self._fetcher is not None:
            self._fetcher.set_polling(False)
        # Nothing more is fetched: a stream waiting for request messages would wait out the
        # drain, and hold its partition, for messages it can never get. Its caller may retry.
        await self.calls.abort_reading(grpc.StatusCode.UNAVAILABLE, STOPPING)
        if self.inflight.tasks:
            log.info("finishing %d calls in progress", len(self.inflight.tasks))
            await asyncio.wait(self.inflight.tasks, timeout=self.config.drain_timeout)
        await self.policy.drain()
        if self._consumer is not None and self._fetcher is not None:
            await self._fetcher.call(self._consumer.close)
        await self.policy.close()
        self.dispatcher.close()
        if self._fetcher is not None:
            await self._fetcher.stop()
