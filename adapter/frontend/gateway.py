"""The gRPC frontend: serves every method of the loaded services and forwards calls to Kafka.

    gateway = Gateway(config, ProtoSet.load(config.proto_paths))
    await gateway.start()          # Kafka, reply partition, then the gRPC port
    ...
    await gateway.stop(grace=10)   # calls in flight get `grace` seconds

Request and response bytes pass through untouched: the frontend never needs the
services' generated code. Server reflection and the standard health service are
served beside them.

Longer than our modules should be (~370 lines): it is the gRPC side of the frontend as one
piece (the four method kinds, admission, health, reflection, start and stop), whose parts share
the server, the routes and the requester.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection, reflection_pb2

from adapter.caller.requester import Requester
from adapter.caller.stream import Stream
from adapter.caller.transport import KafkaTransport, Transport
from adapter.errors import CallError, ConfigError
from adapter.frontend.consumers import ConsumerWatch
from adapter.protocol import wire
from adapter.protocol.protoset import ProtoSet
from adapter.protocol.routing import Route, method_path, routes_for
from adapter.runtime.config import FrontendConfig
from adapter.runtime.metrics import DEADLINE_SLACK, CallMetrics, FrontendMetrics

log = logging.getLogger(__name__)

#: Seconds between Kafka reachability checks for the health service.
HEALTH_INTERVAL = 2.0

Behavior = Callable[[bytes, grpc.aio.ServicerContext], Awaitable[bytes]]


class Gateway:
    """A `grpc.aio` server whose methods are Kafka request/reply calls."""

    def __init__(self, config: FrontendConfig, protos: ProtoSet, transport: Transport | None = None,
                 metrics: FrontendMetrics | None = None) -> None:
        self.config = config
        self.protos = protos
        self.services = [s for s in protos.services if config.serves(s.full_name)]
        if not self.services:
            found = ", ".join(s.full_name for s in protos.services) or "none"
            raise ConfigError(f"services: no service matches {', '.join(config.services)} (found: {found})")
        self.routes = routes_for(self.services, config.kafka.topic_prefix)
        self.metrics = metrics if metrics is not None else FrontendMetrics()
        for path in self.routes:
            self.metrics.method(path)  # their series exist before the first call
        transport = transport or KafkaTransport(config.replies, {r.topic for r in self.routes.values()}, self.metrics)
        self.requester = Requester(transport, config.default_timeout, self.metrics)
        #: Which request topics handler processes consume: per-service health, failing fast.
        self.consumers = ConsumerWatch(transport.consumers, {r.topic for r in self.routes.values()},
                                       config.no_handler_grace)
        self.health = HealthServicer()
        #: The metadata policy's answer per key seen (fnmatch against every pattern on each call
        #: is avoidable work on the call path); bounded, as clients choose the keys.
        self._forwards: dict[str, bool] = {}
        self.port: int | None = None
        self._server: grpc.aio.Server | None = None
        self._health_task: asyncio.Task[None] | None = None
        self._consumers_task: asyncio.Task[None] | None = None
        self._kafka_ok = True

    async def start(self) -> None:
        """Connect to Kafka, then open the gRPC port."""
        await self.requester.start(self.config.start_timeout)
        limit = self.config.kafka.max_message_bytes
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", limit),
            ("grpc.max_send_message_length", limit),
        ])
        server.add_generic_rpc_handlers(self._handlers())
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = [s.full_name for s in self.services]
        self.protos.include(health_pb2.DESCRIPTOR)
        self.protos.include(reflection_pb2.DESCRIPTOR)
        reflection.enable_server_reflection(
            [*names, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME],
            server,
            pool=self.protos.pool,
        )
        self.port = self._add_port(server)
        if not self.port:
            raise OSError(f"cannot listen on {self.config.listen}")
        await self.consumers.refresh()
        await server.start()
        self._server = server
        await self._set_health()
        self._health_task = asyncio.create_task(self._watch_health())
        self._consumers_task = asyncio.create_task(self._watch_consumers())
        log.info("serving %d services (%d methods) on %s", len(names), len(self.routes), self.config.listen)
        for service in self.services:
            log.info("%s", self._describe(service))

    def _topics(self, service: ServiceDescriptor) -> list[str]:
        return sorted({self.routes[method_path(m)].topic for m in service.methods})

    def _describe(self, service: ServiceDescriptor) -> str:
        """One startup line: a service, its request topics and who consumes them now."""
        parts = []
        for topic in self._topics(service):
            groups = self.consumers.groups(topic)
            if groups is None:
                who = "consumers not known"
            elif groups:
                who = f"handlers consuming (group {', '.join(sorted(groups))})"
            else:
                who = "NO handler process consumes it yet"
            parts.append(f"topic {topic}: {who}")
        return f"service {service.full_name}: {'; '.join(parts)}"

    def _add_port(self, server: grpc.aio.Server) -> int:
        config = self.config
        if config.tls_cert is None or config.tls_key is None:
            return server.add_insecure_port(config.listen)
        client_ca = config.tls_client_ca.read_bytes() if config.tls_client_ca else None
        credentials = grpc.ssl_server_credentials(
            [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())],
            root_certificates=client_ca,
            require_client_auth=client_ca is not None,
        )
        return server.add_secure_port(config.listen, credentials)

    async def stop(self, grace: float = 5.0) -> None:
        """Stop accepting calls, let calls in flight finish for `grace` seconds, disconnect."""
        for task in (self._health_task, self._consumers_task):
            if task:
                task.cancel()
        if self._server:
            await self._server.stop(grace)
        await self.requester.stop()

    def _handlers(self) -> list[grpc.GenericRpcHandler]:
        by_service: dict[str, dict[str, grpc.RpcMethodHandler]] = {}
        for route in self.routes.values():
            service, method = route.path[1:].split("/")
            by_service.setdefault(service, {})[method] = self._method_handler(route)
        return [grpc.method_handlers_generic_handler(s, methods) for s, methods in by_service.items()]

    def _method_handler(self, route: Route) -> grpc.RpcMethodHandler:
        # No (de)serializers: the frontend passes protobuf bytes through.
        kind = (route.client_streaming, route.server_streaming)
        if kind == (False, False):
            return grpc.unary_unary_rpc_method_handler(functools.partial(self._unary, route))
        if kind == (False, True):
            return grpc.unary_stream_rpc_method_handler(functools.partial(self._server_stream, route))
        if kind == (True, False):
            return grpc.stream_unary_rpc_method_handler(functools.partial(self._client_stream, route))
        return grpc.stream_stream_rpc_method_handler(functools.partial(self._bidi_stream, route))

    async def _unary(self, route: Route, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        with _Observed(self.metrics.method(route.path), context):
            key, idempotency_key = await _keys(route, request, context)
            metadata = self._forwarded(context)
            await self._admit(route, context)
            try:
                reply = await self.requester.call(
                    route.path, request, topic=route.topic, key=key, metadata=metadata,
                    timeout=context.time_remaining(), idempotency_key=idempotency_key, **_peer(context),
                )
            except CallError as exc:
                await context.abort(exc.code, exc.details)
            return await _finish(reply, context)

    async def _server_stream(self, route: Route, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        with _Observed(self.metrics.method(route.path), context):
            key, _ = await _keys(route, request, context)
            stream = await self._open(route, context, request=request, key=key)
            async for message in _responses(stream, context):
                yield message

    async def _client_stream(self, route: Route, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> bytes:
        with _Observed(self.metrics.method(route.path), context):
            stream = await self._open(route, context, request=None)
            # The handler may answer before the client is done sending (a refusal, an error, or a
            # reply that needs no more): the call ends then, as with grpc servers.
            sender = asyncio.create_task(_pump(requests, stream))
            try:
                reply = await stream.result()
            except CallError as exc:
                await context.abort(exc.code, exc.details, stream.reply.trailing_metadata if stream.reply else ())
            finally:
                sender.cancel()
                stream.cancel()  # a no-op once the call has ended; else the client went away
            return await _finish(reply, context)

    async def _bidi_stream(self, route: Route, requests: AsyncIterator[bytes],
                           context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        with _Observed(self.metrics.method(route.path), context):
            stream = await self._open(route, context, request=None)
            # Requests flow while responses do: bidi handlers may answer before the client is done.
            sender = asyncio.create_task(_pump(requests, stream))
            try:
                async for message in _responses(stream, context):
                    yield message
            finally:
                sender.cancel()

    def _forwarded(self, context: grpc.aio.ServicerContext) -> wire.Metadata:
        """The call's metadata that may go into Kafka (`--forward-metadata`, `--drop-metadata`)."""
        return tuple((k, v) for k, v in wire.call_metadata(context.invocation_metadata()) if self._forwards_key(k))

    def _forwards_key(self, key: str) -> bool:
        known = self._forwards.get(key)
        if known is not None:
            return known
        if len(self._forwards) >= 4096:
            self._forwards.clear()
        known = self._forwards[key] = self.config.forwards(key)
        if not known:  # logged once per key (again only after the table was cleared)
            log.info("metadata %r is not passed on to handlers (--drop-metadata / --forward-metadata)", key)
        return known

    async def _admit(self, route: Route, context: grpc.aio.ServicerContext) -> None:
        """Refuse a call at once when it could only wait: too many in flight, or nobody to serve it."""
        if self.requester.in_flight >= self.config.max_in_flight:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"over {self.config.max_in_flight} calls in flight in this frontend; retry later")
        if self.consumers.abandoned(route.topic):
            self.metrics.no_handler(route.topic)
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"no handler process consumes topic '{route.topic}' (none for "
                                f"{self.consumers.unconsumed_for(route.topic):.0f} s): start one (python -m handlers) "
                                f"serving {route.path.split('/')[1]}")

    async def _open(self, route: Route, context: grpc.aio.ServicerContext, request: bytes | None,
                    key: bytes | None = None) -> Stream:
        await self._admit(route, context)
        try:
            return self.requester.open_stream(
                route.path, topic=route.topic, request=request, key=key,
                metadata=self._forwarded(context), timeout=context.time_remaining(), **_peer(context),
            )
        except CallError as exc:
            await context.abort(exc.code, exc.details)
            raise AssertionError("unreachable") from exc

    async def _set_health(self) -> None:
        """Health: "" while Kafka answers; a service while, besides, each of its request topics
        has a handler process consuming it (or while that cannot be known)."""
        await self.health.set("", _serving(self._kafka_ok))
        for service in self.services:
            consumed = all(self.consumers.groups(t) != set() for t in self._topics(service))
            await self.health.set(service.full_name, _serving(self._kafka_ok and consumed))

    async def _watch_health(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL)
            ok = self.requester.ready and await self.requester.transport_healthy()
            if ok != self._kafka_ok:
                log.warning("Kafka is %s: health %s", "reachable" if ok else "unreachable",
                            "SERVING" if ok else "NOT_SERVING")
                self._kafka_ok = ok
                await self._set_health()

    async def _watch_consumers(self) -> None:
        while True:
            await asyncio.sleep(self.consumers.interval)
            changed = await self.consumers.refresh()
            if not changed:
                continue
            for topic in changed:
                groups = self.consumers.groups(topic)
                if groups:
                    log.info("topic %s: handler processes consume it (group %s)", topic, ", ".join(sorted(groups)))
                else:
                    grace = self.config.no_handler_grace
                    log.warning("topic %s: no handler process consumes it%s", topic,
                                f"; its calls fail with UNAVAILABLE after {grace:g} s" if grace else "")
            await self._set_health()


