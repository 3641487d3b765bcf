"""What the docs promise and no other test held (#12.17), with real processes and a real broker."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2
from rpctest.v1 import kitchen_pb2, kitchen_pb2_grpc

from adapter.caller.requester import REPLY_RUN
from tests import procs

pytestmark = [pytest.mark.kafka]
KITCHEN = ["tests.kitchen_service:Kitchen"]


def test_a_retry_while_the_first_call_runs_waits_for_its_reply(kafka_bootstrap: str, prefix: str,
                                                               tmp_path: Path) -> None:
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, targets=KITCHEN)
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix)
    try:
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            key = (("idempotency-key", f"k-{prefix}"),)
            first = kitchen.Sleep.future(kitchen_pb2.SleepRequest(seconds=1.5), metadata=key, timeout=30)
            time.sleep(0.5)  # the first call runs now
            retry = kitchen.Sleep.future(kitchen_pb2.SleepRequest(seconds=1.5), metadata=key, timeout=40)
            # Run once: the retry gets the first call's reply, the time it saw at its start included
            # (the retry's own deadline is 10 s later, so a second run would see more time left).
            assert retry.result() == first.result()
    finally:
        front.stop()
        worker.stop()


def test_after_the_dedupe_window_a_retry_runs_again(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, "--dedupe-window", "1", targets=KITCHEN)
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix)
    try:
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            key = (("idempotency-key", f"k-{prefix}"),)
            first = kitchen.Whoami(empty_pb2.Empty(), metadata=key, timeout=30)
            assert kitchen.Whoami(empty_pb2.Empty(), metadata=key, timeout=30).peer == first.peer  # replayed
            time.sleep(2.0)  # past the 1 s window
            again = kitchen.Whoami(empty_pb2.Empty(), metadata=key, timeout=30)
            assert again.peer != first.peer  # the peer names the record that ran: another one did
    finally:
        front.stop()
        worker.stop()


def test_the_idempotency_key_option_of_a_proto_field(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    """`option (kafka_rpc.idempotency_key) = "customer"` on Kitchen.Once: the field is the key."""
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, targets=KITCHEN)
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix)
    try:
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            ann = kitchen.Once(kitchen_pb2.KeyedRequest(customer="ann"), timeout=30)
            assert kitchen.Once(kitchen_pb2.KeyedRequest(customer="ann"), timeout=30).peer == ann.peer
            assert kitchen.Once(kitchen_pb2.KeyedRequest(customer="bob"), timeout=30).peer != ann.peer
    finally:
        front.stop()
        worker.stop()


def test_calls_whose_reply_partition_moves_to_another_frontend_end_unavailable(kafka_bootstrap: str, prefix: str,
                                                                              tmp_path: Path) -> None:
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, targets=KITCHEN)
    first, address = procs.frontend(tmp_path / "f1.log", kafka_bootstrap, prefix)
    second = None
    try:
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            # The first frontend owns all 4 reply partitions; these calls are spread over them
            # (REPLY_RUN calls in a row on each).
            calls = [kitchen.Sleep.future(kitchen_pb2.SleepRequest(seconds=4), timeout=30) for _ in range(4 * REPLY_RUN)]
            time.sleep(0.5)
            second, _ = procs.frontend(tmp_path / "f2.log", kafka_bootstrap, prefix)  # takes some partitions
            codes = [procs.status_of(c) for c in calls]
            assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
            moved = [c for c in calls if procs.status_of(c) == grpc.StatusCode.UNAVAILABLE]
            assert moved, "no call had its reply partition moved"
            assert all("reply partition moved" in c.exception().details() for c in moved)
            # The first frontend goes on serving on the partitions it kept.
            assert kitchen.Echo(kitchen_pb2.Everything(number=1), timeout=30).number == 1
    finally:
        for proc in (second, first, worker):
            if proc is not None:
                proc.stop()


@pytest.mark.parametrize("process", ["handlers", "adapter"])
def test_a_second_signal_exits_at_once(kafka_bootstrap: str, prefix: str, tmp_path: Path, process: str) -> None:
    events = tmp_path / "events"
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, "--drain-timeout", "120", targets=KITCHEN,
                           env={"KITCHEN_EVENTS": str(events)})
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix, "--grace", "120")
    try:
        with grpc.insecure_channel(address) as channel:
            hung = kitchen_pb2_grpc.KitchenStub(channel).Hang.future(empty_pb2.Empty(), timeout=60)
            procs.wait_for_event(events, "hanging", timeout=30)
            victim = worker if process == "handlers" else front
            victim.popen.send_signal(signal.SIGTERM)
            victim.wait_for("stopping")
            assert victim.popen.poll() is None  # draining: 120 s allowed for the call in flight
            victim.popen.send_signal(signal.SIGTERM)
            assert victim.popen.wait(30) == 130
            assert "second signal: exiting now" in victim.output()
            hung.cancel()
    finally:
        front.stop()
        worker.stop(signal.SIGKILL)  # its Hang call never returns: a SIGTERM would wait out the drain
