"""Spans of calls through OpenTelemetry, when its API is installed; without it, nothing happens.

A requester (the frontend, `KafkaChannel`) opens a CLIENT span per call. Its parent is the
span current in the caller or, without one, the ``traceparent``/``tracestate`` of the call's
metadata (what the gRPC client sent). The span's own context replaces those entries in the
metadata carried to Kafka (``rpc-md-traceparent``), so the handler's SERVER span is its child.
The handler span is current while the handler function runs (on its thread too, for ``def``
handlers), so spans the handler starts nest under it::

    tracing = Tracing()                             # the global tracer provider (or tracer_provider=...)
    span = tracing.call(path, topic, metadata)      # send span.metadata instead of metadata
    span.end(grpc.StatusCode.OK)
    with tracing.handling(request, peer) as span:   # current in the block
        span.end(reply.code, reply.message)

The library uses the API only: spans are recorded once a process installs an SDK tracer
provider, which `configure` does from the standard ``OTEL_*`` environment variables.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.metadata import entry_points
from typing import Any

import grpc

from adapter.errors import ConfigError
from adapter.protocol import wire
from adapter.runtime.logs import peer_location
from adapter.runtime.metrics import DEADLINE_SLACK

try:
    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.trace import SpanKind, Status, StatusCode
except ImportError:  # optional: pip install 'kafka-grpc-adapter[tracing]'
    trace = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

#: The gRPC codes that make a handler (server) span an error, as OpenTelemetry's semantic
#: conventions for gRPC have it: the others are the caller's doing. For the caller, any non-OK code is.
_SERVER_ERRORS = frozenset({
    grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DATA_LOSS,
})


class CallSpan:
    """One call's span; all no-ops when tracing is off. `end` is idempotent: the first outcome counts."""

    __slots__ = ("_server", "_unended", "metadata")

    def __init__(self, span: Any = None, metadata: wire.Metadata = (), server: bool = False) -> None:
        # The span until it ends. A def handler's thread may end it while the event loop does (a
        # cancel): popping from a list, or slicing it, is atomic, so exactly one of them ends it.
        self._unended = [span] if span is not None else []
        self._server = server
        #: The metadata to send: the caller's, its trace context replaced by this span's.
        self.metadata = metadata

    def set_correlation_id(self, correlation_id: bytes) -> None:
        for span in self._unended[:1]:
            span.set_attribute("messaging.message.conversation_id", correlation_id.hex())

    def record_exception(self, exc: BaseException) -> None:
        for span in self._unended[:1]:
            span.record_exception(exc)

    def end(self, code: grpc.StatusCode, message: str = "") -> None:
        """End the span with the call's outcome; safe from any thread."""
        try:
            span = self._unended.pop()
        except IndexError:
            return
        span.set_attribute("rpc.grpc.status_code", code.value[0])
        if code is not grpc.StatusCode.OK and (not self._server or code in _SERVER_ERRORS):
            span.set_status(Status(StatusCode.ERROR, f"{code.name}: {message}" if message else code.name))
        span.end()


_OFF = CallSpan()


def code_when_cancelled(remaining: float | None) -> grpc.StatusCode:
    """The outcome of a call given up with `remaining` seconds to its deadline, as the metrics count it."""
    return grpc.StatusCode.DEADLINE_EXCEEDED if remaining is not None and remaining < DEADLINE_SLACK else grpc.StatusCode.CANCELLED


