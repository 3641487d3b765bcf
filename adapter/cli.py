"""What both command lines share: Kafka flags, logging, signals, one-line errors.

Environment variables are read here and nowhere else in the library.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from adapter.config import KafkaConfig, MiB
from adapter.errors import KafkaRpcError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from adapter.metrics import Endpoint


def env(name: str, default: str) -> str:
    return os.environ.get(name, default)


def add_kafka_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Kafka")
    group.add_argument("--bootstrap-servers", default=env("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
                       help="comma-separated HOST:PORT list (env KAFKA_BOOTSTRAP_SERVERS; default %(default)s)")
    group.add_argument("--client-id", default=env("KAFKA_CLIENT_ID", "kafka-rpc"),
                       help="Kafka client id (default %(default)s)")
    group.add_argument("--topic-partitions", type=int, default=int(env("KAFKA_RPC_TOPIC_PARTITIONS", "8")),
                       help="partitions of request topics created when missing (default %(default)s)")
    group.add_argument("--topic-prefix", default=env("KAFKA_RPC_TOPIC_PREFIX", ""),
                       help="prepended to every request topic name (env KAFKA_RPC_TOPIC_PREFIX)")
    group.add_argument("--no-create-topics", action="store_true",
                       help="fail, naming the topic, instead of creating missing topics")
    group.add_argument("--max-message-bytes", type=int, default=4 * MiB,
                       help="largest request or response message (default %(default)s)")
    parser.add_argument("--log-level", default=env("KAFKA_RPC_LOG_LEVEL", "INFO"),
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default %(default)s")


def add_metrics_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=int, default=env("KAFKA_RPC_METRICS_PORT", "") or None, metavar="PORT",
                        help="serve Prometheus metrics at http://0.0.0.0:PORT/metrics (env KAFKA_RPC_METRICS_PORT; "
                        "0 picks a free port; default: no endpoint)")


def kafka_config(args: argparse.Namespace) -> KafkaConfig:
    return KafkaConfig(
        bootstrap_servers=tuple(s.strip() for s in args.bootstrap_servers.split(",") if s.strip()),
        client_id=args.client_id,
        topic_partitions=args.topic_partitions,
        topic_prefix=args.topic_prefix,
        create_topics=not args.no_create_topics,
        max_message_bytes=args.max_message_bytes,
    )


def setup_logging(level: str, name: str) -> None:
    logging.basicConfig(level=level, format=f"%(asctime)s {name}[%(process)d] %(levelname)s %(name)s: %(message)s")
    # kafka-python is chatty at INFO about every connection.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    # ...and warns of missing partition metadata for every topic created a moment ago.
    logging.getLogger("kafka.coordinator.assignors").setLevel(logging.ERROR)
    # While a broker is down, kafka-python logs every reconnection attempt as an error;
    # our own health watcher reports the outage once.
    if logging.getLogger().level > logging.DEBUG:
        for name in ("kafka.net", "kafka.cluster", "kafka.conn", "kafka.client"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def serve_metrics(port: int | None, registry: CollectorRegistry, name: str) -> Endpoint | None:
    """Start the metrics endpoint when a port is set, and say where it is."""
    if port is None:
        return None
    from adapter.metrics import serve

    try:
        endpoint = serve(port, registry)
    except OSError as exc:
        raise OSError(f"metrics_port: cannot listen on port {port}: {exc.strerror or exc}") from exc
    print(f"{name}: metrics on http://0.0.0.0:{endpoint.port}/metrics", flush=True)
    return endpoint


def run(main: Callable[[asyncio.Event], Awaitable[None]], name: str) -> int:
    """Run `main(stop_event)`; the first SIGINT/SIGTERM sets the event, a second one exits at once."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if stop.is_set():
                logging.getLogger(name).warning("second signal: exiting now")
                os._exit(130)
            logging.getLogger(name).info("stopping (send the signal again to exit at once)")
            stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        await main(stop)

    try:
        asyncio.run(runner())
    except KafkaRpcError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    return 0
