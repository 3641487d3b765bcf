"""A first measurement: unary latency and throughput through the adapter, on the local broker.

    .venv/bin/python bench/latency.py [--calls 1000] [--in-flight 1 16 64]

Starts a frontend and one handler process (Kitchen service) with fresh topics, then
times Echo calls with a 100-byte payload. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

sys.path[:0] = [str(Path(__file__).resolve().parent.parent), str(Path(__file__).resolve().parent.parent / "gen")]
from rpctest.v1 import kitchen_pb2, kitchen_pb2_grpc  # noqa: E402

from tests import procs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--in-flight", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    args = parser.parse_args()
    tmp = Path("/tmp") / f"bench-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    prefix = f"b{uuid.uuid4().hex[:8]}."
    front, address = procs.frontend(tmp / "f.log", args.bootstrap_servers, prefix)
    worker = procs.handler(tmp / "h.log", args.bootstrap_servers, prefix, "--concurrency", "64",
                           targets=["tests.kitchen_service:Kitchen"])
    request = kitchen_pb2.Everything(blob=b"x" * 100)
    try:
        with grpc.insecure_channel(address) as channel:
            echo = kitchen_pb2_grpc.KitchenStub(channel).Echo
            for _ in range(50):
                echo(request, timeout=30)
            print("| in flight | calls | p50 ms | p90 ms | p99 ms | calls/s |")
            print("|---|---|---|---|---|---|")
            for n in args.in_flight:
                latencies: list[float] = []

                def one(_: int, latencies: list[float] = latencies) -> None:
                    start = time.perf_counter()
                    echo(request, timeout=30)
                    latencies.append(time.perf_counter() - start)

                start = time.perf_counter()
                with ThreadPoolExecutor(n) as pool:
                    list(pool.map(one, range(args.calls)))
                elapsed = time.perf_counter() - start
                q = statistics.quantiles(latencies, n=100)
                print(f"| {n} | {args.calls} | {q[49]*1000:.2f} | {q[89]*1000:.2f} | {q[98]*1000:.2f} | {args.calls/elapsed:.0f} |")
    finally:
        worker.stop()
        front.stop()


if __name__ == "__main__":
    main()
