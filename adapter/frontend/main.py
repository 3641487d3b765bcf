"""`python -m adapter`: the gRPC frontend."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from pathlib import Path

from adapter.runtime.cli import (
    add_kafka_arguments,
    add_metrics_argument,
    command,
    kafka_config,
    parse_settings,
    serve_metrics,
)
from adapter.runtime.config import DROPPED_METADATA


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m adapter",
        description="Serve the gRPC services defined in .proto files, carrying every call over Kafka "
        "to handler processes (python -m handlers).",
    )
    parser.add_argument("--proto-path", action="append", type=Path, metavar="DIR",
                        help="folder of .proto files to serve (repeatable; env KAFKA_RPC_PROTO_PATH, ':'-separated)")
    parser.add_argument("--service", action="append", metavar="PATTERN",
                        help="fnmatch pattern of the full names of the services to serve among those found, e.g. "
                        "'shop.*' (repeatable; default all)")
    parser.add_argument("--listen", default="127.0.0.1:50051",
                        help="gRPC address HOST:PORT (env KAFKA_RPC_LISTEN; default %(default)s)")
    parser.add_argument("--reply-topic", default="",
                        help="topic replies come back on, shared by all frontends (default: the topic prefix + "
                        "kafka-rpc.replies)"),
    parser.add_argument("--reply-partitions", type=int, default=16,
                        help="partitions of the reply topic if created: the most frontends sharing it (default %(default)s)")
    parser.add_argument("--default-timeout", type=float, default=30.0,
                        help="seconds to wait for a reply when the client sets no deadline (default %(default)s)")
    parser.add_argument("--max-in-flight", type=int, default=10_000,
                        help="calls in flight beyond which new calls get RESOURCE_EXHAUSTED (default %(default)s)")
    parser.add_argument("--no-handler-grace", type=float, default=30.0, metavar="SECONDS",
                        help="seconds a request topic may have no handler process consuming it before its calls fail at "
                        "once with UNAVAILABLE; until then they queue in Kafka (0: always wait for the deadline; "
                        "default %(default)s)")
    parser.add_argument("--forward-metadata", action="append", metavar="PATTERN",
                        help="fnmatch pattern of gRPC metadata keys passed on to handlers (repeatable; default all "
                        "but --drop-metadata)")
    parser.add_argument("--drop-metadata", action="append", metavar="PATTERN",
                        help="fnmatch pattern of metadata keys never written to Kafka (repeatable; replaces the "
                        f"default, {', '.join(DROPPED_METADATA)}; --drop-metadata '' drops none)")
    tls = parser.add_argument_group("TLS")
    tls.add_argument("--tls-cert", type=Path, default=None,
                     help="PEM certificate chain: serve gRPC over TLS (env KAFKA_RPC_TLS_CERT)")
    tls.add_argument("--tls-key", type=Path, default=None,
                     help="PEM private key of --tls-cert (env KAFKA_RPC_TLS_KEY)")
    tls.add_argument("--tls-client-ca", type=Path, default=None,
                     help="PEM CA bundle: require client certificates it signed, mutual TLS (env KAFKA_RPC_TLS_CLIENT_CA)")
    parser.add_argument("--grace", type=float, default=10.0,
                        help="seconds calls in flight may take to finish at shutdown (default %(default)s)")
    add_metrics_argument(parser)
    add_kafka_arguments(parser)
    args = parse_settings(parser, argv, "frontend")
    args.proto_path = args.proto_path or []
    return args


def main(argv: list[str] | None = None) -> int:
    return command("adapter", parse, argv, _serve)


async def _serve(args: argparse.Namespace, stop: asyncio.Event) -> None:
    from adapter.frontend.gateway import Gateway
    from adapter.protocol.protoset import ProtoSet
    from adapter.runtime.config import FrontendConfig
    from adapter.runtime.metrics import FrontendMetrics, new_registry
    from adapter.runtime.tracing import configure as configure_tracing

    configure_tracing("kafka-rpc-adapter", os.environ)  # spans only when the standard OTEL_* variables ask

    config = FrontendConfig(
        kafka=kafka_config(args),
        proto_paths=tuple(args.proto_path),
        listen=args.listen,
        reply_topic=args.reply_topic,
        reply_partitions=args.reply_partitions,
        default_timeout=args.default_timeout,
        max_in_flight=args.max_in_flight,
        forward_metadata=tuple(args.forward_metadata or ("*",)),
        drop_metadata=tuple(args.drop_metadata if args.drop_metadata is not None else DROPPED_METADATA),
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        metrics_port=args.metrics_port,
        services=tuple(args.service or ("*",)),
        no_handler_grace=args.no_handler_grace,
    )
    protos = ProtoSet.load(config.proto_paths)
    log = logging.getLogger("adapter")
    registry = new_registry()
    endpoint = serve_metrics(config.metrics_port, registry, "adapter", args.metrics_address)
    try:
        log.info("connecting to Kafka at %s", ",".join(config.kafka.bootstrap_servers))
        gateway = Gateway(config, protos, metrics=FrontendMetrics(registry))
        try:
            await gateway.start()
        except BaseException:
            await gateway.stop(0)
            raise
        print(f"adapter: serving on {config.listen.rsplit(':', 1)[0]}:{gateway.port}", flush=True)
        await stop.wait()
        log.info("draining calls in flight (up to %gs)", args.grace)
        await gateway.stop(args.grace)
    finally:
        if endpoint is not None:
            endpoint.close()



if __name__ == "__main__":
    sys.exit(main())
