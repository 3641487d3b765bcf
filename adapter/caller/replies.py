"""The reply listener: one thread that owns some reply partitions and reads replies.

Frontends share one reply topic. Each instance joins one consumer group on it, so
Kafka hands each instance its own partitions (cooperative-sticky, so a joining or
leaving instance moves as few as possible); requests name one of them in
``kafka_replyPartition``. An instance therefore never reads another's replies, and the
number of topics does not grow with the number of instances.

Offsets are never committed: a partition's position is resolved to its end when the
instance is given it, before any request names it, so no reply is missed and no
stale reply is read.

A partition *lost* with the group session (the group's coordinator was unreachable for the
session timeout: a broker failover takes about as long) is not given up at once: requests
go on naming it, and its calls go on waiting, for up to `LOST_GRACE` seconds. When the group
gives it back, reading goes on from where it stopped (the Kafka layer keeps the position),
so the replies sent meanwhile are read. Only if it does not come back in time do its calls
end UNAVAILABLE, as when a rebalance moves a partition to another frontend.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from adapter.errors import MalformedRecord
from adapter.kafka import Consumer, Engine, Offsets, Partition, Record
from adapter.protocol import wire
from adapter.runtime.config import ReplyConfig
from adapter.runtime.logs import record_fields
from adapter.runtime.metrics import FrontendMetrics

log = logging.getLogger(__name__)

OnReplies = Callable[[list[wire.Reply | wire.Frame]], None]
OnPartitions = Callable[[frozenset[int]], None]
#: Records taken from the consumer per poll: one hand-over to the event loop each.
BATCH = 1000
#: Seconds a reply partition lost with the group session stays ours, waiting to come back:
#: longer than a coordinator failover (the broker session, 9 s by default, plus a rejoin).
LOST_GRACE = 30.0


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
        #: Partitions lost with the group session, still named by requests: when each was lost.
        self._lost: dict[int, float] = {}
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
        # The engine set each position before telling us: the partition's end, or where reading
        # stopped if it was lost with the group session.
        back = sorted(p for _, p in partitions if self._lost.pop(p, None) is not None)
        if back:
            log.warning("reply partitions %s are back: their calls go on", back)
        self._owned.update(p for _, p in partitions)
        log.info("reading replies from %s partitions %s", self._config.reply_topic, sorted(self._owned))
        self._on_partitions(frozenset(self._owned))

    def _revoked(self, partitions: list[Partition], lost: bool) -> Offsets | None:
        gone = {p for _, p in partitions} & self._owned
        if not gone:
            return None
        if lost and not self._stopping.is_set():
            now = time.monotonic()
            self._lost.update({p: now for p in gone if p not in self._lost})
            log.warning("reply partitions %s lost with the group session (coordinator unreachable?): their calls "
                        "wait up to %gs for them to come back", sorted(gone), LOST_GRACE)
            return None
        self._owned -= gone
        for p in gone:
            self._lost.pop(p, None)
        why = "at shutdown" if self._stopping.is_set() else "to another frontend"
        log.info("reply partitions %s moved %s", sorted(gone), why)
        self._on_partitions(frozenset(self._owned))
        return None

    def _expire_lost(self) -> None:
        """Give up partitions lost longer than LOST_GRACE ago: their calls end UNAVAILABLE."""
        now = time.monotonic()
        expired = {p for p, since in self._lost.items() if now - since > LOST_GRACE}
        if expired:
            for p in expired:
                del self._lost[p]
            self._owned -= expired
            log.warning("reply partitions %s did not come back within %gs: their calls end", sorted(expired), LOST_GRACE)
            self._on_partitions(frozenset(self._owned))

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
                if self._lost:
                    self._expire_lost()
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
