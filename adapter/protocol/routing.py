"""Which Kafka topic and key each method's calls go to, read from the service descriptors.

Routes are a plain dict keyed by the full method path (``/pkg.Service/Method``). The
defaults and the `kafka_rpc` options of `protos/kafka_rpc/options.proto` apply the same
way whether the descriptors come from generated code (handlers) or from `.proto` files
loaded at run time (the frontend).

    >>> routes = routes_for([mail_pb2.DESCRIPTOR.services_by_name["MailService"]])
    >>> routes["/shop.mail.v1.MailService/SendMail"].topic
    'shop.mail.v1.MailService'
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor, ServiceDescriptor
from google.protobuf.message import DecodeError

from adapter.errors import CallError, ProtoError
from adapter.protocol import wire
from adapter.protocol.topics import check_topic

_SERVICE_TOPIC = "kafka_rpc.service_topic"
_METHOD_TOPIC = "kafka_rpc.topic"
_PARTITION_KEY = "kafka_rpc.partition_key"
_IDEMPOTENCY_KEY = "kafka_rpc.idempotency_key"


@dataclass(frozen=True)
class Route:
    """Where calls of one method go."""

    path: str
    topic: str
    input_type: Descriptor
    output_type: Descriptor
    client_streaming: bool = False
    server_streaming: bool = False
    #: Request field whose value is the record key, or None.
    key_field: FieldDescriptor | None = None
    #: Request field whose value is the call's idempotency key, or None.
    idempotency_field: FieldDescriptor | None = None

    def key_for(self, request: bytes) -> bytes | None:
        """The record key for a serialized request (parses it only when a key field is set)."""
        return self.keys_for(request)[0]

    def call_keys(self, request: bytes, metadata: Iterable[tuple[str, str | bytes]]) -> tuple[bytes | None, bytes | None]:
        """The record key and the idempotency key of a call, as every caller (the frontend, the
        channels) takes them: from the request's fields, the idempotency key from an
        ``idempotency-key`` metadata entry if there is one. Raises `CallError`
        (INVALID_ARGUMENT) for a request that is not a valid message of the input type."""
        try:
            key, idempotency_key = self.keys_for(request)
        except DecodeError as exc:
            raise CallError(grpc.StatusCode.INVALID_ARGUMENT,
                            f"request is not a valid {self.input_type.full_name}: {exc}") from exc
        for name, value in metadata:
            if name == wire.IDEMPOTENCY_METADATA:
                idempotency_key = value if isinstance(value, bytes) else value.encode()
        return key, idempotency_key

    def keys_for(self, request: bytes) -> tuple[bytes | None, bytes | None]:
        """The record key and the idempotency key of a serialized request, from its fields."""
        if self.key_field is None and self.idempotency_field is None:
            return None, None
        message = message_factory.GetMessageClass(self.input_type).FromString(request)
        return _field_bytes(message, self.key_field), _field_bytes(message, self.idempotency_field)


def _field_bytes(message: Any, field: FieldDescriptor | None) -> bytes | None:
    if field is None:
        return None
    value = getattr(message, field.name)
    if isinstance(value, bytes):
        return value
    if isinstance(value, bool):
        return b"true" if value else b"false"
    return str(value).encode()


def method_path(method: MethodDescriptor) -> str:
    """``/package.Service/Method``, as gRPC names it on the wire."""
    return f"/{method.containing_service.full_name}/{method.name}"


def routes_for(services: Iterable[ServiceDescriptor], topic_prefix: str = "") -> dict[str, Route]:
    """The route of every method of `services`, keyed by method path."""
    routes: dict[str, Route] = {}
    for service in services:
        service_topic = _option(service, "ServiceOptions", _SERVICE_TOPIC) or service.full_name
        for method in service.methods:
            path = method_path(method)
            topic = topic_prefix + (_option(method, "MethodOptions", _METHOD_TOPIC) or service_topic)
            check_topic(topic, f"topic of {path}")
            routes[path] = Route(
                path=path,
                topic=topic,
                input_type=method.input_type,
                output_type=method.output_type,
                client_streaming=method.client_streaming,
                server_streaming=method.server_streaming,
                key_field=_key_field(method, _option(method, "MethodOptions", _PARTITION_KEY), "partition_key"),
                idempotency_field=_key_field(method, _option(method, "MethodOptions", _IDEMPOTENCY_KEY),
                                             "idempotency_key"),
            )
    return routes


def _key_field(method: MethodDescriptor, name: str | None, option: str) -> FieldDescriptor | None:
    if not name:
        return None
    path = method_path(method)
    field = method.input_type.fields_by_name.get(name)
    if field is None:
        raise ProtoError(f"{path}: {option} {name!r} is not a field of {method.input_type.full_name}")
    if field.is_repeated or field.type in (
        FieldDescriptor.TYPE_MESSAGE,
        FieldDescriptor.TYPE_GROUP,
    ):
        raise ProtoError(f"{path}: {option} {name!r} must be a singular scalar field")
    return field


def _option(desc: Any, options_type: str, extension: str) -> str | None:
    # Options are re-read through the descriptor's own pool: the extension is known there
    # even when the descriptor was loaded at run time rather than from generated code.
    file = desc.file if isinstance(desc, ServiceDescriptor) else desc.containing_service.file
    pool = file.pool
    try:
        ext = pool.FindExtensionByName(extension)
    except KeyError:
        return None  # kafka_rpc/options.proto is not imported: no options to read
    options_cls = message_factory.GetMessageClass(pool.FindMessageTypeByName(f"google.protobuf.{options_type}"))
    options = options_cls.FromString(desc.GetOptions().SerializeToString())
    value = options.Extensions[ext]
    return str(value) if value else None
