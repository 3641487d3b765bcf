"""Where the time goes: py-spy profiles of the frontend, a handler and the raw ping-pong under load.

    python -m bench --profile            # writes bench/results/profile.md and profiles/*.txt

For each profiled cell a load client runs one long window; once it is warm, ``py-spy record
--gil --threads --nonblocking`` samples the server processes for the rest of the window.
``--gil`` keeps only the stacks of the thread holding the GIL: in a process whose Python
threads share one GIL, that is where the Python time goes, and the share of samples taken
(`gil_busy`) says how close the process is to its one-core Python ceiling. (Without
``--gil``, py-spy counts runnable-but-waiting threads as busy on a loaded machine.)

The raw (collapsed-stack) files stay in bench/results/profiles/ for flame graphs; `summarize`
turns each into the tables of profile.md: GIL time by thread, by component (our code,
kafka-python, grpc, asyncio...), the hottest functions by own and inclusive time.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import json
import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import topics, trace
from bench.procs import Proc, python
from bench.suite import PLANS, Run

log = logging.getLogger("bench")
RATE = 200  # samples per second

#: Frame file -> component; the first match wins.
COMPONENTS = [
    (name, re.compile(rf"(^|/)({pattern})"))
    for name, pattern in (
        ("adapter", r"adapter/"), ("handlers", r"handlers/"), ("bench", r"bench/"), ("kafka-python", r"kafka/"),
        ("grpc", r"grpc/|src/python/grpcio|cygrpc"), ("protobuf", r"google/protobuf/"), ("asyncio", r"asyncio/"),
        ("threading/queue", r"(threading|queue|_weakrefset|concurrent/futures/\w+)\.py"),
        ("selectors/socket", r"(selectors|socket|ssl)\.py"), ("logging", r"logging/"),
    )
]
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def component(file: str) -> str:
    for name, pattern in COMPONENTS:
        if pattern.search(file):
            return name
    return "other (stdlib, uuid, dataclasses...)"


def summarize(raw: Path, cpu_s: float | None, seconds: float, top: int = 22) -> dict[str, Any]:
    """Tables from one py-spy raw file. `cpu_s`: the process's CPU seconds over the same span."""
    by_thread: collections.Counter[str] = collections.Counter()
    by_component: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = frames[0] if frames[0].startswith(("thread", "process")) else "?"
        frames = [f for f in frames if not f.startswith(("thread", "process"))]
        total += count
        by_thread[_thread_name(thread)] += count
        parsed = [_FRAME.match(f) for f in frames]
        leaf = parsed[-1] if parsed else None
        if leaf:
            by_component[component(leaf["file"])] += count
            own[f"{leaf['func']} ({_short(leaf['file'])})"] += count
        for name in {f"{m['func']} ({_short(m['file'])})" for m in parsed if m}:
            inclusive[name] += count
    sampled_s = total / RATE
    return {
        "samples": total, "gil_s": round(sampled_s, 2), "process_cpu_s": cpu_s, "seconds": round(seconds, 1),
        # Share of the time some thread held the GIL: near 1.0, Python itself is the ceiling.
        "gil_busy": round(sampled_s / seconds, 3) if seconds else None,
        "threads": _shares(by_thread, total), "components": _shares(by_component, total),
        "own": _shares(own, total, top), "inclusive": _shares(inclusive, total, top * 2),
    }


def _thread_name(frame: str) -> str:
    # "thread (7730): kafka-rpc-network-thread"
    name = frame.split("): ", 1)[1] if "): " in frame else frame
    return re.sub(r"[-_]?\d+$", "", name)  # handler_3 / ThreadPoolExecutor-0_1 -> one row per pool


