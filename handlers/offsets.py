"""Which offset of each partition may be committed: the one after the longest replied prefix.

    >>> tracker = OffsetTracker()
    >>> for offset in (5, 6, 7): tracker.add("t", 0, offset)
    >>> tracker.done("t", 0, 6); tracker.committable()
    {}
    >>> tracker.done("t", 0, 5); tracker.committable()
    {('t', 0): 7}
"""

from __future__ import annotations

from collections import deque

Partition = tuple[str, int]


class OffsetTracker:
    """Tracks records in flight per partition; offsets arrive in increasing order."""

    def __init__(self) -> None:
        self._open: dict[Partition, deque[int]] = {}
        self._done: dict[Partition, set[int]] = {}
        self._next: dict[Partition, int] = {}
        self._committed: dict[Partition, int] = {}

    def add(self, topic: str, partition: int, offset: int) -> None:
        tp = (topic, partition)
        self._open.setdefault(tp, deque()).append(offset)
        self._done.setdefault(tp, set())

    def done(self, topic: str, partition: int, offset: int) -> None:
        tp = (topic, partition)
        if tp not in self._open:
            return  # the partition was revoked meanwhile
        self._done[tp].add(offset)
        queue, finished = self._open[tp], self._done[tp]
        while queue and queue[0] in finished:
            finished.discard(queue[0])
            self._next[tp] = queue.popleft() + 1

    def committable(self, partitions: set[Partition] | None = None) -> dict[Partition, int]:
        """Offsets to commit now (not committed before), optionally only for `partitions`."""
        return {
            tp: offset
            for tp, offset in self._next.items()
            if self._committed.get(tp) != offset and (partitions is None or tp in partitions)
        }

    def committed(self, offsets: dict[Partition, int]) -> None:
        self._committed.update(offsets)

    def forget(self, partitions: set[Partition]) -> None:
        """Stop tracking revoked partitions: their records belong to another process now."""
        for tp in partitions:
            for table in (self._open, self._done, self._next, self._committed):
                table.pop(tp, None)

    @property
    def pending(self) -> int:
        """Records not yet done (those done but waiting behind an earlier one do not count)."""
        return sum(len(q) - len(self._done[tp]) for tp, q in self._open.items())
