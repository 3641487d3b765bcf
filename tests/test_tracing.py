"""Tracing (adapter.runtime.tracing): the caller's span, the handler's span, linked through the records.

In process, with the SDK's in-memory exporter given to `serve_in_memory`; then through real
processes and a real broker, exporting over OTLP to a collector this test runs.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from google.protobuf import empty_pb2
from kafka import KafkaConsumer
from opentelemetry import trace
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from rpctest.v1 import kitchen_pb2, kitchen_pb2_grpc

from adapter.protocol import wire
from handlers.testing import serve_in_memory
from tests import procs
from tests.kitchen_service import Kitchen

KITCHEN = "rpctest.v1.Kitchen"
TRACE_ID = 0x0AF7651916CD43DD8448EB211C80319C
CLIENT_SPAN_ID = 0xB7AD6B7169203331
#: What a traced gRPC client sends: its own span's context, sampled.
TRACEPARENT = f"00-{TRACE_ID:032x}-{CLIENT_SPAN_ID:016x}-01"
TRACESTATE = "vendor=opaque"


class TracedKitchen(Kitchen):
    """The Kitchen, with handlers that start spans of their own through the OpenTelemetry API."""

    def __init__(self, tracer_provider: Any = None) -> None:  # a handler process: the global provider
        self.tracer = trace.get_tracer("tests.user", tracer_provider=tracer_provider)

    def Echo(self, request: kitchen_pb2.Everything, context: Any) -> kitchen_pb2.Everything:  # def: on a thread
        with self.tracer.start_as_current_span("user: def"):
            return request

    async def AsyncEcho(self, request: kitchen_pb2.Everything, context: Any) -> kitchen_pb2.Everything:
        with self.tracer.start_as_current_span("user: async"):
            await asyncio.sleep(0)
            return request

    def CountUp(self, request: kitchen_pb2.Count, context: Any) -> Iterator[kitchen_pb2.Item]:  # each step on a thread
        with self.tracer.start_as_current_span("user: generator"):
            for i in range(request.n):
                with self.tracer.start_as_current_span(f"user: item {i}"):
                    yield kitchen_pb2.Item(i=i)


Provider = tuple[TracerProvider, InMemorySpanExporter]


@pytest.fixture
def provider() -> Iterator[Provider]:
    """An SDK tracer provider of the test's own: the global one stays unset (no-op) for every test."""
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield tracer_provider, exporter
    tracer_provider.shutdown()


def run(test: Callable[[kitchen_pb2_grpc.KitchenStub], Awaitable[Any]], tracer_provider: Any = None) -> Any:
    async def main() -> Any:
        async with serve_in_memory(TracedKitchen(tracer_provider), tracer_provider=tracer_provider) as channel:
            return await test(kitchen_pb2_grpc.KitchenStub(channel))

    return asyncio.run(main())


def one(spans: list[ReadableSpan], kind: SpanKind, name: str | None = None) -> ReadableSpan:
    found = [s for s in spans if s.kind is kind and (name is None or s.name == name)]
    assert len(found) == 1, [(s.name, s.kind) for s in spans]
    return found[0]


def traceparent_of(span: ReadableSpan) -> str:
    assert span.context is not None
    return f"00-{span.context.trace_id:032x}-{span.context.span_id:016x}-{span.context.trace_flags:02x}"


