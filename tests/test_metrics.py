"""Metrics (adapter.runtime.metrics): counted where things happen, agreeing with the counters, served over HTTP."""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from rpctest.v1 import kitchen_pb2, kitchen_pb2_grpc

from adapter.caller.memory import MemoryTransport, ReplyRecord
from adapter.errors import ConfigError
from adapter.frontend.gateway import Gateway
from adapter.kafka import kafka_python
from adapter.protocol import wire
from adapter.protocol.protoset import ProtoSet
from adapter.runtime import metrics
from adapter.runtime.config import FrontendConfig, KafkaConfig, WorkerConfig
from adapter.runtime.metrics import FrontendMetrics, HandlerMetrics
from handlers.calls import Calls
from handlers.dedupe import ReplyCache
from handlers.dispatcher import Dispatcher
from handlers.registry import collect
from tests import procs
from tests.kitchen_service import Kitchen

KITCHEN = "/rpctest.v1.Kitchen/"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def parse(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(registry: CollectorRegistry) -> Samples:
    return parse(generate_latest(registry).decode())


def get(samples: Samples, name: str, **labels: str) -> float | None:
    """One sample's value, None when the series does not exist."""
    return samples.get((name, tuple(sorted(labels.items()))))


def calls(samples: Samples, side: str, method: str, code: str) -> float | None:
    return get(samples, f"kafka_rpc_{side}_calls_total", method=KITCHEN + method, code=code)


def timed(samples: Samples, side: str, method: str, code: str) -> float | None:
    return get(samples, f"kafka_rpc_{side}_call_duration_seconds_count", method=KITCHEN + method, code=code)


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


# In one process: the real frontend (a gRPC server) and the real handler side, Kafka replaced by memory.

@dataclass
class Stack:
    gateway: Gateway
    calls: Calls
    dispatcher: Dispatcher
    transport: MemoryTransport
    kitchen: kitchen_pb2_grpc.KitchenStub
    frontend: FrontendMetrics
    handler: HandlerMetrics


@asynccontextmanager
async def in_memory() -> AsyncIterator[Stack]:
    frontend, handler = FrontendMetrics(CollectorRegistry()), HandlerMetrics(CollectorRegistry())
    dispatcher = Dispatcher(collect([Kitchen])[0], 4, handler)

    async def send(request: wire.Request, record: wire.Reply | wire.Frame, key: bytes | None) -> None:
        transport.reply(record.encode_headers(), record.payload)
        if isinstance(record, wire.Frame):
            await asyncio.sleep(0)

    handler_calls = Calls(dispatcher, send, replies=ReplyCache(60, 100), metrics=handler)

    async def serve(topic: str, key: bytes | None, value: bytes, headers: wire.Headers) -> ReplyRecord | None:
        work = handler_calls.accept(wire.decode_request(headers, value), peer=f"memory:{topic}", partition=(topic, 0),
                                    key=key)
        if work is not None:
            await work
        return None

    transport = MemoryTransport(serve)
    config = FrontendConfig(kafka=KafkaConfig(), proto_paths=(procs.REPO / "protos",), listen="127.0.0.1:0",
                            start_timeout=5)
    gateway = Gateway(config, ProtoSet.load(config.proto_paths), transport, frontend)
    await gateway.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}")
    try:
        yield Stack(gateway, handler_calls, dispatcher, transport, kitchen_pb2_grpc.KitchenStub(channel), frontend, handler)
    finally:
        await channel.close()
        await gateway.stop(0)
        dispatcher.close()