def _serving(serving: bool) -> health_pb2.HealthCheckResponse.ServingStatus.ValueType:
    return health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING


class _Observed:
    """Times one call and counts it under the status its client gets: ``with _Observed(calls, context):``."""

    __slots__ = ("_calls", "_context", "_started")

    def __init__(self, calls: CallMetrics, context: grpc.aio.ServicerContext) -> None:
        self._calls, self._context = calls, context
        self._started = time.perf_counter()

    def __enter__(self) -> None:
        pass

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._calls.observe(_status(self._context, exc), time.perf_counter() - self._started)


def _status(context: grpc.aio.ServicerContext, exc: BaseException | None) -> grpc.StatusCode:
    if exc is None:
        return grpc.StatusCode.OK  # the behaviors abort for every other status
    code = context.code()  # set by context.abort()
    if code is not None:
        return code
    if isinstance(exc, (asyncio.CancelledError, GeneratorExit)):
        # grpc cancels the call when its client goes away or its deadline passes.
        remaining = context.time_remaining()
        if remaining is not None and remaining < DEADLINE_SLACK:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN  # what grpc answers for an exception escaping a behavior


async def _keys(route: Route, request: bytes, context: grpc.aio.ServicerContext) -> tuple[bytes | None, bytes | None]:
    try:
        return route.call_keys(request, context.invocation_metadata() or ())
    except CallError as exc:
        await context.abort(exc.code, exc.details)
        raise AssertionError("unreachable") from exc


