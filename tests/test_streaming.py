"""Streaming calls through a real frontend, real handler processes and a real broker."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from kafka import KafkaAdminClient, TopicPartition
from rpctest.v1 import kitchen_pb2, kitchen_pb2_grpc

from tests import procs

#: Runs on every Kafka engine (.ci/run repeats it with KAFKA_RPC_KAFKA_CLIENT=kafka-python).
pytestmark = [pytest.mark.kafka, pytest.mark.engines]
MiB = 1 << 20


@dataclass
class Stack:
    prefix: str
    address: str
    kitchen: kitchen_pb2_grpc.KitchenStub
    events: Path
    handler: procs.Proc


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("streaming")
    prefix = f"t{uuid.uuid4().hex[:10]}."
    events = tmp / "events"
    front, address = procs.frontend(tmp / "frontend.log", kafka_bootstrap, prefix)
    worker = procs.handler(tmp / "handler.log", kafka_bootstrap, prefix, "--concurrency", "32",
                           env={"KITCHEN_EVENTS": str(events)}, targets=["tests.kitchen_service:Kitchen"])
    options = [("grpc.max_receive_message_length", 8 * MiB), ("grpc.max_send_message_length", 8 * MiB)]
    with grpc.insecure_channel(address, options=options) as channel:
        yield Stack(prefix, address, kitchen_pb2_grpc.KitchenStub(channel), events, worker)
    assert worker.stop() == 0, worker.output()
    assert front.stop() == 0, front.output()


@pytest.mark.parametrize("method", ["CountUp", "AsyncCountUp"])
@pytest.mark.parametrize("n", [0, 1, 10_000])
def test_server_streaming(stack: Stack, method: str, n: int) -> None:
    items = list(getattr(stack.kitchen, method)(kitchen_pb2.Count(n=n, size=3), timeout=120))
    assert [item.i for item in items] == list(range(n))
    assert all(item.data == b"xxx" for item in items)


def test_server_streaming_trailing_metadata_and_large_messages(stack: Stack) -> None:
    call = stack.kitchen.CountUp(kitchen_pb2.Count(n=4, size=MiB), timeout=60)
    items = list(call)
    assert [len(item.data) for item in items] == [MiB] * 4
    assert dict(call.trailing_metadata())["x-count"] == "4"


@pytest.mark.parametrize("method", ["Collect", "AsyncCollect"])
@pytest.mark.parametrize("n", [0, 1, 10_000])
def test_client_streaming(stack: Stack, method: str, n: int) -> None:
    summary = getattr(stack.kitchen, method)((kitchen_pb2.Item(i=i, data=b"ab") for i in range(n)), timeout=120)
    assert summary.count == n and summary.total_bytes == 2 * n
    assert list(summary.order) == list(range(min(n, 100)))


def test_client_streaming_large_messages(stack: Stack) -> None:
    summary = stack.kitchen.Collect((kitchen_pb2.Item(i=i, data=os.urandom(MiB)) for i in range(3)), timeout=60)
    assert (summary.count, summary.total_bytes) == (3, 3 * MiB)


@pytest.mark.parametrize("method", ["Chat", "SyncChat"])
@pytest.mark.parametrize("n", [0, 1, 10_000])
def test_bidi_streaming(stack: Stack, method: str, n: int) -> None:
    replies = list(getattr(stack.kitchen, method)((kitchen_pb2.Item(i=i) for i in range(n)), timeout=120))
    assert [r.i for r in replies] == [2 * i for i in range(n)]


def test_bidi_responses_flow_while_requests_are_still_arriving(stack: Stack) -> None:
    sent = threading.Event()
    got_first = threading.Event()

    def requests() -> Iterator[kitchen_pb2.Item]:
        yield kitchen_pb2.Item(i=1)
        # The second request waits until the reply to the first has arrived.
        assert got_first.wait(30), "no reply while the request stream was open"
        sent.set()
        yield kitchen_pb2.Item(i=2)

    replies = []
    for reply in stack.kitchen.Chat(requests(), timeout=60):
        replies.append(reply.i)
        got_first.set()
    assert sent.is_set() and replies == [2, 4]


def test_handler_error_mid_stream(stack: Stack) -> None:
    received = []
    with pytest.raises(grpc.RpcError) as info:
        for item in stack.kitchen.CountUp(kitchen_pb2.Count(n=10, fail_at=5), timeout=30):
            received.append(item.i)
    assert received == [0, 1, 2, 3, 4]
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == "failed at 5"

    def requests() -> Iterator[kitchen_pb2.Item]:
        yield from (kitchen_pb2.Item(i=i) for i in range(3))
        yield kitchen_pb2.Item(i=3, tag="fail")

    replies = []
    with pytest.raises(grpc.RpcError) as info:
        for reply in stack.kitchen.Chat(requests(), timeout=30):
            replies.append(reply.i)
    assert replies == [0, 2, 4]
    assert info.value.code() == grpc.StatusCode.ABORTED


@pytest.mark.parametrize(("method", "seen"), [("Watch", ["callback", "inactive"]), ("AsyncWatch", ["task-cancelled", "callback"])])
def test_client_cancel_mid_stream_reaches_the_handler(stack: Stack, method: str, seen: list[str]) -> None:
    tag = uuid.uuid4().hex[:8]
    call = getattr(stack.kitchen, method)(kitchen_pb2.Count(tag=tag), timeout=60)
    first = [next(call) for _ in range(3)]
    assert [item.i for item in first] == [0, 1, 2]
    call.cancel()
    for what in seen:
        procs.wait_for_event(stack.events, f"{what} {tag}")


def test_deadline_mid_stream_ends_the_call_and_the_handler_work(stack: Stack) -> None:
    tag = uuid.uuid4().hex[:8]
    received = 0
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        for _ in stack.kitchen.Watch(kitchen_pb2.Count(tag=tag), timeout=1.0):
            received += 1
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert received > 3 and time.monotonic() - started < 10
    procs.wait_for_event(stack.events, f"inactive {tag}")


def test_hundred_concurrent_streams_interleave(stack: Stack) -> None:
    async def run() -> None:
        async with grpc.aio.insecure_channel(stack.address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)

            async def one(n: int) -> list[int]:
                call = kitchen.Chat((kitchen_pb2.Item(i=n * 1000 + i, tag=str(n)) for i in range(20)), timeout=60)
                return [reply.i async for reply in call]

            results = await asyncio.gather(*(one(n) for n in range(100)))
            for n, replies in enumerate(results):
                assert replies == [2 * (n * 1000 + i) for i in range(20)]

    asyncio.run(run())


def test_offset_not_committed_past_an_open_stream(stack: Stack, kafka_bootstrap: str) -> None:
    call = stack.kitchen.Watch(kitchen_pb2.Count(tag="offsets", delay=0.05), timeout=60)
    first = next(call)
    peer = first.tag.split()[1]  # kafka:TOPIC/PARTITION@OFFSET of the stream's opening record
    topic, rest = peer.removeprefix("kafka:").rsplit("/", 1)
    partition, offset = (int(x) for x in rest.split("@"))
    # Unary calls spread over all partitions, the stream's too, and complete meanwhile.
    futures = [stack.kitchen.Echo.future(kitchen_pb2.Everything(number=i), timeout=30) for i in range(40)]
    assert [f.result().number for f in futures] == list(range(40))
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    group = f"{stack.prefix}handlers"
    tp = TopicPartition(topic, partition)
    try:
        time.sleep(1.0)  # several commit rounds
        committed = admin.list_group_offsets({group: [tp]})[group].get(tp)
        assert committed is None or committed.offset <= offset
        call.cancel()
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            committed = admin.list_group_offsets({group: [tp]})[group].get(tp)
            if committed is not None and committed.offset > offset:
                break
            time.sleep(0.2)
        assert committed is not None and committed.offset > offset
    finally:
        admin.close()


def test_grpcurl_streaming(stack: Stack, grpcurl: str) -> None:
    import json
    import subprocess

    out = subprocess.run([grpcurl, "-plaintext", "-d", '{"n": 3}', stack.address, "rpctest.v1.Kitchen/CountUp"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    decoder = json.JSONDecoder()
    text, items = out.stdout.strip(), []
    while text:
        item, end = decoder.raw_decode(text)
        items.append(item)
        text = text[end:].strip()
    assert [item.get("i", 0) for item in items] == [0, 1, 2]
    out = subprocess.run([grpcurl, "-plaintext", "-d", "@", stack.address, "rpctest.v1.Kitchen/Collect"],
                         input='{"i": 4}\n{"i": 5}\n', capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"count": 2, "order": [4, 5]}


def test_handler_killed_mid_stream_ends_the_call(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix)
    first = procs.handler(tmp_path / "h1.log", kafka_bootstrap, prefix, targets=["tests.kitchen_service:Kitchen"])
    second = procs.handler(tmp_path / "h2.log", kafka_bootstrap, prefix, targets=["tests.kitchen_service:Kitchen"])
    victims = {first.pid: first, second.pid: second}
    try:
        for proc in (first, second):
            proc.wait_for(rf"partitions assigned: .*{prefix.replace('.', '[.]')}rpctest[.]v1[.]Kitchen/", timeout=60)
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            call = kitchen.Watch(kitchen_pb2.Count(tag="victim", delay=0.05), timeout=40)
            serving = int(next(call).tag.split()[0])
            victims[serving].popen.send_signal(signal.SIGKILL)
            with pytest.raises(grpc.RpcError) as info:
                for _ in call:
                    pass
            # The survivor takes the partition over after the session timeout (10 s) and reads the
            # stream's opening again; the frontend sees the stream restart and ends the call.
            assert info.value.code() == grpc.StatusCode.ABORTED, info.value.details()
            # The survivor serves new streams.
            assert [i.i for i in kitchen.CountUp(kitchen_pb2.Count(n=5), timeout=30)] == list(range(5))
    finally:
        for proc in (first, second, front):
            proc.stop()
