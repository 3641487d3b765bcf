"""The limits docs/protocol.md promises, through real processes (#12.17): a stream's request
messages held in the handler (64 MiB), its response messages held in the frontend for a slow
client (32 MiB), and `--max-pending`: fetching stops while a handler is full, the partitions
are paused after 30 s (the process stays in its group), and both resume when calls end.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from rpctest.v1 import kitchen_pb2

from tests import procs
from tests.brokers import end_offsets

pytestmark = [pytest.mark.kafka, pytest.mark.engines]
MiB = 1024 * 1024


def _items(count: int, size: int) -> Iterator[kitchen_pb2.Item]:
    for i in range(count):
        yield kitchen_pb2.Item(i=i, data=b"x" * size)


def test_request_messages_a_handler_does_not_read_end_the_stream_past_64_mib(kafka_bootstrap: str, prefix: str,
                                                                             tmp_path: Path) -> None:
    with procs.kitchen(tmp_path, kafka_bootstrap, prefix) as (kitchen, _):
        # SlowCollect reads nothing for 25 s: 90 messages of 1 MiB pile
        # up in the handler. (A fixed 10 s was too short for kafka-python's producer once in CI.)
        with pytest.raises(grpc.RpcError) as ended:
            kitchen.SlowCollect(_items(90, MiB), timeout=60, metadata=(("hold", "25"),))
        assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, ended.value.details()
        # Below the limit the same method answers, and the process serves on.
        summary = kitchen.SlowCollect(_items(20, MiB), timeout=60)
        assert (summary.count, summary.total_bytes) == (20, 20 * MiB)


def test_response_messages_a_client_does_not_read_end_the_stream_past_32_mib(kafka_bootstrap: str, prefix: str,
                                                                             tmp_path: Path) -> None:
    with procs.kitchen(tmp_path, kafka_bootstrap, prefix) as (kitchen, _):
        before = sum(end_offsets(kafka_bootstrap, f"{prefix}replies").values())
        stream = kitchen.CountUp(kitchen_pb2.Count(n=100, size=MiB), timeout=60)
        # The client reads nothing until the handler has written 45 MiB of the stream's
        # messages (the frontend reads each as it comes, and can send few to the client).
        deadline = time.monotonic() + 45
        while sum(end_offsets(kafka_bootstrap, f"{prefix}replies").values()) - before < 45:
            assert time.monotonic() < deadline, "the handler did not write 45 messages in 45 s"
            time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as ended:
            for _ in stream:
                pass
        assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, ended.value.details()
        assert "client reads slower" in (ended.value.details() or "")
        # A client that reads gets every message of the same stream.
        assert len(list(kitchen.CountUp(kitchen_pb2.Count(n=40, size=MiB), timeout=60))) == 40


def test_max_pending_stops_fetching_pauses_after_30s_and_resumes(kafka_bootstrap: str, prefix: str,
                                                                 tmp_path: Path) -> None:
    with procs.kitchen(tmp_path, kafka_bootstrap, prefix, "--concurrency", "2", "--max-pending", "2") as (kitchen, worker):
        # Two calls of 36 s fill the process: past 30 s full, its partitions are paused.
        sleepers = [kitchen.Sleep.future(kitchen_pb2.SleepRequest(seconds=36), timeout=90) for _ in range(2)]
        time.sleep(2)
        quick = [kitchen.Echo.future(kitchen_pb2.Everything(tags=[str(i)]), timeout=90) for i in range(5)]
        time.sleep(31)
        # Not fetched while the process is full: nothing could have answered them.
        assert not any(f.done() for f in quick), [procs.status_of(f) for f in quick if f.done()]
        assert not any(f.done() for f in sleepers)
        # Both sleepers end, the partitions resume, and the calls that waited are answered.
        assert [procs.status_of(f) for f in sleepers] == [grpc.StatusCode.OK] * 2
        assert [f.result().tags[0] for f in quick] == [str(i) for i in range(5)]
        # Paused for minutes would not do: the process stayed in its group all along.
        assert "partitions revoked" not in worker.output()