def test_calls_are_counted_and_timed_by_method_and_code_on_both_sides() -> None:
    async def run() -> tuple[Samples, Samples, Stack]:
        async with in_memory() as s:
            for i in range(3):
                assert (await s.kitchen.Echo(kitchen_pb2.Everything(number=i), timeout=5)).number == i
            with pytest.raises(grpc.aio.AioRpcError) as failed:
                await s.kitchen.Fail(kitchen_pb2.FailRequest(code=5, message="nope"), timeout=5)
            assert failed.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as late:
                await s.kitchen.Sleep(kitchen_pb2.SleepRequest(seconds=2), timeout=0.3)
            assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            # A reply for no waiting call: dropped and counted.
            s.transport.reply(wire.Reply(wire.new_correlation_id()).encode_headers(), b"")
            await eventually(lambda: s.gateway.requester.counters.dropped == 1)
            await eventually(lambda: s.calls.cancelled == 1)  # the handler stopped the Sleep
            return scrape(s.frontend.registry), scrape(s.handler.registry), s

    front, handler, s = asyncio.run(run())
    for side, samples in (("frontend", front), ("handler", handler)):
        assert calls(samples, side, "Echo", "OK") == 3
        assert timed(samples, side, "Echo", "OK") == 3
        assert get(samples, f"kafka_rpc_{side}_call_duration_seconds_bucket", method=KITCHEN + "Echo", code="OK",
                   le="+Inf") == 3
        assert calls(samples, side, "Fail", "NOT_FOUND") == 1
        assert calls(samples, side, "Nothing", "OK") == 0  # every method's OK series exists from the start
    assert calls(front, "frontend", "Sleep", "DEADLINE_EXCEEDED") == 1
    seconds = get(front, "kafka_rpc_frontend_call_duration_seconds_sum", method=KITCHEN + "Sleep", code="DEADLINE_EXCEEDED")
    assert seconds is not None and 0.25 < seconds < 1.5
    # Whether the handler's own timer or the frontend's cancel at the deadline stopped it.
    assert calls(handler, "handler", "Sleep", "DEADLINE_EXCEEDED") == 1
    assert get(handler, "kafka_rpc_handler_calls_cancelled_total") == 1 == s.calls.cancelled
    assert get(front, "kafka_rpc_frontend_replies_dropped_total") == 1 == s.gateway.requester.counters.dropped
    assert get(front, "kafka_rpc_frontend_calls_in_flight") == 0
    assert get(handler, "kafka_rpc_handler_concurrency_in_use") == 0
    assert get(handler, "kafka_rpc_handler_concurrency_limit") == 4


def test_streams_in_flight_and_concurrency_while_a_stream_runs_then_cancelled() -> None:
    async def run() -> tuple[Samples, Samples, Samples, Samples]:
        async with in_memory() as s:
            call = s.kitchen.Watch(kitchen_pb2.Count(delay=0.01), timeout=10)
            async for _ in call:
                break  # the stream is open at both ends
            running = scrape(s.frontend.registry), scrape(s.handler.registry)
            call.cancel()
            await eventually(lambda: s.calls.cancelled == 1 and s.dispatcher.running == 0)
            await eventually(lambda: calls(scrape(s.frontend.registry), "frontend", "Watch", "CANCELLED") == 1)
            return (*running, scrape(s.frontend.registry), scrape(s.handler.registry))

    front, handler, front_after, handler_after = asyncio.run(run())
    assert get(front, "kafka_rpc_frontend_calls_in_flight") == 1
    assert get(front, "kafka_rpc_frontend_streams_open") == 1
    assert get(handler, "kafka_rpc_handler_streams_open") == 1
    assert get(handler, "kafka_rpc_handler_concurrency_in_use") == 1
    assert calls(front_after, "frontend", "Watch", "CANCELLED") == 1
    assert calls(handler_after, "handler", "Watch", "CANCELLED") == 1
    assert get(front_after, "kafka_rpc_frontend_streams_open") == 0
    assert get(handler_after, "kafka_rpc_handler_streams_open") == 0
    assert get(handler_after, "kafka_rpc_handler_concurrency_in_use") == 0


