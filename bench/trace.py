"""Where one call's latency goes: timestamps at the hand-offs of the frontend and the handler.

    python -m bench --only adapter --payloads 100 --in-flight 1 --memory-in-flight 0 \\
        --variant trace=/tmp/trace --name trace
    python -m bench.trace /tmp/trace          # median of each step, in microseconds

The ``trace=DIR`` variant (`bench.variants`) wraps a few functions of the frontend and the
handler process and records ``time.monotonic()`` (one clock for all processes on Linux) when
a call passes them; each process writes its events to DIR at exit. With one call in flight
the events of both processes interleave strictly, so sorting them by time gives each call's
path. Steps:

    C sent        the load client starts the call (only with BENCH_TRACE=DIR in its environment)
    F unary       Gateway._unary entered: grpc.aio handed the call to the frontend's code
    F call        Requester.call entered (frontend event loop)
    F sent        KafkaTransport.send returned: the record is in the producer's buffer
    F produce     the producer's sender thread made the ProduceRequest (kafka-python)
    H fetched     the handler consumer's I/O thread got the FetchResponse with the request
    H polled      the consumer's poll returned the request (handler's consumer thread)
    H accepted    Worker._accept: the record reached the handler's event loop
    H replying    Worker._send entered: the servicer ran, the reply is being produced (a unary
                  def servicer's thread produces its reply itself: no such step then)
    H produce     the handler producer's sender thread made the ProduceRequest (kafka-python),
                  or librdkafka's produce returned (confluent)
    F fetched     the reply consumer's I/O thread got the FetchResponse with the reply
    F polled      the consumer's poll returned the reply (frontend's reply-listener thread)
    F decoded     Requester._replies_from_thread: decoded, about to hop to the event loop
    F delivered   Requester._deliver: on the event loop, the waiter is woken
    F returned    Requester.call returned
    F answered    Gateway._unary returned the reply bytes to grpc.aio
    C received    the load client has the reply

"X produce -> Y fetched" is the broker's part plus the sockets: everything else is Python.
"""

from __future__ import annotations

import atexit
import functools
import importlib
import inspect
import itertools
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

STEPS = ["C sent", "F unary", "F call", "F sent", "F produce", "H fetched", "H polled", "H accepted", "H replying",
         "H produce", "F fetched", "F polled", "F decoded", "F delivered", "F returned", "F answered", "C received"]
_events: list[tuple[float, str]] = []
_lock = threading.Lock()


def mark(name: str) -> None:
    with _lock:
        _events.append((time.monotonic(), name))


def _wrap(cls: Any, name: str, before: str | None = None, after: str | None = None) -> None:
    original = getattr(cls, name)  # AttributeError: the code moved, update the trace

    if inspect.iscoroutinefunction(original):
        @functools.wraps(original)
        async def traced(*args: Any, **kwargs: Any) -> Any:
            if before:
                mark(before)
            try:
                return await original(*args, **kwargs)
            finally:
                if after:
                    mark(after)
    else:
        @functools.wraps(original)
        def traced(*args: Any, **kwargs: Any) -> Any:
            if before:
                mark(before)
            try:
                return original(*args, **kwargs)
            finally:
                if after:
                    mark(after)

    setattr(cls, name, traced)


