"""gRPC-to-Kafka RPC adapter: the gRPC frontend (`python -m adapter`), the request/reply core,
and channels that call handler processes from Python with no frontend in between::

    from adapter import KafkaChannel
    with KafkaChannel.connect([mail_pb2], bootstrap_servers="127.0.0.1:9092") as channel:
        reply = mail_pb2_grpc.MailServiceStub(channel).SendMail(request, timeout=5)

What users import is here (`__all__`); the subpackages are the implementation, one per role
(docs/architecture.md): `protocol`, `kafka`, `runtime`, `caller`, `frontend`.
"""

from __future__ import annotations

from typing import Any

from adapter.errors import (
    CallError,
    CallTimeout,
    ConfigError,
    KafkaRpcError,
    MalformedRecord,
    MissingTopic,
    ProtoError,
    RecordRefused,
    TransportError,
)

__all__ = [
    "AioKafkaChannel",
    "CallError",
    "CallTimeout",
    "ConfigError",
    "KafkaChannel",
    "KafkaConfig",
    "KafkaRpcError",
    "MalformedRecord",
    "MissingTopic",
    "ProtoError",
    "RecordRefused",
    "TransportError",
]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `python -m adapter --help` does not load grpc and Kafka.
    if name == "KafkaChannel":
        from adapter.caller.channel import KafkaChannel

        return KafkaChannel
    if name == "AioKafkaChannel":
        from adapter.caller.aio_channel import AioKafkaChannel

        return AioKafkaChannel
    if name == "KafkaConfig":
        from adapter.runtime.config import KafkaConfig

        return KafkaConfig
    raise AttributeError(f"module 'adapter' has no attribute {name!r}")
