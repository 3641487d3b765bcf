"""The reply listener survives failures (review defect 5 of #12): a fake engine injects them."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from adapter.caller.replies import ReplyListener
from adapter.kafka import Record
from adapter.protocol import wire
from adapter.runtime.config import KafkaConfig, ReplyConfig

TOPIC = "r.replies"


class ScriptedConsumer:
    """Plays `steps`, one per poll: a callable (run inside the poll, like a rebalance callback),
    an exception to raise, or records to return."""

    def __init__(self, steps: list[Any]) -> None:
        self.steps = steps
        self.on_assign: Callable[[list[tuple[str, int]]], None] | None = None
        self.closed = False

    def subscribe(self, topics: list[str], on_assign: Any, on_revoke: Any) -> None:
        self.on_assign = on_assign

    def poll(self, timeout: float, max_records: int) -> list[Record]:
        if not self.steps:
            time.sleep(timeout)
            return []
        step = self.steps.pop(0)
        if isinstance(step, BaseException):
            raise step
        if callable(step):
            step(self)
            return []
        return step

    def close(self) -> None:
        self.closed = True


class Engine:
    def __init__(self, consumer: ScriptedConsumer) -> None:
        self._consumer = consumer

    def consumer(self, *args: Any, **kwargs: Any) -> ScriptedConsumer:
        return self._consumer


def _reply(n: int) -> Record:
    reply = wire.Reply(b"%016d" % n, payload=b"%d" % n)
    return Record(TOPIC, 0, n, None, reply.payload, list(reply.encode_headers()))


def test_a_failing_delivery_or_poll_does_not_end_the_listener() -> None:
    delivered: list[bytes] = []
    partitions: list[frozenset[int]] = []
    failed_once = threading.Event()
    done = threading.Event()

    def on_replies(replies: list[wire.Reply | wire.Frame]) -> None:
        if not failed_once.is_set():
            failed_once.set()
            raise RuntimeError("the event loop is gone for a moment")  # e.g. call_soon_threadsafe on a closing loop
        delivered.extend(r.payload or b"" for r in replies)
        if len(delivered) >= 2:
            done.set()

    consumer = ScriptedConsumer([
        lambda c: c.on_assign([(TOPIC, 0)]),
        [_reply(1)],                  # its delivery fails
        RuntimeError("a bug in a poll"),
        [_reply(2), _reply(3)],       # still read and delivered
    ])
    config = ReplyConfig(KafkaConfig(), reply_topic=TOPIC)
    listener = ReplyListener(config, Engine(consumer), on_replies, partitions.append)  # type: ignore[arg-type]
    listener.start()
    try:
        assert done.wait(10), (delivered, partitions)
    finally:
        listener.stop()
    assert delivered == [b"2", b"3"]
    assert partitions == [frozenset({0})]  # never announced as lost
    assert consumer.closed
