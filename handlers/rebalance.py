"""A handler process's rebalance callbacks: partitions arriving, and leaving.

They run on the consumer thread inside its poll or close (confluent), or on kafka-python's I/O
thread; never on the event loop, which never waits for the consumer thread meanwhile, so the work
they hand it runs at once. A revocation waits for that work REVOKE_GRACE + 5 s at most: a rebalance
goes on whatever the calls or the transaction do.
"""

from __future__ import annotations

import asyncio
import logging

from adapter.kafka import Offsets
from handlers.commits import REVOKE_GRACE, CommitPolicy
from handlers.inflight import InFlight
from handlers.offsets import Partition

log = logging.getLogger(__name__)


class Rebalance:
    """The `on_assign` and `on_revoke` callbacks of the worker's consumer."""

    def __init__(self, loop: asyncio.AbstractEventLoop, inflight: InFlight, policy: CommitPolicy) -> None:
        self._loop = loop
        self._inflight = inflight
        self._policy = policy

    def assigned(self, partitions: list[Partition]) -> None:
        # Before any batch of this poll reaches the loop (call_soon_threadsafe keeps the order).
        self._loop.call_soon_threadsafe(self._inflight.owned.update, partitions)
        if partitions:
            log.info("partitions assigned: %s", ", ".join(f"{t}/{p}" for t, p in sorted(partitions)))

    def revoked(self, partitions: list[Partition], lost: bool) -> Offsets | None:
        """Settle the partitions' calls on the event loop; the offsets to commit with the revocation."""
        if not partitions:
            return None
        parts = set(partitions)
        self._policy.leaving(parts)
        future = asyncio.run_coroutine_threadsafe(self._settle(parts, lost), self._loop)
        offsets: dict[Partition, int] | None = None
        try:
            offsets = future.result(timeout=REVOKE_GRACE + 5)
        except Exception as exc:  # TimeoutError included: the rebalance must go on
            future.cancel()
            log.warning("partitions revoked before their calls were settled (%s): %s", type(exc).__name__, exc)
        log.info("partitions %s: %s", "lost" if lost else "revoked", ", ".join(f"{t}/{p}" for t, p in sorted(parts)))
        if lost or not offsets:
            return None
        return {tp: (o, "") for tp, o in offsets.items()}

    async def _settle(self, parts: set[Partition], lost: bool) -> dict[Partition, int] | None:
        self._inflight.owned -= parts  # records of theirs still on the way are dropped
        return await self._policy.revoke(parts, lost)
