"""The ping-pong of `bench.pingpong` with other Python Kafka clients: is kafka-python the ceiling?

    python -m bench.clients aiokafka replier  --request-topic T --reply-topic R
    python -m bench.clients confluent requester --request-topic T --reply-topic R --payloads 100 --in-flight 1 64

Same shape as `bench.pingpong` (one producer, manually assigned consumers, linger 0, acks=all,
short fetch waits, echo of value and correlation header to partition 0 of the reply topic):

- ``aiokafka``: asyncio-native, everything on one event loop thread (no thread hops);
- ``confluent``: confluent-kafka, librdkafka's C client under a thin Python layer.

Not part of the default run (`python -m bench --only aiokafka confluent`); the packages are in
bench/requirements-clients.txt, not installed by `make bench`.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench import stats
from bench.pingpong import CORRELATION

MAX_BYTES = 4 * 1024 * 1024 + 65536


class Window:
    """The requester's side of one cell: keeps `in_flight` requests out, times the replies."""

    def __init__(self, payload: int, in_flight: int, warmup: float, duration: float, report: bool,
                 send: Callable[[bytes], None], ids: Iterator[bytes]) -> None:
        self.payload, self.in_flight, self.report = payload, in_flight, report
        self._send, self._ids = send, ids
        self.sent: dict[bytes, float] = {}
        self.opens = time.perf_counter() + warmup
        self.closes = self.opens + duration
        self.opened_at = self.opens
        self.is_open = self.closed = False
        self.latencies: list[float] = []

    def send(self) -> None:
        cid = next(self._ids)
        self.sent[cid] = time.perf_counter()
        self._send(cid)

    def start(self) -> None:
        for _ in range(self.in_flight):
            self.send()

    def replies(self, cids: list[bytes]) -> None:
        now = time.perf_counter()
        if not self.is_open and now >= self.opens:
            self.is_open, self.opened_at = True, now
            if self.report:
                stats.emit("warm", self.payload, self.in_flight)
        for cid in cids:
            t0 = self.sent.pop(cid, None)
            if t0 is None:
                continue
            if self.is_open and not self.closed:
                self.latencies.append(now - t0)
            if now < self.closes:
                self.send()
        if not self.closed and now >= self.closes:
            self.closed = True
            if self.report:
                stats.emit("done", self.payload, self.in_flight, calls=len(self.latencies), errors=0, error_codes={},
                           seconds=round(now - self.opened_at, 4), latency_ms=stats.summary(self.latencies))

    @property
    def finished(self) -> bool:
        return self.closed and not self.sent


def cells(args: argparse.Namespace) -> list[tuple[int, int, float, float, bool]]:
    out = [(args.payloads[0], stats.PREWARM_IN_FLIGHT, 0.0, args.prewarm, False)] if args.prewarm > 0 else []
    return out + [(p, n, args.warmup, args.duration, True) for p, n in stats.cells(args)]


def _cid(headers: Any) -> bytes:
    return next((bytes(v) for k, v in headers or () if k == CORRELATION), b"")


# ---- aiokafka ----

async def aio_main(args: argparse.Namespace) -> None:
    from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

    producer = AIOKafkaProducer(bootstrap_servers=args.bootstrap_servers, acks="all", linger_ms=0,
                                max_request_size=MAX_BYTES)
    consumer = AIOKafkaConsumer(bootstrap_servers=args.bootstrap_servers, group_id=None, enable_auto_commit=False,
                                fetch_max_wait_ms=args.fetch_max_wait_ms, max_partition_fetch_bytes=MAX_BYTES)
    await producer.start()
    await consumer.start()
    topic = args.request_topic if args.role == "replier" else args.reply_topic
    partitions = sorted(await producer.partitions_for(topic)) if args.role == "replier" else [0]
    tps = [TopicPartition(topic, p) for p in partitions]
    consumer.assign(tps)
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)
    try:
        if args.role == "replier":
            print("pingpong: replier ready", flush=True)
            stop = asyncio.Event()
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
            while not stop.is_set():
                for records in (await consumer.getmany(timeout_ms=100)).values():
                    for r in records:
                        await producer.send(args.reply_topic, r.value, partition=0, headers=[(CORRELATION, _cid(r.headers))])
            return
        ids = (i.to_bytes(8, "big") for i in itertools.count())
        for payload, n, warmup, duration, report in cells(args):
            value = stats.request_bytes(payload)
            outbox: list[bytes] = []
            window = Window(payload, n, warmup, duration, report, outbox.append, ids)
            window.start()
            while not window.finished:
                for cid in outbox:
                    # Returns once the record is queued; the broker's ack is not awaited.
                    await producer.send(args.request_topic, value, headers=[(CORRELATION, cid)])
                outbox.clear()
                batches = await consumer.getmany(timeout_ms=100)
                window.replies([_cid(r.headers) for records in batches.values() for r in records])
    finally:
        await consumer.stop()
        await producer.stop()


