"""Scaling out: several handler processes share the load, several frontends share the reply topic."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2
from rpctest.v1 import kitchen_pb2, kitchen_pb2_grpc

from tests import procs

pytestmark = pytest.mark.kafka


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


def test_a_joining_handler_moves_only_its_share_and_other_streams_go_on(kafka_bootstrap: str, prefix: str,
                                                                       tmp_path: Path) -> None:
    """Cooperative rebalancing per topic (adapter.kafka.balanced): a process joining takes half of
    each topic's partitions; streams on the partitions that stay are not interrupted."""
    kitchen_only = ["tests.kitchen_service:Kitchen"]
    front, address = procs.frontend(tmp_path / "frontend.log", kafka_bootstrap, prefix)
    first = procs.handler(tmp_path / "h1.log", kafka_bootstrap, prefix, targets=kitchen_only)
    second = None
    topic = re.escape(f"{prefix}rpctest.v1.Kitchen")
    try:
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)

            def stream() -> tuple[grpc.StatusCode, int]:
                # Keys are random correlation ids: 12 streams land on the 4 partitions at random.
                items = 0
                try:
                    for _ in kitchen.CountUp(kitchen_pb2.Count(n=40, delay=0.1), timeout=60):
                        items += 1
                    return grpc.StatusCode.OK, items
                except grpc.RpcError as exc:
                    return exc.code(), items

            with ThreadPoolExecutor(12) as pool:
                streams = [pool.submit(stream) for _ in range(12)]
                time.sleep(0.5)  # the streams are running
                second = procs.handler(tmp_path / "h2.log", kafka_bootstrap, prefix, targets=kitchen_only)
                outcomes = [s.result() for s in streams]
        revoked = first.wait_for(r"partitions revoked: ([^\n]*)").group(1)
        assigned = second.wait_for(r"partitions assigned: ([^\n]*)").group(1)
    finally:
        for proc in (second, first, front):
            if proc is not None:
                assert proc.stop() == 0, proc.output()
    # Half of each topic moved, nothing else: the first process kept 2 of the 4 Kitchen partitions.
    assert len(re.findall(rf"{topic}/\d", revoked)) == 2, revoked
    assert len(re.findall(rf"{topic}/\d", assigned)) == 2, assigned
    codes = [code for code, _ in outcomes]
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.ABORTED}, outcomes
    # Streams on the partitions that stayed ran to the end (all 12 on moving ones: odds 1 in 4,096).
    assert (grpc.StatusCode.OK, 40) in outcomes, outcomes