def test_the_frontend_span_is_a_child_of_the_clients_and_the_handler_span_of_the_frontends(provider: Provider) -> None:
    tracer_provider, exporter = provider

    async def test(stub: kitchen_pb2_grpc.KitchenStub) -> kitchen_pb2.MetaReply:
        return await stub.Meta(empty_pb2.Empty(), metadata=(("traceparent", TRACEPARENT), ("tracestate", TRACESTATE),
                                                            ("x-user", "ann")))

    seen = run(test, tracer_provider)
    spans = list(exporter.get_finished_spans())
    assert len(spans) == 2
    frontend, handler = one(spans, SpanKind.CLIENT), one(spans, SpanKind.SERVER)
    assert frontend.name == handler.name == f"{KITCHEN}/Meta"
    assert frontend.context is not None and handler.context is not None
    assert frontend.parent is not None and handler.parent is not None
    # One trace: the client's span, then the frontend's, then the handler's.
    assert frontend.context.trace_id == handler.context.trace_id == TRACE_ID
    assert (frontend.parent.span_id, frontend.parent.is_remote) == (CLIENT_SPAN_ID, True)
    assert (handler.parent.span_id, handler.parent.is_remote) == (frontend.context.span_id, True)
    # What travelled in the record (and what the handler's context shows): the frontend span's
    # context in place of the client's, its tracestate kept; other metadata untouched.
    assert dict(seen.text) == {"traceparent": traceparent_of(frontend), "tracestate": TRACESTATE, "x-user": "ann"}
    assert handler.context.trace_state.to_header() == TRACESTATE
    common = {"rpc.system": "grpc", "rpc.service": KITCHEN, "rpc.method": "Meta", "messaging.system": "kafka",
              "messaging.destination.name": KITCHEN, "rpc.grpc.status_code": 0}
    assert frontend.attributes is not None and handler.attributes is not None
    assert dict(frontend.attributes) == {**common, "messaging.message.conversation_id":
                                         handler.attributes["messaging.message.conversation_id"]}
    assert len(str(frontend.attributes["messaging.message.conversation_id"])) == 32  # 16 bytes, in hex
    assert handler.attributes["messaging.destination.partition.id"] == "0"
    assert isinstance(handler.attributes["messaging.kafka.offset"], int)
    assert frontend.status.status_code is handler.status.status_code is StatusCode.UNSET
    # The handler's work lies within the frontend's wait.
    assert frontend.start_time is not None and handler.start_time is not None
    assert frontend.end_time is not None and handler.end_time is not None
    assert frontend.start_time <= handler.start_time <= handler.end_time <= frontend.end_time


def test_without_a_traceparent_the_frontend_span_starts_the_trace(provider: Provider) -> None:
    tracer_provider, exporter = provider

    async def test(stub: kitchen_pb2_grpc.KitchenStub) -> kitchen_pb2.MetaReply:
        return await stub.Meta(empty_pb2.Empty())

    seen = run(test, tracer_provider)
    spans = list(exporter.get_finished_spans())
    frontend, handler = one(spans, SpanKind.CLIENT), one(spans, SpanKind.SERVER)
    assert frontend.parent is None
    assert handler.parent is not None and frontend.context is not None
    assert handler.parent.span_id == frontend.context.span_id
    assert dict(seen.text) == {"traceparent": traceparent_of(frontend)}


def test_a_span_current_in_the_caller_is_the_parent(provider: Provider) -> None:
    # In-process callers (KafkaChannel, a handler calling another service) need no metadata.
    tracer_provider, exporter = provider
    tracer = tracer_provider.get_tracer("tests.caller")

    async def test(stub: kitchen_pb2_grpc.KitchenStub) -> int:
        with tracer.start_as_current_span("caller") as caller:
            await stub.Nothing(empty_pb2.Empty(), metadata=(("traceparent", TRACEPARENT),))
            return caller.get_span_context().span_id

    caller_id = run(test, tracer_provider)
    frontend = one(list(exporter.get_finished_spans()), SpanKind.CLIENT)
    assert frontend.parent is not None and frontend.parent.span_id == caller_id
    assert frontend.context is not None and frontend.context.trace_id != TRACE_ID


