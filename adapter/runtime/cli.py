"""What both command lines share: settings, Kafka flags, logging, signals, one-line errors.

Every setting comes from, in this order of precedence: its flag (``--reply-topic``), its
environment variable (``KAFKA_RPC_REPLY_TOPIC``; ``KAFKA_BOOTSTRAP_SERVERS`` for the
bootstrap servers), a TOML file (``--config FILE`` or ``KAFKA_RPC_CONFIG``), then its
default. In the file, settings sit in ``[kafka]`` and ``[frontend]`` or ``[handlers]``, named
like their flags (``reply_topic`` or ``reply-topic``); ``[kafka.client]`` passes settings
through to the Kafka client, in its own names: librdkafka's for ``confluent``
(``security.protocol``, ``sasl.mechanism``, ``ssl.ca.location``...), kafka-python's for
``kafka-python`` (``security_protocol``, ``sasl_mechanism``, ``ssl_cafile``...).

Environment variables are read here and nowhere else in the library.

Longer than our modules should be (~340 lines), on purpose: the flags, TOML keys and environment
variables of both programs are defined here together, so the two cannot drift apart.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import re
import signal
import sys
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adapter.errors import ConfigError, KafkaRpcError
from adapter.runtime.arenas import limit_malloc_arenas
from adapter.runtime.config import KAFKA_CLIENTS, KafkaConfig, MiB
from adapter.runtime.logs import JsonFormatter

#: `--event-loop` choices.
EVENT_LOOPS = ["auto", "uvloop", "asyncio"]

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from adapter.runtime.metrics import Endpoint


_UNSET = object()
#: Settings whose environment variable does not follow KAFKA_RPC_<NAME>.
_ENV_NAMES = {"bootstrap_servers": "KAFKA_BOOTSTRAP_SERVERS"}
_SECRET_WORDS = ("password", "secret", "token", "key")


def env_name(dest: str) -> str:
    """The environment variable of a setting."""
    return _ENV_NAMES.get(dest, "KAFKA_RPC_" + dest.upper())


def parse_settings(parser: argparse.ArgumentParser, argv: list[str] | None, section: str) -> argparse.Namespace:
    """Parse flags, then fill what they leave from the environment, the TOML file, the defaults."""
    parser.add_argument("--config", type=Path, metavar="FILE",
                        help="TOML file of settings (env KAFKA_RPC_CONFIG); flags and environment override it")
    parser.add_argument("--kafka-option", action="append", metavar="KEY=VALUE", dest="kafka_option",
                        help="Kafka client setting passed through, in the engine's names: security.protocol=SASL_SSL "
                        "(confluent), security_protocol=SASL_SSL (kafka-python) (repeatable)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the settings in effect (secrets masked) and exit")
    parser.epilog = ("Every setting can also come from the environment (KAFKA_RPC_<FLAG>, e.g. KAFKA_RPC_REPLY_TOPIC) "
                     "or a TOML file (--config), in that order after the flag.")
    actions = [a for a in parser._actions if a.dest not in ("help", "config", "print_config")]
    # Pre-filled markers tell given flags apart from defaults (append actions extend a list: None).
    given = parser.parse_args(argv, namespace=argparse.Namespace(
        **{a.dest: None if isinstance(a, argparse._AppendAction) else _UNSET for a in actions}))
    config_path = given.config or (Path(os.environ["KAFKA_RPC_CONFIG"]) if os.environ.get("KAFKA_RPC_CONFIG") else None)
    from_file, client_options = _read_file(config_path, section, {a.dest for a in actions}) if config_path else ({}, {})
    for action in actions:
        value = getattr(given, action.dest)
        unset = value is _UNSET or (value is None and isinstance(action, argparse._AppendAction)) or (
            not action.option_strings and value == [])  # an empty positional list counts as not given
        if not unset:
            continue
        raw = os.environ.get(env_name(action.dest))
        if raw is not None and raw != "":
            value = _from_text(action, raw)
        elif action.dest in from_file:
            value = _from_file(action, from_file[action.dest])
        else:
            value = action.default
        setattr(given, action.dest, value)
    for item in given.kafka_option or ():
        name, sep, raw_value = item.partition("=")
        if not sep or not name.strip():
            # Not echoed: it may be part of a secret.
            raise ConfigError("--kafka-option: an item is not KEY=VALUE (not shown: it may hold a secret)")
        client_options[name.strip()] = _scalar(raw_value.strip())
    given.client_options = client_options
    given.config = config_path
    if given.print_config:
        for action in actions:
            value = getattr(given, action.dest)
            print(f"{action.dest} = {_masked(action.dest, value)}")
        for name, value in sorted(client_options.items()):
            print(f"kafka.client.{name} = {_masked(name, value)}")
        raise SystemExit(0)
    return given


def _read_file(path: Path, section: str, known: set[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    try:
        document = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"config: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path} is not valid TOML: {exc}") from None
    values: dict[str, Any] = {}
    client: dict[str, Any] = {}
    for table in ("kafka", section):
        entries = document.get(table, {})
        if not isinstance(entries, dict):
            raise ConfigError(f"config: [{table}] in {path} must be a table")
        for key, value in entries.items():
            if table == "kafka" and key == "client":
                if not isinstance(value, dict):
                    raise ConfigError(f"config: [kafka.client] in {path} must be a table")
                client.update(_dotted(value))
                continue
            dest = key.replace("-", "_")
            if dest == "create_topics":
                dest, value = "no_create_topics", not value
            if dest not in known:
                raise ConfigError(f"config: unknown setting {table}.{key} in {path}")
            values[dest] = value
    unknown = set(document) - {"kafka", "frontend", "handlers"}
    if unknown:
        raise ConfigError(f"config: unknown table(s) {', '.join(sorted(unknown))} in {path}")
    return values, client


def _dotted(table: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """librdkafka's dotted names written bare in TOML (security.protocol = ...) are nested tables: flatten them."""
    flat: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, dict):
            flat.update(_dotted(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _from_text(action: argparse.Action, raw: str) -> Any:
    """An environment variable's text as the setting's value."""
    if isinstance(action, argparse._StoreTrueAction):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if action.dest == "kafka_option":
        # KEY=VALUE items, comma-separated; a comma stays in a value unless a KEY= follows it
        # (passwords may hold commas).
        return [part for part in _SETTING_START.split(raw) if part]
    if isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*"):
        separator = ":" if action.type is Path else ","
        return [_typed(action, part) for part in raw.split(separator) if part]
    return _typed(action, raw)


#: A comma that begins another KEY=VALUE item of KAFKA_RPC_KAFKA_OPTION.
_SETTING_START = re.compile(r",(?=\s*[A-Za-z_][A-Za-z0-9_.\-]*=)")


def _from_file(action: argparse.Action, value: Any) -> Any:
    if isinstance(action, argparse._AppendAction) or action.nargs in ("+", "*"):
        items = value if isinstance(value, list) else [value]
        return [_typed(action, str(item)) for item in items]
    if isinstance(value, bool) or action.type is None:
        return value if not isinstance(value, (int, float)) or isinstance(value, bool) else str(value)
    return _typed(action, str(value))


def _typed(action: argparse.Action, text: str) -> Any:
    convert = action.type if callable(action.type) else str
    try:
        value = convert(text)
    except (TypeError, ValueError):
        raise ConfigError(f"{action.dest}: {text!r} is not a valid value") from None
    if action.choices is not None and value not in action.choices:
        raise ConfigError(f"{action.dest}: {text!r} is not one of {', '.join(map(str, action.choices))}")
    return value


def _scalar(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    try:
        return int(text)
    except ValueError:
        return text


def _masked(name: str, value: Any) -> str:
    if value is not None and _secret(name):
        return "***"
    if name == "kafka_option" and value:  # KEY=VALUE items: each is masked by its key
        return repr([_masked_option(item) for item in value])
    if isinstance(value, list):
        return "[" + ", ".join(_masked(name, item) for item in value) + "]"
    if isinstance(value, Path):
        return repr(str(value))
    if value is None:
        return "(unset: see --help)"
    return repr(value)


def _masked_option(item: str) -> str:
    key, sep, _ = item.partition("=")
    return f"{key}=***" if sep and _secret(key) else item


def _secret(name: str) -> bool:
    return any(word in name.lower() for word in _SECRET_WORDS)


def add_kafka_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("Kafka")
    group.add_argument("--bootstrap-servers", default="127.0.0.1:9092",
                       help="comma-separated HOST:PORT list (env KAFKA_BOOTSTRAP_SERVERS; default %(default)s)")
    group.add_argument("--kafka-client", default=KAFKA_CLIENTS[0], choices=KAFKA_CLIENTS,
                       help="Kafka client library: confluent (librdkafka, fastest) or kafka-python (pure Python: "
                       "musl/PyPy, Kerberos) (env KAFKA_RPC_KAFKA_CLIENT; default %(default)s)")
    group.add_argument("--client-id", default="kafka-rpc",
                       help="Kafka client id (default %(default)s)")
    group.add_argument("--topic-partitions", type=int, default=8,
                       help="partitions of request topics created when missing (default %(default)s)")
    group.add_argument("--topic-prefix", default="",
                       help="prepended to every request topic name (env KAFKA_RPC_TOPIC_PREFIX)")
    group.add_argument("--no-create-topics", action="store_true",
                       help="fail, naming the topic, instead of creating missing topics")
    group.add_argument("--replication-factor", type=int, default=None,
                       help="replicas of each topic created (default: the cluster's brokers, at most 3; "
                       "min.insync.replicas is 2 from 3 replicas up, else 1)")
    group.add_argument("--max-message-bytes", type=int, default=4 * MiB,
                       help="largest request or response message (default %(default)s)")
    parser.add_argument("--log-format", default="text", choices=["text", "json"],
                        help="text, or one JSON object per line (default %(default)s)")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default %(default)s")
    parser.add_argument("--event-loop", default="auto", choices=EVENT_LOOPS,
                        help="asyncio's event loop: uvloop's where it is installed (auto), or one of them "
                        "(default %(default)s)")


def add_metrics_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                        help="serve Prometheus metrics at http://ADDRESS:PORT/metrics (env KAFKA_RPC_METRICS_PORT; "
                        "0 picks a free port; default: no endpoint)")
    parser.add_argument("--metrics-address", default="0.0.0.0", metavar="ADDRESS",
                        help="interface of the metrics endpoint (env KAFKA_RPC_METRICS_ADDRESS; default %(default)s, "
                        "every interface, for scrapers; 127.0.0.1 keeps it on this host)")


def kafka_config(args: argparse.Namespace) -> KafkaConfig:
    servers = args.bootstrap_servers
    servers = servers if isinstance(servers, list) else servers.split(",")
    return KafkaConfig(
        bootstrap_servers=tuple(s.strip() for s in servers if s.strip()),
        client_id=args.client_id,
        topic_partitions=args.topic_partitions,
        topic_prefix=args.topic_prefix,
        create_topics=not args.no_create_topics,
        max_message_bytes=args.max_message_bytes,
        client_options=dict(getattr(args, "client_options", {}) or {}),
        client=getattr(args, "kafka_client", KAFKA_CLIENTS[0]),
        replication_factor=getattr(args, "replication_factor", None),
    )


def setup_logging(level: str, name: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter(name))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {name}[%(process)d] %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # kafka-python is chatty at INFO about every connection.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, logging.getLogger().level))
    # ...and warns of missing partition metadata for every topic created a moment ago.
    logging.getLogger("kafka.coordinator.assignors").setLevel(logging.ERROR)
    # While a broker is down, kafka-python logs every reconnection attempt as an error;
    # our own health watcher reports the outage once.
    if logging.getLogger().level > logging.DEBUG:
        # librdkafka logs each failed connection as an error too (through confluent-kafka's `logger`).
        for name in ("kafka.net", "kafka.cluster", "kafka.conn", "kafka.client", "librdkafka"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


def serve_metrics(port: int | None, registry: CollectorRegistry, name: str,
                  address: str = "0.0.0.0") -> Endpoint | None:
    """Start the metrics endpoint when a port is set, and say where it is."""
    if port is None:
        return None
    from adapter.runtime.metrics import serve

    try:
        endpoint = serve(port, registry, address)
    except OSError as exc:
        raise OSError(f"metrics_port: cannot listen on {address}:{port}: {exc.strerror or exc}") from exc
    print(f"{name}: metrics on http://{address}:{endpoint.port}/metrics", flush=True)
    return endpoint


def command(name: str, parse: Callable[[list[str] | None], argparse.Namespace], argv: list[str] | None,
            serve: Callable[[argparse.Namespace, asyncio.Event], Awaitable[None]]) -> int:
    """A command's whole life: parse its settings (an error is one line, exit code 2), set up
    logging, then `serve(args, stop_event)` until SIGINT/SIGTERM (`run`). Returns the exit code."""
    try:
        args = parse(argv)
    except KafkaRpcError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(args.log_level, name, args.log_format)
    limit_malloc_arenas()  # before any thread starts (docs/performance.md: the frontend's RSS)
    try:
        factory = loop_factory(args.event_loop)
    except ConfigError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    return run(functools.partial(serve, args), name, factory)


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The event loop `--event-loop` names: uvloop's, or None for the standard library's.

    uvloop's wakes a loop from another thread and runs its callbacks in C, where both processes
    hand every Kafka record over (docs/performance.md, "What paid", 8)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise ConfigError("--event-loop uvloop: uvloop is not installed (pip install uvloop), "
                              "or choose --event-loop asyncio") from None
        return None
    return uvloop.new_event_loop


def run(main: Callable[[asyncio.Event], Awaitable[None]], name: str,
        factory: Callable[[], asyncio.AbstractEventLoop] | None = None) -> int:
    """Run `main(stop_event)` on a loop from `factory` (asyncio's when None); the first
    SIGINT/SIGTERM sets the event, a second one exits at once."""

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
        with asyncio.Runner(loop_factory=factory) as loop_runner:
            logging.getLogger(name).debug("event loop: %s", type(loop_runner.get_loop()).__module__)
            loop_runner.run(runner())
    except KafkaRpcError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    return 0
