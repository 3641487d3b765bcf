"""handlers.transactions against a stand-in producer: what goes into which commit, and when.

The real thing (a broker, processes, kill -9, fencing) is tests/test_exactly_once.py; these
pin down the ordering rules that are hard to provoke there.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from adapter.errors import TransportError
from adapter.kafka.handoff import Handoff
from adapter.runtime.config import KafkaConfig, WorkerConfig
from adapter.runtime.metrics import HandlerMetrics
from handlers import transactions
from handlers.offsets import OffsetTracker, decode_done
from handlers.transactions import Transactions


class Producer:
    """Records what a transactional producer is asked to do; commits can be held or made to fail."""

    def __init__(self) -> None:
        self.log: list[Any] = []
        self.hold = threading.Event()
        self.hold.set()
        self.fail_commit = False
        #: Set once a commit has begun (and waits on `hold`, if cleared).
        self.in_commit = threading.Event()

    def begin(self) -> None:
        self.log.append("begin")

    def produce(self, topic: str, value: Any, key: Any, headers: Any, partition: Any = None, on_delivery: Any = None) -> None:
        self.log.append(("send", topic))

    def commit(self, offsets: Any, group: Any) -> None:
        if offsets:
            self.log.append(("offsets", dict(offsets)))
        self.in_commit.set()
        self.hold.wait(5)
        if self.fail_commit:
            raise TransportError("committing a transaction: broker went away")
        self.log.append("commit")

    def abort(self) -> None:
        self.log.append("abort")

    def flush(self, timeout: Any = None) -> None:
        pass

    def close(self, timeout: Any = None) -> None:
        self.log.append("close")


class Engine:
    def __init__(self, producer: Producer) -> None:
        self.producer = producer

    def transactional_producer(self, transactional_id: str, timeout: float) -> Producer:
        self.producer.log.append("init")
        return self.producer


async def _steps() -> None:
    """Let every ready task run until it waits (the stand-in producer never blocks a send)."""
    for _ in range(5):
        await asyncio.sleep(0)


@pytest.fixture
def producer() -> Producer:
    return Producer()


def new(tracker: OffsetTracker, producer: Producer) -> Transactions:
    config = WorkerConfig(kafka=KafkaConfig(), exactly_once=True, transactional_id="t1")
    handoff = Handoff(asyncio.get_running_loop())
    return Transactions(config, Engine(producer), lambda: "group-metadata", tracker, HandlerMetrics(), handoff)  # type: ignore[arg-type]


def test_a_commit_carries_the_offsets_and_done_records_of_its_replies(producer: Producer) -> None:
    async def run() -> None:
        tracker = OffsetTracker()
        for offset in (10, 11, 12):
            tracker.add("req", 0, offset)
        txn = new(tracker, producer)
        await txn.start()
        await txn.send("replies", b"r", None, [])
        tracker.done("req", 0, 11)  # its reply is in this transaction; 10 still runs
        assert await txn.commit()
        offsets = next(entry[1] for entry in producer.log if entry[0] == "offsets")
        position, metadata = offsets[("req", 0)]
        assert position == 10 and decode_done(position, metadata) == {11}
        assert producer.log[-2:] == ["commit", "begin"]
        assert await txn.commit()  # nothing new: no empty transaction
        assert producer.log.count("commit") == 1
        await txn.close()

    asyncio.run(run())


def test_sends_wait_while_a_commit_runs(producer: Producer) -> None:
    async def run() -> None:
        tracker = OffsetTracker()
        txn = new(tracker, producer)
        await txn.start()
        await txn.send("replies", b"1", None, [])
        producer.hold.clear()
        committing = asyncio.create_task(txn.commit())
        assert await asyncio.to_thread(producer.in_commit.wait, 5)
        second = asyncio.create_task(txn.send("replies", b"2", None, []))
        await _steps()  # the send has run as far as it can: without the gate it would be done
        assert not second.done() and producer.log.count(("send", "replies")) == 1
        producer.hold.set()
        assert await committing
        await second
        # The second reply went into the next transaction, after the first one's commit.
        sends = [i for i, entry in enumerate(producer.log) if entry == ("send", "replies")]
        assert sends[1] > producer.log.index("commit")
        await txn.close()

    asyncio.run(run())


def test_an_aborted_transaction_refuses_sends_until_the_caller_resumes(producer: Producer) -> None:
    """Sends neither wait for the rewind (a rebalance callback's send would wait for the loop that
    waits for the callback, #12.1) nor reach the next transaction (their call runs again)."""
    async def run() -> None:
        tracker = OffsetTracker()
        txn = new(tracker, producer)
        await txn.start()
        await txn.send("replies", b"1", None, [])
        producer.hold.clear()
        producer.fail_commit = True
        committing = asyncio.create_task(txn.commit())
        assert await asyncio.to_thread(producer.in_commit.wait, 5)
        waiting = asyncio.create_task(txn.send("replies", b"2", None, []))  # waits for the commit
        await _steps()
        assert not waiting.done()
        producer.hold.set()
        assert not await committing
        assert txn.failed and "abort" in producer.log
        with pytest.raises(transactions.TransactionAborted):
            await waiting  # woken by the abort, refused
        with pytest.raises(transactions.TransactionAborted):
            await txn.send("replies", b"3", None, [])
        assert producer.log.count(("send", "replies")) == 1
        assert not await txn.commit()  # nor does anything commit meanwhile
        producer.fail_commit = False
        txn.resume()
        await txn.send("replies", b"4", None, [])
        assert await txn.commit()
        await txn.close()

    asyncio.run(run())


def test_too_many_done_records_to_name_keep_the_transaction_open(producer: Producer,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(transactions, "MAX_METADATA", 10)

    async def run() -> None:
        tracker = OffsetTracker()
        for offset in range(100):
            tracker.add("req", 0, offset)
        for offset in range(1, 100, 3):
            tracker.done("req", 0, offset)
        txn = new(tracker, producer)
        await txn.start()
        await txn.send("replies", b"r", None, [])
        assert await txn.commit()
        assert "commit" not in producer.log  # held: its replies' offsets could not be named
        for offset in range(100):
            tracker.done("req", 0, offset)
        assert await txn.commit()
        assert producer.log.count("commit") == 1
        await txn.close()

    asyncio.run(run())


def test_a_commit_stuck_past_the_transaction_timeout_gets_a_new_producer(producer: Producer,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """librdkafka's send_offsets_to_transaction may never return when the group coordinator dies
    (librdkafka issues 5456, 5511): the handler must not wait longer than the broker keeps the
    transaction (it has aborted it by then), but replace the producer so the calls run again."""
    monkeypatch.setattr(transactions, "STUCK_PAST_TIMEOUT", 0.5)
    fresh = Producer()
    producers = iter([producer, fresh])

    class Replacing(Engine):
        def transactional_producer(self, transactional_id: str, timeout: float) -> Producer:
            self.timeout = timeout
            return next(producers)

    async def run() -> None:
        config = WorkerConfig(kafka=KafkaConfig(), exactly_once=True, transactional_id="t1", session_timeout=6.0)
        engine = Replacing(producer)
        txn = Transactions(config, engine, lambda: "group-metadata", OffsetTracker(), HandlerMetrics(),  # type: ignore[arg-type]
                           Handoff(asyncio.get_running_loop()))
        await txn.start()
        assert engine.timeout == txn.transaction_timeout == 10.0
        monkeypatch.setattr(Transactions, "transaction_timeout", property(lambda self: 0.5))
        await txn.send("replies", b"1", None, [])
        producer.hold.clear()  # the commit blocks (for 5 s, the stand-in's longest)
        assert not await asyncio.wait_for(txn.commit(), 4.0)  # given up after 0.5 + 0.5 s
        assert txn.failed
        txn.resume()
        await txn.send("replies", b"2", None, [])
        assert await txn.commit()
        assert fresh.log.count("commit") == 1 and ("send", "replies") in fresh.log
        producer.hold.set()
        await txn.close()

    asyncio.run(run())
