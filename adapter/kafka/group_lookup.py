"""Consumer-group lookups on librdkafka, in a child process of their own.

librdkafka 2.16 aborts the whole process (``rd_kafka_enq_once_del_source_return: Assertion
`eonce->refcnt > 0' failed``) when a coordinator request of its admin client fails because the
coordinator's broker went away: librdkafka issue 4605, open; a fix is proposed in its PR 5397.
Describing consumer groups is such a request, and the frontend asks every few seconds, broker
failovers included: with a group coordinator killed (tests/test_cluster_faults.py) the frontend
died with every call it held. In a child process the abort costs one lookup (Kafka "cannot
tell", as when it is unreachable); the next lookup starts a new child.

    lookup = GroupLookup(config, consumers_in_child)   # a module-level function of the engine
    lookup.consumers(["SEND_MAIL"], timeout=3.0)   # {"SEND_MAIL": {"shop"}}
    lookup.close()
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Collection
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from adapter.errors import TransportError
from adapter.runtime.config import KafkaConfig

log = logging.getLogger(__name__)

#: What the child runs: ``lookup(config, topics, timeout)``, a module-level function (pickled by name).
Lookup = Callable[[KafkaConfig, list[str], float], dict[str, set[str]]]


#: Seconds between the child's checks that its parent still lives.
PARENT_CHECK = 1.0


def _child_start(parent: int) -> None:
    # Ctrl-C reaches the whole process group: the parent decides when the child ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_with, args=(parent,), name="parent-watch", daemon=True).start()


def _exit_with(parent: int) -> None:
    """End the child once its parent is gone. A parent killed with SIGKILL never shuts the pool
    down, and the child, which holds both ends of the pool's queue, would wait for work for ever
    (with librdkafka's threads reconnecting)."""
    while os.getppid() == parent:
        time.sleep(PARENT_CHECK)
    os._exit(0)


class GroupLookup:
    """`Admin.consumers` of the confluent engine, run in a (spawned) child process by `lookup`."""

    def __init__(self, config: KafkaConfig, lookup: Lookup) -> None:
        self._config = config
        self._lookup = lookup
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def consumers(self, topics: Collection[str], timeout: float) -> dict[str, set[str]]:
        with self._lock:
            if self._pool is None:
                # Spawned, not forked: the parent runs librdkafka and grpc threads.
                self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_child_start, initargs=(os.getpid(),))
            pool = self._pool
        try:
            # The child's first lookup also starts Python and connects: give it time.
            return pool.submit(self._lookup, self._config, sorted(topics), timeout).result(timeout + 30)
        except BrokenProcessPool as exc:
            log.warning("the consumer-group lookup process died (librdkafka issue 4605, during a broker "
                        "failure?): the next lookup starts another")
            with self._lock:
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False, cancel_futures=True)
            raise TransportError("listing consumer groups: the lookup process died") from exc
        except TimeoutError as exc:
            raise TransportError(f"listing consumer groups: no answer in {timeout + 30:g} s") from exc

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
