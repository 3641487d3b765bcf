"""The benchmark run: which scenarios, in which order, with which processes.

Every scenario serves the same call, ``rpctest.v1.Kitchen/Echo`` with a ``blob`` of the
payload size, and is measured the same way: a load client process keeps N calls in flight
and announces each measured window (`bench.stats`); `bench.procs.Monitor` reads the CPU
and RSS of every process at the window's edges. Scenarios:

- ``direct``: grpc.aio client -> grpc.aio server (`bench.servicer`), no Kafka;
- ``pingpong``: kafka-python requester -> replier (`bench.pingpong`), no gRPC;
- ``confluent``: the same ping-pong with confluent-kafka, lean (`bench.clients`);
- ``channel``: ``AioKafkaChannel`` -> Kafka -> ``python -m handlers``, no gRPC (Spring's counterpart);
- ``adapter``: grpc.aio client -> ``python -m adapter`` -> Kafka -> ``python -m handlers``;
- ``spring``: ReplyingKafkaTemplate -> @KafkaListener/@SendTo replier (`bench/spring`);
- ``channel_kafka_python``, ``adapter_kafka_python``: the same on the kafka-python engine;
- ``aiokafka`` (only on request): the ping-pong with aiokafka (`bench.clients`).

Then the scale-out (handler processes x frontends) and the frontend's memory with many
calls in flight; `--long` runs a soak instead, sampling the frontend's RSS.
"""

from __future__ import annotations

import datetime
import logging
import os
import platform
import secrets
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench import topics
from bench.procs import Monitor, Proc, python
from tests.procs import REPO

log = logging.getLogger("bench")
SPRING = REPO / "bench" / "spring"


@dataclass(frozen=True)
class Plan:
    """What one run measures."""

    name: str
    scenarios: tuple[str, ...] = ("direct", "pingpong", "confluent", "channel", "adapter", "spring",
                                  "channel_kafka_python", "adapter_kafka_python")
    payloads: tuple[int, ...] = (100, 10240)
    in_flight: tuple[int, ...] = (1, 16, 64, 256)
    warmup: float = 2.0
    duration: float = 6.0
    prewarm: float = 1.0
    #: Scale-out: handler processes (going up with one frontend, then down with two).
    handlers: tuple[int, ...] = (1, 2, 4)
    frontends: tuple[int, ...] = (1, 2)
    scale_payload: int = 100
    scale_in_flight: tuple[int, ...] = (64, 256)
    #: Frontend memory with this many calls in flight.
    memory_in_flight: int = 1000
    memory_payloads: tuple[int, ...] = (100, 10240)
    #: Soak (`--long`): seconds of steady load, calls in flight.
    long_seconds: float = 0.0
    long_in_flight: int = 64
    #: Partitions of request topics (all scenarios) and of the adapter's reply topic.
    request_partitions: int = 8
    reply_partitions: int = 16
    extra: dict[str, Any] = field(default_factory=dict)


PLANS = {
    "bench": Plan("bench"),
    "quick": Plan("quick", in_flight=(1, 64), warmup=0.5, duration=1.5, prewarm=0.5, handlers=(1, 2),
                  scale_in_flight=(64,), memory_payloads=(10240,)),
    "long": Plan("long", scenarios=(), handlers=(), frontends=(), memory_in_flight=0, long_seconds=240.0),
}


