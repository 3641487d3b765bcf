"""The consumer's own thread: it polls without waiting for the event loop, and hands each batch over.

    fetcher = Fetcher(loop, fetch, on_batch)      # fetch() runs on the thread: one poll's worth
    fetcher.start()
    consumer = await fetcher.call(make_consumer)  # any consumer call: run between two polls
    fetcher.polling = True                        # on_batch(batch, generation) on the loop, per poll
    fetcher.post(consumer.pause, partitions)      # fire and forget
    generation = await fetcher.call(seek, ...)    # after a rewind, older batches are stale
    await fetcher.stop()

A Kafka consumer belongs to one thread (librdkafka runs its callbacks there, and confluent-kafka
makes calls from other threads wait for a poll in progress). Here every call on it runs on this
thread, between polls, and records reach the event loop once per poll, whatever their number.
The loop never waits for a poll; a command waits at most for the poll in progress (0.1 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

Batch = TypeVar("Batch")
#: Seconds a failing poll waits before the next one (the broker is away).
RETRY = 1.0


class Fetcher(Generic[Batch]):
    """A thread that runs `fetch` in a loop while `polling`, and commands in between."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fetch: Callable[[], Batch | None],
                 on_batch: Callable[[Batch, int], None]) -> None:
        self._loop = loop
        self._fetch = fetch
        self._on_batch = on_batch
        self._commands: queue.SimpleQueue[tuple[Callable[[], Any], asyncio.Future[Any] | None]] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="consumer", daemon=True)
        #: Poll while True; commands run either way.
        self.polling = False
        #: Stamped on each batch; a command may raise it (`next_generation`) to mark older batches stale.
        self.generation = 0

    def start(self) -> None:
        self._thread.start()

    def set_polling(self, on: bool) -> None:
        """Poll (True) or only run commands (False); the thread notices at once."""
        self.polling = on
        self._commands.put((lambda: None, None))  # wakes a thread waiting for a command

    def next_generation(self) -> int:
        """On the thread, inside a command: batches fetched from now on carry a new generation."""
        self.generation += 1
        return self.generation

    async def call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `func(*args, **kwargs)` on the thread between two polls; its result or exception."""
        future: asyncio.Future[Any] = self._loop.create_future()
        self._commands.put((lambda: func(*args, **kwargs), future))
        return await future

    def post(self, func: Callable[..., Any], *args: Any) -> None:
        """Run `func(*args)` on the thread soon, without waiting; a failure is logged."""
        self._commands.put((lambda: func(*args), None))

    async def stop(self) -> None:
        """Stop the thread once the commands already given have run."""
        self.polling = False
        await self.call(self._stopping.set)
        await asyncio.to_thread(self._thread.join, 10)

    def _execute(self, func: Callable[[], Any], future: asyncio.Future[Any] | None) -> None:
        try:
            result, error = func(), None
        except BaseException as exc:  # handed to the caller, or logged
            result, error = None, exc
            if future is None:
                log.warning("consumer call failed: %s", exc)
        if future is not None:
            self._loop.call_soon_threadsafe(settle, future, result, error)

    def _run_commands(self) -> None:
        while True:
            try:
                func, future = self._commands.get_nowait()
            except queue.Empty:
                return
            self._execute(func, future)

    def _run(self) -> None:
        while not self._stopping.is_set():
            self._run_commands()
            if self._stopping.is_set():
                break
            if not self.polling:
                with contextlib.suppress(queue.Empty):  # nothing to poll yet (or any more): wait for a command
                    self._execute(*self._commands.get(timeout=0.1))
                continue
            try:
                batch = self._fetch()
            except Exception as exc:
                # The broker is away (restart, network): keep trying rather than exit.
                log.warning("fetching requests failed, retrying in %gs: %s: %s", RETRY, type(exc).__name__, exc)
                self._stopping.wait(RETRY)
                continue
            if batch is not None:
                try:
                    self._loop.call_soon_threadsafe(self._on_batch, batch, self.generation)
                except RuntimeError:  # the loop is closed
                    return


def settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    """On the event loop: end `future` with what a call on another thread gave (unless it ended)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
