"""What the request/reply core needs from a broker, and its Kafka implementation.

The contract is small so that a test can replace Kafka with memory (`adapter.memory`):
send a record, say where replies should go, hand replies back.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

from kafka import KafkaAdminClient

from adapter import wire
from adapter.config import ReplyConfig
from adapter.errors import TransportError
from adapter.kafka import client_settings, ensure_topics, make_producer, translated
from adapter.metrics import FrontendMetrics
from adapter.replies import OnPartitions, OnReplies, ReplyListener

log = logging.getLogger(__name__)

OnError = Callable[[Exception], None]
#: Seconds a Kafka health check may take before the broker counts as unreachable.
HEALTH_TIMEOUT = 3.0


class Transport(Protocol):
    """A broker as the request/reply core sees it."""

    reply_topic: str

    async def start(self, on_replies: OnReplies, on_partitions: OnPartitions) -> None:
        """Connect; then call `on_partitions` with the reply partitions this instance owns."""

    def send(self, topic: str, key: bytes | None, value: bytes, headers: wire.Headers, on_error: OnError,
             on_ack: Callable[[], None] | None = None) -> None:
        """Produce one record without waiting; then `on_ack` or `on_error`, on any thread."""

    async def healthy(self) -> bool:
        """Whether the broker answers now."""

    async def stop(self) -> None:
        """Flush what was sent and disconnect."""


class KafkaTransport:
    """`Transport` over a real Kafka cluster, with kafka-python."""

    def __init__(self, config: ReplyConfig, request_topics: set[str], metrics: FrontendMetrics | None = None) -> None:
        self._config = config
        self._metrics = metrics
        self._request_topics = request_topics
        self.reply_topic = config.reply_topic
        self._producer: Any = None
        self._listener: ReplyListener | None = None
        self._admin: KafkaAdminClient | None = None
        self._admin_lock = threading.Lock()
        self._check_task: asyncio.Future[bool] | None = None

    async def start(self, on_replies: OnReplies, on_partitions: OnPartitions) -> None:
        """Create missing topics, connect the producer, join the reply group."""
        kafka = self._config.kafka
        topics = {t: kafka.topic_partitions for t in self._request_topics}
        topics[self.reply_topic] = self._config.reply_partitions
        await asyncio.to_thread(ensure_topics, kafka, topics)
        # A short max_block_ms: send() runs on the event loop and must not stall it.
        self._producer = await asyncio.to_thread(make_producer, kafka, max_block_ms=2000)
        for topic in self._request_topics:
            with translated(f"reading metadata of {topic}"):
                await asyncio.to_thread(self._producer.partitions_for, topic)
        self._listener = await asyncio.to_thread(ReplyListener, self._config, on_replies, on_partitions,
                                                 self._metrics)
        self._listener.start()

    def send(self, topic: str, key: bytes | None, value: bytes, headers: wire.Headers, on_error: OnError,
             on_ack: Callable[[], None] | None = None) -> None:
        if self._producer is None:
            raise TransportError("transport is not started")
        with translated(f"producing to {topic}"):
            future = self._producer.send(topic, value=value, key=key, headers=list(headers))
        future.add_errback(lambda exc: on_error(TransportError(f"producing to {topic}: {exc}")))
        if on_ack is not None:
            future.add_callback(lambda _: on_ack())

    async def healthy(self) -> bool:
        # One check at a time; a check stuck on an unreachable broker answers "no" meanwhile.
        if self._check_task is None or self._check_task.done():
            self._check_task = asyncio.ensure_future(asyncio.to_thread(self._check))
        try:
            return await asyncio.wait_for(asyncio.shield(self._check_task), HEALTH_TIMEOUT)
        except TimeoutError:
            return False

    def _check(self) -> bool:
        with self._admin_lock:
            try:
                if self._admin is None:
                    timeout_ms = int(HEALTH_TIMEOUT * 1000)
                    self._admin = KafkaAdminClient(**client_settings(self._config.kafka), request_timeout_ms=timeout_ms,
                                                   bootstrap_timeout_ms=timeout_ms)
                self._admin.describe_cluster()
                return True
            except Exception as exc:  # any failure means "not reachable now"
                log.debug("kafka health check failed: %s", exc)
                if self._admin is not None:
                    self._admin.close()
                    self._admin = None
                return False

    async def stop(self) -> None:
        if self._listener is not None:
            await asyncio.to_thread(self._listener.stop)
        if self._producer is not None:
            await asyncio.to_thread(self._producer.close, 5)
        with self._admin_lock:
            if self._admin is not None:
                self._admin.close()
