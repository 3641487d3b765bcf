"""What the rest of the project may ask of a Kafka client, in the project's own terms.

Each engine (`adapter.kafka.confluent`, `adapter.kafka.kafka_python`) implements these
protocols; nothing else in the project sees a Kafka client's types or exceptions. Every
method raises `TransportError` (or `MissingTopic`) when Kafka refuses or cannot be reached.

Threads, which matter more than anything else here (docs/internals.md):

- `Producer.produce` never blocks and may be called from any thread, the event loop
  included. Its `on_delivery` callback runs on an engine thread: hand it over with
  `adapter.kafka.handoff.Handoff`, which wakes the event loop once per batch.
- A `Consumer` belongs to the one thread that created it: every method, and its
  rebalance callbacks (`on_assign`, `on_revoke`), run there, during `poll` or `close`.
- `TransactionalProducer`'s transaction calls block: run them on one thread of their own.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from adapter.errors import ConfigError
from adapter.runtime.config import KafkaConfig

#: A topic partition: ``(topic, partition)``.
Partition = tuple[str, int]
#: Offsets to commit: partition -> (next offset to read, commit metadata).
Offsets = Mapping[Partition, tuple[int, str]]
#: A record's delivery outcome: None when Kafka acknowledged it, else why not.
OnDelivery = Callable[[Exception | None], None]
#: Partitions given to this consumer (their positions are set by then).
OnAssign = Callable[[list[Partition]], None]
#: Partitions taken away; `lost` when another member may own them already. Returns the
#: offsets to commit before they go (ignored when lost).
OnRevoke = Callable[[list[Partition], bool], Offsets | None]
#: An asynchronous commit failed for these partitions (and why); on the consumer's thread.
OnCommitFailed = Callable[[list[Partition], str], None]

#: Room for headers on top of the largest message.
HEADER_ROOM = 64 * 1024


def record_limit(config: KafkaConfig) -> int:
    """Largest record we produce or fetch: the largest message plus room for headers."""
    return config.max_message_bytes + HEADER_ROOM


def new_topic_settings(config: KafkaConfig, brokers: int) -> tuple[int, dict[str, str]]:
    """Replication factor and topic configs of the topics we create on a cluster of `brokers`.

    A single bootstrap address says nothing about the cluster (it is often a load balancer), so
    the brokers are counted: min(3, brokers) replicas, and min.insync.replicas 2 from 3 replicas
    up (acks=all then survives one broker down), else 1."""
    replicas = config.replication_factor or min(3, max(brokers, 1))
    if replicas > brokers:
        raise ConfigError(f"replication_factor: {replicas} replicas need as many brokers; the cluster has {brokers}")
    return replicas, {"max.message.bytes": str(record_limit(config)), "min.insync.replicas": str(2 if replicas >= 3 else 1)}


@dataclass(frozen=True, slots=True)
class Record:
    """A record read from Kafka."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]


class Producer(Protocol):
    """Produces records; `produce` only enqueues them, and is safe from any thread."""

    def produce(self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]],
                partition: int | None = None, on_delivery: OnDelivery | None = None) -> None:
        """Enqueue one record; `on_delivery` runs once Kafka acknowledged or refused it."""

    def flush(self, timeout: float) -> None:
        """Wait (blocking) until what was enqueued is delivered, or `timeout` seconds."""

    def close(self, timeout: float) -> None:
        """Flush for at most `timeout` seconds, then disconnect."""


class TransactionalProducer(Producer, Protocol):
    """A producer whose records count only once their transaction commits (blocking calls)."""

    def begin(self) -> None:
        """Open a transaction."""

    def commit(self, offsets: Offsets, group_metadata: Any) -> None:
        """Add `offsets` of the consumer group (KIP-447: fenced by `group_metadata`) and commit."""

    def abort(self) -> None:
        """Abort the open transaction: its records are never read by read_committed readers."""


class Consumer(Protocol):
    """A member of a consumer group; all calls on the thread that created it."""

    def subscribe(self, topics: list[str], on_assign: OnAssign, on_revoke: OnRevoke) -> None:
        """Join the group for `topics`; rebalances are incremental (cooperative)."""

    def poll(self, timeout: float, max_records: int) -> list[Record]:
        """Records fetched: waits up to `timeout` seconds for the first, then takes what is queued."""

    def pause(self, partitions: list[Partition]) -> None: ...

    def resume(self, partitions: list[Partition]) -> None: ...

    def assignment(self) -> list[Partition]: ...

    def commit(self, offsets: Offsets, asynchronous: bool) -> None:
        """Commit offsets with metadata; an asynchronous commit's failure is logged."""

    def committed(self, partitions: list[Partition]) -> dict[Partition, tuple[int, str] | None]:
        """What the group committed for `partitions` (None where nothing was)."""

    def seek(self, partition: Partition, offset: int | None) -> None:
        """Read `partition` from `offset` next (None: from its beginning)."""

    def lag(self) -> dict[Partition, int] | None:
        """Records behind the end of each assigned partition, from what fetches said (None: not known)."""

    def group_metadata(self) -> Any:
        """The group's generation and member id, for `TransactionalProducer.commit`."""

    def close(self) -> None:
        """Leave the group (running `on_revoke`) and disconnect."""


class Admin(Protocol):
    """Cluster-level calls (blocking)."""

    def ensure_topics(self, partitions: Mapping[str, int]) -> None:
        """Create the topics of `partitions` that are missing, or raise `MissingTopic`."""

    def healthy(self, timeout: float) -> bool:
        """Whether the cluster answers within `timeout` seconds."""

    def consumers(self, topics: Collection[str], timeout: float) -> dict[str, set[str]]:
        """For each of `topics`, the consumer groups (classic or consumer protocol) with a live
        member assigned at least one of its partitions now. One group listing per broker and one
        description per coordinator: cheap enough to repeat every few seconds."""

    def close(self) -> None: ...


class Engine(Protocol):
    """One Kafka client library behind the protocols above."""

    name: str

    def producer(self, *, idempotent: bool = True) -> Producer:
        """A producer tuned for request/reply: no linger, acks from all in-sync replicas."""

    def transactional_producer(self, transactional_id: str, timeout: float) -> TransactionalProducer:
        """A transactional producer, initialised (earlier producers with the id fenced)."""

    def consumer(self, group: str, *, from_end: bool, read_committed: bool, session_timeout: float,
                 max_records: int = 500, protocol: str = "classic",
                 on_commit_failed: OnCommitFailed | None = None) -> Consumer:
        """A group member. `from_end`: newly assigned partitions start at their end offset, resolved
        before `on_assign` runs, and offsets are never committed (reply readers); a partition
        *lost* with the group session (its coordinator unreachable for the session timeout, as
        in a broker failover) that comes back to this consumer is read on from where reading
        stopped, so records written meanwhile are not skipped. Else reading starts at the
        committed offset, or the beginning.

        `protocol`: ``classic`` (cooperative rebalancing, the client's assignor) or ``consumer``
        (KIP-848: the broker assigns each topic's partitions evenly, the `range` assignor).
        `on_commit_failed`: told when an asynchronous commit fails (else it is only logged)."""

    def admin(self, timeout: float = 30.0) -> Admin:
        """An admin client; raises `TransportError` saying why if Kafka cannot be reached."""
