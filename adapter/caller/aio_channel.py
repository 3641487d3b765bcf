"""`AioKafkaChannel`: generated stubs call handler processes straight through Kafka, with asyncio.

The Python counterpart of Spring's ``ReplyingKafkaTemplate``: a ``grpc.aio.Channel`` whose
calls are made by the frontend's own request/reply core (`adapter.caller.requester`), so topics,
keys, deadlines, metadata and statuses are the ones a call through the frontend gets::

    channel = await AioKafkaChannel.connect([kitchen_pb2], bootstrap_servers="127.0.0.1:9092")
    async with channel:
        kitchen = kitchen_pb2_grpc.KitchenStub(channel)
        reply = await kitchen.Echo(request, timeout=5, metadata=(("x-user", "ann"),))
        async for item in kitchen.CountUp(kitchen_pb2.Count(n=3)):
            ...

As with ``grpc.aio``, a failed call raises ``grpc.aio.AioRpcError`` and a cancelled one
``asyncio.CancelledError``. `adapter.caller.channel.KafkaChannel` is the blocking flavour.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import types
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import grpc
import grpc.aio
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor

from adapter.caller.requester import Requester
from adapter.caller.stub_calls import (
    Call,
    StreamStreamMethod,
    StreamUnaryMethod,
    StubMethod,
    UnaryStreamMethod,
    UnaryUnaryMethod,
)
from adapter.caller.transport import KafkaTransport
from adapter.errors import ConfigError
from adapter.protocol.routing import Route, routes_for
from adapter.runtime.config import CHANNEL_REPLY_TOPIC, KAFKA_CLIENTS, KafkaConfig, ReplyConfig

log = logging.getLogger(__name__)

#: Reply topic of channels by default, after the topic prefix (see `adapter.runtime.config`).
REPLY_TOPIC = CHANNEL_REPLY_TOPIC


class AioKafkaChannel(grpc.aio.Channel):
    """A ``grpc.aio.Channel`` over Kafka: each method path is sent along its `Route`."""

    def __init__(self, requester: Requester, routes: Mapping[str, Route]) -> None:
        self.requester = requester
        self.routes = dict(routes)
        # Calls not yet ended, for close() to cancel; weak, so a call dropped unread is not kept.
        self.calls: weakref.WeakSet[Call] = weakref.WeakSet()
        self._started = False
        self._closed = False

    @classmethod
    async def connect(
        cls,
        services: Iterable[object],
        *,
        bootstrap_servers: str | Sequence[str] | None = None,
        topic_prefix: str | None = None,
        kafka_client: str | None = None,
        kafka: KafkaConfig | None = None,
        reply_topic: str | None = None,
        reply_partitions: int = 16,
        default_timeout: float = 30.0,
        start_timeout: float = 60.0,
    ) -> AioKafkaChannel:
        """Connect to Kafka and own a partition of `reply_topic`; routes come from `services`.

        `services`: service descriptors, generated ``*_pb2`` or ``*_pb2_grpc`` modules, ``*Stub``
        classes or full service names. Give `bootstrap_servers` (``"host:port,..."``),
        `topic_prefix` and `kafka_client` (``confluent``, the default, or ``kafka-python``), or a
        whole `KafkaConfig`. Channels that share a `reply_topic` (by default the topic prefix +
        ``kafka-rpc.client-replies``) share its partitions (at most `reply_partitions` channels);
        handlers must allow it as a reply topic (they allow the default one unless told otherwise).
        """
        if kafka is None:
            servers = bootstrap_servers or "127.0.0.1:9092"
            servers = servers.split(",") if isinstance(servers, str) else servers
            kafka = KafkaConfig(bootstrap_servers=tuple(s.strip() for s in servers), topic_prefix=topic_prefix or "",
                                client=kafka_client or KAFKA_CLIENTS[0])
        elif bootstrap_servers is not None or topic_prefix is not None or kafka_client is not None:
            raise ConfigError("give either kafka or bootstrap_servers/topic_prefix/kafka_client, not both")
        routes = routes_for(_service_descriptors(services), kafka.topic_prefix)
        if default_timeout <= 0 or start_timeout <= 0:
            raise ConfigError("default_timeout and start_timeout must be positive")
        config = ReplyConfig(kafka=kafka, reply_topic=reply_topic or kafka.topic_prefix + REPLY_TOPIC,
                             reply_partitions=reply_partitions)
        channel = cls(Requester(KafkaTransport(config, {r.topic for r in routes.values()}), default_timeout), routes)
        try:
            await channel.start(start_timeout)
        except BaseException:
            await channel.requester.stop()
            raise
        return channel

    async def start(self, timeout: float = 60.0) -> None:
        """Start the requester: connect, and wait for a reply partition."""
        await self.requester.start(timeout)
        self._started = True

    @property
    def closed(self) -> bool:
        """Whether `close` was called: new calls raise `grpc.aio.UsageError`."""
        return self._closed

    async def close(self, grace: float | None = None) -> None:
        """Let calls in flight finish for `grace` seconds, cancel the rest, disconnect."""
        if self._closed:
            return
        self._closed = True
        if grace and self.calls:
            await asyncio.wait([asyncio.ensure_future(call.wait_ended()) for call in self.calls], timeout=grace)
        for call in list(self.calls):
            call.cancel()
        await asyncio.sleep(0)  # cancelled unary calls send their cancel records
        await self.requester.stop()

    async def __aenter__(self) -> AioKafkaChannel:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        if self._closed:
            return grpc.ChannelConnectivity.SHUTDOWN
        if not self._started:
            return grpc.ChannelConnectivity.IDLE
        return grpc.ChannelConnectivity.READY if self.requester.ready else grpc.ChannelConnectivity.CONNECTING

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        while self.get_state() is last_observed_state:
            await asyncio.sleep(0.1)

    async def channel_ready(self) -> None:
        while (state := self.get_state()) is not grpc.ChannelConnectivity.READY:
            await self.wait_for_state_change(state)

    def unary_unary(self, method: str, request_serializer: Callable[[Any], bytes] | None = None,
                    response_deserializer: Callable[[bytes], Any] | None = None,
                    _registered_method: bool | None = False) -> UnaryUnaryMethod:
        return UnaryUnaryMethod(StubMethod(self, method, request_serializer, response_deserializer))

    def unary_stream(self, method: str, request_serializer: Callable[[Any], bytes] | None = None,
                     response_deserializer: Callable[[bytes], Any] | None = None,
                     _registered_method: bool | None = False) -> UnaryStreamMethod:
        return UnaryStreamMethod(StubMethod(self, method, request_serializer, response_deserializer))

    def stream_unary(self, method: str, request_serializer: Callable[[Any], bytes] | None = None,
                     response_deserializer: Callable[[bytes], Any] | None = None,
                     _registered_method: bool | None = False) -> StreamUnaryMethod:
        return StreamUnaryMethod(StubMethod(self, method, request_serializer, response_deserializer))

    def stream_stream(self, method: str, request_serializer: Callable[[Any], bytes] | None = None,
                      response_deserializer: Callable[[bytes], Any] | None = None,
                      _registered_method: bool | None = False) -> StreamStreamMethod:
        return StreamStreamMethod(StubMethod(self, method, request_serializer, response_deserializer))


def _service_descriptors(sources: Iterable[object]) -> list[ServiceDescriptor]:
    """Service descriptors from what a caller has at hand (see `AioKafkaChannel.connect`)."""
    found: dict[str, ServiceDescriptor] = {}
    for source in sources:
        for service in _services_of(source):
            found[service.full_name] = service
    if not found:
        raise ConfigError("services: name at least one service")
    return list(found.values())


def _services_of(source: object) -> list[ServiceDescriptor]:
    if isinstance(source, ServiceDescriptor):
        return [source]
    if isinstance(source, str):
        try:
            return [descriptor_pool.Default().FindServiceByName(source)]
        except KeyError:
            raise ConfigError(f"services: no service {source!r} is loaded (import its *_pb2 module first)") from None
    file = getattr(source, "DESCRIPTOR", source)
    if isinstance(file, FileDescriptor):
        return list(file.services_by_name.values())
    # A *_pb2_grpc module or a *Stub class: the service is defined in a *_pb2 module it imports.
    module = source if isinstance(source, types.ModuleType) else sys.modules.get(getattr(source, "__module__", ""))
    if isinstance(source, type):
        names = [source.__name__.removesuffix("Stub")]
    else:
        names = [name.removesuffix("Stub") for name in dir(module) if name.endswith("Stub")]
    services = []
    for value in vars(module).values() if module is not None else ():
        desc = getattr(value, "DESCRIPTOR", None)
        if isinstance(value, types.ModuleType) and isinstance(desc, FileDescriptor):
            services += [desc.services_by_name[name] for name in names if name in desc.services_by_name]
    if not services:
        raise ConfigError(f"services: {source!r} is not a service descriptor, a generated module or a *Stub class")
    return services