@pytest.mark.parametrize(
    ("mode", "code", "handler_status"),
    [
        # The caller's span is an error for every code but OK; the handler's only for the codes
        # that are the server's fault (OpenTelemetry's gRPC conventions).
        (kitchen_pb2.FailRequest.RAISE, grpc.StatusCode.UNKNOWN, StatusCode.ERROR),
        (kitchen_pb2.FailRequest.ABORT, grpc.StatusCode.NOT_FOUND, StatusCode.UNSET),
    ],
)
def test_failed_calls_record_their_status_code(provider: Provider, mode: int, code: grpc.StatusCode,
                                               handler_status: StatusCode) -> None:
    tracer_provider, exporter = provider

    async def test(stub: kitchen_pb2_grpc.KitchenStub) -> grpc.StatusCode:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.Fail(kitchen_pb2.FailRequest(mode=mode, code=code.value[0], message="burnt"))
        return raised.value.code()

    assert run(test, tracer_provider) is code
    spans = list(exporter.get_finished_spans())
    frontend, handler = one(spans, SpanKind.CLIENT), one(spans, SpanKind.SERVER)
    assert frontend.attributes is not None and handler.attributes is not None
    assert frontend.attributes["rpc.grpc.status_code"] == handler.attributes["rpc.grpc.status_code"] == code.value[0]
    assert frontend.status.status_code is StatusCode.ERROR
    assert frontend.status.description is not None and frontend.status.description.startswith(code.name)
    assert handler.status.status_code is handler_status
    exceptions = [e for e in handler.events if e.name == "exception"]
    if mode == kitchen_pb2.FailRequest.RAISE:  # an uncaught exception is recorded on the handler span
        assert exceptions and exceptions[0].attributes is not None
        assert exceptions[0].attributes["exception.type"] == "RuntimeError"
    else:
        assert not exceptions


def test_deadline_and_cancel_end_both_spans_with_that_status(provider: Provider) -> None:
    tracer_provider, exporter = provider

    async def test(stub: kitchen_pb2_grpc.KitchenStub) -> None:
        with pytest.raises(grpc.aio.AioRpcError):
            await stub.Sleep(kitchen_pb2.SleepRequest(seconds=5), timeout=0.2)
        call = stub.Watch(kitchen_pb2.Count(delay=0.01))  # streams until cancelled
        await call.read()
        call.cancel()
        await asyncio.sleep(0.3)  # the handler sees the cancel record

    run(test, tracer_provider)
    spans = list(exporter.get_finished_spans())
    for name, code in [("Sleep", grpc.StatusCode.DEADLINE_EXCEEDED), ("Watch", grpc.StatusCode.CANCELLED)]:
        frontend, handler = one(spans, SpanKind.CLIENT, f"{KITCHEN}/{name}"), one(spans, SpanKind.SERVER, f"{KITCHEN}/{name}")
        assert handler.parent is not None and frontend.context is not None
        assert handler.parent.span_id == frontend.context.span_id
        assert frontend.attributes is not None and handler.attributes is not None
        assert frontend.attributes["rpc.grpc.status_code"] == handler.attributes["rpc.grpc.status_code"] == code.value[0]
    assert one(spans, SpanKind.SERVER, f"{KITCHEN}/Sleep").status.status_code is StatusCode.ERROR
    assert one(spans, SpanKind.SERVER, f"{KITCHEN}/Watch").status.status_code is StatusCode.UNSET


def test_spans_started_inside_handlers_nest_under_the_handler_span(provider: Provider) -> None:
    tracer_provider, exporter = provider

    async def test(stub: kitchen_pb2_grpc.KitchenStub) -> None:
        await stub.Echo(kitchen_pb2.Everything(number=1))
        await stub.AsyncEcho(kitchen_pb2.Everything(number=2))
        assert [item.i async for item in stub.CountUp(kitchen_pb2.Count(n=3))] == [0, 1, 2]

    run(test, tracer_provider)
    spans = list(exporter.get_finished_spans())
    for method, user in [("Echo", "user: def"), ("AsyncEcho", "user: async"), ("CountUp", "user: generator")]:
        handler = one(spans, SpanKind.SERVER, f"{KITCHEN}/{method}")
        mine = one(spans, SpanKind.INTERNAL, user)
        assert handler.context is not None and mine.parent is not None
        assert mine.parent.span_id == handler.context.span_id, method
    # A generator's spans stay nested across its steps, each run on a pool thread.
    generator = one(spans, SpanKind.INTERNAL, "user: generator")
    assert generator.context is not None
    for i in range(3):
        item = one(spans, SpanKind.INTERNAL, f"user: item {i}")
        assert item.parent is not None and item.parent.span_id == generator.context.span_id


