"""Prometheus metrics of the frontend and of handler processes, and the endpoint serving them.

    registry = metrics.new_registry()
    gateway = Gateway(config, protos, metrics=FrontendMetrics(registry))
    endpoint = metrics.serve(9464, registry)        # GET http://HOST:9464/metrics
    ...
    endpoint.close()

Each process makes one registry and passes it in; nothing is put in prometheus_client's
global registry. A component built without metrics makes a private set that nobody scrapes.
The hot path only touches label children made once per method and status code; gauges
that describe state (calls in flight, streams open) are read when scraped, not kept up to date.
README.md ("Metrics") says what each metric means and what to alert on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from wsgiref.simple_server import WSGIServer

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, GCCollector, Histogram, PlatformCollector, ProcessCollector
from prometheus_client import start_http_server as _start_http_server

#: Call duration buckets, seconds: from a fast round trip through Kafka to the longest deadlines.
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
#: The `method` label of calls for a method that is not served here (the label set stays bounded).
UNKNOWN_METHOD = "unknown"
#: Seconds. A caller whose deadline passes cancels its call, and the cancel can arrive a network
#: delay before our copy of the deadline passes: a cancel this close to it counts as DEADLINE_EXCEEDED.
DEADLINE_SLACK = 0.1


def new_registry() -> CollectorRegistry:
    """A registry for one process, with the standard process_*, python_info and python_gc_* metrics."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


class CallMetrics:
    """One method's call counter and duration histogram; children cached by status code."""

    __slots__ = ("_by_code", "_calls", "_duration", "_method")

    def __init__(self, calls: Counter, duration: Histogram, method: str) -> None:
        self._calls, self._duration, self._method = calls, duration, method
        self._by_code: dict[grpc.StatusCode, tuple[Counter, Histogram]] = {}
        self._children(grpc.StatusCode.OK)  # the OK series exist, at 0, before the first call

    def observe(self, code: grpc.StatusCode, seconds: float) -> None:
        calls, duration = self._by_code.get(code) or self._children(code)
        calls.inc()
        duration.observe(seconds)

    def _children(self, code: grpc.StatusCode) -> tuple[Counter, Histogram]:
        children = self._by_code[code] = (self._calls.labels(self._method, code.name),
                                          self._duration.labels(self._method, code.name))
        return children


class _Calls:
    """Calls by method and status code, and their duration, under one metric name prefix."""

    def __init__(self, prefix: str, registry: CollectorRegistry, calls_help: str, duration_help: str) -> None:
        self.calls = Counter(f"{prefix}_calls_total", calls_help, ["method", "code"], registry=registry)
        self.call_duration = Histogram(f"{prefix}_call_duration_seconds", duration_help, ["method", "code"],
                                       buckets=BUCKETS, registry=registry)
        self._methods: dict[str, CallMetrics] = {}

    def method(self, path: str) -> CallMetrics:
        """The metrics of one method, by full path. Pass only paths served here: each is a label value."""
        found = self._methods.get(path)
        if found is None:
            found = self._methods[path] = CallMetrics(self.calls, self.call_duration, path)
        return found