# ---- confluent-kafka (librdkafka) ----

def rdkafka_main(args: argparse.Namespace) -> None:
    from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

    common = {"bootstrap.servers": args.bootstrap_servers, "socket.nagle.disable": True}
    producer = Producer({**common, "linger.ms": args.linger_ms, "acks": "all", "message.max.bytes": MAX_BYTES})
    consumer = Consumer({**common, "group.id": f"{args.reply_topic}.rdkafka", "enable.auto.commit": False,
                         "fetch.wait.max.ms": args.fetch_max_wait_ms, "fetch.max.bytes": MAX_BYTES * 2,
                         "max.partition.fetch.bytes": MAX_BYTES})
    topic = args.request_topic if args.role == "replier" else args.reply_topic
    partitions = [0]
    if args.role == "replier":
        meta = consumer.list_topics(topic, timeout=30)
        partitions = sorted(meta.topics[topic].partitions)
    consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in partitions])
    consumer.consume(num_messages=1, timeout=1.0)  # resolves the end offsets before requests flow
    try:
        if args.role == "replier":
            print("pingpong: replier ready", flush=True)
            running = True

            def stop(*_: object) -> None:
                nonlocal running
                running = False

            signal.signal(signal.SIGTERM, stop)
            while running:
                for m in _consume(consumer):
                    if m.error() is None:
                        producer.produce(args.reply_topic, m.value(), partition=0, headers=[(CORRELATION, _cid(m.headers()))])
                producer.poll(0)
            return
        ids = (i.to_bytes(8, "big") for i in itertools.count())
        sent = itertools.count()
        if args.partition_run:
            meta = consumer.list_topics(args.request_topic, timeout=30)
            partitions = sorted(meta.topics[args.request_topic].partitions)
        for payload, n, warmup, duration, report in cells(args):
            value = stats.request_bytes(payload)

            def send(cid: bytes, value: bytes = value) -> None:
                # Runs of requests to one partition: librdkafka puts one partition in each request.
                where = {"partition": partitions[next(sent) // args.partition_run % len(partitions)]} \
                    if args.partition_run else {}
                producer.produce(args.request_topic, value, headers=[(CORRELATION, cid)], **where)

            window = Window(payload, n, warmup, duration, report, send, ids)
            window.start()
            producer.poll(0)
            while not window.finished:
                messages = _consume(consumer)
                window.replies([_cid(m.headers()) for m in messages if m.error() is None])
                producer.poll(0)
    finally:
        producer.flush(5)
        consumer.close()


def _consume(consumer: Any) -> list[Any]:
    # consume(n, timeout) waits for n messages or the whole timeout: wait for the first only.
    first = consumer.poll(0.1)
    return [first, *consumer.consume(num_messages=499, timeout=0)] if first is not None else []


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.clients", description=__doc__)
    parser.add_argument("client", choices=["aiokafka", "confluent"])
    parser.add_argument("role", choices=["requester", "replier"])
    parser.add_argument("--bootstrap-servers", default="127.0.0.1:9092")
    parser.add_argument("--request-topic", required=True)
    parser.add_argument("--reply-topic", required=True)
    parser.add_argument("--fetch-max-wait-ms", type=int, default=100)
    parser.add_argument("--linger-ms", type=float, default=0, help="the producers' linger.ms (ours: 0)")
    parser.add_argument("--partition-run", type=int, default=0, metavar="N",
                        help="send N requests in a row to one partition (0: librdkafka's partitioner, random)")
    stats.add_cell_arguments(parser)
    args = parser.parse_args()
    if args.client == "aiokafka":
        asyncio.run(aio_main(args))
    else:
        rdkafka_main(args)


if __name__ == "__main__":
    sys.exit(main())
