"""Scaling out: several handler processes share the load, several frontends share the reply topic."""

from __future__ import annotations

import itertools
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2
from rpctest.v1 import kitchen_pb2, kitchen_pb2_grpc

from tests import procs

#: Runs on every Kafka engine (.ci/run repeats it with KAFKA_RPC_KAFKA_CLIENT=kafka-python).
pytestmark = [pytest.mark.kafka, pytest.mark.engines]


def test_two_handler_processes_share_the_load(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    front, address = procs.frontend(tmp_path / "frontend.log", kafka_bootstrap, prefix)
    first = procs.handler(tmp_path / "h1.log", kafka_bootstrap, prefix)
    second = procs.handler(tmp_path / "h2.log", kafka_bootstrap, prefix)
    try:
        # Both must own partitions of the Kitchen topic before the load starts.
        for proc in (first, second):
            proc.wait_for(rf"partitions assigned: .*{re.escape(prefix)}rpctest\.v1\.Kitchen/", timeout=60)
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            futures = [kitchen.Whoami.future(empty_pb2.Empty(), timeout=60) for _ in range(300)]
            pids = [f.result().pid for f in futures]
        assert set(pids) == {first.pid, second.pid}
        assert min(pids.count(first.pid), pids.count(second.pid)) > 30
    finally:
        for proc in (first, second, front):
            assert proc.stop() == 0, proc.output()


def test_two_frontends_share_one_reply_topic(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    reply_topic = f"{prefix}shared-replies"
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix)
    one, address_one = procs.frontend(tmp_path / "f1.log", kafka_bootstrap, prefix, reply_topic=reply_topic)
    two, address_two = procs.frontend(tmp_path / "f2.log", kafka_bootstrap, prefix, reply_topic=reply_topic)
    try:
        # The first frontend gives up half of its partitions to the second one (cooperative rebalance).
        owned_two = _owned(two.wait_for(r"reading replies from \S+ partitions \[([\d, ]+)\]").group(1))
        one.wait_for(r"reply partitions \[[\d, ]+\] moved to another frontend", timeout=30)

        def hammer(address: str, base: int) -> list[int]:
            with grpc.insecure_channel(address) as channel:
                kitchen = kitchen_pb2_grpc.KitchenStub(channel)
                futures = [kitchen.Echo.future(kitchen_pb2.Everything(number=base + i), timeout=60) for i in range(200)]
                return [f.result().number for f in futures]

        with ThreadPoolExecutor(2) as pool:
            got_one = pool.submit(hammer, address_one, 0)
            got_two = pool.submit(hammer, address_two, 10_000)
            try:
                assert got_one.result() == list(range(200))
                assert got_two.result() == list(range(10_000, 10_200))
            except grpc.RpcError as exc:
                logs = "\n".join(f"--- {p.args[2]} {p.pid}\n{p.output()[-4000:]}" for p in (one, two, worker))
                raise AssertionError(f"{exc.code()}: {exc.details()}\n{logs}") from exc
        owned_one = _owned(re.findall(r"reading replies from \S+ partitions \[([\d, ]+)\]", one.output())[-1])
        moved = set()
        for match in re.findall(r"reply partitions \[([\d, ]+)\] moved", one.output()):
            moved |= _owned(match)
        kept = owned_one - moved
        assert owned_two and kept and not kept & owned_two, (owned_one, moved, owned_two)
    finally:
        for proc in (one, two, worker):
            assert proc.stop() == 0, proc.output()


def _owned(text: str) -> set[int]:
    return {int(p) for p in text.split(",") if p.strip()}


def _tags_on_partitions(partitions: int, each: int) -> dict[int, list[str]]:
    """Tags whose murmur2 partition (the Java client's, which both engines use) is known: `each` per partition."""
    from kafka.partitioner.default import murmur2

    tags: dict[int, list[str]] = {p: [] for p in range(partitions)}
    for i in itertools.count():
        tag = f"stream-{i}"
        partition = (murmur2(tag.encode()) & 0x7FFFFFFF) % partitions
        if len(tags[partition]) < each:
            tags[partition].append(tag)
        if all(len(t) == each for t in tags.values()):
            return tags
    raise AssertionError("unreachable")


def test_a_joining_handler_moves_only_its_share_and_other_streams_go_on(kafka_bootstrap: str, prefix: str,
                                                                       tmp_path: Path) -> None:
    """A process joining takes half of each topic's partitions, and only those: streams on the
    partitions that stay run to their end, those on the moving ones end ABORTED. Deterministic:
    two streams on each of the 4 partitions (keyed by tag), 15 s long, and the second process
    joins while they run."""
    kitchen_only = ["tests.kitchen_service:Kitchen"]
    front, address = procs.frontend(tmp_path / "frontend.log", kafka_bootstrap, prefix)
    first = procs.handler(tmp_path / "h1.log", kafka_bootstrap, prefix, targets=kitchen_only)
    second = None
    topic = re.escape(f"{prefix}rpctest.v1.Kitchen")
    tags = _tags_on_partitions(4, 2)
    first.wait_for(rf"partitions assigned: .*{topic}/", timeout=60)
    try:
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)

            def stream(tag: str) -> tuple[grpc.StatusCode, int]:
                items = 0
                try:
                    for _ in kitchen.KeyedCountUp(kitchen_pb2.Count(n=150, delay=0.1, tag=tag), timeout=60):
                        items += 1
                    return grpc.StatusCode.OK, items
                except grpc.RpcError as exc:
                    return exc.code(), items

            with ThreadPoolExecutor(8) as pool:
                streams = {tag: pool.submit(stream, tag) for on in tags.values() for tag in on}
                time.sleep(1.0)  # the streams are running
                second = procs.handler(tmp_path / "h2.log", kafka_bootstrap, prefix, targets=kitchen_only)
                second.wait_for(rf"partitions assigned: .*{topic}/", timeout=60)
                outcomes = {tag: future.result() for tag, future in streams.items()}
        first.wait_for(r"partitions revoked: ")
        # Incremental rebalances may move partitions in more than one step: take every line.
        revoked = " ".join(re.findall(r"partitions revoked: ([^\n]*)", first.output()))
        assigned = " ".join(re.findall(r"partitions assigned: ([^\n]*)", second.output()))
    finally:
        for proc in (second, first, front):
            if proc is not None:
                assert proc.stop() == 0, proc.output()
    moved = {int(p) for p in re.findall(rf"{topic}/(\d+)", revoked)}
    assert len(moved) == 2, revoked  # half of the topic moved, nothing else
    assert {int(p) for p in re.findall(rf"{topic}/(\d+)", assigned)} == moved, assigned
    for partition, on in tags.items():
        for tag in on:
            code, items = outcomes[tag]
            if partition in moved:
                assert code == grpc.StatusCode.ABORTED and items < 150, (partition, tag, outcomes[tag])
            else:
                assert (code, items) == (grpc.StatusCode.OK, 150), (partition, tag, outcomes[tag])
