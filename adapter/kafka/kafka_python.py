"""The pure-Python engine: kafka-python. For platforms without librdkafka wheels (musl, PyPy,
unusual architectures) and for Kerberos, which the librdkafka wheels lack.

kafka-python runs a sender thread per producer and an I/O thread per client; its consumer
calls the rebalance listener on that I/O thread while `poll` waits on the consumer's own. Settings
from `[kafka.client]` / `--kafka-option` use kafka-python's names (``security_protocol``,
``sasl_plain_username``...) and override ours.

One module for the whole engine (~660 lines), on purpose: it implements `contract.py` top to
bottom (producer, transactional producer, consumer, admin), next to what those parts share (the
settings, the translation of errors, kafka-python's quirks); `confluent.py` is its twin.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import ssl
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from kafka import ConsumerRebalanceListener, KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka import errors as kafka_errors
from kafka.admin import NewTopic
from kafka.errors import KafkaError, SaslAuthenticationFailedError, TopicAlreadyExistsError
from kafka.protocol.api_message import ApiMessage
from kafka.structs import OffsetAndMetadata

from adapter.errors import ConfigError, MissingTopic, RecordRefused, TransportError
from adapter.kafka import schemas
from adapter.kafka.balanced import TopicBalancedAssignor
from adapter.kafka.contract import (
    Offsets,
    OnAssign,
    OnCommitFailed,
    OnDelivery,
    OnRevoke,
    Partition,
    Record,
    new_topic_settings,
    record_limit,
)
from adapter.kafka.hints import tls_hint
from adapter.runtime.config import KafkaConfig

log = logging.getLogger(__name__)


@contextlib.contextmanager
def translated(action: str) -> Iterator[None]:
    """Re-raise kafka-python errors as `TransportError` saying what was being done."""
    try:
        yield
    except KafkaError as exc:
        raise _translate(action, exc) from exc


#: Errors about one record itself: producing it again fails the same way.
_REFUSED = (kafka_errors.MessageSizeTooLargeError, kafka_errors.UnknownTopicOrPartitionError,
            kafka_errors.InvalidTopicError, kafka_errors.RecordListTooLargeError, kafka_errors.InvalidRecordError,
            kafka_errors.CorruptRecordError, kafka_errors.TopicAuthorizationFailedError)


def _translate(action: str, exc: BaseException) -> TransportError:
    kind = RecordRefused if isinstance(exc, _REFUSED) else TransportError
    return kind(f"{action}: {type(exc).__name__}: {exc}")


class _ConnectFailures(logging.Filter):
    """Why kafka-python's connection attempts failed, taken from its log while clients connect.

    kafka-python 3.0.12 retries a bootstrap whose SASL authentication or TLS handshake fails
    until `bootstrap_timeout_ms` (30 s) and then raises a bare "Unable to bootstrap"; the
    reason is only an argument of its "kafka.net.manager" log records. While a capture is open
    that logger's level is lowered to WARNING, and this filter keeps hiding whatever the
    logging setup hid before (the CLIs hide kafka-python's reconnection noise).
    """

    def __init__(self) -> None:
        super().__init__()
        self._logger = logging.getLogger("kafka.net.manager")
        self._lock = threading.Lock()
        self._captures: list[list[Exception]] = []
        self._saved_level = logging.NOTSET
        self._shown_from = logging.NOTSET

    @contextlib.contextmanager
    def capture(self) -> Iterator[list[Exception]]:
        errors: list[Exception] = []
        with self._lock:
            if not self._captures:
                self._saved_level, self._shown_from = self._logger.level, self._logger.getEffectiveLevel()
                self._logger.addFilter(self)
                self._logger.setLevel(min(logging.WARNING, self._shown_from))
            self._captures.append(errors)
        try:
            yield errors
        finally:
            with self._lock:
                self._captures.remove(errors)
                if not self._captures:
                    self._logger.removeFilter(self)
                    self._logger.setLevel(self._saved_level)

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        failures = [arg for arg in args if isinstance(arg, (KafkaError, OSError))]
        for errors in tuple(self._captures):
            errors.extend(failures)
        return record.levelno >= self._shown_from


_connect_failures = _ConnectFailures()


def _keep_data_read_before_eof() -> None:
    """Work around kafka-python 3.0.12 dropping the bytes that arrive with a connection's end.

    Its transports' `_sock_recv` returns `(data, error)` and the caller aborts on the error
    without passing the data on. A broker that refuses SASL authentication sends its reason
    and closes at once, so most attempts ended in a bare "socket disconnected". Returning the
    data first lets it through; the next read reports the end again.
    """
    from kafka.net import transport

    for cls in (transport.KafkaTCPTransport, transport.KafkaSSLTransport):
        recv = cls.__dict__.get("_sock_recv")
        if recv is None or getattr(recv, "keeps_data", False):
            continue

        def _sock_recv(self: Any, _recv: Any = recv) -> tuple[bytes, Exception | None]:
            data, error = _recv(self)
            return (data, None) if data else (data, error)

        _sock_recv.keeps_data = True  # type: ignore[attr-defined]
        cls._sock_recv = _sock_recv


def _why(exc: KafkaError, failures: list[Exception], config: KafkaConfig) -> str:
    """One line on why connecting failed: authentication, TLS, or what kafka-python said."""
    options = config.client_options
    for failure in reversed(failures):
        if isinstance(failure, SaslAuthenticationFailedError):
            detail = str(failure.args[0] if failure.args else failure).removeprefix("SaslAuthenticationFailedError: ")
            user = options.get("sasl_plain_username")
            return f"authentication failed{f' for user {user!r}' if user else ''}: {detail}"
        if isinstance(failure.__context__, ssl.SSLError):  # kafka-python: "Handshake failed: ..."
            return f"TLS handshake failed: {failure.__context__}"
    said = f"{exc}" + (f" (last attempt: {failures[-1]})" if failures else "")
    protocol = str(options.get("security_protocol", "PLAINTEXT"))
    return said + tls_hint(config.bootstrap_servers[0], protocol, "security_protocol")


class KafkaPythonEngine:
    """`Engine` on kafka-python."""

    name = "kafka-python"

    def __init__(self, config: KafkaConfig) -> None:
        self.config = config

    @contextlib.contextmanager
    def _connecting(self) -> Iterator[None]:
        action = f"connecting to Kafka at {','.join(self.config.bootstrap_servers)}"
        _keep_data_read_before_eof()
        with _connect_failures.capture() as failures:
            try:
                yield
            except KafkaError as exc:
                raise TransportError(f"{action}: {_why(exc, [f for f in failures if f != exc], self.config)}") from exc

    def _settings(self, **ours: Any) -> dict[str, Any]:
        return {
            "bootstrap_servers": list(self.config.bootstrap_servers),
            "client_id": self.config.client_id,
            **ours,
            **self.config.client_options,
        }

    def producer(self, *, idempotent: bool = True, **extra: Any) -> _Producer:
        # send() may block this long for a topic's metadata (on the helper thread, see _Producer).
        settings = self._settings(acks="all", linger_ms=0, max_request_size=record_limit(self.config),
                                  max_block_ms=2000, allow_auto_create_topics=False, **extra)
        with self._connecting():
            return _Producer(_no_auto_create(KafkaProducer(**settings)))

    def transactional_producer(self, transactional_id: str, timeout: float) -> _TransactionalProducer:
        settings = self._settings(acks="all", linger_ms=0, max_request_size=record_limit(self.config), max_block_ms=5000,
                                  allow_auto_create_topics=False,
                                  transactional_id=transactional_id, transaction_timeout_ms=int(timeout * 1000),
                                  retry_backoff_ms=10,
                                  # kafka-python waits this long for a dead transaction coordinator's
                                  # connection before it looks the coordinator up again (30 s by
                                  # default: a broker crash stalled exactly-once handlers for minutes).
                                  request_timeout_ms=5000)
        with self._connecting():
            producer = _TransactionalProducer(_no_auto_create(KafkaProducer(**settings)))
        try:
            with translated(f"initialising transactions for {transactional_id}"):
                producer.raw.init_transactions()
        except BaseException:
            producer.close(0)
            raise
        return producer

    def consumer(self, group: str, *, from_end: bool, read_committed: bool, session_timeout: float,
                 max_records: int = 500, protocol: str = "classic",
                 on_commit_failed: OnCommitFailed | None = None) -> _Consumer:
        if protocol != "classic":
            raise ConfigError("group_protocol: kafka-python has no consumer protocol (KIP-848); use classic")
        settings = self._settings(
            group_id=group,
            auto_offset_reset="latest" if from_end else "earliest",
            enable_auto_commit=False,
            max_partition_fetch_bytes=record_limit(self.config),
            max_poll_records=max_records,
            isolation_level="read_committed" if read_committed else "read_uncommitted",
            # Every topic spread evenly over the members, and a member joining or leaving moves
            # only the partitions that must move (adapter.kafka.balanced).
            partition_assignment_strategy=[TopicBalancedAssignor],
            session_timeout_ms=int(session_timeout * 1000),
            heartbeat_interval_ms=max(500, int(session_timeout * 1000 / 6)),
            fetch_max_wait_ms=100,
        )
        with self._connecting():
            return _Consumer(KafkaConsumer(**settings), from_end, on_commit_failed)

    def admin(self, timeout: float = 30.0) -> _Admin:
        def connect(timeout: float) -> KafkaAdminClient:
            with self._connecting():
                return KafkaAdminClient(**self._settings(request_timeout_ms=int(timeout * 1000),
                                                         bootstrap_timeout_ms=int(timeout * 1000)))

        return _Admin(connect(timeout), connect, self.config)


def _no_auto_create(producer: KafkaProducer) -> KafkaProducer:
    # kafka-python 3.0.12 takes allow_auto_create_topics but never hands it to the cluster metadata
    # its network manager builds, whose metadata requests then ask the broker to create any topic a
    # record names (checked: a record to a new topic created it). Set it where it is read.
    metadata = getattr(producer, "_metadata", None)
    if metadata is not None and "allow_auto_create_topics" in getattr(metadata, "config", {}):
        metadata.config["allow_auto_create_topics"] = False
    else:
        log.warning("kafka-python changed: cannot stop its producers from creating topics")
    return producer


class _Producer:
    """kafka-python's `send` blocks until it knows the topic (up to max_block_ms): the first
    records to a topic go through a helper thread, so that `produce` never blocks its caller
    (the event loop); later ones go straight, once none of that topic's wait there (order)."""

    def __init__(self, producer: KafkaProducer) -> None:
        self.raw = producer
        self._lock = threading.Lock()
        self._known: set[str] = set()
        self._waiting: dict[str, int] = {}
        self._helper = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kafka-python-metadata")

    def produce(self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]],
                partition: int | None = None, on_delivery: OnDelivery | None = None) -> None:
        with self._lock:
            later = topic not in self._known or topic in self._waiting
            if later:
                self._waiting[topic] = self._waiting.get(topic, 0) + 1
        if later:
            self._helper.submit(self._send_later, topic, value, key, headers, partition, on_delivery)
        else:
            self._send(topic, value, key, headers, partition, on_delivery)

    def _send(self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]],
              partition: int | None, on_delivery: OnDelivery | None) -> None:
        try:
            with translated(f"producing to {topic}"):
                future = self.raw.send(topic, value=value, key=key, headers=list(headers), partition=partition)
        except ValueError as exc:  # kafka-python's word for a partition the topic does not have
            raise RecordRefused(f"producing to {topic}: {exc}") from exc
        except TransportError as exc:
            if "KafkaTimeoutError" in str(exc):  # no metadata within max_block_ms: no such topic, most likely
                raise RecordRefused(f"{exc} (does the topic exist?)") from exc
            raise
        if on_delivery is not None:
            future.add_callback(lambda _: on_delivery(None))
            future.add_errback(lambda exc: on_delivery(_translate(f"producing to {topic}", exc)))

    def _send_later(self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]],
                    partition: int | None, on_delivery: OnDelivery | None) -> None:
        try:
            self._send(topic, value, key, headers, partition, on_delivery)
            with self._lock:
                self._known.add(topic)
        except TransportError as exc:
            if on_delivery is not None:
                on_delivery(exc)
            else:
                log.warning("%s", exc)
        finally:
            with self._lock:
                self._waiting[topic] -= 1
                if not self._waiting[topic]:
                    del self._waiting[topic]

    def _sent_later(self) -> None:
        """Wait until the records handed to the helper thread are in the producer."""
        self._helper.submit(lambda: None).result()

    def flush(self, timeout: float) -> None:
        self._sent_later()
        with translated("flushing"):
            self.raw.flush(timeout)

    def close(self, timeout: float) -> None:
        self._helper.shutdown(wait=True)
        try:
            self.raw.close(timeout)
        except KafkaError as exc:
            log.debug("closing a producer: %s", exc)


