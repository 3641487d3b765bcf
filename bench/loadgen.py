"""The gRPC load client: one process, one grpc.aio channel per target, N coroutines.

    python -m bench.loadgen --target 127.0.0.1:50051 [--target ...] --payloads 100 10240 \\
        --in-flight 1 16 64 256 --warmup 2 --duration 6
    python -m bench.loadgen --kafka 127.0.0.1:9092 --prefix P. ...     # through an AioKafkaChannel

Each coroutine calls Echo in a loop, so exactly N calls are in flight. Requests are
serialized once and sent as bytes (no per-call protobuf work in the client); coroutine i
uses target i mod len(targets). Speaks the line protocol of `bench.stats`.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import math
import os
import sys
import time

import grpc

from adapter.runtime.cli import loop_factory
from bench import stats, trace

#: With BENCH_TRACE set (to the `trace=DIR` folder), the client marks its side of each call too.
TRACE = os.environ.get("BENCH_TRACE")


async def run_cell(calls: list[grpc.aio.UnaryUnaryMultiCallable], payload: int, in_flight: int,
                   warmup: float, duration: float, args: argparse.Namespace, report: bool = True) -> None:
    value = stats.request_bytes(payload)
    window = [math.inf, math.inf]
    latencies: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    stopping = False

    async def worker(call: grpc.aio.UnaryUnaryMultiCallable) -> None:
        while not stopping:
            t0 = time.perf_counter()
            ok = True
            if TRACE:
                trace.mark("C sent")
            try:
                await call(value, timeout=args.timeout)
            except grpc.aio.AioRpcError as exc:
                ok = False
                code = exc.code().name
            t1 = time.perf_counter()
            if TRACE:
                trace.mark("C received")
            if window[0] <= t1 <= window[1]:
                if ok:
                    latencies.append(t1 - t0)
                else:
                    errors[code] += 1

    tasks = [asyncio.create_task(worker(calls[i % len(calls)])) for i in range(in_flight)]
    await asyncio.sleep(warmup)
    window[0] = time.perf_counter()
    if report:
        stats.emit("warm", payload, in_flight)
    await asyncio.sleep(duration)
    window[1] = time.perf_counter()
    if report:
        stats.emit("done", payload, in_flight, calls=len(latencies), errors=sum(errors.values()),
                   error_codes=dict(errors), seconds=round(window[1] - window[0], 4),
                   latency_ms=stats.summary(latencies))
    stopping = True
    await asyncio.gather(*tasks)


async def run(args: argparse.Namespace) -> None:
    channels: list = []
    if args.kafka:
        # The "channel" scenario: no gRPC frontend, the caller's own AioKafkaChannel.
        from rpctest.v1 import kitchen_pb2

        from adapter.caller import requester
        from adapter.caller.aio_channel import AioKafkaChannel

        if args.reply_run:
            requester.REPLY_RUN = args.reply_run
        channels = [await AioKafkaChannel.connect([kitchen_pb2], bootstrap_servers=args.kafka, topic_prefix=args.prefix,
                                                  kafka_client=args.kafka_client, reply_topic=f"{args.prefix}replies")]
    else:
        options = [("grpc.max_receive_message_length", 8 * 1024 * 1024)]
        channels = [grpc.aio.insecure_channel(t, options=options) for t in args.target]
    calls = [ch.unary_unary(args.method) for ch in channels]
    for call in calls:
        reply = await call(stats.request_bytes(100), timeout=60, wait_for_ready=True)
        if reply != stats.request_bytes(100):
            raise SystemExit(f"loadgen: {args.method} did not echo the request")
    if args.prewarm > 0:
        await run_cell(calls, args.payloads[0], stats.PREWARM_IN_FLIGHT, 0, args.prewarm, args, report=False)
    for payload, in_flight in stats.cells(args):
        await run_cell(calls, payload, in_flight, args.warmup, args.duration, args)
    for ch in channels:
        await ch.close()


def main() -> None:
    if TRACE:
        trace.dump_at_exit(TRACE, "client")
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--target", action="append", default=[], help="HOST:PORT (repeatable)")
    parser.add_argument("--kafka", metavar="BOOTSTRAP", help="call through an AioKafkaChannel on this broker instead")
    parser.add_argument("--prefix", default="", help="topic prefix of the AioKafkaChannel")
    parser.add_argument("--kafka-client", default="confluent", help="engine of the AioKafkaChannel")
    parser.add_argument("--reply-run", type=int, default=0, metavar="N",
                        help="calls in a row asking for replies on one partition, AioKafkaChannel (0: ours)")
    parser.add_argument("--event-loop", choices=["auto", "uvloop", "asyncio"], default="asyncio",
                        help="this client's event loop, as our commands' --event-loop (default: asyncio; for the "
                             "channel scenario uvloop measured within the noise, docs/performance.md)")
    parser.add_argument("--method", default=stats.ECHO)
    parser.add_argument("--timeout", type=float, default=30.0, help="deadline of each call, seconds")
    stats.add_cell_arguments(parser)
    args = parser.parse_args()
    if not args.target and not args.kafka:
        parser.error("give --target or --kafka")
    with asyncio.Runner(loop_factory=loop_factory(args.event_loop)) as runner:
        runner.run(run(args))


if __name__ == "__main__":
    sys.exit(main())
