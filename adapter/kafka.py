"""The boundary with kafka-python: client factories, topic creation, error translation.

Nothing outside this module, `adapter.replies`, `adapter.transport` and
`handlers.worker` imports kafka-python, and kafka-python's exceptions become
`TransportError` here.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from adapter.config import KafkaConfig
from adapter.errors import MissingTopic, TransportError

log = logging.getLogger(__name__)

#: Room for headers on top of the largest message.
_HEADER_ROOM = 64 * 1024


@contextlib.contextmanager
def translated(action: str) -> Iterator[None]:
    """Re-raise kafka-python errors as `TransportError` saying what was being done."""
    try:
        yield
    except KafkaError as exc:
        raise TransportError(f"{action}: {type(exc).__name__}: {exc}") from exc


def client_settings(config: KafkaConfig) -> dict[str, Any]:
    """Settings every kafka-python client of ours gets."""
    return {
        "bootstrap_servers": list(config.bootstrap_servers),
        "client_id": config.client_id,
        **config.client_options,
    }


def record_limit(config: KafkaConfig) -> int:
    """Largest record we produce: the largest message plus room for headers."""
    return config.max_message_bytes + _HEADER_ROOM


def make_producer(config: KafkaConfig, **overrides: Any) -> KafkaProducer:
    """A producer tuned for request/reply: no linger, acks from all in-sync replicas."""
    settings = {
        "acks": "all",
        "linger_ms": 0,
        "max_request_size": record_limit(config),
        **client_settings(config),
        **overrides,
    }
    with translated(f"connecting to Kafka at {','.join(config.bootstrap_servers)}"):
        return KafkaProducer(**settings)


def make_consumer(config: KafkaConfig, **overrides: Any) -> KafkaConsumer:
    """A consumer that fetches records up to our size limit."""
    settings = {
        "enable_auto_commit": False,
        "max_partition_fetch_bytes": record_limit(config),
        **client_settings(config),
        **overrides,
    }
    with translated(f"connecting to Kafka at {','.join(config.bootstrap_servers)}"):
        return KafkaConsumer(**settings)


def ensure_topics(config: KafkaConfig, partitions: Mapping[str, int]) -> None:
    """Create the topics of `partitions` that are missing, or raise `MissingTopic`."""
    with translated(f"connecting to Kafka at {','.join(config.bootstrap_servers)}"):
        admin = KafkaAdminClient(**client_settings(config))
    try:
        with translated("listing topics"):
            existing = set(admin.list_topics())
        missing = sorted(set(partitions) - existing)
        if not missing:
            return
        if not config.create_topics:
            raise MissingTopic(f"topic(s) missing and topic creation is off: {', '.join(missing)}")
        new = [
            NewTopic(name, partitions[name], 1 if len(config.bootstrap_servers) == 1 else -1,
                     topic_configs={"max.message.bytes": str(record_limit(config))})
            for name in missing
        ]
        try:
            with translated(f"creating topics {', '.join(missing)}"):
                admin.create_topics(new, wait_for_metadata=True)
        except TransportError as exc:
            if not isinstance(exc.__cause__, TopicAlreadyExistsError):
                raise
        log.info("created topics %s", ", ".join(missing))
    finally:
        admin.close()
