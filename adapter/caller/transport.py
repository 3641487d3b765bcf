"""What the request/reply core needs from a broker, and its Kafka implementation.

The contract is small so that a test can replace Kafka with memory (`adapter.caller.memory`):
send a record, say where replies should go, hand replies back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Collection
from typing import Protocol

from adapter.caller.replies import OnPartitions, OnReplies, ReplyListener
from adapter.errors import TransportError
from adapter.kafka import Admin, Producer, open_engine
from adapter.protocol import wire
from adapter.runtime.config import ReplyConfig
from adapter.runtime.metrics import FrontendMetrics

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

    async def consumers(self, topics: Collection[str]) -> dict[str, set[str]] | None:
        """The consumer groups with live members assigned each of `topics`; None: cannot tell."""

    async def stop(self) -> None:
        """Flush what was sent and disconnect."""


class KafkaTransport:
    """`Transport` over a real Kafka cluster, through the engine `config.kafka.client` names."""

    def __init__(self, config: ReplyConfig, request_topics: set[str], metrics: FrontendMetrics | None = None) -> None:
        self._config = config
        self._metrics = metrics
        self._request_topics = request_topics
        self.reply_topic = config.reply_topic
        self._engine = open_engine(config.kafka)
        self._producer: Producer | None = None
        self._listener: ReplyListener | None = None
        self._admin: Admin | None = None
        self._check_task: asyncio.Future[bool] | None = None
        self._lookup_admin: Admin | None = None

    async def start(self, on_replies: OnReplies, on_partitions: OnPartitions) -> None:
        """Create missing topics, connect the producer, join the reply group."""
        kafka = self._config.kafka
        topics = {t: kafka.topic_partitions for t in self._request_topics}
        topics[self.reply_topic] = self._config.reply_partitions
        self._admin = await asyncio.to_thread(self._engine.admin)
        await asyncio.to_thread(self._admin.ensure_topics, topics)
        self._producer = await asyncio.to_thread(self._engine.producer)
        self._listener = ReplyListener(self._config, self._engine, on_replies, on_partitions, self._metrics)
        await asyncio.to_thread(self._listener.start)

    def send(self, topic: str, key: bytes | None, value: bytes, headers: wire.Headers, on_error: OnError,
             on_ack: Callable[[], None] | None = None) -> None:
        if self._producer is None:
            raise TransportError("transport is not started")

        def delivered(error: Exception | None) -> None:
            if error is not None:
                on_error(error)
            elif on_ack is not None:
                on_ack()

        self._producer.produce(topic, value, key, list(headers), None, delivered)

    async def healthy(self) -> bool:
        # One check at a time; a check stuck on an unreachable broker answers "no" meanwhile.
        if self._admin is None:
            return False
        if self._check_task is None or self._check_task.done():
            self._check_task = asyncio.ensure_future(asyncio.to_thread(self._admin.healthy, HEALTH_TIMEOUT))
        try:
            return await asyncio.wait_for(asyncio.shield(self._check_task), HEALTH_TIMEOUT + 1)
        except TimeoutError:
            return False

    async def consumers(self, topics: Collection[str]) -> dict[str, set[str]] | None:
        if self._admin is None:
            return None
        return await asyncio.to_thread(self._consumers, topics)

    def _consumers(self, topics: Collection[str]) -> dict[str, set[str]]:
        # An admin client of its own: the health check's may be stuck on an unreachable broker.
        if self._lookup_admin is None:
            self._lookup_admin = self._engine.admin(HEALTH_TIMEOUT)
        return self._lookup_admin.consumers(topics, HEALTH_TIMEOUT)

    async def stop(self) -> None:
        if self._listener is not None:
            await asyncio.to_thread(self._listener.stop)
        if self._producer is not None:
            await asyncio.to_thread(self._producer.close, 5)
        for admin in (self._admin, self._lookup_admin):
            if admin is not None:
                await asyncio.to_thread(admin.close)
