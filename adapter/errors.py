"""Every error this project raises on purpose, as one tree.

    KafkaRpcError                 root: catch this to catch ours
    ├── ConfigError               bad settings; the CLI prints it as one line
    ├── ProtoError                .proto files cannot be loaded, or an option is wrong
    ├── MalformedRecord           a Kafka record does not follow docs/protocol.md
    ├── TransportError            Kafka could not be reached or refused a request
    │   ├── MissingTopic          a needed topic does not exist and may not be created
    │   ├── RecordRefused         Kafka refused one record itself (too large, no such partition...)
    │   └── TransactionAborted    exactly-once: the open transaction was aborted, its calls run again
    └── CallError                 a call ended with a gRPC status (carries code and details)
        └── CallTimeout           no reply before the deadline (DEADLINE_EXCEEDED)

kafka-python's exceptions are translated into `TransportError` at the boundary
(`adapter.kafka`), so they never reach the gRPC or handler code.
"""

from __future__ import annotations

import grpc


class KafkaRpcError(Exception):
    """Root of every error raised on purpose by adapter and handlers."""


class ConfigError(KafkaRpcError):
    """A setting is invalid; the message names the setting."""


class ProtoError(KafkaRpcError):
    """Protobuf definitions could not be loaded or are inconsistent."""


class MalformedRecord(KafkaRpcError):
    """A Kafka record does not follow the wire protocol."""


class TransportError(KafkaRpcError):
    """Kafka could not be reached, or refused what was asked of it."""


class MissingTopic(TransportError):
    """A topic is missing and topic creation is disabled."""


class RecordRefused(TransportError):
    """Kafka refused one record for what it is or where it goes (too large, no such topic or
    partition, not authorized): sending the same record again fails the same way."""


class TransactionAborted(TransportError):
    """The open transaction was aborted: what was sent into it is gone, and its calls run again."""


class CallError(KafkaRpcError):
    """A call that ended with a non-OK gRPC status."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(f"{code.name}: {details}")
        self.code = code
        self.details = details


class CallTimeout(CallError):
    """No reply arrived before the call's deadline."""

    def __init__(self, details: str) -> None:
        super().__init__(grpc.StatusCode.DEADLINE_EXCEEDED, details)
