"""Run the frontend or a handler process with an experimental change, to measure a lever
without editing adapter/ or handlers/.

    python -m bench.variants linger=1,switch=0.001 adapter --proto-path protos ...
    python -m bench --only adapter --variant commit=0.2        # the suite starts them so

Each variant patches one named function at start-up and fails loudly if that name has moved
(the code under measurement changes; a silent no-op would measure nothing). Variants:

- ``switch=S``: ``sys.setswitchinterval(S)`` (default 0.005): how long a thread that wants
  the GIL waits before the holder is asked to drop it.
- ``linger=MS``: producers' linger (ours: 0): batch records produced within MS.
- ``idempotence=false``: producers without idempotence (ours: idempotent).
- ``dronlyerror=true``: the frontend's producer reports failed deliveries only (ours: all).
- ``replyfetch=MS``: the frontend's fetch wait (ours: 100).
- ``replybytes=N``: the frontend's fetch size limit.
- ``commit=S``: a handler commits offsets at most every S seconds (ours: every 0.2 s).
- ``loop=asyncio|uvloop``: the processes' event loop (ours: uvloop where installed).
- ``run=N``: the frontend's requester asks for replies on one partition N calls in a row
  (ours: `adapter.caller.requester.REPLY_RUN`); 1 spreads them one by one.
- ``keyless=1``: the frontend sends requests without a record key, so librdkafka's sticky
  partitioner (``sticky.partitioning.linger.ms``) sends calls in batches to one partition
  instead of spreading them one by one (breaks cancellation routing: measurement only).
- ``grpcopt=NAME:VALUE``: one more option of the frontend's grpc.aio server (a channel
  argument such as ``grpc.optimization_target:throughput``).
- ``trace=DIR``: timestamps at each hand-off of a call, written to DIR (`bench.trace`).

The Kafka settings go in as `--kafka-option` would give them (`KAFKA_RPC_KAFKA_OPTION`), in
the names of the engine the process runs.
"""

from __future__ import annotations

import functools
import importlib
import os
import runpy
import sys
import time
from typing import Any


def _module(name: str) -> Any:
    return importlib.import_module(name)


def _kafka_option(confluent: str, kafka_python: str, frontend_only: bool = False) -> None:
    """A Kafka client setting for this process, as `--kafka-option` would give it (in the engine's names)."""
    if frontend_only and sys.argv[0] != "adapter":
        return
    engine = "kafka-python" if "kafka-python" in sys.argv or os.environ.get("KAFKA_RPC_KAFKA_CLIENT") == "kafka-python" \
        else "confluent"
    setting = kafka_python if engine == "kafka-python" else confluent
    if not setting:
        raise SystemExit(f"bench.variants: {confluent.split('=')[0]} has no {engine} counterpart")
    current = os.environ.get("KAFKA_RPC_KAFKA_OPTION")
    os.environ["KAFKA_RPC_KAFKA_OPTION"] = f"{current},{setting}" if current else setting


def switch(value: str) -> None:
    sys.setswitchinterval(float(value))


def linger(value: str) -> None:
    _kafka_option(f"linger.ms={value}", f"linger_ms={int(value)}")


def idempotence(value: str) -> None:
    _kafka_option(f"enable.idempotence={value}", f"enable_idempotence={value.capitalize()}")


def dronlyerror(value: str) -> None:
    _kafka_option(f"delivery.report.only.error={value}", "", frontend_only=True)


def replyfetch(value: str) -> None:
    _kafka_option(f"fetch.wait.max.ms={value}", f"fetch_max_wait_ms={value}", frontend_only=True)


def replybytes(value: str) -> None:
    _kafka_option(f"fetch.max.bytes={value}", f"fetch_max_bytes={value}", frontend_only=True)


def run(value: str) -> None:
    requester = _module("adapter.caller.requester")
    assert hasattr(requester, "REPLY_RUN"), "adapter.caller.requester.REPLY_RUN has moved"
    requester.REPLY_RUN = int(value)


def commit(value: str) -> None:
    worker = _module("handlers.worker").Worker
    original = worker._commit
    every = float(value)

    @functools.wraps(original)
    async def throttled(self: Any, sync: bool, *args: Any, **kwargs: Any) -> None:
        now = time.monotonic()
        if not sync and now - getattr(self, "_bench_last_commit", 0.0) < every:
            return
        self._bench_last_commit = now
        await original(self, sync, *args, **kwargs)

    worker._commit = throttled


def keyless(value: str) -> None:
    transport = _module("adapter.caller.transport").KafkaTransport
    original = transport.send

    @functools.wraps(original)
    def send(self: Any, topic: str, key: bytes | None, *args: Any, **kwargs: Any) -> None:
        original(self, topic, None, *args, **kwargs)

    transport.send = send


def grpcopt(value: str) -> None:
    import grpc.aio

    name, _, setting = value.partition(":")
    original = grpc.aio.server

    @functools.wraps(original)
    def server(*args: Any, options: Any = None, **kwargs: Any) -> Any:
        return original(*args, options=[*(options or []), (name, int(setting) if setting.isdigit() else setting)],
                        **kwargs)

    grpc.aio.server = server


def loop(value: str) -> None:
    """The frontend's and the handlers' event loop, as --event-loop would choose it: asyncio or uvloop."""
    os.environ["KAFKA_RPC_EVENT_LOOP"] = value


def trace(value: str) -> None:
    from bench import trace as tracing

    tracing.install(value)


VARIANTS = {"switch": switch, "linger": linger, "idempotence": idempotence, "dronlyerror": dronlyerror,
            "replyfetch": replyfetch, "replybytes": replybytes, "commit": commit, "run": run, "loop": loop,
            "keyless": keyless, "grpcopt": grpcopt, "trace": trace}


def apply(spec: str) -> None:
    for item in filter(None, spec.split(",")):
        name, _, value = item.partition("=")
        if name not in VARIANTS:
            raise SystemExit(f"bench.variants: unknown variant {name!r} (known: {', '.join(VARIANTS)})")
        VARIANTS[name](value)


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit("usage: python -m bench.variants SPEC adapter|handlers ARGS...")
    spec, module, *args = sys.argv[1:]
    sys.argv = [module, *args]
    apply(spec)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