def _short(file: str) -> str:
    for marker in ("site-packages/", "python3.11/", "/work/main/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


def _shares(counter: collections.Counter[str], total: int, top: int | None = None) -> list[tuple[str, float]]:
    return [(name, round(100 * n / total, 1)) for name, n in counter.most_common(top)] if total else []


def profile_cell(run: Run, scenario: str, client: Proc, servers: list[Proc], seconds: float, out: Path,
                 label: str) -> dict[str, Any]:
    warm = client.next_event(seconds + 120)
    start = run.monitor.snapshot()
    spies = {p.role: subprocess.Popen(
        [str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(p.pid), "--rate", str(RATE),
         "--duration", str(int(seconds - 2)), "--format", "raw", "--nonblocking", "--threads", "--gil",
         "-o", str(out / f"{label}-{p.role}.txt")],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for p in servers}
    began = time.monotonic()
    for spy in spies.values():
        spy.wait(seconds + 30)
    spy_s = time.monotonic() - began
    mid = run.monitor.snapshot()
    done = client.next_event(seconds + 120)
    end = run.monitor.snapshot()
    client.popen.wait(60)
    run.stop(client)
    cpu = {role: mid.cpu[role] - start.cpu[role] for role in mid.cpu if role in start.cpu}
    result = {"scenario": scenario, "label": label, "payload": warm["payload"], "in_flight": warm["in_flight"],
              "calls": done["calls"], "throughput": round(done["calls"] / done["seconds"], 1),
              "latency_ms": done["latency_ms"], "window": run.monitor.window(start, end, done["calls"]),
              "profiles": {}}
    for role, spy in spies.items():
        raw = out / f"{label}-{role}.txt"
        if spy.returncode != 0 or not raw.exists():
            log.error("py-spy on %s failed: %s", role, spy.stderr.read().decode() if spy.stderr else "")
            continue
        result["profiles"][role] = summarize(raw, round(cpu.get(role, 0.0), 2), spy_s)
    log.info("profiled %s: %.0f calls/s, p50 %.2f ms", label, result["throughput"], result["latency_ms"]["p50"])
    return result


def main(args: argparse.Namespace) -> int:
    out = args.out / "profiles"
    out.mkdir(parents=True, exist_ok=True)
    seconds = args.duration or 20.0
    plan = PLANS["bench"]
    run = Run(plan, args.bootstrap_servers, args.out / "logs")
    results: list[dict[str, Any]] = []
    cells = [(100, 1), (100, 64), (10240, 64)]
    try:
        prefix = f"{run.prefix}adapter."
        frontend, address = run.frontend(prefix)
        handler = run.handler(prefix)
        for payload, n in cells:
            client = run.loadgen([address], (payload,), (n,), warmup=3.0, duration=seconds)
            results.append(profile_cell(run, "adapter", client, [frontend, handler], seconds, out, f"adapter-{payload}-{n}"))
        run.stop_all()
        traces = {payload: trace_call(run, payload, seconds, out / f"trace-{payload}") for payload in (100, 10240)}
        requests, replies = f"{run.prefix}pingpong.requests", f"{run.prefix}pingpong.replies"
        topics.create(args.bootstrap_servers, {requests: plan.request_partitions, replies: 1})
        common = ["--bootstrap-servers", args.bootstrap_servers, "--request-topic", requests, "--reply-topic", replies]
        replier = run.start("replier", python("bench.pingpong", "replier", *common), ready=r"replier ready")
        for payload, n in cells[1:]:
            client = run.start("client", python("bench.pingpong", "requester", *common,
                                                *run.cell_args((payload,), (n,), 3.0, seconds)), pipe=True)
            results.append(profile_cell(run, "pingpong", client, [client, replier], seconds, out,
                                        f"pingpong-{payload}-{n}"))
    finally:
        run.stop_all()
        run.monitor.close()
        topics.remove(args.bootstrap_servers, run.prefix)
    meta = run.results["meta"] | {"loadavg_end": [round(x, 2) for x in os.getloadavg()], "rate_hz": RATE}
    (args.out / "profile.json").write_text(json.dumps({"meta": meta, "profiles": results, "traces": traces}, indent=1) + "\n")
    (args.out / "profile.md").write_text(markdown(meta, results, traces))
    log.info("wrote %s/profile.{json,md} and %s/*.txt", args.out, out)
    return 0


def trace_call(run: Run, payload: int, seconds: float, folder: Path) -> dict[str, Any]:
    """One call in flight through a frontend and a handler started with the ``trace`` variant."""
    if folder.exists():
        for old in folder.glob("*.jsonl"):
            old.unlink()
    plan = run.plan
    run.plan = dataclasses.replace(plan, extra=plan.extra | {"variant": f"trace={folder}"})
    try:
        prefix = f"{run.prefix}trace{payload}."
        _, address = run.frontend(prefix)
        run.handler(prefix)
        client = run.loadgen([address], (payload,), (1,), warmup=2.0, duration=min(seconds, 10.0))
        cell = run.measure("adapter", client, (payload,), (1,))[0]
        run.stop_all()  # the processes write their events as they exit
    finally:
        run.plan = plan
    return {"payload": payload, "client_latency_ms": cell["latency_ms"], "steps_us": trace.analyse(folder)}


def markdown(meta: dict[str, Any], results: list[dict[str, Any]], traces: dict[int, dict[str, Any]]) -> str:
    out = ["# Profiles (py-spy)", "",
           f"{meta['started']}, commit {meta['commit']}{' (adapter/handlers modified)' if meta['adapter_dirty'] else ''}, "
           f"{meta['cores']} cores, load average {meta['loadavg_start']} -> {meta['loadavg_end']}. "
           f"py-spy --gil --threads --nonblocking at {RATE} Hz. Percentages are of the samples in which some "
           "thread of the process held the GIL.", ""]
    if traces:
        payloads = sorted(traces)
        out += ["## One call, step by step (1 in flight, `bench.trace`, median µs)", "",
                "| step | " + " | ".join(f"{p} B" for p in payloads) + " |", "|---|" + "--:|" * len(payloads)]
        for step in traces[payloads[0]]["steps_us"]:
            out.append(f"| {step} | " + " | ".join(str(traces[p]["steps_us"].get(step, "-")) for p in payloads) + " |")
        out.append("| client p50, ms (includes gRPC) | "
                   + " | ".join(f"{traces[p]['client_latency_ms']['p50']:.2f}" for p in payloads) + " |")
        out.append("")
    for r in results:
        out += [f"## {r['label']}: {r['throughput']:.0f} calls/s, p50 {r['latency_ms']['p50']:.2f} ms, "
                f"p99 {r['latency_ms']['p99']:.2f} ms", ""]
        procs = r["window"]["processes"]
        out.append("CPU µs per call: " + ", ".join(f"{k} {v['cpu_us_per_call']:.0f}" for k, v in procs.items()) + ".")
        for role, p in r["profiles"].items():
            out += ["", f"### {role}: {p['process_cpu_s']} CPU s in {p['seconds']} s; GIL held {p['gil_s']} s "
                    f"(gil_busy {p['gil_busy']})", ""]
            for title, rows in (("thread", p["threads"]), ("component (leaf frame)", p["components"]),
                                ("own time", p["own"][:15]), ("inclusive", p["inclusive"][:30])):
                out += [f"| {title} | % |", "|---|--:|", *(f"| `{name}` | {pct} |" for name, pct in rows), ""]
    return "\n".join(out) + "\n"
