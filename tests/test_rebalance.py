"""Rebalances in the exactly-once mode, with a handler's Worker in this process on a real broker.

In-process so that a transaction can be made to abort at the worst moment (while a rebalance
revokes a partition with an open stream), which real processes cannot be made to do on cue.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import pytest
from rpctest.v1 import kitchen_pb2, kitchen_pb2_grpc

from adapter.caller.aio_channel import AioKafkaChannel
from adapter.errors import TransportError
from adapter.kafka import open_engine
from adapter.protocol.routing import routes_for
from adapter.runtime.config import KafkaConfig, WorkerConfig
from handlers.exactly_once import ExactlyOnce
from handlers.rebalance import Rebalance
from handlers.registry import collect, load_target
from handlers.worker import Worker

pytestmark = [pytest.mark.kafka, pytest.mark.engines]


def _worker(kafka: KafkaConfig, **settings: Any) -> Worker:
    methods, services = collect([load_target("tests.kitchen_service:Kitchen")])
    config = WorkerConfig(kafka=kafka, group=f"{kafka.topic_prefix}handlers", drain_timeout=2, **settings)
    return Worker(config, methods, routes_for(services, kafka.topic_prefix))


class _Member(threading.Thread):
    """A second member of the handlers' group: joining takes partitions from the worker."""

    def __init__(self, kafka: KafkaConfig, group: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.kafka, self.group, self.topic = kafka, group, topic
        self.assigned = threading.Event()
        self.stop = threading.Event()

    def run(self) -> None:
        engine = open_engine(self.kafka)
        consumer = engine.consumer(self.group, from_end=False, read_committed=True, session_timeout=10,
                                   protocol="consumer" if engine.name == "confluent" else "classic")
        consumer.subscribe([self.topic], lambda parts: parts and self.assigned.set(), lambda parts, lost: None)
        try:
            while not self.stop.is_set():
                consumer.poll(0.1, 10)
        finally:
            consumer.close()


def test_a_rebalance_during_an_aborted_transaction_finishes_at_once(kafka_bootstrap: str, prefix: str,
                                                                   kafka_client: str,
                                                                   caplog: pytest.LogCaptureFixture,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """#12.1: a transaction aborts while a rebalance revokes a partition with an open stream.

    Before the fix the revocation waited for sends held until the rewind, and the rewind waited
    for the consumer thread, which was in the revocation: nothing moved until a timeout."""
    caplog.set_level(logging.INFO)
    kafka = KafkaConfig(bootstrap_servers=(kafka_bootstrap,), topic_prefix=prefix, client=kafka_client,
                        topic_partitions=2)
    worker = _worker(kafka, exactly_once=True, transactional_id=f"{prefix}h1")
    revoking = threading.Event()
    fail_next = threading.Event()
    revoke_seconds: list[float] = []
    revoked = Rebalance.revoked

    def timed_revoke(self: Rebalance, partitions: Any, lost: bool) -> Any:
        if partitions:
            revoking.set()
        started = time.monotonic()
        try:
            return revoked(self, partitions, lost)
        finally:
            if partitions:
                revoke_seconds.append(time.monotonic() - started)

    monkeypatch.setattr(Rebalance, "revoked", timed_revoke)

    async def scenario() -> None:
        stop, ready = asyncio.Event(), asyncio.Event()
        running = asyncio.create_task(worker.run(stop, ready))
        await asyncio.wait_for(ready.wait(), 60)
        assert isinstance(worker.policy, ExactlyOnce) and worker.policy.txn is not None
        txn = worker.policy.txn
        commit = txn._commit

        def failing_commit(changed: Any) -> None:
            if fail_next.is_set():
                fail_next.clear()
                assert revoking.wait(30), "no rebalance came"
                raise TransportError("injected: the transaction coordinator went away")
            commit(changed)

        txn._commit = failing_commit  # type: ignore[method-assign]
        channel = await AioKafkaChannel.connect([kitchen_pb2], kafka=kafka)
        member = _Member(kafka, worker.config.group, f"{prefix}rpctest.v1.Kitchen")
        try:
            kitchen = kitchen_pb2_grpc.KitchenStub(channel)
            # Client streams left open on both partitions: whichever one moves has one.
            queues: list[asyncio.Queue[Any]] = []
            calls = []
            for _ in range(40):
                queue: asyncio.Queue[Any] = asyncio.Queue()

                async def requests(q: asyncio.Queue[Any] = queue) -> Any:
                    while (item := await q.get()) is not None:
                        yield item

                queue.put_nowait(kitchen_pb2.Item(i=0))
                queues.append(queue)
                calls.append(kitchen.AsyncCollect(requests(), timeout=60))
                await asyncio.sleep(0.02)
                streams = {c.partition for c in worker.calls._calls.values()}
                if len(streams) == 2:
                    break
            for _ in range(100):
                if len({c.partition for c in worker.calls._calls.values()}) == 2:
                    break
                await asyncio.sleep(0.1)
            assert len({c.partition for c in worker.calls._calls.values()}) == 2, "streams open on both partitions"
            await asyncio.sleep(0.5)  # their openings committed
            # The next commit (a second message on a stream moves an offset) fails once the
            # rebalance has begun.
            fail_next.set()
            queues[0].put_nowait(kitchen_pb2.Item(i=1))
            member.start()
            assert await asyncio.to_thread(revoking.wait, 60), "the worker's partitions were never revoked"
            assert await asyncio.to_thread(member.assigned.wait, 60), "the second member got no partition"
            for _ in range(300):
                if revoke_seconds:
                    break
                await asyncio.sleep(0.1)
            for queue in queues:
                queue.put_nowait(None)
            for call in calls:
                call.cancel()
        finally:
            member.stop.set()
            await asyncio.to_thread(member.join, 30)
            await channel.close()
            stop.set()
            await asyncio.wait_for(running, 60)

    asyncio.run(scenario())
    assert "transaction aborted" in caplog.text, "the injected failure did not abort a transaction"
    assert "revoked before their calls were settled" not in caplog.text
    assert revoke_seconds, "the revocation never returned"