def test_streams_get_one_span_each_side_for_the_whole_call(provider: Provider) -> None:
    tracer_provider, exporter = provider

    async def test(stub: kitchen_pb2_grpc.KitchenStub) -> None:
        summary = await stub.Collect(iter([kitchen_pb2.Item(i=i) for i in range(3)]),
                                     metadata=(("traceparent", TRACEPARENT),))
        assert summary.count == 3
        replies = [r.i async for r in stub.Chat(iter([kitchen_pb2.Item(i=1), kitchen_pb2.Item(i=2)]))]
        assert replies == [2, 4]

    run(test, tracer_provider)
    spans = list(exporter.get_finished_spans())
    assert len(spans) == 4
    for name in ("Collect", "Chat"):
        frontend, handler = one(spans, SpanKind.CLIENT, f"{KITCHEN}/{name}"), one(spans, SpanKind.SERVER, f"{KITCHEN}/{name}")
        assert handler.parent is not None and frontend.context is not None
        assert handler.parent.span_id == frontend.context.span_id
        assert frontend.attributes is not None and frontend.attributes["rpc.grpc.status_code"] == 0
    collect = one(spans, SpanKind.CLIENT, f"{KITCHEN}/Collect")
    assert collect.parent is not None and collect.parent.span_id == CLIENT_SPAN_ID


def test_without_a_tracer_provider_nothing_is_recorded_and_metadata_passes_through() -> None:
    # The global provider is never set in the test process: the API's no-op, as in a process
    # started without OTEL_TRACES_EXPORTER.
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)

    async def test(stub: kitchen_pb2_grpc.KitchenStub) -> kitchen_pb2.MetaReply:
        await stub.Echo(kitchen_pb2.Everything(number=1))  # its user span is a no-op too
        return await stub.Meta(empty_pb2.Empty(), metadata=(("traceparent", TRACEPARENT), ("tracestate", TRACESTATE)))

    seen = run(test)
    assert dict(seen.text) == {"traceparent": TRACEPARENT, "tracestate": TRACESTATE}