class Run:
    """One benchmark run against one broker; results accumulate in `results`."""

    def __init__(self, plan: Plan, bootstrap: str, logs: Path) -> None:
        self.plan = plan
        self.bootstrap = bootstrap
        self.logs = logs
        logs.mkdir(parents=True, exist_ok=True)
        self._started = 0
        stamp = datetime.datetime.now().strftime("%Y%m%d%H%M%S")
        self.prefix = f"bench-{stamp}-{secrets.token_hex(2)}."
        self.monitor = Monitor()
        self.results: dict[str, Any] = {
            "meta": machine_meta(plan, bootstrap, self.prefix),
            "cells": [], "scaleout": [], "memory": [], "long": None,
        }
        broker = broker_pid(bootstrap)
        if broker:
            self.monitor.track("broker", broker)
            # kafka/broker.sh starts the JVM tuned for start-up (C1 only, serial GC): say so next to the numbers.
            cmdline = Path(f"/proc/{broker}/cmdline").read_bytes().decode(errors="replace").split("\0")
            self.results["meta"]["broker_jvm_flags"] = [a for a in cmdline if a.startswith("-X")]
        self._procs: list[Proc] = []

    # ---- plumbing ----

    def start(self, role: str, args: list[str], ready: str | None = None, pipe: bool = False,
              env: dict[str, str] | None = None) -> Proc:
        self._started += 1
        proc = Proc(role, args, self.logs / f"{self.prefix}{self._started:02d}-{role}.log", pipe=pipe, env=env)
        self._procs.append(proc)
        if ready:
            proc.wait_for(ready)
        self.monitor.track(role, proc.pid)
        return proc

    def stop(self, *procs: Proc) -> None:
        for proc in procs:
            self.monitor.untrack(proc.role)
            proc.stop()
            if proc in self._procs:
                self._procs.remove(proc)

    def stop_all(self) -> None:
        self.stop(*reversed(self._procs))

    def cell_args(self, payloads: tuple[int, ...], in_flight: tuple[int, ...], warmup: float | None = None,
                  duration: float | None = None) -> list[str]:
        return ["--payloads", *map(str, payloads), "--in-flight", *map(str, in_flight),
                "--warmup", str(warmup or self.plan.warmup), "--duration", str(duration or self.plan.duration),
                "--prewarm", str(self.plan.prewarm)]

    def measure(self, scenario: str, client: Proc, payloads: tuple[int, ...], in_flight: tuple[int, ...],
                **extra: Any) -> list[dict[str, Any]]:
        """Read the client's windows, one cell per (payload, in flight); wait for it to exit."""
        cells = []
        timeout = 120 + self.plan.warmup + self.plan.duration + self.plan.prewarm + self.plan.long_seconds
        for payload, n in [(p, n) for p in payloads for n in in_flight]:
            warm = client.next_event(timeout)
            start = self.monitor.snapshot()
            done = client.next_event(timeout)
            end = self.monitor.snapshot()
            if (warm["event"], done["event"]) != ("warm", "done") or (done["payload"], done["in_flight"]) != (payload, n):
                raise RuntimeError(f"{scenario}: unexpected events {warm} {done}")
            cell = {"scenario": scenario, "payload": payload, "in_flight": n, **extra,
                    "calls": done["calls"], "errors": done["errors"], "error_codes": done.get("error_codes", {}),
                    "seconds": done["seconds"], "throughput": round(done["calls"] / max(done["seconds"], 1e-9), 1),
                    "latency_ms": done["latency_ms"], **Monitor.window(start, end, done["calls"])}
            log.info("%-9s %6d B %4d in flight %s: p50 %7.2f ms  p99 %7.2f ms  %7.0f calls/s  errors %d  load %s",
                     scenario, payload, n, _extra_label(extra), cell["latency_ms"]["p50"], cell["latency_ms"]["p99"],
                     cell["throughput"], cell["errors"], cell["machine"]["loadavg"][0])
            cells.append(cell)
        if client.popen.wait(120) != 0:
            raise RuntimeError(f"{client.role} failed:\n{client.tail()}")
        self.stop(client)
        return cells

    def loadgen(self, targets: list[str], payloads: tuple[int, ...], in_flight: tuple[int, ...],
                warmup: float | None = None, duration: float | None = None) -> Proc:
        args = python("bench.loadgen", *(a for t in targets for a in ("--target", t)),
                      *self.cell_args(payloads, in_flight, warmup, duration))
        # With the trace variant, the client marks its side of each call in the same folder.
        traced = [v.split("=", 1)[1] for v in self.plan.extra.get("variant", "").split(",") if v.startswith("trace=")]
        return self.start("client", args, pipe=True, env={"BENCH_TRACE": traced[0]} if traced else None)

    def entry(self, module: str) -> list[str]:
        """`python -m MODULE`, through `bench.variants` when the plan names variants."""
        variant = self.plan.extra.get("variant")
        return python("bench.variants", variant, module) if variant else python(module)

    def frontend(self, prefix: str, role: str = "frontend", engine: str = "confluent") -> tuple[Proc, str]:
        proc = self.start(role, [
            *self.entry("adapter"), "--proto-path", "protos", "--listen", "127.0.0.1:0", "--kafka-client", engine,
            "--bootstrap-servers", self.bootstrap, "--topic-prefix", prefix, "--reply-topic", f"{prefix}replies",
            "--reply-partitions", str(self.plan.reply_partitions), "--topic-partitions", str(self.plan.request_partitions)])
        address = proc.wait_for(r"serving on (\S+)").group(1)
        return proc, address

    def handler(self, prefix: str, role: str = "handler", engine: str = "confluent") -> Proc:
        target = self.plan.extra.get("handler_target", "bench.servicer:Echo")
        return self.start(role, [
            *self.entry("handlers"), target, "--kafka-client", engine, "--bootstrap-servers", self.bootstrap,
            "--topic-prefix", prefix, "--allow-reply-topic", f"{prefix}replies",
            "--group", f"{prefix}handlers", "--topic-partitions", str(self.plan.request_partitions),
            *self.plan.extra.get("handler_args", ())], ready=r"handlers: serving")

    # ---- scenarios ----

    def direct(self) -> None:
        server = self.start("server", python("bench.servicer", "--listen", "127.0.0.1:0"), ready=r"serving on \S+")
        address = server.wait_for(r"serving on (\S+)").group(1)
        client = self.loadgen([address], self.plan.payloads, self.plan.in_flight)
        self.results["cells"] += self.measure("direct", client, self.plan.payloads, self.plan.in_flight)
        self.stop(server)

    def pingpong(self, scenario: str = "pingpong", module: tuple[str, ...] = ("bench.pingpong",)) -> None:
        requests, replies = f"{self.prefix}{scenario}.requests", f"{self.prefix}{scenario}.replies"
        topics.create(self.bootstrap, {requests: self.plan.request_partitions, replies: 1})
        common = ["--bootstrap-servers", self.bootstrap, "--request-topic", requests, "--reply-topic", replies,
                  *self.plan.extra.get("pingpong_args", ())]
        replier = self.start("replier", python(*module, "replier", *common), ready=r"replier ready")
        client = self.start("client", python(*module, "requester", *common,
                                             *self.cell_args(self.plan.payloads, self.plan.in_flight)), pipe=True)
        self.results["cells"] += self.measure(scenario, client, self.plan.payloads, self.plan.in_flight)
        self.stop(replier)

    def aiokafka(self) -> None:
        """The ping-pong with aiokafka (not in the default run): the asyncio client."""
        self.pingpong("aiokafka", ("bench.clients", "aiokafka"))

    def confluent(self) -> None:
        """The ping-pong with confluent-kafka (not in the default run): librdkafka."""
        self.pingpong("confluent", ("bench.clients", "confluent"))

    def adapter(self, engine: str = "confluent") -> None:
        scenario = "adapter" if engine == "confluent" else f"adapter-{engine}"
        prefix = f"{self.prefix}{scenario}."
        _, address = self.frontend(prefix, engine=engine)
        self.handler(prefix, engine=engine)
        fresh = self.monitor.rss_mb("frontend")
        client = self.loadgen([address], self.plan.payloads, self.plan.in_flight)
        self.results["cells"] += self.measure(scenario, client, self.plan.payloads, self.plan.in_flight)
        if self.plan.memory_in_flight and engine == "confluent":
            before = self.monitor.rss_mb("frontend")
            n = (self.plan.memory_in_flight,)
            # Calls take about a second at this depth: the window must be longer than one call.
            client = self.loadgen([address], self.plan.memory_payloads, n, warmup=max(self.plan.warmup, 3.0),
                                  duration=max(self.plan.duration, 3.0))
            for cell in self.measure("adapter", client, self.plan.memory_payloads, n):
                cell["frontend_rss_mb_at_start"] = round(fresh, 1)
                cell["frontend_rss_mb_before"] = round(before, 1)
                self.results["memory"].append(cell)
        self.stop_all()

    def adapter_kafka_python(self) -> None:
        """The adapter on the kafka-python engine."""
        self.adapter("kafka-python")

    def channel(self, engine: str = "confluent") -> None:
        """AioKafkaChannel -> handler process: our counterpart of Spring's ReplyingKafkaTemplate."""
        scenario = "channel" if engine == "confluent" else f"channel-{engine}"
        prefix = f"{self.prefix}{scenario}."
        self.handler(prefix, engine=engine)
        args = python("bench.loadgen", "--kafka", self.bootstrap, "--prefix", prefix, "--kafka-client", engine,
                      *self.plan.extra.get("channel_args", ()), *self.cell_args(self.plan.payloads, self.plan.in_flight))
        client = self.start("client", args, pipe=True)
        self.results["cells"] += self.measure(scenario, client, self.plan.payloads, self.plan.in_flight)
        self.stop_all()

    def channel_kafka_python(self) -> None:
        """The channel scenario on the kafka-python engine."""
        self.channel("kafka-python")

    def spring(self) -> None:
        classpath = build_spring()
        requests, replies = f"{self.prefix}spring.requests", f"{self.prefix}spring.replies"
        topics.create(self.bootstrap, {requests: self.plan.request_partitions, replies: 1})
        java = ["java", "-Xms64m", "-Xmx512m", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-cp", classpath,
                "bench.SpringBench"]
        common = ["--bootstrap", self.bootstrap, "--request-topic", requests]
        self.start("replier", [*java, "replier", *common, "--group", f"{self.prefix}spring.replier"],
                   ready=r"replier ready")
        cells = ["--payloads", ",".join(map(str, self.plan.payloads)),
                 "--in-flight", ",".join(map(str, self.plan.in_flight)),
                 "--warmup", str(self.plan.warmup), "--duration", str(self.plan.duration),
                 # The JVM compiles its hot paths during the first seconds: give it longer.
                 "--prewarm", str(max(3.0, self.plan.prewarm))]
        client = self.start("client", [*java, "requester", *common, "--reply-topic", replies,
                                       "--group", f"{self.prefix}spring.requester", *cells], pipe=True)
        self.results["cells"] += self.measure("spring", client, self.plan.payloads, self.plan.in_flight)
        self.stop_all()

    def scaleout(self) -> None:
        """Handler processes up with one frontend, then down with two; one load client per step."""
        plan = self.plan
        if not plan.handlers or not plan.frontends:
            return
        steps = [(plan.frontends[0], h) for h in plan.handlers]
        if len(plan.frontends) > 1:
            steps += [(plan.frontends[1], h) for h in reversed(plan.handlers)]
        prefix = f"{self.prefix}scale."
        fronts: list[tuple[Proc, str]] = []
        handlers: list[Proc] = []
        for n_front, n_handlers in steps:
            while len(fronts) < n_front:
                fronts.append(self.frontend(prefix, f"frontend{len(fronts) + 1}"))
            while len(handlers) < n_handlers:
                handlers.append(self.handler(prefix, f"handler{len(handlers) + 1}"))
            while len(handlers) > n_handlers:
                self.stop(handlers.pop())
            time.sleep(3)  # let the groups settle: the warm-up then starts on a stable assignment
            client = self.loadgen([a for _, a in fronts], (plan.scale_payload,), plan.scale_in_flight)
            self.results["scaleout"] += self.measure("adapter", client, (plan.scale_payload,), plan.scale_in_flight,
                                                     frontends=n_front, handlers=n_handlers)
        self.stop_all()

    def soak(self) -> None:
        """Steady load for `long_seconds`, sampling the frontend's RSS."""
        plan = self.plan
        prefix = f"{self.prefix}long."
        _, address = self.frontend(prefix)
        self.handler(prefix)
        series = self.monitor.record_series("frontend")
        started = time.monotonic()
        client = self.loadgen([address], (100,), (plan.long_in_flight,), warmup=10.0, duration=plan.long_seconds)
        cell = self.measure("adapter", client, (100,), (plan.long_in_flight,))[0]
        self.monitor.stop_series("frontend")
        samples = [(round(t - started, 2), round(mb, 2)) for t, mb in series]
        cell["rss_series"] = samples
        cell["rss_trend"] = rss_trend(samples, skip=10.0)
        self.results["long"] = cell
        self.stop_all()


