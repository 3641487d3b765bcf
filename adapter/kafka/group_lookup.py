"""Consumer-group lookups on librdkafka, in a child process of their own.

librdkafka 2.16 aborts the whole process (``rd_kafka_enq_once_del_source_return: Assertion
`eonce->refcnt > 0' failed``) when a coordinator request of its admin client fails because the
coordinator's broker went away: librdkafka issue 4605, open; a fix is proposed in its PR 5397.
Describing consumer groups is such a request, and the frontend asks every few seconds, broker
failovers included: with a group coordinator killed (tests/test_cluster_faults.py) the frontend
died with every call it held. In a child process the abort costs one lookup (Kafka "cannot
tell", as when it is unreachable); the next lookup starts a new child.

    lookup = GroupLookup(config)
    lookup.consumers(["SEND_MAIL"], timeout=3.0)   # {"SEND_MAIL": {"shop"}}
    lookup.close()
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import threading
from collections.abc import Collection
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from adapter.config import KafkaConfig
from adapter.errors import TransportError

log = logging.getLogger(__name__)

#: The child's admin client, made on its first lookup and kept (one per child).
_admin: Any = None


def _child_start() -> None:
    # Ctrl-C reaches the whole process group: the parent decides when the child ends.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _child_consumers(config: KafkaConfig, topics: list[str], timeout: float) -> dict[str, set[str]]:
    global _admin
    if _admin is None:
        from adapter.kafka.confluent import ConfluentEngine

        _admin = ConfluentEngine(config).admin(timeout)
    result: dict[str, set[str]] = _admin.consumers_here(topics, timeout)
    return result


class GroupLookup:
    """`Admin.consumers` of the confluent engine, run in a (spawned) child process."""

    def __init__(self, config: KafkaConfig) -> None:
        self._config = config
        self._pool: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def consumers(self, topics: Collection[str], timeout: float) -> dict[str, set[str]]:
        with self._lock:
            if self._pool is None:
                # Spawned, not forked: the parent runs librdkafka and grpc threads.
                self._pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_child_start)
            pool = self._pool
        try:
            # The child's first lookup also starts Python and connects: give it time.
            return pool.submit(_child_consumers, self._config, sorted(topics), timeout).result(timeout + 30)
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
