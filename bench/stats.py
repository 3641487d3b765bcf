"""What every load client shares: the request bytes, latency summaries, the line protocol.

A client runs its cells (payload x calls in flight) in order. For each cell it prints two
JSON lines on stdout and nothing else there::

    {"event": "warm", "payload": 100, "in_flight": 16}
    {"event": "done", "payload": 100, "in_flight": 16, "calls": 5210, "errors": 0,
     "seconds": 6.0, "latency_ms": {"p50": 2.9, "p90": 3.6, "p99": 5.1, ...}}

"warm" opens the measured window (after the warm-up), "done" closes it: the suite reads the
CPU time of every process at those two moments. The latencies are those of the calls that
ended inside the window. The Java client (bench/spring) speaks the same protocol.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

#: The method every scenario calls and the one its servers implement.
ECHO = "/rpctest.v1.Kitchen/Echo"


def request_bytes(payload: int) -> bytes:
    """``rpctest.v1.Everything(blob=b"x" * payload)``, serialized: the request of every scenario."""
    from rpctest.v1 import kitchen_pb2

    return kitchen_pb2.Everything(blob=b"x" * payload).SerializeToString()


def rank(sorted_samples: list[float], q: float) -> float:
    """Nearest-rank percentile `q` (0..1) of sorted samples; 0.0 when there are none."""
    if not sorted_samples:
        return 0.0
    index = math.ceil(q * len(sorted_samples)) - 1
    return sorted_samples[max(0, min(len(sorted_samples) - 1, index))]


def summary(latencies_s: list[float]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean in milliseconds."""
    ordered = sorted(latencies_s)
    ms = {name: rank(ordered, q) * 1000 for name, q in
          (("p50", 0.50), ("p90", 0.90), ("p99", 0.99), ("p999", 0.999), ("max", 1.0))}
    ms["mean"] = (sum(ordered) / len(ordered) * 1000) if ordered else 0.0
    return {k: round(v, 4) for k, v in ms.items()}


def emit(event: str, payload: int, in_flight: int, **fields: Any) -> None:
    """Print one protocol line."""
    sys.stdout.write(json.dumps({"event": event, "payload": payload, "in_flight": in_flight, **fields}) + "\n")
    sys.stdout.flush()


def add_cell_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every client takes to know its cells and their timing."""
    parser.add_argument("--payloads", type=int, nargs="+", default=[100])
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1])
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before each measured window")
    parser.add_argument("--duration", type=float, default=6.0, help="seconds of each measured window")
    parser.add_argument("--prewarm", type=float, default=1.0,
                        help="seconds of unreported load (16 in flight) before the first cell: connections, caches, JIT")


def cells(args: argparse.Namespace) -> list[tuple[int, int]]:
    """(payload, in flight) in the order a client runs them."""
    return [(p, n) for p in args.payloads for n in args.in_flight]


#: Calls in flight during the pre-warm.
PREWARM_IN_FLIGHT = 16
