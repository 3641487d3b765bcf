"""`python -m handlers`: a handler process serving servicers over Kafka."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
import threading

from adapter.runtime import cli


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m handlers",
        description="Consume the request topics of the given services in a consumer group, run the "
        "handler functions and reply over Kafka. Start more processes to scale out.",
    )
    parser.add_argument("targets", nargs="*", metavar="MODULE:ATTR",
                        help="a generated *Servicer subclass or instance, or a handlers.ServiceRegistry")
    parser.add_argument("--group", default="kafka-rpc-handlers",
                        help="consumer group shared by the processes serving these services (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16,
                        help="handler functions running at once (default %(default)s)")
    parser.add_argument("--max-pending", type=int, default=None,
                        help="records held before fetching pauses (default 16 x concurrency)")
    parser.add_argument("--max-client-streams", type=int, default=None,
                        help="client and bidi streams reading requests at once, beyond --max-pending; more are "
                        "refused with RESOURCE_EXHAUSTED (default 4 x max-pending)")
    parser.add_argument("--drain-timeout", type=float, default=30.0,
                        help="seconds to finish calls in progress at shutdown (default %(default)s)")
    parser.add_argument("--allow-reply-topic", action="append", metavar="PATTERN",
                        help="fnmatch pattern of topics replies may go to (repeatable; default: the topic prefix + "
                        "kafka-rpc.replies and + kafka-rpc.client-replies, the reply topics of frontends and "
                        "channels by default)")
    parser.add_argument("--dead-letter-topic", default="kafka-rpc.dead-letters",
                        help="where unanswerable requests go, with the reason in a header (default %(default)s)")
    parser.add_argument("--dedupe-window", type=float, default=300.0,
                        help="seconds a reply is kept for retries with the same idempotency key; 0 disables "
                        "(default %(default)s)")
    parser.add_argument("--session-timeout", type=float, default=10.0,
                        help="seconds after which a dead process's partitions move to the others (default %(default)s)")
    parser.add_argument("--group-protocol", default="auto", choices=["auto", "consumer", "classic"],
                        help="consumer: KIP-848 (Kafka 4.0+), the broker spreads each topic's partitions evenly; "
                        "classic: the older protocol (cooperative-sticky on confluent, balanced per topic on "
                        "kafka-python); auto: consumer on confluent, classic on kafka-python (default %(default)s)")
    parser.add_argument("--exactly-once", action="store_true",
                        help="commit each reply and its request's offset in one Kafka transaction "
                        "(see docs/reliability.md; replies then wait for the commit)")
    parser.add_argument("--transactional-id", default=None,
                        help="transactional id of this process in --exactly-once mode; stable per process slot "
                        "(e.g. the pod name) lets a restart abort its predecessor's transaction at once "
                        "(default: GROUP-HOST-PID)")
    cli.add_metrics_argument(parser)
    cli.add_kafka_arguments(parser)
    args = cli.parse_settings(parser, argv, "handlers")
    if not args.targets:
        parser.error("give at least one MODULE:ATTR (or targets in the config file's [handlers] table)")
    return args


def main(argv: list[str] | None = None) -> int:
    code = cli.command("handlers", parse, argv, _serve)
    _exit_past_stuck_handlers(code)
    return code


async def _serve(args: argparse.Namespace, stop: asyncio.Event) -> None:
    from adapter.protocol.routing import routes_for
    from adapter.runtime.config import WorkerConfig
    from adapter.runtime.metrics import HandlerMetrics, new_registry
    from adapter.runtime.tracing import configure as configure_tracing
    from handlers.registry import collect, load_target
    from handlers.worker import Worker

    configure_tracing("kafka-rpc-handlers", os.environ)  # spans only when the standard OTEL_* variables ask

    config = WorkerConfig(
        kafka=cli.kafka_config(args),
        group=args.group,
        concurrency=args.concurrency,
        max_pending=args.max_pending or 16 * args.concurrency,
        max_client_streams=args.max_client_streams,
        drain_timeout=args.drain_timeout,
        session_timeout=args.session_timeout,
        reply_topics=tuple(args.allow_reply_topic or ()),
        dead_letter_topic=args.dead_letter_topic,
        dedupe_window=args.dedupe_window,
        metrics_port=args.metrics_port,
        group_protocol=args.group_protocol,
        exactly_once=args.exactly_once,
        transactional_id=args.transactional_id,
    )
    methods, services = collect(load_target(t) for t in args.targets)
    registry = new_registry()
    worker = Worker(config, methods, routes_for(services, config.kafka.topic_prefix), HandlerMetrics(registry))
    ready = asyncio.Event()

    async def announce() -> None:
        await ready.wait()
        names = ", ".join(s.full_name for s in services)
        print(f"handlers: serving {len(methods)} methods of {names} from topics {', '.join(worker.topics)} "
              f"in group {config.group}", flush=True)

    endpoint = cli.serve_metrics(config.metrics_port, registry, "handlers", args.metrics_address)
    announcer = asyncio.create_task(announce())
    try:
        await worker.run(stop, ready)
    finally:
        announcer.cancel()
        if endpoint is not None:
            endpoint.close()
    logging.getLogger("handlers").info("stopped after %d replies", worker.replied)



def _exit_past_stuck_handlers(code: int) -> None:
    """Exit now if def handlers still run after the drain: Python would wait for their threads forever."""
    from handlers.dispatcher import THREAD_PREFIX

    stuck = [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX + "_") and t.is_alive()]
    if stuck:
        logging.getLogger("handlers").warning(
            "%d handler functions still running after the drain timeout; exiting without them (their calls "
            "were not committed: they run again elsewhere)", len(stuck))
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
