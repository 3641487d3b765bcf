"""The default engine: confluent-kafka, the Python binding of librdkafka (C).

librdkafka does the network, batching and retries on threads of its own, without the GIL; its
callbacks (delivery reports, rebalances, logs) run only inside `poll`/`consume`/`flush`, on the
thread that calls them. So each producer has one thread that polls it (`_Poller`), and a
consumer's rebalance callbacks run on the thread that polls the consumer.

Settings from `[kafka.client]` / `--kafka-option` use librdkafka's dotted names
(``security.protocol``, ``sasl.username``...) and override ours.

One module for the whole engine (~650 lines), on purpose: it implements `contract.py` top to
bottom (producer, transactional producer, consumer, admin), next to what those parts share (the
settings, the translation of errors, librdkafka's traps); `kafka_python.py` is its twin.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    OFFSET_INVALID,
    Consumer,
    ConsumerGroupState,
    KafkaError,
    KafkaException,
    Producer,
)
from confluent_kafka import TopicPartition as TP
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic, ResourceType

from adapter.errors import MissingTopic, RecordRefused, TransportError
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
from adapter.kafka.group_lookup import GroupLookup
from adapter.kafka.hints import tls_hint
from adapter.runtime.config import KafkaConfig

log = logging.getLogger(__name__)
_librdkafka_log = logging.getLogger("librdkafka")


def _reason(exc: BaseException) -> str:
    error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else exc
    if isinstance(error, KafkaError):
        return f"{error.name()}: {error.str()}"
    return f"{type(exc).__name__}: {exc}"


#: Errors about one record itself: producing it again fails the same way.
_REFUSED = frozenset({
    KafkaError.MSG_SIZE_TOO_LARGE, KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC,
    KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.INVALID_RECORD, KafkaError.TOPIC_EXCEPTION,
    KafkaError.RECORD_LIST_TOO_LARGE, KafkaError.TOPIC_AUTHORIZATION_FAILED})


def _produce_error(topic: str, error: KafkaError) -> TransportError:
    kind = RecordRefused if error.code() in _REFUSED else TransportError
    return kind(f"producing to {topic}: {error.name()}: {error.str()}")


@contextmanager
def translated(action: str) -> Iterator[None]:
    """Re-raise librdkafka errors as `TransportError` saying what was being done."""
    try:
        yield
    except (KafkaException, BufferError) as exc:
        raise TransportError(f"{action}: {_reason(exc)}") from exc


def _with_metadata(offsets: Offsets) -> list[TP]:
    # confluent-kafka takes no None for metadata: leave it out when there is none.
    return [TP(t, p, offset, metadata=meta) if meta else TP(t, p, offset) for (t, p), (offset, meta) in offsets.items()]


#: Seconds a newly assigned reply partition's end offset is asked for before giving up.
END_OFFSET_WAIT = 15.0
#: Words of librdkafka's errors that retrying cannot fix: a refused password, certificate or protocol.
_HOPELESS = ("SASL authentication error", "SSL handshake failed", "incorrect security.protocol")


#: Tries of a topic creation, and the seconds each waits for the controller's answer.
CREATE_ATTEMPTS, CREATE_TIMEOUT = 3, 10.0
#: The topic a reachability probe asks about: any name does; this one exists once a group has committed.
_PROBE_TOPIC = "__consumer_offsets"


def _probe(client: AdminClient, timeout: float) -> None:
    """Raise unless a broker answers within `timeout`.

    A metadata request for one topic, which any live broker answers. Not DescribeCluster:
    librdkafka sends that to the controller its cached metadata names, and KRaft brokers name a
    random broker, a dead one included, until they fence it; the cache then keeps that name until
    the next refresh (5 min by default), so a client made while a broker was down failed every
    probe (measured on the 3-node cluster: "Timed out waiting for controller", for 30 s at
    start-up). Not a metadata request for every topic either: that lists the whole cluster, which
    takes seconds on a big one (14,000 partitions).

    In tries of a third of `timeout`: a request that went to a broker just before it crashed
    waits for its whole timeout (measured: the first probe after a kill -9 of the broker the
    client last used, in 2 rounds of 3), and the next one goes to a live broker."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            client.list_topics(topic=_PROBE_TOPIC, timeout=max(0.1, min(left, timeout / 3)))
            return
        except KafkaException:
            if deadline - time.monotonic() <= 0.1:
                raise


