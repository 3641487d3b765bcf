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

from adapter import wire
from adapter.config import ReplyConfig
from adapter.errors import MalformedRecord
from adapter.kafka import Consumer, Engine, Offsets, Partition, Record
from adapter.logs import record_fields
from adapter.metrics import FrontendMetrics

log = logging.getLogger(__name__)

OnReplies = Callable[[list[wire.Reply | wire.Frame]], None]
OnPartitions = Callable[[frozenset[int]], None]
#: Records taken from the consumer per poll: one hand-over to the event loop each.
BATCH = 1000


class ReplyListener:
    """Reads this instance's reply partitions on a thread of its own.

    `on_replies` gets each polled batch of decoded replies and `on_partitions` the
    set of partitions that requests may name, whenever it changes. Both are called
    on the listener's thread.
    """

    def __init__(self, config: ReplyConfig, engine: Engine, on_replies: OnReplies, on_partitions: OnPartitions,
                 metrics: FrontendMetrics | None = None) -> None:
        self._config = config
        self._engine = engine
        self._on_replies = on_replies
        self._on_partitions = on_partitions
        self._stopping = threading.Event()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reply-listener", daemon=True)
        self._owned: set[int] = set()
        self._error: BaseException | None = None
        self.malformed = 0
        self._malformed_total = (metrics if metrics is not None else FrontendMetrics()).replies_malformed

    def start(self) -> None:
        """Create the consumer on the listener's thread (it stays there), subscribe, start reading."""
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """Leave the group and stop reading."""
        self._stopping.set()
        self._thread.join(timeout=10)

    def _assigned(self, partitions: list[Partition]) -> None:
        # The engine set each position to the partition's end before telling us.
        self._owned.update(p for _, p in partitions)
        log.info("reading replies from %s partitions %s", self._config.reply_topic, sorted(self._owned))
        self._on_partitions(frozenset(self._owned))

    def _revoked(self, partitions: list[Partition], lost: bool) -> Offsets | None:
        gone = {p for _, p in partitions}
        if gone & self._owned:
            self._owned -= gone
            why = "at shutdown" if self._stopping.is_set() else "to another frontend"
            log.info("reply partitions %s moved %s", sorted(gone), why)
            self._on_partitions(frozenset(self._owned))
        return None

    def _deliver(self, records: list[Record]) -> None:
        replies: list[wire.Reply | wire.Frame] = []
        for record in records:
            try:
                replies.append(wire.decode_reply(record.headers, record.value))
            except MalformedRecord as exc:
                self.malformed += 1
                self._malformed_total.inc()
                log.warning("dropped malformed reply %s/%d@%d: %s", record.topic, record.partition,
                            record.offset, exc, extra=record_fields(record))
        if replies:
            self._on_replies(replies)

    def _run(self) -> None:
        try:
            consumer: Consumer = self._engine.consumer(
                self._config.reply_group, from_end=True,
                # Replies of a handler in exactly-once mode count only once their transaction commits;
                # without transactions this reads exactly what read_uncommitted would.
                read_committed=True,
                # A rebalance blocks every frontend's replies: notice a dead peer fast.
                session_timeout=6.0)
            consumer.subscribe([self._config.reply_topic], self._assigned, self._revoked)
        except BaseException as exc:
            self._error = exc
            self._started.set()
            return
        self._started.set()
        try:
            while not self._stopping.is_set():
                try:
                    records = consumer.poll(0.1, BATCH)
                except Exception as exc:
                    # The broker is away (restart, network): keep trying; calls wait or time out.
                    log.warning("reading replies failed, retrying in 1s: %s", exc)
                    self._stopping.wait(1.0)
                    continue
                try:
                    self._deliver(records)
                except Exception:
                    # The thread must go on whatever one batch did: its calls time out, the rest are served.
                    log.exception("delivering %d replies failed; their calls end at their deadline", len(records))
        except Exception:  # the thread must not die silently: calls would hang until deadline
            log.exception("reply listener failed")
            self._owned.clear()
            self._on_partitions(frozenset())
        finally:
            consumer.close()
