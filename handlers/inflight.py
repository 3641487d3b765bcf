"""The calls a handler process has in progress: what the consume loop, the commit policy and the
rebalance callbacks share. Touched on the event loop only (the rebalance callbacks hand their work
to it)."""

from __future__ import annotations

import asyncio
import dataclasses

from handlers.offsets import Partition

#: Where a call's opening record is: topic, partition, offset, and its partition's generation then.
Origin = tuple[str, int, int, int]


@dataclasses.dataclass
class InFlight:
    """The state of the calls in progress, by correlation id where it is per call."""

    #: The task of each call, and of each answer that is not a reply (rejections, dead letters).
    tasks: set[asyncio.Future[None]] = dataclasses.field(default_factory=set)
    #: Where each running unary or server-stream call's opening record is, to mark it done when its
    #: reply is sent.
    origins: dict[bytes, Origin] = dataclasses.field(default_factory=dict)
    #: The stream messages of each call produced and not yet acknowledged by Kafka.
    windows: dict[bytes, list[asyncio.Future[None]]] = dataclasses.field(default_factory=dict)
    #: Calls ended without their reply because their partition moved: their record is not done here.
    dropped: set[bytes] = dataclasses.field(default_factory=set)
    #: Partitions this process owns, as the event loop has learnt (records of others are dropped).
    owned: set[Partition] = dataclasses.field(default_factory=set)
    #: Batches fetched before the last rewind (or the drain) carry an older generation: dropped.
    generation: int = 0

    def forget_calls(self) -> None:
        """After every call was stopped (a rewind): nothing of theirs is left to settle."""
        self.origins.clear()
        self.windows.clear()