class _Errors:
    """librdkafka's error callback: keeps the last errors, to say why a client cannot connect."""

    def __init__(self) -> None:
        self.last: list[str] = []

    def __call__(self, error: KafkaError) -> None:
        self.last = [*self.last[-4:], error.str()]
        if error.fatal():
            log.error("kafka client: fatal error: %s", error.str())
        else:
            # Reconnection attempts while a broker is away: the health check reports the outage.
            log.debug("kafka client: %s", error.str())


class ConfluentEngine:
    """`Engine` on confluent-kafka."""

    name = "confluent"

    def __init__(self, config: KafkaConfig) -> None:
        self.config = config

    def _settings(self, errors: _Errors, **ours: Any) -> dict[str, Any]:
        return {
            "bootstrap.servers": ",".join(self.config.bootstrap_servers),
            "client.id": self.config.client_id,
            "logger": _librdkafka_log,
            "error_cb": errors,
            # Request/reply sends small requests one after another: never hold one back (Nagle).
            "socket.nagle.disable": True,
            **ours,
            **self.config.client_options,
        }

    def producer(self, *, idempotent: bool = True) -> _Producer:
        errors = _Errors()
        settings = self._settings(
            errors,
            **{"acks": "all", "enable.idempotence": idempotent, "linger.ms": 0,
               "message.max.bytes": record_limit(self.config),
               # Records name their topics: a typo must not create one, and a record to a topic that
               # does not exist fails after 5 s (librdkafka waits 30 s by default for one being created).
               "allow.auto.create.topics": False, "topic.metadata.propagation.max.ms": 5000,
               # A key lands on the partition Java clients and kafka-python pick for it (murmur2),
               # so one key keeps one partition whatever the engine or language of the caller.
               "partitioner": "murmur2_random"})
        with translated("creating a producer"):
            return _Producer(Producer(settings), self._explain, errors)

    def transactional_producer(self, transactional_id: str, timeout: float) -> _TransactionalProducer:
        errors = _Errors()
        settings = self._settings(
            errors,
            **{"acks": "all", "enable.idempotence": True, "linger.ms": 0,
               "message.max.bytes": record_limit(self.config),
               "allow.auto.create.topics": False, "topic.metadata.propagation.max.ms": 5000,
               "partitioner": "murmur2_random",
               "transactional.id": transactional_id,
               "transaction.timeout.ms": int(timeout * 1000),
               # CONCURRENT_TRANSACTIONS lasts milliseconds: retry soon (the default, 100 ms, was
               # the exactly-once latency tail with kafka-python).
               "retry.backoff.ms": 10})
        with translated("creating a transactional producer"):
            producer = _TransactionalProducer(Producer(settings), self._explain, errors)
        try:
            with translated(f"initialising transactions for {transactional_id}"):
                producer.raw.init_transactions(30)
        except BaseException:
            producer.close(0)
            raise
        return producer

    def consumer(self, group: str, *, from_end: bool, read_committed: bool, session_timeout: float,
                 max_records: int = 500, protocol: str = "classic",
                 on_commit_failed: OnCommitFailed | None = None) -> _Consumer:
        errors = _Errors()

        def committed(error: KafkaError | None, tps: list[TP]) -> None:
            failed = [(tp.topic, tp.partition) for tp in tps if tp.error is not None]
            if error is None and not failed:
                return
            reason = str(error.str() if error is not None else tps[0].error)
            if on_commit_failed is not None:
                on_commit_failed(failed or [(tp.topic, tp.partition) for tp in tps], reason)
            else:
                log.warning("commit failed (the records will be redelivered): %s", reason)

        ours: dict[str, Any] = {
            "group.id": group,
            "auto.offset.reset": "latest" if from_end else "earliest",
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "isolation.level": "read_committed" if read_committed else "read_uncommitted",
            # A fetch returns as soon as a record arrives: a long wait costs no latency, and
            # a short one would make idle consumers fetch continuously.
            "fetch.wait.max.ms": 100,
            "max.partition.fetch.bytes": record_limit(self.config),
            "allow.auto.create.topics": False,
            "on_commit": committed,
        }
        if protocol == "consumer":
            # KIP-848: the broker assigns, `range` spreading each topic evenly over the members;
            # rebalances are incremental. Session timeout and heartbeats are the group's settings.
            ours.update({"group.protocol": "consumer", "group.remote.assignor": "range"})
            self._set_group_session_timeout(group, session_timeout)
        else:
            ours.update({"partition.assignment.strategy": "cooperative-sticky",
                         "session.timeout.ms": int(session_timeout * 1000),
                         "heartbeat.interval.ms": max(500, int(session_timeout * 1000 / 6))})
        with translated("creating a consumer"):
            return _Consumer(Consumer(self._settings(errors, **ours)), from_end, errors)

    def _set_group_session_timeout(self, group: str, timeout: float) -> None:
        """Ask the broker for `timeout` as the group's session timeout (KIP-848 groups keep it there).

        Brokers refuse values below `group.consumer.min.session.timeout.ms` (45 s by default) and
        clients without ALTER_CONFIGS on the group: then the broker's setting stays, and we say so."""
        errors = _Errors()
        value = str(int(timeout * 1000))
        entry = ConfigEntry("consumer.session.timeout.ms", value, incremental_operation=AlterConfigOpType.SET)
        try:
            client = AdminClient(self._settings(errors))
            resource = ConfigResource(ResourceType.GROUP, group, incremental_configs=[entry])
            for future in client.incremental_alter_configs([resource], request_timeout=10).values():
                future.result()
        except KafkaException as exc:
            log.warning("group %s keeps the broker's session timeout (a dead process's partitions move after it), "
                        "not %g s: %s", group, timeout, _reason(exc))

    def admin(self, timeout: float = 30.0) -> _Admin:
        errors = _Errors()
        with translated("creating an admin client"):
            # A metadata request naming a missing topic must not create it (brokers with
            # auto.create.topics.enable would, with their defaults): ensure_topics asks per topic.
            client = AdminClient(self._settings(errors, **{"allow.auto.create.topics": False}))
        # librdkafka retries a failing connection for ever; a refused password, certificate or
        # protocol will not fix itself, so those end the wait at once.
        deadline = time.monotonic() + timeout
        protocol = str(self.config.client_options.get("security.protocol", "PLAINTEXT"))
        tls_checked = False
        while True:
            try:
                wait = max(0.1, min(1.0, deadline - time.monotonic()))
                _probe(client, wait)
                return _Admin(client, self.config, errors)
            except (KafkaException, TimeoutError) as exc:
                client.poll(0)  # serves the error callback: why the connection failed
                hopeless = any(word in said for said in errors.last for word in _HOPELESS)
                if not hopeless and not tls_checked:
                    # A plaintext client at a TLS listener is only ever disconnected, and librdkafka
                    # says so in its log, not to the error callback: after the first failed probe,
                    # look once whether the port speaks TLS (instant on a refused port).
                    tls_checked = True
                    hopeless = bool(tls_hint(self.config.bootstrap_servers[0], protocol, "security.protocol"))
                if hopeless or time.monotonic() >= deadline:
                    raise TransportError(self._explain(exc, errors)) from exc

    def _explain(self, exc: BaseException, errors: _Errors | None = None) -> str:
        where = ",".join(self.config.bootstrap_servers)
        seen = errors.last if errors else []
        telling = [e for e in seen if any(word in e for word in _HOPELESS)]
        said = (telling or seen or [_reason(exc)])[-1]
        said = re.sub(r"^\w+://\S+?/(bootstrap|\d+): ", "", said)
        said = re.sub(r" \(after \d+ms in state \w+\)$", "", said)
        if "SASL authentication error" in said:
            user = self.config.client_options.get("sasl.username")
            detail = said.split("SASL authentication error: ", 1)[-1]
            return f"connecting to Kafka at {where}: authentication failed{f' for user {user!r}' if user else ''}: {detail}"
        if "SSL handshake failed" in said:
            return f"connecting to Kafka at {where}: TLS handshake failed: {said.split('SSL handshake failed: ', 1)[-1]}"
        protocol = str(self.config.client_options.get("security.protocol", "PLAINTEXT"))
        return f"connecting to Kafka at {where}: {said}{tls_hint(self.config.bootstrap_servers[0], protocol, 'security.protocol')}"