class _TransactionalProducer(_Producer):
    #: How long a transaction request may wait for its coordinator. kafka-python's own
    #: commit/abort/send_offsets wait for ever, and after the coordinator's broker crashed
    #: (3.0.12) they were seen never to return: the handler stalled for good. A timeout makes it a
    #: TransportError, and the handler replaces the producer, which finds the new coordinator.
    WAIT = 10.0

    def begin(self) -> None:
        with translated("beginning a transaction"):
            self.raw.begin_transaction()

    def commit(self, offsets: Offsets, group_metadata: Any) -> None:
        self._sent_later()  # what was sent into this transaction is in it
        manager = self.raw._transaction_manager
        with translated("committing a transaction"):
            if offsets:
                commit = {TopicPartition(t, p): OffsetAndMetadata(o, meta, -1) for (t, p), (o, meta) in offsets.items()}
                self._bounded("sending offsets to the transaction", lambda: manager.send_offsets_to_transaction(
                    commit, group_metadata))
            self._bounded("committing a transaction", manager.begin_commit)

    def abort(self) -> None:
        self._sent_later()
        with translated("aborting a transaction"):
            self._bounded("aborting a transaction", self.raw._transaction_manager.begin_abort)

    def _bounded(self, what: str, start: Callable[[], Any]) -> None:
        # What KafkaProducer.commit_transaction() and its siblings do, with a bounded wait.
        result = start()
        self.raw._sender.wakeup()
        if not result.wait(timeout_ms=int(self.WAIT * 1000)):
            raise TransportError(f"{what}: no answer from the transaction coordinator within {self.WAIT:g}s")


