"""The Kafka layer: the only code that imports a Kafka client library.

    engine = open_engine(config)            # config.client: "confluent" (default) or "kafka-python"
    admin = engine.admin()
    admin.ensure_topics({"orders": 8})
    producer = engine.producer()
    producer.produce("orders", b"...", key=None, headers=[], on_delivery=print)

`contract` says what an engine offers, in the project's terms (records, partitions as
``(topic, partition)``, `TransportError`); `confluent` (librdkafka) and `kafka_python` (pure
Python) implement it with the same behaviour; `handoff` brings their callbacks onto the event
loop in batches. `adapter.caller.memory` implements the requester's side of it without a broker.
"""

from __future__ import annotations

from adapter.kafka.contract import Admin, Consumer, Engine, Offsets, Partition, Producer, Record, TransactionalProducer
from adapter.runtime.config import KAFKA_CLIENTS, KafkaConfig

__all__ = ["ENGINES", "Admin", "Consumer", "Engine", "Offsets", "Partition", "Producer", "Record",
           "TransactionalProducer", "open_engine"]

#: The engines `KafkaConfig.client` may name; the first is the default.
ENGINES = KAFKA_CLIENTS


def open_engine(config: KafkaConfig) -> Engine:
    """The engine `config.client` names (its library is imported only now)."""
    if config.client == "kafka-python":
        from adapter.kafka.kafka_python import KafkaPythonEngine

        return KafkaPythonEngine(config)
    from adapter.kafka.confluent import ConfluentEngine

    return ConfluentEngine(config)
