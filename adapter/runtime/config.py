"""Typed, frozen, validated settings. Read from flags and environment only in the CLIs.

    >>> kafka = KafkaConfig(bootstrap_servers=("127.0.0.1:9092",))
    >>> FrontendConfig(kafka=kafka, proto_paths=(Path("protos"),)).listen
    '127.0.0.1:50051'
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adapter.errors import ConfigError
from adapter.protocol.topics import check_topic

MiB = 1024 * 1024
#: Kafka client libraries ("engines") the project runs on; the first is the default.
KAFKA_CLIENTS = ("confluent", "kafka-python")
#: Consumer group protocols a handler group may use (`WorkerConfig.group_protocol`).
GROUP_PROTOCOLS = ("auto", "consumer", "classic")
_HOST_PORT = re.compile(r"^\[?[A-Za-z0-9.:_-]*\]?:\d{1,5}$")


def _positive(setting: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{setting} must be positive, got {value}")


def _port(setting: str, value: int | None) -> None:
    if value is not None and not 0 <= value <= 65535:
        raise ConfigError(f"{setting} must be a TCP port, 0 to 65535 (0 picks a free one), got {value}")


@dataclass(frozen=True)
class KafkaConfig:
    """How to reach Kafka, shared by the frontend and the handler processes."""

    bootstrap_servers: tuple[str, ...] = ("127.0.0.1:9092",)
    client_id: str = "kafka-rpc"
    #: Partitions of request and reply topics that we create.
    topic_partitions: int = 8
    #: Create missing topics (else fail naming the missing topic).
    create_topics: bool = True
    #: Largest request or response message; Kafka topics we create accept it.
    max_message_bytes: int = 4 * MiB
    #: Prepended to every request topic name (environments, test isolation).
    topic_prefix: str = ""
    #: Extra client settings passed through, in the engine's own names: librdkafka's dotted ones
    #: for confluent (security.protocol, sasl.username...), kafka-python's for kafka-python.
    client_options: Mapping[str, Any] = field(default_factory=dict)
    #: The Kafka client library: confluent (librdkafka) or kafka-python (pure Python).
    client: str = KAFKA_CLIENTS[0]
    #: Replicas of each topic we create; None: as many as the cluster has brokers, at most 3.
    replication_factor: int | None = None

    def __post_init__(self) -> None:
        if not self.bootstrap_servers:
            raise ConfigError("bootstrap_servers: at least one HOST:PORT is needed")
        for server in self.bootstrap_servers:
            if not _HOST_PORT.match(server):
                raise ConfigError(f"bootstrap_servers: {server!r} is not HOST:PORT")
        if self.client not in KAFKA_CLIENTS:
            raise ConfigError(f"kafka_client: {self.client!r} is not one of {', '.join(KAFKA_CLIENTS)}")
        _positive("topic_partitions", self.topic_partitions)
        _positive("max_message_bytes", self.max_message_bytes)
        if self.replication_factor is not None:
            _positive("replication_factor", self.replication_factor)


#: Reply topic of frontends by default, after the topic prefix.
FRONTEND_REPLY_TOPIC = "kafka-rpc.replies"
#: Reply topic of `KafkaChannel`/`AioKafkaChannel` by default, after the topic prefix. Not the
#: frontends': each process that joins a reply topic takes partitions, and so calls in flight,
#: from those already there.
CHANNEL_REPLY_TOPIC = "kafka-rpc.client-replies"


@dataclass(frozen=True)
class ReplyConfig:
    """Where a requester (a frontend, a `KafkaChannel`) receives its replies."""

    kafka: KafkaConfig
    #: Topic shared by the requesters of a deployment; each instance owns some of its partitions.
    #: Empty: the topic prefix + FRONTEND_REPLY_TOPIC.
    reply_topic: str = ""
    #: Partitions of the reply topic when we create it: the most instances that can share it.
    reply_partitions: int = 16

    def __post_init__(self) -> None:
        if not self.reply_topic:
            object.__setattr__(self, "reply_topic", self.kafka.topic_prefix + FRONTEND_REPLY_TOPIC)
        check_topic(self.reply_topic, "reply_topic")
        _positive("reply_partitions", self.reply_partitions)

    @property
    def reply_group(self) -> str:
        """Consumer group through which the instances share out the reply partitions."""
        return f"kafka-rpc-frontends.{self.reply_topic}"


#: gRPC metadata a frontend does not put into Kafka by default (fnmatch patterns): credentials
#: meant for the frontend's hop, which would otherwise sit in request records and dead letters,
#: readable by anyone who may read the topics, for their retention.
DROPPED_METADATA = ("authorization", "proxy-authorization", "cookie", "x-api-key", "*-token", "*secret*",
                    "*password*")


@dataclass(frozen=True)
class FrontendConfig:
    """Settings of the gRPC frontend (`python -m adapter`)."""

    kafka: KafkaConfig
    proto_paths: tuple[Path, ...]
    listen: str = "127.0.0.1:50051"
    #: `ReplyConfig.reply_topic` and `ReplyConfig.reply_partitions`, as the command line gives them.
    reply_topic: str = ""
    reply_partitions: int = 16
    #: Seconds a call may wait for its reply when the client sets no deadline.
    default_timeout: float = 30.0
    #: Seconds to wait at start for Kafka and a reply partition.
    start_timeout: float = 60.0
    #: Calls in flight beyond which new calls get RESOURCE_EXHAUSTED at once.
    max_in_flight: int = 10_000
    #: PEM certificate chain and private key: serve gRPC over TLS (else plaintext).
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: PEM CA bundle: require client certificates signed by it (mutual TLS).
    tls_client_ca: Path | None = None
    #: Port of the Prometheus endpoint (/metrics); None: no endpoint.
    metrics_port: int | None = None
    #: fnmatch patterns of the metadata keys passed on to handlers...
    forward_metadata: tuple[str, ...] = ("*",)
    #: ...unless they match one of these (never written to Kafka, nor anywhere else).
    drop_metadata: tuple[str, ...] = DROPPED_METADATA
    #: fnmatch patterns of the full names of the services to serve, among those under proto_paths.
    services: tuple[str, ...] = ("*",)
    #: Seconds a request topic may have no consuming handler process before its calls fail at once
    #: with UNAVAILABLE (until then they queue in Kafka, as through a restart); 0: always wait.
    no_handler_grace: float = 30.0

    def serves(self, service: str) -> bool:
        """Whether the service of full name `service` is among those to serve (`--service`)."""
        return any(fnmatch.fnmatchcase(service, p) for p in self.services)

    def forwards(self, key: str) -> bool:
        """Whether metadata `key` (lower case, as gRPC has it) goes into the request record."""
        return (any(fnmatch.fnmatchcase(key, p) for p in self.forward_metadata)
                and not any(fnmatch.fnmatchcase(key, p) for p in self.drop_metadata))

    def __post_init__(self) -> None:
        if not self.proto_paths:
            raise ConfigError("proto_paths: give at least one --proto-path folder")
        for path in self.proto_paths:
            if not path.is_dir():
                raise ConfigError(f"proto_paths: {str(path)!r} is not a folder")
        if not _HOST_PORT.match(self.listen):
            raise ConfigError(f"listen: {self.listen!r} is not HOST:PORT")
        # The reply side's settings are ReplyConfig's: it checks them and fills the default topic.
        object.__setattr__(self, "reply_topic", self.replies.reply_topic)
        _positive("default_timeout", self.default_timeout)
        _positive("start_timeout", self.start_timeout)
        _positive("max_in_flight", self.max_in_flight)
        if not self.services or not all(self.services):
            raise ConfigError("services: give fnmatch patterns of service names, e.g. 'shop.*'")
        if self.no_handler_grace < 0:
            raise ConfigError(f"no_handler_grace: {self.no_handler_grace} is negative (0 turns failing fast off)")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ConfigError("tls_cert and tls_key: give both, or neither")
        if self.tls_client_ca is not None and self.tls_cert is None:
            raise ConfigError("tls_client_ca: mutual TLS needs tls_cert and tls_key too")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                raise ConfigError(f"{name}: {str(path)!r} is not a readable file")
        _port("metrics_port", self.metrics_port)

    @property
    def replies(self) -> ReplyConfig:
        """The reply side of this frontend (reply topic and partitions, their checks, the group)."""
        return ReplyConfig(self.kafka, self.reply_topic, self.reply_partitions)


@dataclass(frozen=True)
class WorkerConfig:
    """Settings of a handler process (`python -m handlers`)."""

    kafka: KafkaConfig
    group: str = "kafka-rpc-handlers"
    #: Handler functions running at once.
    concurrency: int = 16
    #: Records fetched but not yet replied to, beyond which fetching pauses.
    max_pending: int = 256
    #: Client and bidi streams reading requests at once; more are refused with RESOURCE_EXHAUSTED.
    #: They do not count towards `max_pending` (their requests must keep coming). None: 4 x max_pending.
    max_client_streams: int | None = None
    #: Seconds a draining process waits for running handlers at shutdown.
    drain_timeout: float = 30.0
    #: Seconds without a heartbeat after which a dead process's partitions move to the others.
    session_timeout: float = 10.0
    #: fnmatch patterns of the topics replies may be produced to; a forged record naming another
    #: topic goes to the dead-letter topic instead. Empty: the default reply topics of frontends
    #: and channels, after the topic prefix (what a deployment that keeps the defaults uses).
    reply_topics: tuple[str, ...] = ()
    #: Where requests that cannot be answered go, with the reason in a header.
    dead_letter_topic: str = "kafka-rpc.dead-letters"
    #: Seconds a reply is kept for calls retried with the same idempotency key.
    dedupe_window: float = 300.0
    #: Replies kept for retries at most (the oldest go first).
    dedupe_entries: int = 10_000
    #: Bytes of replies kept for retries at most (the oldest go first).
    dedupe_bytes: int = 64 * MiB
    #: Port of the Prometheus endpoint (/metrics); None: no endpoint.
    metrics_port: int | None = None
    #: Commit replies and the offsets of the requests they answer in Kafka transactions.
    exactly_once: bool = False
    #: How the group shares partitions: ``consumer`` (KIP-848, Kafka 4.0+: the broker spreads each
    #: topic evenly), ``classic`` (the pre-4.0 protocol, cooperative), or ``auto``: consumer on the
    #: confluent engine, classic on kafka-python (which has only that, with a per-topic assignor).
    group_protocol: str = "auto"
    #: The transactional producer's id (exactly-once mode). Keep it stable per process slot, so
    #: a restarted process aborts its predecessor's open transaction at once; None: a unique one.
    transactional_id: str | None = None

    def __post_init__(self) -> None:
        if not self.group:
            raise ConfigError("group: must not be empty")
        _positive("concurrency", self.concurrency)
        _positive("max_pending", self.max_pending)
        if self.max_pending < self.concurrency:
            raise ConfigError("max_pending must be at least concurrency")
        if self.max_client_streams is not None:
            _positive("max_client_streams", self.max_client_streams)
        _positive("drain_timeout", self.drain_timeout)
        if not self.reply_topics:
            object.__setattr__(self, "reply_topics", tuple(self.kafka.topic_prefix + topic
                                                           for topic in (FRONTEND_REPLY_TOPIC, CHANNEL_REPLY_TOPIC)))
        check_topic(self.dead_letter_topic, "dead_letter_topic")
        if self.dedupe_window < 0 or self.dedupe_entries < 0 or self.dedupe_bytes < 0:
            raise ConfigError("dedupe_window, dedupe_entries and dedupe_bytes must not be negative")
        _port("metrics_port", self.metrics_port)
        if self.transactional_id is not None and not (self.exactly_once and self.transactional_id.strip()):
            raise ConfigError("transactional_id: needs exactly_once, and must not be blank")
        if self.group_protocol not in GROUP_PROTOCOLS:
            raise ConfigError(f"group_protocol: {self.group_protocol!r} is not one of {', '.join(GROUP_PROTOCOLS)}")
        if self.group_protocol == "consumer" and self.kafka.client == "kafka-python":
            raise ConfigError("group_protocol: kafka-python has no consumer protocol (KIP-848); use classic or auto")
        if not 6 <= self.session_timeout <= 1800:
            raise ConfigError(f"session_timeout must be within the broker's limits, 6 to 1800 s; got {self.session_timeout}")

    @property
    def protocol(self) -> str:
        """The group protocol in effect: `group_protocol`, with ``auto`` resolved for the engine."""
        if self.group_protocol != "auto":
            return self.group_protocol
        return "classic" if self.kafka.client == "kafka-python" else "consumer"
