"""Hand work from other threads to an event loop, one wake-up per batch.

    handoff = Handoff(asyncio.get_running_loop())
    handoff.call(callback, result)      # from any thread: runs on the loop soon

A call made while a batch is already waiting for the loop joins that batch: under load,
hundreds of completions (Kafka delivery reports, `def` handlers returning) cost one
`call_soon_threadsafe` (a self-pipe write and a loop wake-up) instead of one each.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class Handoff:
    """Runs callables on `loop`, handed over from any thread, in batches."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._batch: list[tuple[Callable[..., None], tuple[Any, ...]]] = []

    def call(self, func: Callable[..., None], *args: Any) -> None:
        """Run `func(*args)` on the loop soon; safe from any thread, the loop's own included."""
        with self._lock:
            self._batch.append((func, args))
            if len(self._batch) > 1:
                return  # a wake-up is on its way and will take this too
        try:
            self.loop.call_soon_threadsafe(self._run)
        except RuntimeError:  # the loop is closed: nobody waits for this any more
            with self._lock:
                self._batch.clear()

    def _run(self) -> None:
        with self._lock:
            batch, self._batch = self._batch, []
        for func, args in batch:
            try:
                func(*args)
            except Exception:
                log.exception("callback %r failed", func)