class _Listener(ConsumerRebalanceListener):
    """kafka-python's rebalance listener, on its I/O thread while the consumer's thread polls."""

    def __init__(self, owner: _Consumer, on_assign: OnAssign, on_revoke: OnRevoke) -> None:
        self._owner, self._on_assign, self._on_revoke = owner, on_assign, on_revoke

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        self._revoke(revoked, lost=False)

    def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        self._revoke(lost, lost=True)

    def _revoke(self, tps: set[TopicPartition], lost: bool) -> None:
        if not tps:
            return
        parts = sorted((tp.topic, tp.partition) for tp in tps)
        self._owner.unresolved.difference_update(parts)
        self._owner.forget(parts, lost)
        offsets = self._on_revoke(parts, lost)
        if offsets and not lost:
            # A blocking commit is refused on this thread; the asynchronous one still goes out
            # before the group is joined again.
            try:
                self._owner.commit(offsets, asynchronous=True)
            except TransportError as exc:
                log.warning("commit on revocation failed (the records will be redelivered): %s", exc)

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        parts = sorted((tp.topic, tp.partition) for tp in assigned)
        if self._owner.from_end:
            self._owner.unresolved.update(parts)  # resolved on the polling thread, then announced
        elif parts:
            self._on_assign(parts)


class _Consumer:
    def __init__(self, consumer: KafkaConsumer, from_end: bool, on_commit_failed: OnCommitFailed | None = None) -> None:
        self.raw = consumer
        self.from_end = from_end
        self._on_commit_failed = on_commit_failed
        self.unresolved: set[Partition] = set()
        self._on_assign: OnAssign | None = None
        #: from_end: the next offset to read of each assigned partition, and of those lost with
        #: the group session (read on from there if they come back).
        self._positions: dict[Partition, int] = {}
        self._lost_at: dict[Partition, int] = {}

    def forget(self, parts: list[Partition], lost: bool) -> None:
        """Partitions revoked or lost (on kafka-python's I/O thread, while `poll` runs)."""
        for part in parts:
            position = self._positions.pop(part, None)
            if lost and position is not None:
                self._lost_at[part] = position

    def subscribe(self, topics: list[str], on_assign: OnAssign, on_revoke: OnRevoke) -> None:
        self._on_assign = on_assign
        with translated(f"subscribing to {', '.join(topics)}"):
            self.raw.subscribe(topics, listener=_Listener(self, on_assign, on_revoke))
        # Metadata after subscribing, before the first poll: else the group is joined twice.
        for topic in topics:
            _retrying(f"subscribing to {topic}", functools.partial(self.raw.partitions_for_topic, topic))

    def poll(self, timeout: float, max_records: int) -> list[Record]:
        with translated("fetching"):
            batches = self.raw.poll(timeout_ms=int(timeout * 1000), max_records=max_records)
            if self.unresolved:
                self._resolve()
        if self.from_end:
            for tp, records in batches.items():
                if records:
                    self._positions[(tp.topic, tp.partition)] = records[-1].offset + 1
        return [Record(r.topic, r.partition, r.offset, r.key, r.value, [(n, bytes(v or b"")) for n, v in r.headers or ()])
                for records in batches.values() for r in records]

    def _resolve(self) -> None:
        # position() makes the consumer fetch the end offset now; only then may a request name
        # the partition, so its reply cannot fall before our position.
        parts = sorted(self.unresolved)
        for t, p in parts:
            tp = TopicPartition(t, p)
            resume = self._lost_at.pop((t, p), None)
            if resume is not None:
                log.info("%s/%d is back after a lost group session: reading on from offset %d", t, p, resume)
                self.raw.seek(tp, resume)
            else:
                self.raw.seek_to_end(tp)
            # Bounded: a failure leaves the partition unresolved, and the next poll tries again.
            position = self.raw.position(tp, timeout_ms=10_000)
            if position is not None:
                self._positions[(t, p)] = position
        self.unresolved.clear()
        assert self._on_assign is not None
        self._on_assign(parts)

    def pause(self, partitions: list[Partition]) -> None:
        self.raw.pause(*(TopicPartition(t, p) for t, p in partitions))

    def resume(self, partitions: list[Partition]) -> None:
        self.raw.resume(*(TopicPartition(t, p) for t, p in partitions))

    def assignment(self) -> list[Partition]:
        return sorted((tp.topic, tp.partition) for tp in self.raw.assignment())

    def commit(self, offsets: Offsets, asynchronous: bool) -> None:
        if not offsets:
            return
        commit = {TopicPartition(t, p): OffsetAndMetadata(o, meta, -1) for (t, p), (o, meta) in offsets.items()}
        try:
            if asynchronous:
                self.raw.commit_async(commit, self._commit_done)
            else:
                self.raw.commit(commit)
        except Exception as exc:  # kafka-python raises more than KafkaError while the broker is away
            raise TransportError(f"committing offsets: {type(exc).__name__}: {exc}") from exc

    def _commit_done(self, offsets: Any, result: Any) -> None:
        if not isinstance(result, Exception):
            return
        if self._on_commit_failed is not None:
            self._on_commit_failed([(tp.topic, tp.partition) for tp in offsets], f"{type(result).__name__}: {result}")
        else:
            log.warning("commit failed (the records will be redelivered): %s", result)

    def committed(self, partitions: list[Partition]) -> dict[Partition, tuple[int, str] | None]:
        result: dict[Partition, tuple[int, str] | None] = {}
        with translated("reading committed offsets"):
            for t, p in partitions:
                found = self.raw.committed(TopicPartition(t, p), metadata=True)
                result[(t, p)] = None if found is None else (found.offset, found.metadata or "")
        return result

    def seek(self, partition: Partition, offset: int | None) -> None:
        tp = TopicPartition(*partition)
        with translated(f"seeking {partition[0]}/{partition[1]}"):
            if offset is None:
                self.raw.seek_to_beginning(tp)
            else:
                self.raw.seek(tp, offset)

    def lag(self) -> dict[Partition, int] | None:
        # Every fetch response carries the partition's end offset (highwater), so this asks
        # the broker nothing, except for paused partitions: they are not fetched meanwhile.
        consumer = self.raw
        paused = consumer.paused()
        ends = {tp: consumer.highwater(tp) for tp in consumer.assignment() if tp not in paused}
        lags: dict[Partition, int] = {}
        try:
            if paused:
                ends.update(consumer.end_offsets(list(paused), timeout_ms=1000))
            for tp, end in ends.items():
                position = None if end is None else consumer.position(tp, timeout_ms=0)
                if position is not None:  # both are known once the partition has been fetched
                    lags[(tp.topic, tp.partition)] = max(0, end - position)
        except KafkaError as exc:
            log.debug("could not sample the consumer lag: %s", exc)
            return None
        return lags

    def group_metadata(self) -> Any:
        return self.raw.group_metadata()

    def close(self) -> None:
        try:
            self.raw.close(autocommit=False)
        except KafkaError as exc:
            log.debug("closing a consumer: %s", exc)




