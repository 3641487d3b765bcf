"""A handler process's flow control with real processes: open streams never stall it (#12.8).

`--max-pending` bounds the requests a handler holds; client and bidi streams still reading
their requests do not count (their request messages sit behind them in the same partitions),
and `--max-client-streams` bounds those instead, refusing more with RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from rpctest.v1 import kitchen_pb2, kitchen_pb2_grpc

from tests import procs

pytestmark = [pytest.mark.kafka, pytest.mark.engines]
KITCHEN = ["tests.kitchen_service:Kitchen"]
N = 30


def _held_requests(opened: threading.Event, go: threading.Event) -> Iterator[kitchen_pb2.Item]:
    """Three request messages: one, then (once `go` is set) two more."""
    yield kitchen_pb2.Item(i=0, data=b"a")
    opened.set()
    go.wait(60)
    yield kitchen_pb2.Item(i=1, data=b"b")
    yield kitchen_pb2.Item(i=2, data=b"c")


def test_more_open_client_streams_than_max_pending_all_complete(kafka_bootstrap: str, prefix: str,
                                                                tmp_path: Path) -> None:
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix)
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, "--concurrency", "4", "--max-pending", "8",
                           targets=KITCHEN)
    try:
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            go = threading.Event()
            opened = [threading.Event() for _ in range(N)]
            # 30 streams open at once, four times --max-pending, each waiting for more requests.
            futures = [kitchen.AsyncCollect.future(_held_requests(o, go), timeout=30) for o in opened]
            assert all(o.wait(30) for o in opened)
            time.sleep(1.0)  # their openings and first messages reach the handler
            go.set()
            assert [procs.status_of(f) for f in futures] == [grpc.StatusCode.OK] * N, worker.output()[-3000:]
            assert [(f.result().count, f.result().total_bytes) for f in futures] == [(3, 3)] * N
            # And a unary call still goes through afterwards.
            assert kitchen.Echo(kitchen_pb2.Everything(number=4), timeout=30).number == 4
    finally:
        worker.stop()
        front.stop()


def test_client_streams_beyond_their_limit_are_refused_with_resource_exhausted(kafka_bootstrap: str, prefix: str,
                                                                              tmp_path: Path) -> None:
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix)
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, "--max-client-streams", "5",
                           "--topic-partitions", "1", targets=KITCHEN)
    try:
        with grpc.insecure_channel(address) as channel:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            go = threading.Event()
            opened = [threading.Event() for _ in range(8)]
            futures = []
            for o in opened:  # one after the other, so that the first five are the ones served
                futures.append(kitchen.AsyncCollect.future(_held_requests(o, go), timeout=30))
                # (Failed once in CI, not reproduced: say what became of the call if it happens again.)
                assert o.wait(30), (len(futures), futures[-1].done() and futures[-1].exception(),
                                    front.output()[-3000:], worker.output()[-3000:])
                time.sleep(0.3)
            refused = [f for f in futures[5:]]
            for f in refused:
                assert procs.status_of(f) == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert "client streams open" in f.exception().details()
            go.set()
            assert [procs.status_of(f) for f in futures[:5]] == [grpc.StatusCode.OK] * 5
            # Below the limit again: a new stream is served.
            again = threading.Event()
            go_now = threading.Event()
            go_now.set()
            assert kitchen.AsyncCollect(_held_requests(again, go_now), timeout=30).count == 3
    finally:
        worker.stop()
        front.stop()