def test_without_opentelemetry_installed_calls_work_and_asking_for_spans_is_a_clear_error() -> None:
    script = textwrap.dedent(f"""
        import asyncio, sys
        sys.modules["opentelemetry"] = None  # as if it were not installed: importing it fails
        from google.protobuf import empty_pb2
        from rpctest.v1 import kitchen_pb2_grpc
        from adapter.runtime import tracing
        from adapter.errors import ConfigError
        from handlers.testing import serve_in_memory
        from tests.kitchen_service import Kitchen

        async def main():
            async with serve_in_memory(Kitchen) as channel:
                reply = await kitchen_pb2_grpc.KitchenStub(channel).Meta(
                    empty_pb2.Empty(), metadata=(("traceparent", {TRACEPARENT!r}),))
                print(dict(reply.text))

        asyncio.run(main())
        print(tracing.configure("x", {{}}))
        try:
            tracing.configure("x", {{"OTEL_TRACES_EXPORTER": "otlp"}})
        except ConfigError as exc:
            print(exc)
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=procs.REPO, env=procs.child_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        str({"traceparent": TRACEPARENT}),
        "None",
        "OTEL_TRACES_EXPORTER is set but OpenTelemetry is not installed: pip install 'kafka-grpc-adapter[tracing]'",
    ]


@pytest.mark.parametrize(
    ("environment", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "console,zipkin-ish"},
         r"OTEL_TRACES_EXPORTER: no span exporter 'zipkin-ish' is installed \(installed: .*\botlp_proto_grpc\b.*\)"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "carrier-pigeon"},
         r"OTEL_EXPORTER_OTLP_PROTOCOL: 'carrier-pigeon' is not grpc or http/protobuf"),
    ],
)
def test_processes_refuse_exporters_they_cannot_have_in_one_line(environment: dict[str, str], message: str) -> None:
    # Before any Kafka connection: no broker needed.
    done = subprocess.run([sys.executable, "-m", "handlers", "tests.kitchen_service:Kitchen",
                           "--bootstrap-servers", "127.0.0.1:9"],
                          cwd=procs.REPO, env=procs.child_env(**environment), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert re.fullmatch(f"handlers: error: {message}", done.stderr.strip().splitlines()[-1]), done.stderr
    assert "Traceback" not in done.stderr


# Through real processes and a real broker: both export over OTLP to this collector.

@dataclass(frozen=True)
class Exported:
    service: str
    span: trace_pb2.Span

    @property
    def attributes(self) -> dict[str, Any]:
        return {a.key: getattr(a.value, a.value.WhichOneof("value")) for a in self.span.attributes}


class Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector that keeps what it is sent."""

    def __init__(self) -> None:
        self.spans: list[Exported] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        self.endpoint = f"http://127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest, context: Any) -> Any:
        with self._lock:
            for resource in request.resource_spans:
                service = next(a.value.string_value for a in resource.resource.attributes if a.key == "service.name")
                self.spans.extend(Exported(service, span) for scope in resource.scope_spans for span in scope.spans)
        return trace_service_pb2.ExportTraceServiceResponse()

    def named(self, name: str) -> list[Exported]:
        with self._lock:
            return [s for s in self.spans if s.span.name == name]

    def wait_for(self, name: str, count: int, timeout: float = 20.0) -> list[Exported]:
        deadline = time.monotonic() + timeout
        while len(self.named(name)) < count:
            assert time.monotonic() < deadline, f"{count} spans {name!r} not exported in time: {self.spans}"
            time.sleep(0.05)
        return self.named(name)

    def stop(self) -> None:
        self._server.stop(0)


@pytest.fixture
def collector() -> Iterator[Collector]:
    running = Collector()
    yield running
    running.stop()


def start(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> tuple[procs.Proc, procs.Proc, grpc.Channel]:
    worker = procs.handler(tmp_path / "handler.log", kafka_bootstrap, prefix, targets=["tests.test_tracing:TracedKitchen"])
    try:
        front, address = procs.frontend(tmp_path / "frontend.log", kafka_bootstrap, prefix)
    except BaseException:
        worker.stop()
        raise
    return worker, front, grpc.insecure_channel(address)


def by_kind(spans: list[Exported], kind: int) -> Exported:
    found = [s for s in spans if s.span.kind == kind]
    assert len(found) == 1, spans
    return found[0]


@pytest.mark.kafka
def test_real_processes_export_linked_spans_over_otlp(kafka_bootstrap: str, prefix: str, tmp_path: Path,
                                                      collector: Collector, monkeypatch: pytest.MonkeyPatch) -> None:
    # What an operator sets: the processes configure the SDK from these alone.
    for name, value in {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
                        "OTEL_BSP_SCHEDULE_DELAY": "100"}.items():
        monkeypatch.setenv(name, value)
    worker, front, channel = start(kafka_bootstrap, prefix, tmp_path)
    try:
        kitchen = kitchen_pb2_grpc.KitchenStub(channel)
        traced = (("traceparent", TRACEPARENT), ("tracestate", TRACESTATE))
        assert kitchen.Echo(kitchen_pb2.Everything(number=7), timeout=20, metadata=traced).number == 7
        with pytest.raises(grpc.RpcError) as failed:
            kitchen.Fail(kitchen_pb2.FailRequest(code=5, message="nope"), timeout=20)
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        echo = collector.wait_for(f"{KITCHEN}/Echo", 2)
        user = collector.wait_for("user: def", 1)[0]
        fail = collector.wait_for(f"{KITCHEN}/Fail", 2)
    finally:
        channel.close()
        assert worker.stop() == 0, worker.output()
        assert front.stop() == 0, front.output()
    assert "tracing: spans go to otlp" in front.output() and "tracing: spans go to otlp" in worker.output()

    frontend, handler = by_kind(echo, trace_pb2.Span.SPAN_KIND_CLIENT), by_kind(echo, trace_pb2.Span.SPAN_KIND_SERVER)
    assert (frontend.service, handler.service, user.service) == ("kafka-rpc-adapter", "kafka-rpc-handlers",
                                                                 "kafka-rpc-handlers")
    trace_id = TRACE_ID.to_bytes(16, "big")
    assert frontend.span.trace_id == handler.span.trace_id == user.span.trace_id == trace_id
    assert frontend.span.parent_span_id == CLIENT_SPAN_ID.to_bytes(8, "big")
    assert handler.span.parent_span_id == frontend.span.span_id
    assert user.span.parent_span_id == handler.span.span_id  # a def handler's own span, on its thread
    assert frontend.span.trace_state == handler.span.trace_state == TRACESTATE
    assert frontend.attributes["messaging.destination.name"] == handler.attributes["messaging.destination.name"] \
        == f"{prefix}{KITCHEN}"
    assert frontend.attributes["messaging.message.conversation_id"] == handler.attributes["messaging.message.conversation_id"]
    assert handler.attributes["messaging.kafka.offset"] >= 0
    assert frontend.attributes["rpc.grpc.status_code"] == handler.attributes["rpc.grpc.status_code"] == 0

    # On the wire: the request record's rpc-md-traceparent names the frontend's span.
    request = sent_request(kafka_bootstrap, f"{prefix}{KITCHEN}", f"/{KITCHEN}/Echo")
    assert dict(request.metadata)["traceparent"] == f"00-{trace_id.hex()}-{frontend.span.span_id.hex()}-01"

    # A call without a traceparent starts its own trace at the frontend; NOT_FOUND is the caller's error only.
    frontend, handler = by_kind(fail, trace_pb2.Span.SPAN_KIND_CLIENT), by_kind(fail, trace_pb2.Span.SPAN_KIND_SERVER)
    assert frontend.span.parent_span_id == b"" and handler.span.parent_span_id == frontend.span.span_id
    assert frontend.span.trace_id == handler.span.trace_id != trace_id
    assert frontend.attributes["rpc.grpc.status_code"] == handler.attributes["rpc.grpc.status_code"] == 5
    assert frontend.span.status.code == trace_pb2.Status.STATUS_CODE_ERROR
    assert handler.span.status.code == trace_pb2.Status.STATUS_CODE_UNSET


@pytest.mark.kafka
def test_real_processes_without_otel_traces_exporter_export_nothing(kafka_bootstrap: str, prefix: str, tmp_path: Path,
                                                                   collector: Collector,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # An endpoint alone does not turn tracing on.
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    worker, front, channel = start(kafka_bootstrap, prefix, tmp_path)
    try:
        kitchen = kitchen_pb2_grpc.KitchenStub(channel)
        seen = kitchen.Meta(empty_pb2.Empty(), timeout=20, metadata=(("traceparent", TRACEPARENT),))
        assert kitchen.Echo(kitchen_pb2.Everything(number=3), timeout=20).number == 3  # its user span: a no-op
    finally:
        channel.close()
        assert worker.stop() == 0, worker.output()
        assert front.stop() == 0, front.output()
    assert seen.text["traceparent"] == TRACEPARENT  # passed through untouched
    assert collector.spans == []
    assert "tracing" not in front.output() + worker.output()


def sent_request(bootstrap: str, topic: str, method: str) -> wire.Request:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=f"peek-{uuid.uuid4().hex[:8]}",
                             auto_offset_reset="earliest", enable_auto_commit=False, consumer_timeout_ms=10_000)
    try:
        for record in consumer:
            decoded = wire.decode_request(record.headers, record.value)
            if isinstance(decoded, wire.Request) and decoded.method == method:
                return decoded
    finally:
        consumer.close()
    raise AssertionError(f"no {method} request on {topic}")


CHANNEL_APP = """
import os, sys
from opentelemetry import trace
from adapter.caller.channel import KafkaChannel
from adapter.runtime.tracing import configure
from rpctest.v1 import kitchen_pb2, kitchen_pb2_grpc

configure("channel-app", os.environ)
bootstrap, prefix = sys.argv[1:3]
with KafkaChannel.connect([kitchen_pb2_grpc.KitchenStub], bootstrap_servers=bootstrap, topic_prefix=prefix,
                          reply_topic=prefix + "replies", reply_partitions=4) as channel:
    kitchen = kitchen_pb2_grpc.KitchenStub(channel)
    with trace.get_tracer("app").start_as_current_span("caller"):
        assert kitchen.Echo(kitchen_pb2.Everything(number=5), timeout=20).number == 5
        assert kitchen.Echo.future(kitchen_pb2.Everything(number=6), timeout=20).result().number == 6
trace.get_tracer_provider().shutdown()
"""


@pytest.mark.kafka
def test_a_blocking_kafka_channel_carries_the_callers_span(kafka_bootstrap: str, prefix: str, tmp_path: Path,
                                                           collector: Collector, monkeypatch: pytest.MonkeyPatch) -> None:
    # The channel runs calls on its own loop thread; they must still see the caller's current span.
    for name, value in {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": collector.endpoint,
                        "OTEL_BSP_SCHEDULE_DELAY": "100"}.items():
        monkeypatch.setenv(name, value)
    worker = procs.handler(tmp_path / "handler.log", kafka_bootstrap, prefix, targets=["tests.test_tracing:TracedKitchen"])
    try:
        done = subprocess.run([sys.executable, "-c", CHANNEL_APP, kafka_bootstrap, prefix], cwd=procs.REPO,
                              env=procs.child_env(), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        caller = collector.wait_for("caller", 1)[0].span
        clients = [s.span for s in collector.wait_for("rpctest.v1.Kitchen/Echo", 4) if s.span.kind == 3]  # CLIENT
        servers = [s.span for s in collector.named("rpctest.v1.Kitchen/Echo") if s.span.kind == 2]  # SERVER
    finally:
        assert worker.stop() == 0, worker.output()
    assert len(clients) == 2 and len(servers) == 2
    assert all(c.parent_span_id == caller.span_id and c.trace_id == caller.trace_id for c in clients)
    assert sorted(s.parent_span_id for s in servers) == sorted(c.span_id for c in clients)


def test_a_plain_traceparent_record_header_parents_the_handler_span(provider: Provider) -> None:
    # A Spring requester with tracing on writes W3C trace context as plain record headers.
    from adapter.runtime.tracing import Tracing
    from handlers.dispatcher import Dispatcher
    from handlers.registry import collect

    tracer_provider, exporter = provider
    headers = [(wire.CORRELATION_ID, b"s" * 16), (wire.METHOD, b"/rpctest.v1.Kitchen/Nothing"),
               ("traceparent", TRACEPARENT.encode())]
    request = wire.decode_request(headers, b"")
    assert isinstance(request, wire.Request)
    dispatcher = Dispatcher(collect([TracedKitchen(tracer_provider)])[0], 1, tracing=Tracing(tracer_provider))
    try:
        reply = asyncio.run(dispatcher.handle(request, "kafka:t/0@1"))
    finally:
        dispatcher.close()
    assert reply is not None and reply.code is grpc.StatusCode.OK
    handler = one(list(exporter.get_finished_spans()), SpanKind.SERVER)
    assert handler.parent is not None and handler.parent.span_id == CLIENT_SPAN_ID
    assert handler.context is not None and handler.context.trace_id == TRACE_ID
