"""Which offset of each partition may be committed: the one after the longest replied prefix.

    >>> tracker = OffsetTracker()
    >>> for offset in (5, 6, 7): tracker.add("t", 0, offset)
    >>> tracker.done("t", 0, 6); tracker.committable()
    {}
    >>> tracker.done("t", 0, 5); tracker.committable()
    {('t', 0): 7}
"""

from __future__ import annotations

import base64
import zlib
from collections import deque

Partition = tuple[str, int]

#: Marks commit metadata written by `encode_done` (the exactly-once mode).
DONE_PREFIX = "rpc-done1:"


class OffsetTracker:
    """Tracks records in flight per partition; offsets arrive in increasing order."""

    def __init__(self) -> None:
        self._open: dict[Partition, deque[int]] = {}
        #: The offsets of `_open`, for membership: only a record added and not done can be done.
        self._waiting: dict[Partition, set[int]] = {}
        self._done: dict[Partition, set[int]] = {}
        self._next: dict[Partition, int] = {}
        self._committed: dict[Partition, int] = {}
        self._skip: dict[Partition, set[int]] = {}
        #: Raised each time a partition is forgotten: work started before says nothing after.
        self._generations: dict[Partition, int] = {}

    def add(self, topic: str, partition: int, offset: int) -> None:
        tp = (topic, partition)
        self._open.setdefault(tp, deque()).append(offset)
        self._waiting.setdefault(tp, set()).add(offset)
        self._done.setdefault(tp, set())

    def generation(self, topic: str, partition: int) -> int:
        """The partition's current assignment; give it back to `done` for work started now."""
        return self._generations.get((topic, partition), 0)

    def done(self, topic: str, partition: int, offset: int, generation: int | None = None) -> None:
        """The record at `offset` is answered. Ignored unless it was added, is not done yet, and
        (when `generation` is given) the partition has not been forgotten since."""
        tp = (topic, partition)
        waiting = self._waiting.get(tp)
        if waiting is None or offset not in waiting:
            return  # revoked meanwhile, never fetched in this assignment, or done before
        if generation is not None and generation != self._generations.get(tp, 0):
            return  # a call from before the partition moved away and came back
        waiting.discard(offset)
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

    def uncommitted(self, partitions: list[Partition]) -> None:
        """A commit of these partitions failed after all: commit them again next time."""
        for tp in partitions:
            self._committed.pop(tp, None)

    def positions(self, partitions: set[Partition] | None = None) -> dict[Partition, tuple[int, set[int]]]:
        """For the exactly-once mode: each partition's first record not done, and the records after it that are.

        Committing both (the set in the commit's metadata, `encode_done`) lets a slow call hold
        back nothing but itself: the records done after it are not run again by the next owner."""
        result = {}
        for tp, queue in self._open.items():
            if partitions is not None and tp not in partitions:
                continue
            if queue:
                result[tp] = (queue[0], set(self._done[tp]))
            elif tp in self._next:
                result[tp] = (self._next[tp], set())
        return result

    def skip(self, topic: str, partition: int, offsets: set[int]) -> None:
        """Records another owner replied to (from its commit metadata): `add` marks them done at once."""
        if offsets:
            self._skip.setdefault((topic, partition), set()).update(offsets)

    def skipped(self, topic: str, partition: int, offset: int) -> bool:
        """Whether the record at `offset` was replied to by an earlier owner (and is now done)."""
        skip = self._skip.get((topic, partition))
        if not skip or offset not in skip:
            return False
        skip.discard(offset)
        self.done(topic, partition, offset)
        return True

    def forget(self, partitions: set[Partition] | None = None) -> None:
        """Stop tracking revoked partitions (all, if None): their records belong to another process now."""
        for tp in {*self._open, *self._skip} if partitions is None else partitions:
            for table in (self._open, self._waiting, self._done, self._next, self._committed, self._skip):
                table.pop(tp, None)
            self._generations[tp] = self._generations.get(tp, 0) + 1

    @property
    def pending(self) -> int:
        """Records not yet done (those done but waiting behind an earlier one do not count)."""
        return sum(len(q) - len(self._done[tp]) for tp, q in self._open.items())


def encode_done(position: int, done: set[int]) -> str:
    """Commit metadata naming the records after `position` that are done (a compressed bitmap)."""
    # Only records after `position` can be named: an earlier one would take a negative index.
    done = {offset for offset in done if offset > position}
    if not done:
        return ""
    bits = bytearray((max(done) - position) // 8 + 1)
    for offset in done:
        index = offset - position - 1
        bits[index // 8] |= 1 << (index % 8)
    return DONE_PREFIX + base64.b64encode(zlib.compress(bytes(bits))).decode()


def decode_done(position: int, metadata: str | None) -> set[int]:
    """The offsets `encode_done` put in `metadata`; an empty set for any other metadata."""
    if not metadata or not metadata.startswith(DONE_PREFIX):
        return set()
    try:
        bits = zlib.decompress(base64.b64decode(metadata[len(DONE_PREFIX):], validate=True))
    except (ValueError, zlib.error):
        return set()  # not ours after all: replaying those records is the safe side
    return {position + 1 + i * 8 + b for i, byte in enumerate(bits) for b in range(8) if byte >> b & 1}