#: Seconds records may wait for Kafka without any delivery report before the poller warns (again).
STALLED_AFTER = 30.0


class _Poller:
    """A thread serving a producer's delivery reports (they run only inside poll).

    It warns when records have waited STALLED_AFTER seconds with no report at all, with
    librdkafka's last errors: a reply stuck in a producer is otherwise silent (librdkafka retries
    until message.timeout.ms, 5 min by default)."""

    def __init__(self, producer: Producer, name: str, errors: _Errors) -> None:
        self._producer = producer
        self._errors = errors
        self._stopping = threading.Event()
        #: When the last delivery report came (set by the producer's callbacks, on this thread).
        self.reported = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        warned = 0.0
        while not self._stopping.is_set():
            try:
                self._producer.poll(0.1)
                now = time.monotonic()
                if not len(self._producer):
                    self.reported = now
                elif now - max(self.reported, warned) >= STALLED_AFTER:
                    log.warning("producer: %d records have waited %.0f s for Kafka with no delivery report; "
                                "last client errors: %s", len(self._producer), now - self.reported,
                                "; ".join(self._errors.last) or "none")
                    warned = now
            except KafkaException as exc:  # a fatal error (fenced, say): whoever uses the producer sees it too
                log.debug("producer: %s", _reason(exc))
                self._stopping.wait(0.1)
            except Exception:  # a failing callback must not end the thread: every later report would be lost
                log.exception("delivery report callback failed")

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)


