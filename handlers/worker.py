"""A handler process's Kafka side: consume requests in a group, dispatch, reply, commit.

    worker = Worker(config, methods, routes)
    await worker.run(stop_event)

Delivery is at least once: a record's offset is committed only after its reply has
been produced and every earlier record of its partition has been replied to
(`handlers.offsets`). The consumer lives on one thread of its own (kafka-python's
consumer is not thread-safe); handlers run on the event loop or a thread pool.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from adapter import wire
from adapter.config import WorkerConfig
from adapter.errors import MalformedRecord
from adapter.kafka import ensure_topics, make_consumer, make_producer
from adapter.routing import Route
from handlers.dispatcher import Dispatcher
from handlers.offsets import OffsetTracker, Partition
from handlers.registry import Method
from kafka import ConsumerRebalanceListener, TopicPartition

log = logging.getLogger(__name__)


class Worker(ConsumerRebalanceListener):
    """Serves `methods` from their request topics until stopped."""

    def __init__(self, config: WorkerConfig, methods: dict[str, Method], routes: dict[str, Route]) -> None:
        self.config = config
        self.topics = sorted({routes[path].topic for path in methods if path in routes})
        # A requester that knows only Spring's headers sends no rpc-method: on a topic that
        # carries a single method, that method is meant.
        by_topic: dict[str, list[str]] = {}
        for path in methods:
            if path in routes:
                by_topic.setdefault(routes[path].topic, []).append(path)
        self._sole_method = {topic: paths[0] for topic, paths in by_topic.items() if len(paths) == 1}
        self.dispatcher = Dispatcher(methods, config.concurrency)
        self.tracker = OffsetTracker()
        self.replied = 0
        self.malformed = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._kafka_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="consumer")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._consumer: Any = None
        self._producer: Any = None
        self._paused = False

    async def run(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        """Consume until `stop` is set, then drain: finish, reply, commit, leave the group."""
        self._loop = asyncio.get_running_loop()
        kafka = self.config.kafka
        await asyncio.to_thread(ensure_topics, kafka, {t: kafka.topic_partitions for t in self.topics})
        self._producer = await asyncio.to_thread(make_producer, kafka)
        self._consumer = await self._on_kafka_thread(
            make_consumer, kafka, group_id=self.config.group, auto_offset_reset="earliest",
            max_poll_records=self.config.max_pending,
        )
        await self._on_kafka_thread(self._consumer.subscribe, self.topics, listener=self)
        log.info("consuming %s in group %s", ", ".join(self.topics), self.config.group)
        if ready is not None:
            ready.set()
        try:
            while not stop.is_set():
                batches = await self._on_kafka_thread(self._consumer.poll, timeout_ms=100)
                for tp, records in batches.items():
                    for record in records:
                        self.tracker.add(tp.topic, tp.partition, record.offset)
                        task = asyncio.create_task(self._process(record))
                        self._tasks.add(task)
                        task.add_done_callback(self._tasks.discard)
                await self._flow_control()
                await self._commit(sync=False)
        finally:
            await self._drain()

    async def _process(self, record: Any) -> None:
        where = f"{record.topic}/{record.partition}@{record.offset}"
        try:
            request = wire.Request.decode(record.headers, record.value)
        except MalformedRecord as exc:
            self.malformed += 1
            log.warning("skipped malformed request %s: %s", where, exc)
            self.tracker.done(record.topic, record.partition, record.offset)
            return
        if not request.method and record.topic in self._sole_method:
            request = dataclasses.replace(request, method=self._sole_method[record.topic])
        try:
            reply = await self.dispatcher.handle(request, peer=f"kafka:{where}")
            if reply is not None and request.reply_topic:
                await self._produce(request, reply, record.key)
                self.replied += 1
        except Exception:
            log.exception("failed to reply to %s (%s)", where, request.method)
        finally:
            self.tracker.done(record.topic, record.partition, record.offset)

    async def _produce(self, request: wire.Request, reply: wire.Reply, key: bytes | None) -> None:
        assert self._loop is not None and request.reply_topic is not None
        done: asyncio.Future[None] = self._loop.create_future()
        loop = self._loop

        def settle(exc: BaseException | None) -> None:
            if not done.done():
                done.set_exception(exc) if exc else done.set_result(None)

        future = self._producer.send(
            request.reply_topic, value=reply.payload, key=key,
            headers=reply.encode_headers(), partition=request.reply_partition,
        )
        future.add_callback(lambda _: loop.call_soon_threadsafe(settle, None))
        future.add_errback(lambda exc: loop.call_soon_threadsafe(settle, exc))
        await done

    async def _flow_control(self) -> None:
        # Backpressure: stop fetching while too many records wait for their reply.
        full = self.tracker.pending >= self.config.max_pending
        if full != self._paused:
            self._paused = full
            action = self._consumer.pause if full else self._consumer.resume
            await self._on_kafka_thread(lambda: action(*self._consumer.assignment()))

    async def _commit(self, sync: bool, only: set[Partition] | None = None) -> None:
        offsets = self.tracker.committable(only)
        if not offsets:
            return
        commit = {TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()}
        try:
            if sync:
                await self._on_kafka_thread(self._consumer.commit, commit)
            else:
                await self._on_kafka_thread(self._consumer.commit_async, commit, self._commit_done)
            self.tracker.committed(offsets)
        except KafkaError as exc:
            log.warning("commit failed (the records will be redelivered): %s", exc)

    @staticmethod
    def _commit_done(offsets: Any, result: Any) -> None:
        if isinstance(result, Exception):
            log.warning("commit failed (the records will be redelivered): %s", result)

    async def _drain(self) -> None:
        if self._tasks:
            log.info("finishing %d calls in progress", len(self._tasks))
            await asyncio.wait(self._tasks, timeout=self.config.drain_timeout)
        if self._producer is not None:
            await asyncio.to_thread(self._producer.flush, 10)
        if self._consumer is not None:
            await self._commit(sync=True)
            await self._on_kafka_thread(self._consumer.close, autocommit=False)
        if self._producer is not None:
            await asyncio.to_thread(self._producer.close, 5)
        self.dispatcher.close()
        self._kafka_thread.shutdown(wait=False)

    async def _on_kafka_thread(self, func: Any, *args: Any, **kwargs: Any) -> Any:
        assert self._loop is not None
        return await self._loop.run_in_executor(self._kafka_thread, lambda: func(*args, **kwargs))

    # ConsumerRebalanceListener: runs on the consumer thread, inside poll(), while the
    # event loop is free (it awaits that poll), so hopping onto the loop cannot deadlock.
    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        if not revoked:
            return
        assert self._loop is not None
        parts = {(tp.topic, tp.partition) for tp in revoked}
        offsets = asyncio.run_coroutine_threadsafe(self._take_committable(parts), self._loop).result()
        if offsets:
            try:
                self._consumer.commit({TopicPartition(t, p): OffsetAndMetadata(o, "", -1) for (t, p), o in offsets.items()})
            except KafkaError as exc:
                log.warning("commit on revocation failed: %s", exc)
        log.info("partitions revoked: %s", ", ".join(f"{t}/{p}" for t, p in sorted(parts)))

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if assigned:
            log.info("partitions assigned: %s", ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(assigned)))

    async def _take_committable(self, parts: set[Partition]) -> dict[Partition, int]:
        offsets = self.tracker.committable(parts)
        self.tracker.forget(parts)
        return offsets
