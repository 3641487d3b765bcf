"""One Kafka leg on its own: how long a record takes from `produce` in one process to `poll` in another.

    python -m bench.leg --gap-ms 3 1 0.5                      # lean settings, three gaps
    python -m bench.leg --gap-ms 1 --ours                     # the adapter's producer and consumer settings

A consumer process polls the topic (on a thread of its own with ``--ours``, in a consumer group,
as a handler does); this process produces one record every gap, its value the
``time.monotonic()`` of the `produce` call (one clock for all processes on Linux). The consumer
prints the median and p90 of (poll returned - produced), in microseconds. One call of the
adapter at one in flight crosses two such legs; `bench.trace` shows them as
"F sent -> H polled" and "H produce -> F polled". The gap shows how much of a leg is the
wake-up of processes that slept in between (docs/performance.md, "One call in flight").
"""

from __future__ import annotations

import argparse
import statistics
import struct
import subprocess
import threading
import time
import uuid

from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

from bench import topics
from bench.procs import python

PARTITIONS = 8


def _settings(args: argparse.Namespace) -> dict[str, object]:
    return {"bootstrap.servers": args.bootstrap_servers, "socket.nagle.disable": True}


def consume(args: argparse.Namespace) -> None:
    settings = {**_settings(args), "group.id": f"leg-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False,
                "fetch.wait.max.ms": 100}
    if args.ours:
        settings.update({"partition.assignment.strategy": "cooperative-sticky", "auto.offset.reset": "latest"})
    consumer = Consumer(settings)
    if args.ours:
        consumer.subscribe([args.topic])
    else:
        consumer.assign([TopicPartition(args.topic, p, OFFSET_END) for p in range(PARTITIONS)])
    delays: list[float] = []

    def run() -> None:
        deadline = time.monotonic() + args.seconds
        ready = False
        while time.monotonic() < deadline:
            message = consumer.poll(0.1)
            if not ready and (consumer.assignment() or not args.ours):
                print("leg: consumer ready", flush=True)
                ready = True
            if message is None or message.error() is not None:
                continue
            now = time.monotonic()
            delays.append((now - struct.unpack("d", message.value())[0]) * 1e6)  # type: ignore[arg-type]
            consumer.consume(499, 0)  # with one record at a time there is none: as a handler polls

    # --ours: the consumer on a thread of its own, as handlers.fetcher runs it.
    thread = threading.Thread(target=run) if args.ours else None
    if thread is not None:
        thread.start()
        thread.join()
    else:
        run()
    consumer.close()
    if len(delays) < 10:
        raise SystemExit(f"leg: only {len(delays)} records arrived")
    print(f"leg: {len(delays)} records, p50 {statistics.median(delays):.0f} µs, "
          f"p90 {statistics.quantiles(delays, n=10)[-1]:.0f} µs", flush=True)


def produce(args: argparse.Namespace, gap: float) -> str:
    consumer = subprocess.Popen(python("bench.leg", "--consume", "--topic", args.topic,
                                       "--bootstrap-servers", args.bootstrap_servers, "--seconds", str(args.seconds + 5),
                                       *(["--ours"] if args.ours else [])),
                                stdout=subprocess.PIPE, text=True)
    assert consumer.stdout is not None
    if "ready" not in consumer.stdout.readline():
        raise SystemExit("leg: the consumer did not start")
    settings = {**_settings(args), "acks": "all", "linger.ms": 0}
    if args.ours:
        settings.update({"enable.idempotence": True, "partitioner": "murmur2_random"})
    producer = Producer(settings)
    time.sleep(2)  # the consumer's fetches are in place
    end = time.monotonic() + args.seconds
    n = 0
    while time.monotonic() < end:
        value = struct.pack("d", time.monotonic())
        if args.ours:  # keyed by a correlation id, as the adapter's requests are
            producer.produce(args.topic, value, key=uuid.uuid4().bytes)
        else:
            producer.produce(args.topic, value, partition=n % PARTITIONS)
        producer.poll(0)
        n += 1
        time.sleep(gap)
    producer.flush(5)
    out, _ = consumer.communicate(timeout=30)
    return out.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.leg", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    parser.add_argument("--topic", help="an existing topic of 8 partitions (default: a new one)")
    parser.add_argument("--gap-ms", type=float, nargs="+", default=[3.0, 1.0], help="time between records")
    parser.add_argument("--seconds", type=float, default=8.0, help="how long each gap is measured")
    parser.add_argument("--ours", action="store_true",
                        help="the adapter's settings: idempotent keyed produce, group consumer on its own thread")
    parser.add_argument("--consume", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consume:
        consume(args)
        return
    if args.topic is None:
        args.topic = f"bench.leg.{uuid.uuid4().hex[:8]}"
        topics.create(args.bootstrap_servers, {args.topic: PARTITIONS})
    for gap in args.gap_ms:
        print(f"gap {gap:g} ms{' (ours)' if args.ours else ''}: {produce(args, gap / 1000)}", flush=True)


if __name__ == "__main__":
    main()
