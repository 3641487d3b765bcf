"""The reply listener: one thread that owns some reply partitions and reads replies.

Frontends share one reply topic. Each instance joins one consumer group on it, so
Kafka hands each instance its own partitions (cooperative-sticky, so a joining or
leaving instance moves as few as possible); requests name one of them in
``kafka_replyPartition``. An instance therefore never reads another's replies, and the
number of topics does not grow with the number of instances.

Offsets are never committed: a partition's position is resolved to its end when the
instance is given it, before any request names it, so no reply is missed and no
stale reply is read.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from kafka import ConsumerRebalanceListener, TopicPartition
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor

from adapter import wire
from adapter.config import ReplyConfig
from adapter.errors import MalformedRecord
from adapter.kafka import make_consumer
from adapter.logs import record_fields
from adapter.metrics import FrontendMetrics

log = logging.getLogger(__name__)

OnReplies = Callable[[list[wire.Reply | wire.Frame]], None]
OnPartitions = Callable[[frozenset[int]], None]


class ReplyListener(ConsumerRebalanceListener):
    """Reads this instance's reply partitions on a thread of its own.

    `on_replies` gets each polled batch of decoded replies and `on_partitions` the
    set of partitions that requests may name, whenever it changes. Both are called
    on the listener's thread.
    """

    def __init__(self, config: ReplyConfig, on_replies: OnReplies, on_partitions: OnPartitions,
                 metrics: FrontendMetrics | None = None) -> None:
        self._config = config
        self._on_replies = on_replies
        self._on_partitions = on_partitions
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reply-listener", daemon=True)
        self._owned: set[int] = set()
        self._unresolved: set[TopicPartition] = set()
        self.malformed = 0
        self._malformed_total = (metrics if metrics is not None else FrontendMetrics()).replies_malformed
        self._consumer = make_consumer(
            config.kafka,
            group_id=config.reply_group,
            auto_offset_reset="latest",
            partition_assignment_strategy=[CooperativeStickyAssignor],
            fetch_max_wait_ms=100,
            # Replies of a handler in exactly-once mode count only once their transaction commits;
            # without transactions this reads exactly what read_uncommitted would.
            isolation_level="read_committed",
            # A rebalance blocks every frontend's replies: notice a dead peer fast.
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
        )

    def start(self) -> None:
        """Subscribe and start reading."""
        self._consumer.subscribe([self._config.reply_topic], listener=self)
        # Metadata after subscribing, before the first poll: else the group is joined twice.
        self._consumer.partitions_for_topic(self._config.reply_topic)
        self._thread.start()

    def stop(self) -> None:
        """Leave the group and stop reading."""
        self._stopping.set()
        self._thread.join(timeout=10)

    # ConsumerRebalanceListener: called on our thread, inside poll().
    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        lost = {tp.partition for tp in revoked}
        if lost & self._owned:
            self._owned -= lost
            why = "at shutdown" if self._stopping.is_set() else "to another frontend"
            log.info("reply partitions %s moved %s", sorted(lost), why)
            self._on_partitions(frozenset(self._owned))

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._unresolved |= set(assigned)

    def _resolve_new_partitions(self) -> None:
        # position() makes the consumer fetch the end offset now; only then may a
        # request name the partition, so its reply cannot fall before our position.
        for tp in list(self._unresolved):
            self._consumer.seek_to_end(tp)
            self._consumer.position(tp)
            self._owned.add(tp.partition)
        log.info("reading replies from %s partitions %s", self._config.reply_topic, sorted(self._owned))
        self._unresolved.clear()
        self._on_partitions(frozenset(self._owned))

    def _run(self) -> None:
        consumer = self._consumer
        try:
            while not self._stopping.is_set():
                try:
                    batches = consumer.poll(timeout_ms=100)
                except Exception as exc:
                    # The broker is away (restart, network): keep trying; calls wait or time out.
                    log.warning("reading replies failed, retrying in 1s: %s: %s", type(exc).__name__, exc)
                    self._stopping.wait(1.0)
                    continue
                if self._unresolved:
                    self._resolve_new_partitions()
                replies: list[wire.Reply | wire.Frame] = []
                for tp, records in batches.items():
                    for record in records:
                        try:
                            replies.append(wire.decode_reply(record.headers, record.value))
                        except MalformedRecord as exc:
                            self.malformed += 1
                            self._malformed_total.inc()
                            log.warning("dropped malformed reply %s/%d@%d: %s",
                                        tp.topic, tp.partition, record.offset, exc, extra=record_fields(record))
                if replies:
                    self._on_replies(replies)
        except Exception:  # the thread must not die silently: calls would hang until deadline
            log.exception("reply listener failed")
            self._owned.clear()
            self._on_partitions(frozenset())
        finally:
            consumer.close(autocommit=False)