def test_handler_counts_expired_unknown_method_dedupe_hits_and_dropped_frames() -> None:
    async def run() -> tuple[Samples, Calls, list[wire.Reply | wire.Frame]]:
        sent: list[wire.Reply | wire.Frame] = []

        async def send(request: wire.Request, record: wire.Reply | wire.Frame, key: bytes | None) -> None:
            sent.append(record)

        handler = HandlerMetrics(CollectorRegistry())
        dispatcher = Dispatcher(collect([Kitchen])[0], 2, handler)
        handler_calls = Calls(dispatcher, send, replies=ReplyCache(60, 100), metrics=handler)

        def request(method: str, **fields: Any) -> wire.Request:
            return wire.Request(method=KITCHEN + method, correlation_id=wire.new_correlation_id(),
                                reply_topic="replies", **fields)

        expired = request("Echo", deadline=time.time() - 1)
        unknown = request("NoSuchMethod")
        first = request("Echo", idempotency_key=b"order-1")
        retry = request("Echo", idempotency_key=b"order-1")
        for record in (expired, unknown, first, retry):
            task = handler_calls.accept(record, peer="test")
            assert task is not None
            await task
        assert handler_calls.accept(wire.Frame(wire.new_correlation_id(), wire.CANCEL), peer="test") is None
        dispatcher.close()
        return scrape(handler.registry), handler_calls, sent

    handler, handler_calls, sent = asyncio.run(run())
    assert [r.code for r in sent if isinstance(r, wire.Reply)] == [grpc.StatusCode.UNIMPLEMENTED, grpc.StatusCode.OK,
                                                                   grpc.StatusCode.OK]
    assert get(handler, "kafka_rpc_handler_calls_expired_total") == 1 == handler_calls.dispatcher.expired
    assert get(handler, "kafka_rpc_handler_calls_total", method=metrics.UNKNOWN_METHOD, code="UNIMPLEMENTED") == 1
    assert calls(handler, "handler", "Echo", "OK") == 1  # the retry got the first reply without running
    assert handler_calls.replies is not None
    assert get(handler, "kafka_rpc_handler_dedupe_hits_total") == 1 == handler_calls.replies.hits
    assert get(handler, "kafka_rpc_handler_frames_dropped_total") == 1 == handler_calls.orphan_frames


class FakeConsumer:
    """What the kafka-python engine's lag sampling asks of a kafka-python consumer."""

    def __init__(self, highwater: dict[TopicPartition, int | None], positions: dict[TopicPartition, int],
                 paused: set[TopicPartition], ends: dict[TopicPartition, int]) -> None:
        self._highwater, self._positions, self._paused, self._ends = highwater, positions, paused, ends

    def assignment(self) -> set[TopicPartition]:
        return set(self._highwater) | self._paused

    def paused(self) -> set[TopicPartition]:
        return self._paused

    def highwater(self, tp: TopicPartition) -> int | None:
        return self._highwater[tp]

    def position(self, tp: TopicPartition, timeout_ms: int | None = None) -> int:
        return self._positions[tp]

    def end_offsets(self, partitions: list[TopicPartition], timeout_ms: int | None = None) -> dict[TopicPartition, int]:
        return {tp: self._ends[tp] for tp in partitions}


def test_consumer_lag_per_partition_from_highwater_or_end_offsets_when_paused() -> None:
    a0, a1, a2, b0 = TopicPartition("a", 0), TopicPartition("a", 1), TopicPartition("a", 2), TopicPartition("b", 0)
    handler = HandlerMetrics(CollectorRegistry())
    # a/0 fetched and behind by 5; a/1 not fetched yet; b/0 paused: its end is asked for.
    consumer = kafka_python._Consumer(FakeConsumer({a0: 15, a1: None}, {a0: 10, a1: 0, b0: 3}, {b0}, {b0: 42}), False)
    handler.set_lag(consumer.lag() or {})
    samples = scrape(handler.registry)
    assert get(samples, "kafka_rpc_handler_consumer_lag", topic="a", partition="0") == 5
    assert get(samples, "kafka_rpc_handler_consumer_lag", topic="a", partition="1") is None
    assert get(samples, "kafka_rpc_handler_consumer_lag", topic="b", partition="0") == 39
    # After a rebalance only a/2 is ours: the others' series go.
    consumer = kafka_python._Consumer(FakeConsumer({a2: 7}, {a2: 7}, set(), {}), False)
    handler.set_lag(consumer.lag() or {})
    samples = scrape(handler.registry)
    assert get(samples, "kafka_rpc_handler_consumer_lag", topic="a", partition="2") == 0
    assert [k for k in samples if k[0] == "kafka_rpc_handler_consumer_lag"] == [
        ("kafka_rpc_handler_consumer_lag", (("partition", "2"), ("topic", "a")))]