async def _pump(requests: AsyncIterator[bytes], stream: Stream) -> None:
    """Send a client's request messages, then its half-close, while the call's answer is awaited."""
    try:
        async for message in requests:
            await stream.send(message)
        await stream.close_send()
    except CallError:
        pass  # the call has ended; its status comes through the stream
    except Exception as exc:
        stream.fail(exc)  # the stream raises it to the call, as when this ran inline


def _peer(context: grpc.aio.ServicerContext) -> dict[str, Any]:
    """The caller as TLS verified it, for the handlers (`auth`, `identity_key` of the request).

    Only with a verified identity (mutual TLS): the certificates themselves are left out, and
    these headers come from this frontend alone (a client's metadata goes in rpc-md-*)."""
    identity_key = context.peer_identity_key()
    if identity_key is None:
        return {}
    auth = tuple((name, bytes(value)) for name, values in (context.auth_context() or {}).items()
                 if name not in ("x509_pem_cert", "x509_pem_cert_chain") for value in values)
    return {"auth": auth, "identity_key": identity_key}


async def _finish(reply: wire.Reply, context: grpc.aio.ServicerContext) -> bytes:
    if reply.trailing_metadata:
        context.set_trailing_metadata(reply.trailing_metadata)
    if reply.code is not grpc.StatusCode.OK:
        await context.abort(reply.code, reply.message, reply.trailing_metadata)
    return reply.payload


async def _responses(stream: Stream, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
    """The response messages of `stream`, then its status and trailers onto `context`."""
    try:
        async for message in stream:
            yield message
    except CallError as exc:
        await context.abort(exc.code, exc.details, stream.reply.trailing_metadata if stream.reply else ())
    finally:
        stream.cancel()  # a no-op once the call has ended; else the client went away
    assert stream.reply is not None
    if stream.reply.trailing_metadata:
        context.set_trailing_metadata(stream.reply.trailing_metadata)