class _Producer:
    def __init__(self, producer: Producer, explain: Any, errors: _Errors) -> None:
        self.raw = producer
        self._explain = explain
        self._poller = _Poller(producer, "kafka-delivery", errors)

    def produce(self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]],
                partition: int | None = None, on_delivery: OnDelivery | None = None) -> None:
        poller = self._poller

        def callback(error: KafkaError | None, _message: Any) -> None:
            poller.reported = time.monotonic()
            if on_delivery is not None:
                on_delivery(None if error is None else _produce_error(topic, error))
        try:
            sent: Any = headers  # confluent-kafka's stubs want the header values' type wider
            if partition is None:
                self.raw.produce(topic, value, key, on_delivery=callback, headers=sent)
            else:
                self.raw.produce(topic, value, key, partition, on_delivery=callback, headers=sent)
        except BufferError as exc:
            raise TransportError(f"producing to {topic}: the local send queue is full ({exc})") from exc
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) else None
            if error is not None:
                raise _produce_error(topic, error) from exc
            raise TransportError(f"producing to {topic}: {_reason(exc)}") from exc

    def flush(self, timeout: float) -> None:
        self.raw.flush(timeout)

    def close(self, timeout: float) -> None:
        left = self.raw.flush(timeout)
        if left:
            log.warning("%d records were not delivered before the producer closed", left)
        self._poller.stop()


class _TransactionalProducer(_Producer):
    def begin(self) -> None:
        with translated("beginning a transaction"):
            self.raw.begin_transaction()

    def commit(self, offsets: Offsets, group_metadata: Any) -> None:
        with translated("committing a transaction"):
            if offsets:
                tps = _with_metadata(offsets)
                self.raw.send_offsets_to_transaction(tps, group_metadata, 30)
            self.raw.commit_transaction(30)

    def abort(self) -> None:
        with translated("aborting a transaction"):
            self.raw.abort_transaction(30)