class _Admin:
    def __init__(self, client: KafkaAdminClient, connect: Callable[[float], KafkaAdminClient], config: KafkaConfig) -> None:
        self._client: KafkaAdminClient | None = client
        self._connect = connect
        self._config = config
        self._lock = threading.Lock()

    def ensure_topics(self, partitions: Mapping[str, int]) -> None:
        client = self._client or self._connect(30.0)
        existing = set(_retrying("listing topics", client.list_topics))
        missing = sorted(set(partitions) - existing)
        if not missing:
            return
        if not self._config.create_topics:
            raise MissingTopic(f"topic(s) missing and topic creation is off: {', '.join(missing)}")
        brokers = len(_retrying("describing the cluster", client.describe_cluster)["brokers"])
        replication, settings = new_topic_settings(self._config, brokers)
        new = [NewTopic(name, partitions[name], replication, topic_configs=settings) for name in missing]
        try:
            with translated(f"creating topics {', '.join(missing)}"):
                client.create_topics(new, wait_for_metadata=True)
        except TransportError as exc:
            if not isinstance(exc.__cause__, TopicAlreadyExistsError):
                raise
        log.info("created topics %s (%d replicas, min.insync.replicas %s)", ", ".join(missing), replication,
                 settings["min.insync.replicas"])

    def healthy(self, timeout: float) -> bool:
        with self._lock:
            try:
                if self._client is None:
                    self._client = self._connect(timeout)
                _retrying("checking the cluster", self._client.describe_cluster, timeout)
                return True
            except Exception as exc:  # any failure means "not reachable now"
                log.debug("kafka health check failed: %s", exc)
                # A kafka-python admin client does not always recover from a broker restart.
                self.close()
                return False

    def consumers(self, topics: Collection[str], timeout: float) -> dict[str, set[str]]:
        wanted = set(topics)
        found: dict[str, set[str]] = {topic: set() for topic in wanted}
        with self._lock:
            if self._client is None:
                self._client = self._connect(timeout)
            try:
                return self._consumers(self._client, wanted, found)
            except Exception:
                self.close()  # as in `healthy`: the client may not recover from a broker restart
                raise

    @staticmethod
    def _consumers(client: KafkaAdminClient, wanted: set[str], found: dict[str, set[str]]) -> dict[str, set[str]]:
        with translated("listing consumer groups"):
            groups = [g for g in client.list_groups()
                      if g.get("protocol_type") == "consumer" and g.get("group_state") not in ("Empty", "Dead")]
        classic = [g["group_id"] for g in groups if g.get("group_type") != "consumer"]
        modern = [g["group_id"] for g in groups if g.get("group_type") == "consumer"]
        if classic:
            with translated("describing consumer groups"):
                described = client.describe_groups(classic)
            for group, description in described.items():
                error = description.get("error")
                if error and "GroupIdNotFound" not in str(error):  # else: gone since the listing
                    raise TransportError(f"describing consumer group {group}: {error}")
                for member in description.get("members") or ():
                    for assigned in (member.get("member_assignment") or {}).get("assigned_partitions") or ():
                        if assigned["topic"] in wanted and assigned["partitions"]:
                            found[assigned["topic"]].add(group)
        if modern:
            with translated("describing consumer groups"):
                for group, topic in client._manager.run(_consumer_groups_topics, client, modern):
                    if topic in wanted:
                        found[topic].add(group)
        return found

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


