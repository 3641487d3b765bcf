"""Kafka delivery reports as asyncio futures, handed to the event loop in batches (`adapter.runtime.handoff`).

    handoff = Handoff(asyncio.get_running_loop())
    future = deliver(producer, handoff, "replies", b"value", None, headers)   # asyncio future
    await future                                                             # Kafka acknowledged it
"""

from __future__ import annotations

import asyncio

from adapter.kafka.contract import Producer
from adapter.runtime.handoff import Handoff

__all__ = ["Handoff", "deliver"]


def deliver(producer: Producer, handoff: Handoff, topic: str, value: bytes | None, key: bytes | None,
            headers: list[tuple[str, bytes]], partition: int | None = None) -> asyncio.Future[None]:
    """Produce one record; the returned future (of `handoff`'s loop) ends when Kafka acknowledged it.

    Raises `TransportError` at once when the record cannot even be enqueued."""
    future: asyncio.Future[None] = handoff.loop.create_future()

    def settle(error: Exception | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(error)

    producer.produce(topic, value, key, headers, partition, lambda error: handoff.call(settle, error))
    return future