class _Consumer:
    def __init__(self, consumer: Consumer, from_end: bool, errors: _Errors) -> None:
        self.raw = consumer
        self._from_end = from_end
        self._errors = errors
        self._assigned: set[Partition] = set()
        #: Committed offsets of partitions not read since their assignment (for `lag`).
        self._starts: dict[Partition, int] = {}
        #: from_end: the next offset to read of each assigned partition, and of those lost with
        #: the group session (read on from there if they come back).
        self._positions: dict[Partition, int] = {}
        self._lost_at: dict[Partition, int] = {}

    def subscribe(self, topics: list[str], on_assign: OnAssign, on_revoke: OnRevoke) -> None:
        def assigned(consumer: Consumer, tps: list[TP]) -> None:
            if self._from_end:
                tps = [self._resume_or_end(tp) for tp in tps]
                self._positions.update({(tp.topic, tp.partition): tp.offset for tp in tps if tp.offset >= 0})
            consumer.incremental_assign(tps)
            parts = [(tp.topic, tp.partition) for tp in tps]
            self._assigned.update(parts)
            on_assign(parts)

        def revoked(consumer: Consumer, tps: list[TP], lost: bool = False) -> None:
            parts = [(tp.topic, tp.partition) for tp in tps]
            try:
                offsets = on_revoke(parts, lost)
                if offsets and not lost:
                    self.commit(offsets, asynchronous=False)
            except TransportError as exc:
                log.warning("commit on revocation failed (the records will be redelivered): %s", exc)
            finally:
                self._assigned.difference_update(parts)
                for part in parts:
                    self._starts.pop(part, None)
                    position = self._positions.pop(part, None)
                    if lost and position is not None:
                        self._lost_at[part] = position
                consumer.incremental_unassign(tps)

        with translated(f"subscribing to {', '.join(topics)}"):
            self.raw.subscribe(topics, on_assign=assigned, on_revoke=revoked,
                               on_lost=lambda consumer, tps: revoked(consumer, tps, True))

    def _resume_or_end(self, tp: TP) -> TP:
        position = self._lost_at.pop((tp.topic, tp.partition), None)
        if position is not None:
            log.info("%s/%d is back after a lost group session: reading on from offset %d",
                     tp.topic, tp.partition, position)
            return TP(tp.topic, tp.partition, position)
        return self._at_end(tp)

    def _at_end(self, tp: TP) -> TP:
        # The end offset now, before any request may name the partition: its reply cannot fall
        # before our position. OFFSET_END would be resolved later, by the fetcher. A topic
        # created a moment ago may have no leader in this client's metadata yet: retry.
        deadline = time.monotonic() + END_OFFSET_WAIT
        delay = 0.01
        while True:
            try:
                _low, high = self.raw.get_watermark_offsets(tp, timeout=5)
                return TP(tp.topic, tp.partition, high)
            except KafkaException as exc:
                if time.monotonic() + delay > deadline:
                    log.error("no end offset of %s/%d after %g s (%s): reading it from the end as the fetcher "
                              "finds it; a reply sent meanwhile may be missed", tp.topic, tp.partition,
                              END_OFFSET_WAIT, _reason(exc))
                    return TP(tp.topic, tp.partition, OFFSET_END)
                time.sleep(delay)
                delay = min(delay * 2, 0.5)

    def poll(self, timeout: float, max_records: int) -> list[Record]:
        with translated("fetching"):
            first = self.raw.poll(timeout)
            if first is None:
                return []
            messages = [first, *self.raw.consume(max_records - 1, 0)] if max_records > 1 else [first]
        records = []
        for m in messages:
            error = m.error()
            if error is not None:
                if error.fatal():
                    raise TransportError(f"fetching: {error.name()}: {error.str()}")
                log.debug("fetching: %s", error.str())
                continue
            # A message without an error always has its topic, partition and offset.
            # A header's value may be None (a null header): the wire module reads those as empty.
            records.append(Record(m.topic(), m.partition(), m.offset(), m.key(), m.value(),  # type: ignore[arg-type]
                                  m.headers() or []))  # type: ignore[arg-type]
        if self._from_end:
            for r in records:
                self._positions[(r.topic, r.partition)] = r.offset + 1
        return records

    def pause(self, partitions: list[Partition]) -> None:
        with translated("pausing"):
            self.raw.pause([TP(t, p) for t, p in partitions])

    def resume(self, partitions: list[Partition]) -> None:
        with translated("resuming"):
            self.raw.resume([TP(t, p) for t, p in partitions])

    def assignment(self) -> list[Partition]:
        return sorted(self._assigned)

    def commit(self, offsets: Offsets, asynchronous: bool) -> None:
        if not offsets:
            return
        tps = _with_metadata(offsets)
        try:
            if asynchronous:
                self.raw.commit(offsets=tps, asynchronous=True)
                return
            failed = [tp for tp in self.raw.commit(offsets=tps, asynchronous=False) if tp.error is not None]
        except KafkaException as exc:
            raise TransportError(f"committing offsets: {_reason(exc)}") from exc
        if failed:
            raise TransportError("committing offsets: " + ", ".join(f"{tp.topic}/{tp.partition}: {tp.error}" for tp in failed))

    def committed(self, partitions: list[Partition]) -> dict[Partition, tuple[int, str] | None]:
        with translated("reading committed offsets"):
            found = self.raw.committed([TP(t, p) for t, p in partitions], timeout=10)
        result: dict[Partition, tuple[int, str] | None] = {}
        for tp in found:
            ok = tp.error is None and tp.offset not in (OFFSET_INVALID, OFFSET_BEGINNING, OFFSET_END) and tp.offset >= 0
            result[(tp.topic, tp.partition)] = (tp.offset, tp.metadata or "") if ok else None
        return result

    def seek(self, partition: Partition, offset: int | None) -> None:
        with translated(f"seeking {partition[0]}/{partition[1]}"):
            self.raw.seek(TP(partition[0], partition[1], OFFSET_BEGINNING if offset is None else offset))

    def lag(self) -> dict[Partition, int] | None:
        tps = [TP(t, p) for t, p in self._assigned]
        if not tps:
            return {}
        lags: dict[Partition, int] = {}
        try:
            unread = []
            for tp in self.raw.position(tps):
                # The end offsets the last fetch responses carried: no request to the broker.
                low, high = self.raw.get_watermark_offsets(tp, cached=True)
                if high < 0:
                    continue  # not fetched yet
                if tp.offset >= 0:
                    lags[(tp.topic, tp.partition)] = max(0, high - tp.offset)
                else:  # nothing read since it was assigned: reading starts at the committed offset
                    unread.append((tp, max(low, 0), high))
            # An unread partition's committed offset cannot change while we own it: ask once.
            unknown = [tp for tp, _, _ in unread if (tp.topic, tp.partition) not in self._starts]
            if unknown:
                self._starts.update({(c.topic, c.partition): c.offset for c in self.raw.committed(unknown, timeout=1)})
            for tp, low, high in unread:
                start = self._starts.get((tp.topic, tp.partition), -1)
                lags[(tp.topic, tp.partition)] = max(0, high - (start if start >= 0 else low))
        except KafkaException as exc:
            log.debug("could not sample the consumer lag: %s", _reason(exc))
            return None
        return lags

    def group_metadata(self) -> Any:
        return self.raw.consumer_group_metadata()

    def close(self) -> None:
        try:
            self.raw.close()
        except (KafkaException, RuntimeError) as exc:
            log.debug("closing a consumer: %s", exc)