class Tracing:
    """Makes the spans of one requester or dispatcher, from `tracer_provider` (default: the global one)."""

    def __init__(self, tracer_provider: Any = None) -> None:
        self._tracer = None if trace is None else trace.get_tracer("kafka-grpc-adapter", tracer_provider=tracer_provider)
        self._global = tracer_provider is None

    @property
    def on(self) -> bool:
        """Whether spans are made: OpenTelemetry is installed and a tracer provider was set up."""
        # Checked per call: a process may install its provider after this object exists.
        return self._tracer is not None and not (
            self._global and isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider))

    def call(self, path: str, topic: str, metadata: wire.Metadata) -> CallSpan:
        """Start the caller's span of a call to `path` through `topic`."""
        if not self.on:
            return CallSpan(metadata=metadata)  # the caller's trace context, if any, goes on untouched
        fields = propagate.get_global_textmap().fields  # traceparent, tracestate, baggage: OTEL_PROPAGATORS
        base = otel_context.get_current()
        if not trace.get_current_span(base).get_span_context().is_valid:
            base = propagate.extract(_carrier(metadata, fields))
        span = self._tracer.start_span(_name(path), base, kind=SpanKind.CLIENT,
                                       attributes={**_rpc(path), "messaging.destination.name": topic})
        if span.get_span_context().is_valid:  # it is with the SDK, sampled or not
            carrier: dict[str, str] = {}
            propagate.inject(carrier, trace.set_span_in_context(span, base))
            metadata = (*((k, v) for k, v in metadata if k not in fields), *carrier.items())
        return CallSpan(span, metadata)

    @contextmanager
    def handling(self, request: wire.Request, peer: str) -> Iterator[CallSpan]:
        """The handler's span of `request`, current in the block; the block ends it with the call's status."""
        if not self.on:
            yield _OFF
            return
        attributes: dict[str, str | int] = {**_rpc(request.method),
                                            "messaging.message.conversation_id": request.correlation_id.hex()}
        topic, partition, offset = peer_location(peer)
        if topic is not None and partition is not None and offset is not None:
            attributes["messaging.destination.name"] = topic
            attributes["messaging.destination.partition.id"] = str(partition)
            attributes["messaging.kafka.offset"] = offset
        # The parent is the caller's span only, never whatever this process had current.
        parent = propagate.extract(_carrier(request.metadata, propagate.get_global_textmap().fields))
        span = self._tracer.start_span(_name(request.method), parent, kind=SpanKind.SERVER, attributes=attributes)
        with trace.use_span(span, record_exception=False, set_status_on_exception=False):
            yield CallSpan(span, server=True)


def configure(service_name: str, environ: Mapping[str, str]) -> str | None:
    """Install the OpenTelemetry SDK as the global tracer provider when ``OTEL_TRACES_EXPORTER`` asks.

    ``OTEL_TRACES_EXPORTER`` names exporters (``otlp``, ``console``...) as the SDK's own
    configuration does; unset or ``none``: tracing stays off. A provider installed before
    (``opentelemetry-instrument``) is kept. Everything else is the SDK's: ``OTEL_SERVICE_NAME``
    (default `service_name`), ``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_TRACES_SAMPLER``...
    Returns the exporters in use, or None. Raises `ConfigError` when they cannot be had.
    """
    names = [n.strip() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names or names == ["none"] or environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    if trace is None:
        raise ConfigError("OTEL_TRACES_EXPORTER is set but OpenTelemetry is not installed: "
                          "pip install 'kafka-grpc-adapter[tracing]'")
    if not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider):
        return "the tracer provider installed before"
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        raise ConfigError("OTEL_TRACES_EXPORTER is set but opentelemetry-sdk is not installed: "
                          "pip install 'kafka-grpc-adapter[tracing]'") from None
    exporters = [_exporter(name, environ) for name in names]
    resource = Resource.create()  # OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service_name}))
    provider = TracerProvider(resource=resource)  # the sampler: OTEL_TRACES_SAMPLER
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))  # flushed at exit
    trace.set_tracer_provider(provider)
    log.info("tracing: spans go to %s", ", ".join(names))
    return ", ".join(names)


def _exporter(name: str, environ: Mapping[str, str]) -> Any:
    # As the SDK's configuration does: "otlp" is gRPC unless the protocol says http/protobuf.
    if name == "otlp":
        protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc"
        name = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}.get(protocol.strip(), "")
        if not name:
            raise ConfigError(f"OTEL_EXPORTER_OTLP_PROTOCOL: {protocol!r} is not grpc or http/protobuf")
    found = entry_points(group="opentelemetry_traces_exporter", name=name)
    if not found:
        installed = sorted(e.name for e in entry_points(group="opentelemetry_traces_exporter"))
        raise ConfigError(f"OTEL_TRACES_EXPORTER: no span exporter {name!r} is installed "
                          f"(installed: {', '.join(installed) or 'none'})")
    try:
        return next(iter(found)).load()()
    except Exception as exc:
        raise ConfigError(f"OTEL_TRACES_EXPORTER: span exporter {name!r} failed to start: {exc}") from exc


def _carrier(metadata: wire.Metadata, fields: set[str]) -> dict[str, str]:
    return {k: v for k, v in metadata if k in fields and isinstance(v, str)}


def _name(path: str) -> str:
    return path.lstrip("/") or "(no method)"


def _rpc(path: str) -> dict[str, str | int]:
    service, _, method = path.lstrip("/").partition("/")
    return {"rpc.system": "grpc", "rpc.service": service, "rpc.method": method, "messaging.system": "kafka"}