def test_endpoint_serves_the_registry_over_http() -> None:
    registry = metrics.new_registry()
    FrontendMetrics(registry).method(KITCHEN + "Echo").observe(grpc.StatusCode.OK, 0.004)
    endpoint = metrics.serve(0, registry, host="127.0.0.1")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{endpoint.port}/metrics", timeout=5) as response:
            samples = parse(response.read().decode())
    finally:
        endpoint.close()
    assert calls(samples, "frontend", "Echo", "OK") == 1
    assert get(samples, "kafka_rpc_frontend_call_duration_seconds_bucket", method=KITCHEN + "Echo", code="OK",
               le="0.005") == 1
    assert any(name == "process_cpu_seconds_total" for name, _ in samples)  # the standard process metrics


def test_metrics_port_flag_environment_and_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    from adapter.frontend.main import parse as parse_adapter
    from handlers.__main__ import parse as parse_handlers

    assert parse_adapter(["--proto-path", "protos"]).metrics_port is None
    assert parse_handlers(["m:A", "--metrics-port", "9464"]).metrics_port == 9464
    monkeypatch.setenv("KAFKA_RPC_METRICS_PORT", "9465")
    assert parse_adapter(["--proto-path", "protos"]).metrics_port == 9465
    with pytest.raises(ConfigError, match="metrics_port must be a TCP port"):
        WorkerConfig(kafka=KafkaConfig(), metrics_port=70000)
    with pytest.raises(ConfigError, match="metrics_port"):
        FrontendConfig(kafka=KafkaConfig(), proto_paths=(Path("protos"),), metrics_port=-1)


# Real processes and a real broker.