class FrontendMetrics(_Calls):
    """What the gRPC frontend (`python -m adapter`) measures."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.registry = registry
        super().__init__(
            "kafka_rpc_frontend", registry,
            "gRPC calls the frontend finished, by method and the status code its client got",
            "Time from a call's arrival at the frontend to its status, in seconds",
        )
        self.calls_in_flight = Gauge("kafka_rpc_frontend_calls_in_flight",
                                     "Calls (unary and streams) waiting for their reply", registry=registry)
        self.streams_open = Gauge("kafka_rpc_frontend_streams_open", "Streaming calls in progress", registry=registry)
        self.replies_dropped = Counter(
            "kafka_rpc_frontend_replies_dropped_total",
            "Reply records for no waiting call (late: the call had ended; duplicate; or unknown), dropped",
            registry=registry,
        )
        self.replies_malformed = Counter("kafka_rpc_frontend_replies_malformed_total",
                                         "Reply records that did not follow the wire protocol, dropped", registry=registry)
        self._no_handler = Counter(
            "kafka_rpc_frontend_no_handler_total",
            "Calls failed at once with UNAVAILABLE: no handler process had consumed their request topic for "
            "longer than --no-handler-grace", ["topic"], registry=registry)

    def no_handler(self, topic: str) -> None:
        """Count a call refused because nobody consumes `topic` (a bounded label: the routes' topics)."""
        self._no_handler.labels(topic).inc()

    def watch(self, in_flight: Callable[[], float], streams_open: Callable[[], float]) -> None:
        """Read the two state gauges from these functions at each scrape (from the scraping thread)."""
        self.calls_in_flight.set_function(in_flight)
        self.streams_open.set_function(streams_open)


class HandlerMetrics(_Calls):
    """What a handler process (`python -m handlers`) measures."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = registry if registry is not None else CollectorRegistry()
        self.registry = registry
        super().__init__(
            "kafka_rpc_handler", registry,
            "Calls the handler process answered, by method and status code (methods not served here: "
            f"method={UNKNOWN_METHOD!r})",
            "Time a handler function ran, from taking a concurrency slot to its outcome, in seconds",
        )
        self.calls_expired = Counter("kafka_rpc_handler_calls_expired_total",
                                     "Calls not run because their deadline had passed before they could start",
                                     registry=registry)
        self.calls_cancelled = Counter(
            "kafka_rpc_handler_calls_cancelled_total",
            "Calls stopped while running: the caller cancelled, the deadline passed, or the partition moved away",
            registry=registry,
        )
        self.dedupe_hits = Counter("kafka_rpc_handler_dedupe_hits_total",
                                   "Retried calls (same method and idempotency key) answered with the first call's reply",
                                   registry=registry)
        self.records_rejected = Counter(
            "kafka_rpc_handler_records_rejected_total",
            "Request records not served (malformed, reply topic not allowed, reply refused, too many streams)",
            ["reason"], registry=registry,
        )
        self.records_dead_lettered = Counter("kafka_rpc_handler_records_dead_lettered_total",
                                             "Rejected records copied to the dead-letter topic (they could not be answered)",
                                             registry=registry)
        self.frames_dropped = Counter("kafka_rpc_handler_frames_dropped_total",
                                      "Stream frames (message, half-close, cancel) for no call running here",
                                      registry=registry)
        self.reply_errors = Counter("kafka_rpc_handler_reply_errors_total",
                                    "Reply or dead-letter records Kafka did not accept", registry=registry)
        self.concurrency_in_use = Gauge("kafka_rpc_handler_concurrency_in_use", "Handler functions running now",
                                        registry=registry)
        self.concurrency_limit = Gauge("kafka_rpc_handler_concurrency_limit",
                                       "Handler functions that may run at once (--concurrency)", registry=registry)
        self.streams_open = Gauge("kafka_rpc_handler_streams_open", "Streaming calls in progress", registry=registry)
        self.consumer_lag = Gauge(
            "kafka_rpc_handler_consumer_lag",
            "Request records not yet fetched, per assigned partition (end offset minus position), sampled every few seconds",
            ["topic", "partition"], registry=registry,
        )
        self.transactions = Counter(
            "kafka_rpc_handler_transactions_total",
            "Kafka transactions of the exactly-once mode, by outcome (committed, aborted: their calls run again)",
            ["outcome"], registry=registry,
        )
        self.transaction_seconds = Histogram(
            "kafka_rpc_handler_transaction_commit_seconds",
            "Time to commit one transaction (offsets and commit), in seconds; replies wait for it",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry,
        )
        for reason in ("malformed", "reply_topic", "reply_refused", "too_many_streams"):
            self.records_rejected.labels(reason)
        self._lagging: set[tuple[str, int]] = set()

    def set_lag(self, lags: Mapping[tuple[str, int], int]) -> None:
        """Record the lag of each assigned partition; partitions no longer assigned disappear."""
        for (topic, partition), lag in lags.items():
            self.consumer_lag.labels(topic, str(partition)).set(lag)
        for topic, partition in self._lagging - lags.keys():
            self.consumer_lag.remove(topic, str(partition))
        self._lagging = set(lags)


class Endpoint:
    """The HTTP server of `serve`, on a thread of its own."""

    def __init__(self, server: WSGIServer) -> None:
        self._server = server
        self.port: int = server.server_port

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve(port: int, registry: CollectorRegistry, host: str = "0.0.0.0") -> Endpoint:
    """Serve `registry` at http://HOST:PORT/metrics (every interface by default; port 0 picks one)."""
    server, _ = _start_http_server(port, addr=host, registry=registry)
    return Endpoint(server)
