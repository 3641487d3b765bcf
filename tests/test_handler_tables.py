"""A handler's per-call tables empty out whatever way calls end (#12.7), on a real broker.

The Worker runs in this process so that its tables can be read; the calls come through an
`AioKafkaChannel`, as from any caller.
"""

from __future__ import annotations

import asyncio
import gc
from pathlib import Path

import pytest
from rpctest.v1 import kitchen_pb2, kitchen_pb2_grpc

from adapter.caller.aio_channel import AioKafkaChannel
from adapter.protocol.routing import routes_for
from adapter.runtime.config import KafkaConfig, WorkerConfig
from handlers.registry import collect, load_target
from handlers.worker import Worker

pytestmark = [pytest.mark.kafka, pytest.mark.engines]


def _rss_bytes() -> int:
    fields = Path("/proc/self/statm").read_text().split()
    import resource

    return int(fields[1]) * resource.getpagesize()


def _tables(worker: Worker) -> dict[str, int]:
    return {"calls": len(worker.calls), "windows": len(worker.inflight.windows),
            "origins": len(worker.inflight.origins), "tasks": len(worker.inflight.tasks),
            "pending records": worker.tracker.pending}


def test_a_thousand_cancelled_streams_leave_nothing_behind(kafka_bootstrap: str, prefix: str, kafka_client: str) -> None:
    kafka = KafkaConfig(bootstrap_servers=(kafka_bootstrap,), topic_prefix=prefix, client=kafka_client,
                        topic_partitions=2)
    methods, services = collect([load_target("tests.kitchen_service:Kitchen")])
    worker = Worker(WorkerConfig(kafka=kafka, group=f"{prefix}handlers", drain_timeout=2, max_pending=1024),
                    methods, routes_for(services, prefix))

    async def scenario() -> tuple[dict[str, int], list[int]]:
        stop, ready = asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(worker.run(stop, ready))
        await asyncio.wait_for(ready.wait(), 60)
        rss: list[int] = []
        try:
            async with await AioKafkaChannel.connect([kitchen_pb2], kafka=kafka) as channel:
                kitchen = kitchen_pb2_grpc.KitchenStub(channel)

                async def one(i: int) -> None:
                    call = kitchen.AsyncWatch(kitchen_pb2.Count(delay=0.05, tag=str(i)), timeout=60)
                    async for _ in call:
                        break  # the stream is open and has sent a message: leave it mid-way
                    call.cancel()

                for _round in range(2):
                    for start in range(0, 1000, 100):
                        await asyncio.gather(*(one(i) for i in range(start, start + 100)))
                    for _ in range(200):
                        if not len(worker.calls):
                            break
                        await asyncio.sleep(0.05)
                    await asyncio.sleep(0.5)  # cancel frames and the messages in flight settle
                    gc.collect()
                    rss.append(_rss_bytes())
                return _tables(worker), rss
        finally:
            stop.set()
            await asyncio.wait_for(running, 60)

    tables, rss = asyncio.run(scenario())
    assert tables == {"calls": 0, "windows": 0, "origins": 0, "tasks": 0, "pending records": 0}
    grown = (rss[1] - rss[0]) / 2**20
    print(f"RSS after 1000 cancelled streams: {rss[0] / 2**20:.0f} MiB; after 1000 more: {rss[1] / 2**20:.0f} MiB")
    assert grown < 20, f"RSS grew {grown:.0f} MiB over the second 1000 cancelled streams"