def scrape_http(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return parse(response.read().decode())


def metrics_port(proc: procs.Proc) -> int:
    return int(proc.wait_for(r"metrics on http://\S+:(\d+)/metrics").group(1))


def wait_until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


@pytest.mark.kafka
def test_both_processes_serve_metrics_that_match_the_calls_made(kafka_bootstrap: str, tmp_path: Path) -> None:
    prefix = f"t{uuid.uuid4().hex[:10]}."
    request_topic, reply_topic = f"{prefix}rpctest.v1.Kitchen", f"{prefix}replies"
    front, address = procs.frontend(tmp_path / "frontend.log", kafka_bootstrap, prefix, "--metrics-port", "0")
    worker = procs.handler(tmp_path / "handler.log", kafka_bootstrap, prefix, "--metrics-port", "0",
                           targets=["tests.kitchen_service:Kitchen"])
    front_port, handler_port = metrics_port(front), metrics_port(worker)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    channel = grpc.insecure_channel(address)
    try:
        kitchen = kitchen_pb2_grpc.KitchenStub(channel)
        for i in range(5):
            assert kitchen.Echo(kitchen_pb2.Everything(number=i), timeout=20).number == i
        for _ in range(2):  # the retry is answered from the handler's dedupe window
            kitchen.Echo(kitchen_pb2.Everything(number=9), timeout=20, metadata=[("idempotency-key", "order-1")])
        with pytest.raises(grpc.RpcError) as failed:
            kitchen.Fail(kitchen_pb2.FailRequest(code=5, message="nope"), timeout=20)
        assert failed.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as slow:
            kitchen.Sleep(kitchen_pb2.SleepRequest(seconds=3), timeout=1)
        assert slow.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED

        # A late reply: the request of the call that timed out, answered after its deadline.
        sleep = _sent_request(kafka_bootstrap, request_topic, KITCHEN + "Sleep")
        assert sleep.reply_topic == reply_topic and sleep.reply_partition is not None
        late = wire.Reply(sleep.correlation_id, payload=kitchen_pb2.SleepReply().SerializeToString())
        producer.send(reply_topic, value=late.payload, headers=late.encode_headers(), partition=sleep.reply_partition)
        # A reply without a correlation id, a request without one, and a request already expired.
        producer.send(reply_topic, value=b"garbage", headers=[("rpc-status", b"0")], partition=sleep.reply_partition)
        producer.send(request_topic, value=b"no headers at all")
        expired = wire.Request(method=KITCHEN + "Echo", correlation_id=wire.new_correlation_id(),
                               reply_topic=reply_topic, deadline=time.time() - 5)
        producer.send(request_topic, value=b"", headers=expired.encode_headers())
        producer.flush(10)

        wait_until(lambda: get(scrape_http(front_port), "kafka_rpc_frontend_replies_malformed_total") == 1)
        wait_until(lambda: get(scrape_http(handler_port), "kafka_rpc_handler_calls_expired_total") == 1)
        # Lag is sampled every few seconds; once every partition has been fetched, all 4 are there.
        wait_until(lambda: len(_lags(scrape_http(handler_port), request_topic)) == 4)
        front_samples, handler_samples = scrape_http(front_port), scrape_http(handler_port)
    finally:
        channel.close()
        producer.close()
        assert worker.stop() == 0, worker.output()
        assert front.stop() == 0, front.output()

    f, h = front_samples, handler_samples
    assert calls(f, "frontend", "Echo", "OK") == 7 == timed(f, "frontend", "Echo", "OK")
    assert calls(f, "frontend", "Fail", "NOT_FOUND") == 1
    assert calls(f, "frontend", "Sleep", "DEADLINE_EXCEEDED") == 1 == timed(f, "frontend", "Sleep", "DEADLINE_EXCEEDED")
    assert get(f, "kafka_rpc_frontend_replies_dropped_total") == 1  # the late reply
    assert get(f, "kafka_rpc_frontend_replies_malformed_total") == 1
    assert get(f, "kafka_rpc_frontend_calls_in_flight") == 0
    assert get(f, "kafka_rpc_frontend_streams_open") == 0

    assert calls(h, "handler", "Echo", "OK") == 6 == timed(h, "handler", "Echo", "OK")  # not the retry
    assert get(h, "kafka_rpc_handler_dedupe_hits_total") == 1
    assert calls(h, "handler", "Fail", "NOT_FOUND") == 1
    assert calls(h, "handler", "Sleep", "DEADLINE_EXCEEDED") == 1
    assert get(h, "kafka_rpc_handler_calls_cancelled_total") == 1
    assert get(h, "kafka_rpc_handler_calls_expired_total") == 1
    assert get(h, "kafka_rpc_handler_records_rejected_total", reason="malformed") == 1
    assert get(h, "kafka_rpc_handler_records_rejected_total", reason="reply_topic") == 0
    assert get(h, "kafka_rpc_handler_records_dead_lettered_total") == 1
    assert get(h, "kafka_rpc_handler_reply_errors_total") == 0
    assert get(h, "kafka_rpc_handler_concurrency_in_use") == 0
    assert get(h, "kafka_rpc_handler_concurrency_limit") == 16
    assert _lags(h, request_topic) == {p: 0.0 for p in range(4)}
    assert (get(h, "process_resident_memory_bytes") or 0) > 0


def _sent_request(bootstrap: str, topic: str, method: str) -> wire.Request:
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=10000)
    try:
        for record in consumer:
            if (wire.METHOD, method.encode()) in record.headers:
                request = wire.decode_request(record.headers, record.value)
                assert isinstance(request, wire.Request)
                return request
    finally:
        consumer.close()
    raise AssertionError(f"no request for {method} on {topic}")


def _lags(samples: Samples, topic: str) -> dict[int, float]:
    found = {}
    for (name, labels), value in samples.items():
        label = dict(labels)
        if name == "kafka_rpc_handler_consumer_lag" and label["topic"] == topic:
            found[int(label["partition"])] = value
    return found

