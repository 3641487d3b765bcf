"""`python -m bench` (what `make bench` runs): measure, then write JSON, markdown and PNG.

    python -m bench                 # the full suite, about 8 minutes on 2 cores
    python -m bench --quick         # a smoke run, about a minute
    python -m bench --long [SECS]   # a soak: steady load, the frontend's RSS over time
    python -m bench --profile       # py-spy profiles of the frontend and a handler under load
    python -m bench --report-only bench/results/bench.json

Results go to bench/results/NAME.{json,md,png} (NAME: bench, quick, long), process logs
to bench/results/logs/. The broker must be up (`make kafka-up`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
import time
from pathlib import Path

from bench import report, topics
from bench.suite import PLANS, REPO, Run

RESULTS = REPO / "bench" / "results"
log = logging.getLogger("bench")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="smoke run: 2 in-flight levels, short windows")
    mode.add_argument("--long", nargs="?", type=float, const=240.0, metavar="SECONDS",
                      help="soak at steady load for SECONDS (default 240), sampling the frontend's RSS")
    mode.add_argument("--profile", action="store_true", help="py-spy profiles of frontend and handler (bench.profile)")
    mode.add_argument("--report-only", type=Path, metavar="JSON", help="redraw the markdown and PNG of a results file")
    mode.add_argument("--compare", type=Path, nargs="+", metavar="JSON",
                      help="print one markdown table comparing the cells of several results files (levers)")
    parser.add_argument("--only", nargs="+",
                        choices=["direct", "pingpong", "confluent", "channel", "adapter", "spring", "channel_kafka_python",
                                 "adapter_kafka_python", "scaleout", "aiokafka"],
                        help="run only these parts (aiokafka, confluent: the ping-pong with other clients, only so)")
    parser.add_argument("--duration", type=float, help="seconds measured per cell (overrides the plan)")
    parser.add_argument("--warmup", type=float, help="seconds of warm-up per cell (overrides the plan)")
    parser.add_argument("--payloads", type=int, nargs="+", help="payload sizes, bytes (overrides the plan)")
    parser.add_argument("--in-flight", type=int, nargs="+", help="calls in flight (overrides the plan)")
    lever = parser.add_argument_group("levers (see docs/performance.md)")
    lever.add_argument("--variant", help="frontend/handler changes, e.g. linger=1,commit=0.2 (bench.variants)")
    lever.add_argument("--handler-target", help="servicer of the handler processes (default bench.servicer:Echo)")
    lever.add_argument("--handler-args", help="extra handler options, e.g. '--concurrency 64'")
    lever.add_argument("--pingpong-args", help="extra ping-pong options, e.g. '--fetch-max-wait-ms 500 --linger-ms 1'")
    lever.add_argument("--channel-args", help="extra options of the channel scenario's client, e.g. '--reply-run 1'")
    lever.add_argument("--pythonpath", help="prepended to the children's PYTHONPATH, e.g. a folder holding crc32c")
    parser.add_argument("--memory-in-flight", type=int, help="calls in flight of the frontend memory cells (0: skip them)")
    parser.add_argument("--name", help="results file name (default: bench, quick or long)")
    parser.add_argument("--json-only", action="store_true", help="write only the JSON (levers: compare them with --compare)")
    parser.add_argument("--bootstrap-servers", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for results (default %(default)s)")
    return parser.parse_args(argv)


def write(results: dict, out: Path, name: str, json_only: bool = False) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=1) + "\n")
    if json_only:
        log.info("wrote %s/%s.json", out, name)
        return
    (out / f"{name}.md").write_text(report.markdown(results))
    if results.get("cells"):
        report.plot(results, out / f"{name}.png")
    if results.get("long"):
        report.plot_long(results, out / f"{name}.png")
    log.info("wrote %s/%s.{json,md,png}", out, name)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("kafka").setLevel(logging.ERROR)
    if args.compare:
        print(report.compare([(path.stem, json.loads(path.read_text())) for path in args.compare]))
        return 0
    if args.report_only:
        results = json.loads(args.report_only.read_text())
        write(results, args.report_only.parent, args.report_only.stem)
        return 0
    if args.profile:
        from bench import profile

        return profile.main(args)
    plan = PLANS["quick" if args.quick else "long" if args.long else "bench"]
    name = args.name or plan.name
    overrides: dict = {k: getattr(args, k) for k in ("duration", "warmup", "memory_in_flight")
                       if getattr(args, k) is not None}
    overrides |= {k: tuple(getattr(args, k)) for k in ("payloads", "in_flight") if getattr(args, k)}
    extra = {"variant": args.variant, "handler_target": args.handler_target, "pythonpath": args.pythonpath,
             "handler_args": tuple(args.handler_args.split()) if args.handler_args else None,
             "pingpong_args": tuple(args.pingpong_args.split()) if args.pingpong_args else None,
             "channel_args": tuple(args.channel_args.split()) if args.channel_args else None}
    overrides["extra"] = {k: v for k, v in extra.items() if v}
    if args.pythonpath:
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [args.pythonpath, os.environ.get("PYTHONPATH")]))
    if args.long:
        overrides["long_seconds"] = args.long
    if args.only:
        known = (*plan.scenarios, "aiokafka")
        overrides["scenarios"] = tuple(s for s in known if s in args.only)
        if "scaleout" not in args.only:
            overrides["handlers"] = ()
    plan = dataclasses.replace(plan, **overrides)
    run = Run(plan, args.bootstrap_servers, args.out / "logs")
    began = time.monotonic()
    log.info("run %s: plan %s, load average %s", run.prefix, plan.name, run.results["meta"]["loadavg_start"])
    failed = False
    try:
        for scenario in plan.scenarios:
            getattr(run, scenario)()
        run.scaleout()
        if plan.long_seconds:
            run.soak()
    except (RuntimeError, OSError) as exc:
        failed = True
        log.error("run failed: %s", exc)
    except KeyboardInterrupt:
        failed = True
        log.error("interrupted")
    finally:
        run.stop_all()
        run.monitor.close()
        topics.remove(args.bootstrap_servers, run.prefix)
    run.results["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    run.results["meta"]["wall_seconds"] = round(time.monotonic() - began, 1)
    run.results["meta"]["complete"] = not failed
    write(run.results, args.out, name if not failed else f"{name}-failed", args.json_only)
    log.info("done in %.0f s", time.monotonic() - began)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