class _Admin:
    def __init__(self, client: AdminClient, config: KafkaConfig, errors: _Errors) -> None:
        self._client = client
        self._config = config
        self._errors = errors
        self._lookup: GroupLookup | None = None

    def _topics(self, names: Iterable[str]) -> tuple[dict[str, Any], int]:
        """The metadata of the topics `names` that exist, and the cluster's broker count: one
        request per topic, never the whole cluster's metadata (big on big clusters)."""
        found: dict[str, Any] = {}
        brokers = 0
        with translated("reading topic metadata"):
            for name in names:
                metadata = self._client.list_topics(topic=name, timeout=30)
                brokers = len(metadata.brokers)
                topic = metadata.topics.get(name)
                if topic is not None and topic.error is None:
                    found[name] = topic
        return found, brokers

    def ensure_topics(self, partitions: Mapping[str, int]) -> None:
        existing, brokers = self._topics(sorted(partitions))
        missing = sorted(set(partitions) - set(existing))
        if not missing:
            return
        if not self._config.create_topics:
            raise MissingTopic(f"topic(s) missing and topic creation is off: {', '.join(missing)}")
        replication, settings = new_topic_settings(self._config, brokers)
        todo = missing
        for attempt in range(CREATE_ATTEMPTS):
            new = [NewTopic(name, partitions[name], replication, config=settings) for name in todo]
            timed_out = []
            for name, future in self._client.create_topics(new, request_timeout=CREATE_TIMEOUT).items():
                try:
                    future.result()
                except KafkaException as exc:
                    error = exc.args[0] if exc.args else None
                    code = error.code() if isinstance(error, KafkaError) else None
                    if code == KafkaError.TOPIC_ALREADY_EXISTS:
                        continue
                    if code == KafkaError._TIMED_OUT and attempt + 1 < CREATE_ATTEMPTS:
                        timed_out.append(name)
                        continue
                    raise TransportError(f"creating topic {name}: {_reason(exc)}") from exc
            if not timed_out:
                break
            # librdkafka sends CreateTopics to the controller its cached metadata names, which
            # may be a dead broker (see _probe): a metadata request, answered by a live broker,
            # names another; a topic created after all is seen there too.
            log.warning("creating topics %s: no answer from the controller, asking again", ", ".join(timed_out))
            created, _ = self._topics(timed_out)
            todo = [name for name in timed_out if name not in created]
            if not todo:
                break
        self._wait_for_leaders(missing, partitions)
        log.info("created topics %s (%d replicas, min.insync.replicas %s)", ", ".join(missing), replication,
                 settings["min.insync.replicas"])

    def _wait_for_leaders(self, topics: list[str], partitions: Mapping[str, int]) -> None:
        # A topic is usable once each of its partitions has a leader in the metadata.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            metadata, _ = self._topics(topics)
            ready = all(name in metadata and len(metadata[name].partitions) >= partitions[name]
                        and all(p.leader >= 0 for p in metadata[name].partitions.values()) for name in topics)
            if ready:
                return
            time.sleep(0.05)
        raise TransportError(f"topics {', '.join(topics)} have no leader 30 s after their creation")

    def healthy(self, timeout: float) -> bool:
        try:
            _probe(self._client, timeout)
            return True
        except (KafkaException, TimeoutError) as exc:
            log.debug("kafka health check failed: %s", exc)
            return False

    def consumers(self, topics: Collection[str], timeout: float) -> dict[str, set[str]]:
        # Not in this process: librdkafka may abort it (adapter.kafka.group_lookup says why).
        if self._lookup is None:
            self._lookup = GroupLookup(self._config, consumers_in_child)
        return self._lookup.consumers(topics, timeout)

    def consumers_here(self, topics: Collection[str], timeout: float) -> dict[str, set[str]]:
        """`consumers`, in this process: what the lookup's child process runs."""
        wanted = set(topics)
        found: dict[str, set[str]] = {topic: set() for topic in wanted}
        try:
            listed = self._client.list_consumer_groups(request_timeout=timeout).result(timeout=timeout + 1)
        except (KafkaException, TimeoutError) as exc:
            raise TransportError(f"listing consumer groups: {_reason(exc)}") from exc
        if listed.errors:  # a broker did not answer: its groups are not known, so nothing is
            raise TransportError(f"listing consumer groups: {_reason(listed.errors[0])}")
        with translated("describing consumer groups"):
            live = [g.group_id for g in listed.valid
                    if g.state not in (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD) and not g.is_simple_consumer_group]
            if not live:
                return found
            described = self._client.describe_consumer_groups(live, request_timeout=timeout)
            for group, future in described.items():
                try:
                    description = future.result(timeout=timeout + 1)
                except TimeoutError as exc:
                    raise TransportError(f"describing consumer group {group}: no answer in {timeout:g} s") from exc
                except KafkaException as exc:
                    error = exc.args[0] if exc.args else None
                    if isinstance(error, KafkaError) and error.code() == KafkaError.GROUP_ID_NOT_FOUND:
                        continue  # gone since the listing
                    raise
                for member in description.members:
                    for partition in member.assignment.topic_partitions if member.assignment else ():
                        if partition.topic in wanted:
                            found[partition.topic].add(group)
        return found

    def close(self) -> None:
        # AdminClient has no close; its threads end with it.
        if self._lookup is not None:
            self._lookup.close()


#: A group lookup child's admin client, made on its first lookup and kept.
_child_admin: _Admin | None = None


def consumers_in_child(config: KafkaConfig, topics: list[str], timeout: float) -> dict[str, set[str]]:
    """`Admin.consumers` as the lookup's child process runs it (`adapter.kafka.group_lookup`)."""
    global _child_admin
    if _child_admin is None:
        _child_admin = ConfluentEngine(config).admin(timeout)
    return _child_admin.consumers_here(topics, timeout)
