"""The Kafka floor: request/reply with kafka-python alone, no gRPC, no adapter code.

    python -m bench.pingpong replier  --request-topic T --reply-topic R
    python -m bench.pingpong requester --request-topic T --reply-topic R --payloads 100 --in-flight 1 16

Written as lean as kafka-python allows, since it is what the adapter is measured against:
one producer per process (linger 0, acks=all like ours), consumers with manual partition
assignment (no group, no commits, no rebalances) and short fetch waits, one thread each.
The requester keeps N requests in flight: each reply it reads sends the next request from
the same thread. The replier echoes the value and the correlation header to partition 0 of
the reply topic. Requester speaks the line protocol of `bench.stats`.
"""

from __future__ import annotations

import argparse
import itertools
import signal
import sys
import time
from collections.abc import Iterator

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from bench import stats

CORRELATION = "kafka_correlationId"


def producer(args: argparse.Namespace) -> KafkaProducer:
    return KafkaProducer(bootstrap_servers=args.bootstrap_servers, acks="all", linger_ms=args.linger_ms,
                         max_request_size=4 * 1024 * 1024 + 65536)


def assigned_consumer(args: argparse.Namespace, topic: str, partitions: list[int] | None = None) -> KafkaConsumer:
    """A consumer that owns `partitions` of `topic` (all when None), positioned at their end."""
    consumer = KafkaConsumer(bootstrap_servers=args.bootstrap_servers, group_id=None, enable_auto_commit=False,
                             fetch_max_wait_ms=args.fetch_max_wait_ms, max_partition_fetch_bytes=4 * 1024 * 1024 + 65536)
    if partitions is None:
        deadline = time.monotonic() + 30
        while not (found := consumer.partitions_for_topic(topic)) and time.monotonic() < deadline:
            time.sleep(0.1)
        partitions = sorted(found or [0])
    tps = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(tps)
    consumer.seek_to_end(*tps)
    for tp in tps:
        consumer.position(tp)  # resolve now: nothing produced after this line is missed
    return consumer


def replier(args: argparse.Namespace) -> None:
    out = producer(args)
    consumer = assigned_consumer(args, args.request_topic)
    print("pingpong: replier ready", flush=True)
    running = True

    def stop(*_: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    while running:
        for records in consumer.poll(timeout_ms=100).values():
            for record in records:
                cid = [h for h in record.headers if h[0] == CORRELATION]
                out.send(args.reply_topic, value=record.value, partition=0, headers=cid)
    consumer.close()
    out.close(5)


def group_consumer(args: argparse.Namespace, topic: str) -> KafkaConsumer:
    """The alternative to manual assignment (``--group``): subscribe in a consumer group, as a frontend does."""
    group = f"{topic}.requesters" if args.group == "auto" else args.group
    consumer = KafkaConsumer(topic, bootstrap_servers=args.bootstrap_servers, group_id=group,
                             enable_auto_commit=False, auto_offset_reset="latest", fetch_max_wait_ms=args.fetch_max_wait_ms)
    deadline = time.monotonic() + 60
    while not consumer.assignment() and time.monotonic() < deadline:
        consumer.poll(timeout_ms=100)
    for tp in consumer.assignment():
        consumer.position(tp)
    return consumer


def requester(args: argparse.Namespace) -> None:
    out = producer(args)
    consumer = group_consumer(args, args.reply_topic) if args.group else assigned_consumer(args, args.reply_topic, [0])
    ids = (i.to_bytes(8, "big") for i in itertools.count())
    if args.prewarm > 0:
        run_cell(out, consumer, ids, args, args.payloads[0], stats.PREWARM_IN_FLIGHT, 0, args.prewarm, report=False)
    for payload, in_flight in stats.cells(args):
        run_cell(out, consumer, ids, args, payload, in_flight, args.warmup, args.duration)
    consumer.close()
    out.close(5)


def run_cell(out: KafkaProducer, consumer: KafkaConsumer, ids: Iterator[bytes], args: argparse.Namespace,
             payload: int, in_flight: int, warmup: float, duration: float, report: bool = True) -> None:
    """Keep `in_flight` requests outstanding: each reply read sends the next request."""
    value = stats.request_bytes(payload)
    sent: dict[bytes, float] = {}

    def send() -> None:
        cid = next(ids)
        sent[cid] = time.perf_counter()
        out.send(args.request_topic, value=value, headers=[(CORRELATION, cid)])

    opens = time.perf_counter() + warmup
    closes = opens + duration
    latencies: list[float] = []
    is_open = closed = False
    opened_at = opens
    for _ in range(in_flight):
        send()
    drain_until = closes + 30
    while sent and time.perf_counter() < drain_until:
        batches = consumer.poll(timeout_ms=100)
        now = time.perf_counter()
        if not is_open and now >= opens:
            is_open, opened_at = True, now
            if report:
                stats.emit("warm", payload, in_flight)
        for records in batches.values():
            for record in records:
                cid = next((v for k, v in record.headers if k == CORRELATION), b"")
                t0 = sent.pop(cid, None)
                if t0 is None:
                    continue
                if is_open and not closed:
                    latencies.append(now - t0)
                if now < closes:
                    send()
        if not closed and now >= closes:
            closed = True
            if report:
                stats.emit("done", payload, in_flight, calls=len(latencies), errors=0, error_codes={},
                           seconds=round(now - opened_at, 4), latency_ms=stats.summary(latencies))
    if sent:
        raise SystemExit(f"pingpong: {len(sent)} replies missing")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pingpong", description=__doc__)
    parser.add_argument("role", choices=["requester", "replier"])
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    parser.add_argument("--request-topic", required=True)
    parser.add_argument("--reply-topic", required=True)
    parser.add_argument("--fetch-max-wait-ms", type=int, default=10)
    parser.add_argument("--linger-ms", type=int, default=0)
    parser.add_argument("--group", help="requester: read replies in this consumer group ('auto': named after the reply topic) "
                        "instead of by manual assignment")
    stats.add_cell_arguments(parser)
    args = parser.parse_args()
    replier(args) if args.role == "replier" else requester(args)


if __name__ == "__main__":
    sys.exit(main())
