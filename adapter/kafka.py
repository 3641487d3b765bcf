"""The boundary with kafka-python: client factories, topic creation, error translation.

Nothing outside this module, `adapter.replies`, `adapter.transport` and
`handlers.worker` imports kafka-python, and kafka-python's exceptions become
`TransportError` here.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, SaslAuthenticationFailedError, TopicAlreadyExistsError

from adapter.config import KafkaConfig
from adapter.errors import MissingTopic, TransportError

log = logging.getLogger(__name__)

#: Room for headers on top of the largest message.
_HEADER_ROOM = 64 * 1024


@contextlib.contextmanager
def translated(action: str) -> Iterator[None]:
    """Re-raise kafka-python errors as `TransportError` saying what was being done."""
    try:
        yield
    except KafkaError as exc:
        raise TransportError(f"{action}: {type(exc).__name__}: {exc}") from exc


class _ConnectFailures(logging.Filter):
    """Why kafka-python's connection attempts failed, taken from its log while clients connect.

    kafka-python 3.0.12 retries a bootstrap whose SASL authentication or TLS handshake fails
    until `bootstrap_timeout_ms` (30 s) and then raises a bare "Unable to bootstrap"; the
    reason is only an argument of its "kafka.net.manager" log records. While a capture is open
    that logger's level is lowered to WARNING, and this filter keeps hiding whatever the
    logging setup hid before (the CLIs hide kafka-python's reconnection noise).
    """

    def __init__(self) -> None:
        super().__init__()
        self._logger = logging.getLogger("kafka.net.manager")
        self._lock = threading.Lock()
        self._captures: list[list[Exception]] = []
        self._saved_level = logging.NOTSET
        self._shown_from = logging.NOTSET

    @contextlib.contextmanager
    def capture(self) -> Iterator[list[Exception]]:
        errors: list[Exception] = []
        with self._lock:
            if not self._captures:
                self._saved_level, self._shown_from = self._logger.level, self._logger.getEffectiveLevel()
                self._logger.addFilter(self)
                self._logger.setLevel(min(logging.WARNING, self._shown_from))
            self._captures.append(errors)
        try:
            yield errors
        finally:
            with self._lock:
                self._captures.remove(errors)
                if not self._captures:
                    self._logger.removeFilter(self)
                    self._logger.setLevel(self._saved_level)

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        failures = [arg for arg in args if isinstance(arg, (KafkaError, OSError))]
        for errors in tuple(self._captures):
            errors.extend(failures)
        return record.levelno >= self._shown_from


_connect_failures = _ConnectFailures()


def _keep_data_read_before_eof() -> None:
    """Work around kafka-python 3.0.12 dropping the bytes that arrive with a connection's end.

    Its transports' `_sock_recv` returns `(data, error)` and the caller aborts on the error
    without passing the data on. A broker that refuses SASL authentication sends its reason
    and closes at once, so most attempts ended in a bare "socket disconnected". Returning the
    data first lets it through; the next read reports the end again.
    """
    from kafka.net import transport

    for cls in (transport.KafkaTCPTransport, transport.KafkaSSLTransport):
        recv = cls.__dict__.get("_sock_recv")
        if recv is None or getattr(recv, "keeps_data", False):
            continue

        def _sock_recv(self: Any, _recv: Any = recv) -> tuple[bytes, Exception | None]:
            data, error = _recv(self)
            return (data, None) if data else (data, error)

        _sock_recv.keeps_data = True  # type: ignore[attr-defined]
        cls._sock_recv = _sock_recv


@contextlib.contextmanager
def connecting(config: KafkaConfig) -> Iterator[None]:
    """Create a kafka-python client; if it cannot connect, raise `TransportError` saying why."""
    action = f"connecting to Kafka at {','.join(config.bootstrap_servers)}"
    _keep_data_read_before_eof()
    with _connect_failures.capture() as failures:
        try:
            yield
        except KafkaError as exc:
            # Not the final error itself (kafka-python logs it too).
            raise TransportError(f"{action}: {_why(exc, [f for f in failures if f != exc], config)}") from exc


def _why(exc: KafkaError, failures: list[Exception], config: KafkaConfig) -> str:
    """One line on why connecting failed: authentication, TLS, or what kafka-python said."""
    options = config.client_options
    for failure in reversed(failures):
        if isinstance(failure, SaslAuthenticationFailedError):
            detail = str(failure.args[0] if failure.args else failure).removeprefix("SaslAuthenticationFailedError: ")
            user = options.get("sasl_plain_username")
            return f"authentication failed{f' for user {user!r}' if user else ''}: {detail}"
        if isinstance(failure.__context__, ssl.SSLError):  # kafka-python: "Handshake failed: ..."
            return f"TLS handshake failed: {failure.__context__}"
    said = f"{exc}" + (f" (last attempt: {failures[-1]})" if failures else "")
    protocol = str(options.get("security_protocol", "PLAINTEXT")).upper()
    if protocol in ("PLAINTEXT", "SASL_PLAINTEXT") and _speaks_tls(config.bootstrap_servers[0]):
        return f"{said}; {config.bootstrap_servers[0]} expects TLS: set security_protocol to SSL or SASL_SSL"
    return said


def _speaks_tls(server: str) -> bool:
    """True if a TLS handshake (certificate not checked) with `server` succeeds within 2 s."""
    host, _, port = server.rpartition(":")
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2) as sock, \
                context.wrap_socket(sock, server_hostname=host.strip("[]") or None):
            return True
    except (OSError, ValueError):
        return False


def client_settings(config: KafkaConfig) -> dict[str, Any]:
    """Settings every kafka-python client of ours gets."""
    return {
        "bootstrap_servers": list(config.bootstrap_servers),
        "client_id": config.client_id,
        **config.client_options,
    }


def record_limit(config: KafkaConfig) -> int:
    """Largest record we produce: the largest message plus room for headers."""
    return config.max_message_bytes + _HEADER_ROOM


def make_producer(config: KafkaConfig, **overrides: Any) -> KafkaProducer:
    """A producer tuned for request/reply: no linger, acks from all in-sync replicas."""
    settings = {
        "acks": "all",
        "linger_ms": 0,
        "max_request_size": record_limit(config),
        **client_settings(config),
        **overrides,
    }
    with connecting(config):
        return KafkaProducer(**settings)


def make_consumer(config: KafkaConfig, **overrides: Any) -> KafkaConsumer:
    """A consumer that fetches records up to our size limit."""
    settings = {
        "enable_auto_commit": False,
        "max_partition_fetch_bytes": record_limit(config),
        **client_settings(config),
        **overrides,
    }
    with connecting(config):
        return KafkaConsumer(**settings)


def ensure_topics(config: KafkaConfig, partitions: Mapping[str, int]) -> None:
    """Create the topics of `partitions` that are missing, or raise `MissingTopic`."""
    with connecting(config):
        admin = KafkaAdminClient(**client_settings(config))
    try:
        with translated("listing topics"):
            existing = set(admin.list_topics())
        missing = sorted(set(partitions) - existing)
        if not missing:
            return
        if not config.create_topics:
            raise MissingTopic(f"topic(s) missing and topic creation is off: {', '.join(missing)}")
        new = [
            NewTopic(name, partitions[name], 1 if len(config.bootstrap_servers) == 1 else -1,
                     topic_configs={"max.message.bytes": str(record_limit(config))})
            for name in missing
        ]
        try:
            with translated(f"creating topics {', '.join(missing)}"):
                admin.create_topics(new, wait_for_metadata=True)
        except TransportError as exc:
            if not isinstance(exc.__cause__, TopicAlreadyExistsError):
                raise
        log.info("created topics %s", ", ".join(missing))
    finally:
        admin.close()