#: Kafka's error code for a group that does not exist (any more).
GROUP_ID_NOT_FOUND = 69


class ConsumerGroupDescribeRequest(ApiMessage, load_json=schemas):  # type: ignore[call-arg]
    """KIP-848's DescribeGroups, which kafka-python 3.0 lacks (schema in `adapter.kafka.schemas`)."""


class ConsumerGroupDescribeResponse(ApiMessage, load_json=schemas):  # type: ignore[call-arg]
    pass


async def _consumer_groups_topics(client: KafkaAdminClient, groups: list[str]) -> list[tuple[str, str]]:
    """(group, topic) for each topic a live member of the consumer-protocol `groups` is assigned.

    Runs on kafka-python's network thread (`client._manager.run`): its admin client offers no
    call for these groups, whose classic DescribeGroups answers "not a classic group"."""
    coordinators = await client._find_coordinator_ids(groups)
    found = []
    for node in set(coordinators.values()):
        request = ConsumerGroupDescribeRequest(group_ids=[g for g, n in coordinators.items() if n == node],
                                               include_authorized_operations=False)
        response = await client._manager.send(request, node_id=node)
        for group in response.groups:
            if group.error_code == GROUP_ID_NOT_FOUND:  # gone since the listing
                continue
            if group.error_code:
                raise kafka_errors.for_code(group.error_code)(f"describing consumer group {group.group_id}")
            found += [(group.group_id, assigned.topic_name) for member in group.members
                      for assigned in member.assignment.topic_partitions if assigned.partitions]
    return found


#: kafka-python errors of one unreachable broker: another may answer the same request.
_ONE_BROKER_AWAY = (kafka_errors.KafkaConnectionError, kafka_errors.NodeNotReadyError, kafka_errors.RequestTimedOutError,
                    kafka_errors.KafkaTimeoutError)


def _retrying(what: str, call: Callable[[], Any], timeout: float = 30.0) -> Any:
    """`call()`, tried again for up to `timeout` s while it fails on one unreachable broker.

    kafka-python's admin client sends a request to one broker and reports that broker's
    connection error: with one node of a cluster down, a frontend could not even start."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with translated(what):
                return call()
        except TransportError as exc:
            if not isinstance(exc.__cause__, _ONE_BROKER_AWAY) or time.monotonic() >= deadline:
                raise
            log.debug("%s failed, trying again: %s", what, exc)
            time.sleep(0.5)