def _mark_results(cls: Any, name: str, label: str) -> None:
    """Mark `label` each time `cls.name` returns something (records polled, requests made)."""
    original = getattr(cls, name)

    @functools.wraps(original)
    def marked(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        if result:
            mark(label)
        return result

    setattr(cls, name, marked)


def _wrap_kafka(side: str) -> None:
    """Marks inside kafka-python: poll returning records, a ProduceRequest made, a FetchResponse with data."""
    from kafka import KafkaConsumer
    from kafka.consumer.fetcher import Fetcher
    from kafka.producer.sender import Sender

    _mark_results(KafkaConsumer, "poll", f"{side} polled")
    _mark_results(Sender, "_create_produce_requests", f"{side} produce")

    fetch_original = Fetcher._handle_fetch_response

    @functools.wraps(fetch_original)
    def handle_fetch_response(self: Any, node_id: Any, fetch_offsets: Any, send_time: Any, response: Any) -> Any:
        if any(p.records for t in response.responses for p in t.partitions):
            mark(f"{side} fetched")
        return fetch_original(self, node_id, fetch_offsets, send_time, response)

    Fetcher._handle_fetch_response = handle_fetch_response


def _wrap_confluent(side: str) -> None:
    """Marks in the confluent engine: a poll returning records, a produce handed to librdkafka."""
    engine = importlib.import_module("adapter.kafka.confluent")
    _mark_results(engine._Consumer, "poll", f"{side} polled")
    if side == "H":  # the frontend's produce is "F sent" already
        _wrap(engine._Producer, "produce", after="H produce")


def install(folder: str) -> None:
    """Patch the frontend or handler code imported in this process; dump events at exit."""
    role = "handler" if "handlers" in sys.argv[0] else "frontend"
    if role == "frontend":
        requester = importlib.import_module("adapter.caller.requester").Requester
        transport = importlib.import_module("adapter.caller.transport").KafkaTransport
        _wrap(importlib.import_module("adapter.frontend.gateway").Gateway, "_unary", before="F unary", after="F answered")
        _wrap(requester, "call", before="F call", after="F returned")
        _wrap(transport, "send", after="F sent")
        _wrap(requester, "_replies_from_thread", before="F decoded")
        _wrap(requester, "_deliver", before="F delivered")
        _wrap_kafka("F")
        _wrap_confluent("F")
    else:
        worker = importlib.import_module("handlers.worker").Worker
        _wrap(worker, "_accept", before="H accepted")
        _wrap(worker, "_send", before="H replying")
        _wrap_kafka("H")
        _wrap_confluent("H")
    dump_at_exit(folder, role)


def dump_at_exit(folder: str, role: str) -> None:
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)

    def dump() -> None:
        with (out / f"{role}-{os.getpid()}.jsonl").open("w") as f:
            for t, name in _events:
                f.write(json.dumps([t, name]) + "\n")

    atexit.register(dump)


def analyse(folder: Path) -> dict[str, float]:
    """Median microseconds of each step, over the calls whose events came complete and in order."""
    events = sorted(tuple(json.loads(line)) for f in folder.glob("*.jsonl") for line in f.read_text().splitlines())
    seen = {name for _, name in events}
    if not seen:
        raise SystemExit(f"bench.trace: no events in {folder} (was the run started with --variant trace={folder}?)")
    # The kafka-python marks (produce, fetched, polled) never fire on the confluent engine.
    steps = [step for step in (STEPS if "C sent" in seen else STEPS[1:-1]) if step in seen]
    gaps: dict[str, list[float]] = {f"{a} -> {b}": [] for a, b in itertools.pairwise(steps)}
    totals: list[float] = []
    current: list[tuple[float, str]] = []
    for t, name in events:
        if name == steps[0]:
            current = []
        current.append((t, name))
        if name == steps[-1] and [n for _, n in current] == steps:
            for (t0, a), (t1, b) in itertools.pairwise(current):
                gaps[f"{a} -> {b}"].append((t1 - t0) * 1e6)
            totals.append((current[-1][0] - current[0][0]) * 1e6)
    result = {step: round(statistics.median(v), 1) for step, v in gaps.items() if v}
    result[f"total ({steps[0]} -> {steps[-1]})"] = round(statistics.median(totals), 1) if totals else 0.0
    result["calls"] = len(totals)
    return result


def main() -> None:
    result = analyse(Path(sys.argv[1]))
    print("| step | median µs |\n|---|--:|")
    for step, value in result.items():
        print(f"| {step} | {value} |")


if __name__ == "__main__":
    main()