def rss_trend(samples: list[tuple[float, float]], skip: float) -> dict[str, float]:
    """RSS after the first `skip` seconds: first/last/max MB, and the least-squares slope (MB per
    minute) over all of it and over its second half (allocators grow to a plateau first)."""
    points = [(t, mb) for t, mb in samples if t >= skip]
    if len(points) < 4:
        return {}
    return {"slope_mb_per_min": _slope(points), "second_half_slope_mb_per_min": _slope(points[len(points) // 2:]),
            "first_mb": points[0][1], "last_mb": points[-1][1], "max_mb": max(mb for _, mb in points),
            "seconds": round(points[-1][0] - points[0][0], 1)}


def _slope(points: list[tuple[float, float]]) -> float:
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_mb = sum(mb for _, mb in points) / n
    var = sum((t - mean_t) ** 2 for t, _ in points) or 1.0
    return round(sum((t - mean_t) * (mb - mean_mb) for t, mb in points) / var * 60, 3)


def build_spring() -> str:
    """Build the Spring peer (Maven, quiet) and return its class path."""
    log.info("building bench/spring with Maven")
    subprocess.run(["mvn", "-q", "-B", "-f", str(SPRING / "pom.xml"), "package"], check=True, cwd=REPO)
    return f"{SPRING / 'target' / 'classes'}{os.pathsep}{SPRING / 'target' / 'lib' / '*'}"


def broker_pid(bootstrap: str) -> int | None:
    """The local broker's pid (kafka/broker.sh), when the run uses it: its CPU is part of every call."""
    pid_file = REPO / ".kafka" / "broker.pid"
    if bootstrap not in ("127.0.0.1:9092", "localhost:9092") or not pid_file.exists():
        return None
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, 0)
        return pid
    except (ValueError, OSError):
        return None


def machine_meta(plan: Plan, bootstrap: str, prefix: str) -> dict[str, Any]:
    import grpc
    import kafka

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    mem = next((int(line.split()[1]) // 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                if line.startswith("MemTotal")), 0)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "adapter", "handlers"], capture_output=True,
                                text=True, cwd=REPO).stdout.strip())
    java = subprocess.run(["java", "-version"], capture_output=True, text=True).stderr.splitlines()
    return {
        "plan": {k: v for k, v in asdict(plan).items() if k != "extra"} | plan.extra,
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "host": platform.node(), "cpu": cpu, "cores": os.cpu_count(), "memory_mb": mem,
        "os": platform.platform(), "python": platform.python_version(), "grpcio": grpc.__version__,
        "kafka_python": kafka.__version__, "java": java[0] if java else "",
        "bootstrap": bootstrap, "topic_prefix": prefix, "commit": commit, "adapter_dirty": dirty,
        "loadavg_start": [round(x, 2) for x in os.getloadavg()],
    }


def _extra_label(extra: dict[str, Any]) -> str:
    return " ".join(f"{k}={v}" for k, v in extra.items())
