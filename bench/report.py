"""From a run's JSON to its markdown tables and PNG plot.

    python -m bench --report-only bench/results/bench.json   # redraw without measuring
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SCENARIOS = ("direct", "pingpong", "confluent", "channel", "adapter", "spring", "channel-kafka-python",
             "adapter-kafka-python", "aiokafka")
LABELS = {"direct": "direct gRPC (no Kafka)", "pingpong": "raw kafka-python ping-pong",
          "confluent": "librdkafka ping-pong (lean)", "channel": "AioKafkaChannel -> handler (no gRPC)",
          "adapter": "adapter (frontend + handler)", "spring": "Spring ReplyingKafkaTemplate",
          "channel-kafka-python": "channel, kafka-python engine", "adapter-kafka-python": "adapter, kafka-python engine",
          "aiokafka": "aiokafka ping-pong"}
COLORS = {"direct": "tab:gray", "pingpong": "tab:blue", "confluent": "tab:brown", "channel": "tab:orange",
          "adapter": "tab:red", "spring": "tab:green", "channel-kafka-python": "gold",
          "adapter-kafka-python": "tab:pink", "aiokafka": "tab:purple"}
#: The issue's targets (2-core machine).
TARGET_ADAPTER_TPUT, TARGET_RSS_MB = 0.5, 150.0


def size(payload: int) -> str:
    return f"{payload // 1024} KiB" if payload >= 1024 and payload % 1024 == 0 else f"{payload} B"


def _find(cells: list[dict[str, Any]], scenario: str, payload: int, n: int) -> dict[str, Any] | None:
    return next((c for c in cells if (c["scenario"], c["payload"], c["in_flight"]) == (scenario, payload, n)), None)


def _procs(cell: dict[str, Any], key: str, fmt: str) -> str:
    order = ["client", "server", "frontend", "handler", "replier", "broker"]
    procs = cell["processes"]
    roles = sorted((r for r in procs if r != "bench" and key in procs[r]),
                   key=lambda r: (order.index(r.rstrip("0123456789")) if r.rstrip("0123456789") in order else 99, r))
    return " · ".join(f"{r} {procs[r][key]:{fmt}}" for r in roles)


def markdown(results: dict[str, Any]) -> str:
    meta, cells = results["meta"], results["cells"]
    out = [f"# Benchmark results ({meta['plan']['name']})", "",
           f"{meta['started']} on `{meta['host']}`: {meta['cpu']}, {meta['cores']} cores, {meta['memory_mb']} MB; "
           f"Python {meta['python']}, grpcio {meta['grpcio']}, kafka-python {meta['kafka_python']}, {meta['java']}; "
           f"commit {meta['commit']}{' (adapter/handlers modified)' if meta.get('adapter_dirty') else ''}. "
           f"Load average at start {meta['loadavg_start']}, at end {meta.get('loadavg_end')}. "
           f"Each cell: {meta['plan']['warmup']:g} s warm-up, {meta['plan']['duration']:g} s measured.", ""]
    if cells:
        out += ["## Latency and throughput", "",
                "| scenario | payload | in flight | p50 ms | p90 ms | p99 ms | calls/s | errors | foreign CPU s |",
                "|---|---|--:|--:|--:|--:|--:|--:|--:|"]
        for c in cells:
            lat = c["latency_ms"]
            out.append(f"| {c['scenario']} | {size(c['payload'])} | {c['in_flight']} | {lat['p50']:.2f} | {lat['p90']:.2f} "
                       f"| {lat['p99']:.2f} | {c['throughput']:.0f} | {c['errors']} | {c['machine']['foreign_cpu_s']:.1f} |")
        out += ["", "*foreign CPU*: CPU seconds used during the window by processes outside the run "
                "(other work on the machine): the noise indicator.", "",
                "## CPU per call (µs) and peak RSS (MB), per process", "",
                "| scenario | payload | in flight | CPU µs per call | peak RSS MB |", "|---|---|--:|---|---|"]
        for c in cells:
            out.append(f"| {c['scenario']} | {size(c['payload'])} | {c['in_flight']} | {_procs(c, 'cpu_us_per_call', '.0f')} "
                       f"| {_procs(c, 'peak_rss_mb', '.0f')} |")
        out += ["", *ratios(cells), "", *targets(results)]
    if results.get("scaleout"):
        out += ["", "## Scale-out (adapter, 100 B)", "",
                "| frontends | handlers | in flight | p50 ms | p99 ms | calls/s | errors | CPU µs per call |",
                "|--:|--:|--:|--:|--:|--:|--:|---|"]
        for c in results["scaleout"]:
            out.append(f"| {c['frontends']} | {c['handlers']} | {c['in_flight']} | {c['latency_ms']['p50']:.2f} "
                       f"| {c['latency_ms']['p99']:.2f} | {c['throughput']:.0f} | {c['errors']} "
                       f"| {_procs(c, 'cpu_us_per_call', '.0f')} |")
    if results.get("memory"):
        out += ["", "## Frontend memory with many calls in flight", "",
                "| payload | in flight | RSS at start MB | RSS before MB | peak RSS MB | calls/s | p50 ms | errors |",
                "|---|--:|--:|--:|--:|--:|--:|--:|"]
        for c in results["memory"]:
            out.append(f"| {size(c['payload'])} | {c['in_flight']} | {c['frontend_rss_mb_at_start']:.0f} "
                       f"| {c['frontend_rss_mb_before']:.0f} | {c['processes']['frontend']['peak_rss_mb']:.0f} "
                       f"| {c['throughput']:.0f} | {c['latency_ms']['p50']:.1f} | {c['errors']} |")
    if results.get("long"):
        c = results["long"]
        trend = c["rss_trend"]
        out += ["", "## Soak: frontend RSS under steady load", "",
                f"{c['in_flight']} calls in flight, {size(c['payload'])}, {c['seconds']:.0f} s measured: "
                f"{c['calls']} calls, {c['throughput']:.0f} calls/s, p50 {c['latency_ms']['p50']:.2f} ms, "
                f"p99 {c['latency_ms']['p99']:.2f} ms, {c['errors']} errors. Frontend RSS {trend.get('first_mb')} MB → "
                f"{trend.get('last_mb')} MB (max {trend.get('max_mb')} MB); slope {trend.get('slope_mb_per_min')} MB/min overall, "
                f"{trend.get('second_half_slope_mb_per_min')} MB/min over the second half."]
    return "\n".join(out) + "\n"


def compare(runs: list[tuple[str, dict[str, Any]]]) -> str:
    """One row per (run, cell): the table `python -m bench --compare` prints."""
    out = ["| run | scenario | payload | in flight | p50 ms | p99 ms | calls/s | CPU µs per call | foreign CPU s | load |",
           "|---|---|---|--:|--:|--:|--:|---|--:|--:|"]
    for name, results in runs:
        plan = results["meta"]["plan"]
        variant = " ".join(str(plan[k]) for k in ("variant", "pythonpath", "handler_target", "handler_args", "pingpong_args")
                           if plan.get(k))
        label = f"{name}" + (f" ({variant})" if variant else "")
        for c in results["cells"]:
            out.append(f"| {label} | {c['scenario']} | {size(c['payload'])} | {c['in_flight']} | {c['latency_ms']['p50']:.2f} "
                       f"| {c['latency_ms']['p99']:.2f} | {c['throughput']:.0f} | {_procs(c, 'cpu_us_per_call', '.0f')} "
                       f"| {c['machine']['foreign_cpu_s']:.1f} | {c['machine']['loadavg'][0]} |")
    return "\n".join(out)


def ratios(cells: list[dict[str, Any]]) -> list[str]:
    out = ["## Adapter against its floors", "",
           "| payload | in flight | p50 ÷ ping-pong | p99 ÷ ping-pong | calls/s ÷ ping-pong | p50 ÷ Spring | p99 ÷ Spring "
           "| calls/s ÷ Spring |", "|---|--:|--:|--:|--:|--:|--:|--:|"]
    keys = sorted({(c["payload"], c["in_flight"]) for c in cells if c["scenario"] == "adapter"})
    for payload, n in keys:
        ours = _find(cells, "adapter", payload, n)
        row = [size(payload), str(n)]
        for peer in ("pingpong", "spring"):
            other = _find(cells, peer, payload, n)
            for get in (lambda c: c["latency_ms"]["p50"], lambda c: c["latency_ms"]["p99"], lambda c: c["throughput"]):
                row.append(f"{get(ours) / get(other):.2f}" if ours and other and get(other) else "-")
        out.append("| " + " | ".join(row) + " |")
    return out


def targets(results: dict[str, Any]) -> list[str]:
    """The Kafka-layer issue's targets: channel against Spring, adapter against direct gRPC."""
    cells = results["cells"]
    out = ["## The issue's targets", "", "| target | measured | verdict |", "|---|---|---|"]

    def line(name: str, value: float | None, ok: bool | None, fmt: str) -> None:
        verdict = "-" if ok is None else ("met" if ok else "**missed**")
        out.append(f"| {name} | {'-' if value is None else format(value, fmt)} | {verdict} |")

    def p50(scenario: str, payload: int, n: int) -> float | None:
        cell = _find(cells, scenario, payload, n)
        return cell["latency_ms"]["p50"] if cell else None

    def tput(scenario: str, payload: int, n: int) -> float | None:
        cell = _find(cells, scenario, payload, n)
        return cell["throughput"] if cell else None

    for payload in sorted({c["payload"] for c in cells}):
        label = size(payload)
        ch64, sp64, ad64, di64 = (tput(s, payload, 64) for s in ("channel", "spring", "adapter", "direct"))
        ch1, sp1, ad1, di1, lean1 = (p50(s, payload, 1) for s in ("channel", "spring", "adapter", "direct", "confluent"))
        if ch64 and sp64:
            line(f"{label}: channel calls/s at 64 ÷ Spring's (≥ 1)", ch64 / sp64, ch64 >= sp64, ".2f")
        if ch1 and sp1:
            line(f"{label}: channel p50 at 1 - Spring's, ms (≤ 0)", ch1 - sp1, ch1 <= sp1, "+.2f")
        if ad64 and di64:
            line(f"{label}: adapter calls/s at 64 ÷ direct's (≥ {TARGET_ADAPTER_TPUT})", ad64 / di64,
                 ad64 / di64 >= TARGET_ADAPTER_TPUT, ".2f")
        if ad1 and di1 and lean1:
            bound = di1 + 2 * lean1
            line(f"{label}: adapter p50 at 1 - (direct + 2 x librdkafka ping-pong = {bound:.2f}), ms (≤ 0)",
                 ad1 - bound, ad1 <= bound, "+.2f")
    for c in results.get("memory", []):
        if c["in_flight"] >= 1000:
            rss = c["processes"]["frontend"]["peak_rss_mb"]
            line(f"frontend RSS, {c['in_flight']} in flight, {size(c['payload'])} (MB)", rss, rss < TARGET_RSS_MB, ".0f")
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cells = results["cells"]
    payloads = sorted({c["payload"] for c in cells})
    extra_row = bool(results.get("scaleout"))
    rows = 3 if extra_row else 2
    fig, axes = plt.subplots(rows, max(2, len(payloads)), figsize=(13, 4.2 * rows), squeeze=False)
    for col, payload in enumerate(payloads):
        lat_ax, tput_ax = axes[0][col], axes[1][col]
        for scenario in SCENARIOS:
            mine = sorted((c for c in cells if c["scenario"] == scenario and c["payload"] == payload),
                          key=lambda c: c["in_flight"])
            if not mine:
                continue
            xs = [c["in_flight"] for c in mine]
            color = COLORS[scenario]
            lat_ax.plot(xs, [c["latency_ms"]["p50"] for c in mine], "o-", color=color, label=f"{LABELS[scenario]} p50")
            lat_ax.plot(xs, [c["latency_ms"]["p99"] for c in mine], "v--", color=color, alpha=0.6, label="p99")
            tput_ax.plot(xs, [c["throughput"] for c in mine], "o-", color=color, label=LABELS[scenario])
        for ax, title, unit in ((lat_ax, "latency p50 (solid) / p99 (dashed)", "ms"), (tput_ax, "throughput", "calls/s")):
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("calls in flight")
            ax.set_ylabel(unit)
            ax.set_title(f"{title}, {size(payload)}")
            ax.grid(True, which="both", alpha=0.3)
        tput_ax.legend(fontsize=8)
    if extra_row:
        scale = results["scaleout"]
        ax = axes[2][0]
        widest = max(c["in_flight"] for c in scale)
        chosen = [c for c in scale if c["in_flight"] == widest]
        labels = [f"{c['frontends']}F/{c['handlers']}H" for c in chosen]
        ax.bar(labels, [c["throughput"] for c in chosen], color="tab:red")
        ax.set_title(f"scale-out: adapter calls/s at {widest} in flight (frontends/handlers)")
        ax.set_ylabel("calls/s")
        ax = axes[2][1]
        payload = payloads[0]
        n = 64 if any(c["in_flight"] == 64 for c in cells) else max(c["in_flight"] for c in cells)
        bottoms: dict[str, float] = {}
        for role, color in (("client", "tab:gray"), ("server", "tab:olive"), ("frontend", "tab:red"),
                            ("handler", "tab:orange"), ("replier", "tab:purple"), ("broker", "tab:blue")):
            xs, hs, bs = [], [], []
            for scenario in SCENARIOS:
                c = _find(cells, scenario, payload, n)
                if c and role in c["processes"]:
                    xs.append(scenario)
                    hs.append(c["processes"][role]["cpu_us_per_call"])
                    bs.append(bottoms.get(scenario, 0.0))
                    bottoms[scenario] = bottoms.get(scenario, 0.0) + hs[-1]
            if xs:
                ax.bar(xs, hs, bottom=bs, color=color, label=role)
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
        ax.set_title(f"CPU µs per call by process, {size(payload)}, {n} in flight")
        ax.set_ylabel("µs")
        ax.legend(fontsize=8)
    meta = results["meta"]
    fig.suptitle(f"kafka-grpc-adapter benchmark ({meta['plan']['name']}), {meta['cores']} cores, {meta['cpu']}, "
                 f"load at start {meta['loadavg_start'][0]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_long(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    c = results["long"]
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot([t for t, _ in c["rss_series"]], [mb for _, mb in c["rss_series"]], color="tab:red")
    ax.set_xlabel("seconds")
    ax.set_ylabel("frontend RSS, MB")
    ax.set_ylim(bottom=0)
    ax.set_title(f"frontend RSS, {c['in_flight']} calls in flight, {c['throughput']:.0f} calls/s; "
                 f"second-half slope {c['rss_trend'].get('second_half_slope_mb_per_min')} MB/min")
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
