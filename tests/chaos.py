"""`python -m tests.chaos` (what `make chaos` runs): a soak under random faults, checked for lost,
duplicated and misdelivered work.

    python -m tests.chaos                        # 10 minutes, a random seed (printed: replay it)
    python -m tests.chaos --minutes 2 --seed 7   # replay seed 7 for 2 minutes
    python -m tests.chaos --exactly-once         # the handlers in the exactly-once mode

What runs: a three-node cluster of its own (kafka/cluster.sh, state in .kafka-chaos/, ports
29092-29097 by default), two frontends and three handler processes serving the test Kitchen
service. Callers keep a steady mix going through both frontends: unary calls, server streams,
bidi streams, and calls with an idempotency key (retried with the same key when they fail).
A scheduler, seeded, injects a fault every 10-30 s, one at a time: kill -9 or SIGTERM of a
handler or a frontend (restarted), kill -9 of a broker (restarted 5-15 s later), or a broker
stopped with SIGSTOP for 3-10 s (a hung node). The engine is KAFKA_RPC_KAFKA_CLIENT's.

Then it checks, from a log of every call and every handler execution and from the records in
Kafka: no reply went to the wrong caller and every OK reply is its own request's answer; every
call ended (none still open 5 s past its deadline); no request record was left unrun; a key
never ran twice in the same handler process (the dedupe window holds unless the partition
moved to another process); in the exactly-once mode, no request has two committed replies.
The figures go to bench/results/chaos/<name>.{json,md} (the seed in both); the call log and
the process logs to bench/results/logs/<name>/. Exit status 1 if an invariant broke.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import signal
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass
from typing import Any

import grpc
from rpctest.v1 import kitchen_pb2, kitchen_pb2_grpc

from tests import procs
from tests.brokers import Cluster, end_offsets, free_port, replies_in, requests_in

REPO = procs.REPO
RESULTS = REPO / "bench" / "results" / "chaos"
KITCHEN = ["tests.kitchen_service:Kitchen"]
DEADLINE = 30.0
HANG_GRACE = 5.0
KINDS = ("unary", "server-stream", "bidi-stream", "keyed")
FAULTS = ("handler-kill", "handler-term", "frontend-kill", "frontend-term", "broker-kill", "broker-pause")


@dataclass
class Call:
    kind: str
    tag: str
    frontend: int
    started: float
    ended: float = 0.0
    code: str = ""
    correct: bool = False
    attempt: int = 1


@dataclass
class Fault:
    at: float  # seconds into the soak
    kind: str
    target: str
    down_s: float


class Soak:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.seed: int = args.seed
        self.rng = random.Random(self.seed)
        engine = os.environ.get("KAFKA_RPC_KAFKA_CLIENT", "confluent")
        self.name = f"chaos-{engine}-{'exactly-once' if args.exactly_once else 'at-least-once'}-seed{self.seed}"
        self.logs = REPO / "bench" / "results" / "logs" / self.name
        self.logs.mkdir(parents=True, exist_ok=True)
        self.events = self.logs / "events"
        self.events.unlink(missing_ok=True)
        self.cluster = Cluster(REPO / ".kafka-chaos", base=args.port, cds=True)
        self.prefix = f"chaos{self.seed}t{int(time.time())}."
        self.ports = [free_port(), free_port()]
        self.frontends: list[procs.Proc | None] = [None, None]
        self.handlers: list[procs.Proc | None] = [None, None, None]
        self.calls: list[Call] = []
        self.faults: list[Fault] = []
        self.started = 0.0
        self._stop = threading.Event()
        self._count = itertools.count()

    # -- processes ---------------------------------------------------------------------------

    def start_frontend(self, i: int) -> None:
        log = self.logs / f"frontend{i}-{next(self._count)}.log"
        self.frontends[i], _ = procs.frontend(log, self.cluster.bootstrap, self.prefix, "--listen",
                                              f"127.0.0.1:{self.ports[i]}")

    def start_handler(self, i: int) -> None:
        n = next(self._count)
        extra = ["--exactly-once", "--transactional-id", f"{self.prefix}h{i}"] if self.args.exactly_once else []
        self.handlers[i] = procs.handler(self.logs / f"handler{i}-{n}.log", self.cluster.bootstrap, self.prefix,
                                         *extra, targets=KITCHEN, env={"KITCHEN_EVENTS": str(self.events)})

    def stop_all(self) -> None:
        for proc in [*self.handlers, *self.frontends]:
            if proc is not None:
                proc.stop()

    # -- load --------------------------------------------------------------------------------

    async def _load(self) -> None:
        channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}") for port in self.ports]
        stubs = [kitchen_pb2_grpc.KitchenStub(c) for c in channels]
        try:
            await asyncio.gather(*(self._caller(stubs, i) for i in range(self.args.callers)))
        finally:
            for c in channels:
                await c.close()

    async def _caller(self, stubs: list[kitchen_pb2_grpc.KitchenStub], index: int) -> None:
        rng = random.Random(self.seed * 100_003 + index)
        n = 0
        while not self._stop.is_set():
            kind = rng.choices(KINDS, weights=(6, 2, 1, 2))[0]
            tag = f"{index}-{n}"
            n += 1
            attempts = 3 if kind == "keyed" else 1
            for attempt in range(1, attempts + 1):
                frontend = (index + attempt) % len(stubs)
                call = Call(kind, tag, frontend, time.monotonic(), attempt=attempt)
                self.calls.append(call)
                await self._one(stubs[frontend], call)
                if call.code == "OK":
                    break
                await asyncio.sleep(0.2)  # clients back off after a failure

    async def _one(self, stub: kitchen_pb2_grpc.KitchenStub, call: Call) -> None:
        try:
            call.correct = await asyncio.wait_for(self._request(stub, call), DEADLINE + HANG_GRACE)
            call.code = "OK"
        except grpc.aio.AioRpcError as exc:
            call.code = exc.code().name
        except TimeoutError:
            call.code = "HUNG"
        call.ended = time.monotonic()

    async def _request(self, stub: kitchen_pb2_grpc.KitchenStub, call: Call) -> bool:
        """Make the call; True if the answer is its own request's."""
        tag = call.tag
        if call.kind == "unary":
            reply = await stub.Tally(kitchen_pb2.Count(tag=tag), timeout=DEADLINE)
            return bool(reply.tag == tag)
        if call.kind == "server-stream":
            items = [item async for item in stub.CountUp(kitchen_pb2.Count(n=5, tag=tag), timeout=DEADLINE)]
            return [(i.i, i.tag) for i in items] == [(k, tag) for k in range(5)]
        if call.kind == "bidi-stream":
            async def requests():  # type: ignore[no-untyped-def]
                for k in range(3):
                    yield kitchen_pb2.Item(i=k, data=tag.encode())
            items = [item async for item in stub.SyncChat(requests(), timeout=DEADLINE)]
            return [(i.i, i.data) for i in items] == [(2 * k, tag.encode()) for k in range(3)]
        reply = await stub.Once(kitchen_pb2.KeyedRequest(customer=f"{self.prefix}{tag}"), timeout=DEADLINE)
        return reply.pid > 0

    # -- faults ------------------------------------------------------------------------------

    def _fault(self) -> None:
        kind = self.rng.choice(FAULTS)
        if kind.startswith("broker") and not self._in_sync():
            kind = self.rng.choice(FAULTS[:4])  # one broker fault at a time: never two nodes down
        at = time.monotonic() - self.started
        began = time.monotonic()
        if kind.startswith(("handler", "frontend")):
            role, how = kind.split("-")
            group, start, down = ((self.handlers, self.start_handler, 5) if role == "handler"
                                  else (self.frontends, self.start_frontend, 3))
            i = self.rng.randrange(len(group))
            proc = group[i]
            assert proc is not None
            proc.stop(signal.SIGKILL if how == "kill" else signal.SIGTERM)
            time.sleep(self.rng.uniform(1, down))
            target = f"{role} {i}"
            start(i)
        else:
            node = self.rng.choice(Cluster.NODES)
            target = f"broker {node}"
            if kind == "broker-kill":
                self.cluster.kill(node)
                time.sleep(self.rng.uniform(5, 15))
                self.cluster.start(node)
            else:
                self.cluster.pause(node)
                time.sleep(self.rng.uniform(3, 10))
                self.cluster.resume(node)
        fault = Fault(round(at, 1), kind, target, round(time.monotonic() - began, 1))
        self.faults.append(fault)
        print(f"chaos: {fault.at:7.1f}s {kind} of {target} ({fault.down_s}s)", flush=True)

    def _in_sync(self) -> bool:
        try:
            self.cluster.wait_in_sync(timeout=1)
            return True
        except AssertionError:
            return False

    # -- the run -----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        print(f"chaos: seed {self.seed}, {self.args.minutes} min, logs in {self.logs}", flush=True)
        self.cluster.up()
        self.cluster.wait_in_sync()
        try:
            for i in range(len(self.frontends)):
                self.start_frontend(i)
            for i in range(len(self.handlers)):
                self.start_handler(i)
            loop = threading.Thread(target=lambda: asyncio.run(self._load()), name="load", daemon=True)
            self.started = time.monotonic()
            loop.start()
            end = self.started + self.args.minutes * 60
            while time.monotonic() < end:
                time.sleep(min(self.rng.uniform(10, 30), max(0.0, end - time.monotonic())))
                if time.monotonic() < end:
                    self._fault()
            self._stop.set()
            loop.join(DEADLINE + HANG_GRACE + 30)
            stopped = time.monotonic()
            self.cluster.up()
            self.cluster.wait_in_sync()
            self._drain()
            return self._check(stopped)
        finally:
            self.stop_all()

    def _drain(self, timeout: float = 120) -> None:
        """Wait until the handlers have committed every request record."""
        from confluent_kafka import ConsumerGroupTopicPartitions
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.cluster.bootstrap})
        group = f"{self.prefix}handlers"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group].result(timeout=10)
                committed = {(tp.topic, tp.partition): tp.offset for tp in result.topic_partitions}
                ends = {(t, p): end for t in self._request_topics() for p, end in end_offsets(self.cluster.bootstrap, t).items()}
                if all(committed.get(tp, -1) >= end for tp, end in ends.items() if end > 0):
                    return
            except Exception:  # the cluster may still be settling: ask again
                pass
            time.sleep(1)
        print("chaos: WARNING: the handlers did not commit every request within the drain time", flush=True)

    def _request_topics(self) -> list[str]:
        return [f"{self.prefix}rpctest.v1.Kitchen"]

    def _check(self, stopped: float) -> dict[str, Any]:
        calls = self.calls
        runs: dict[str, list[str]] = defaultdict(list)
        for line in self.events.read_text().splitlines() if self.events.exists() else []:
            word, tag, pid = line.split()
            runs[f"{word} {tag}"].append(pid)
        requests = [r for t in self._request_topics() for r in requests_in(self.cluster.bootstrap, t)]
        asked: set[str] = set()
        for request in requests:
            method = request.method.rsplit("/", 1)[-1]
            if method == "Tally":
                asked.add(f"ran {kitchen_pb2.Count.FromString(request.payload).tag}")
            elif method == "Once":
                asked.add(f"once {kitchen_pb2.KeyedRequest.FromString(request.payload).customer}")
        skipped = sorted(asked - set(runs))
        same_process = {key: pids for key, pids in runs.items() if key.startswith("once") and len(pids) != len(set(pids))}
        moved = sum(1 for key, pids in runs.items() if key.startswith("once") and len(set(pids)) > 1)
        ok_ends = sorted(c.ended for c in calls if c.code == "OK")
        marks = [self.started, *ok_ends, stopped]
        twice = 0
        if self.args.exactly_once:
            replies = Counter(r.correlation_id for t in self._replies_topics() for r in replies_in(self.cluster.bootstrap, t))
            twice = sum(1 for r in requests if replies[r.correlation_id] > 1)
        figures: dict[str, Any] = {
            "name": self.name, "seed": self.seed, "minutes": self.args.minutes, "callers": self.args.callers,
            "engine": os.environ.get("KAFKA_RPC_KAFKA_CLIENT", "confluent"),
            "mode": "exactly-once" if self.args.exactly_once else "at-least-once",
            "calls": len(calls),
            "by_kind": {k: dict(Counter(c.code for c in calls if c.kind == k)) for k in KINDS},
            "faults": [asdict(f) for f in self.faults],
            "faults_by_kind": dict(Counter(f.kind for f in self.faults)),
            "misdelivered": sum(1 for c in calls if c.code == "OK" and not c.correct),
            "hung": sum(1 for c in calls if c.code == "HUNG"),
            "request_records": len(requests),
            "skipped": len(skipped),
            "skipped_examples": skipped[:10],
            "keyed_reran_in_same_process": len(same_process),
            "keyed_reran_elsewhere": moved,
            "committed_twice": twice,
            "longest_gap_s": round(max(b - a for a, b in itertools.pairwise(marks)), 1),
        }
        figures["ok"] = figures["misdelivered"] == figures["hung"] == figures["skipped"] == \
            figures["keyed_reran_in_same_process"] == figures["committed_twice"] == 0
        with (self.logs / "calls.jsonl").open("w") as out:
            for c in calls:
                out.write(json.dumps(asdict(c)) + "\n")
        return figures

    def _replies_topics(self) -> list[str]:
        return [f"{self.prefix}replies"]


def markdown(f: dict[str, Any]) -> str:
    lines = [f"# Chaos soak: {f['name']}", "",
             f"{f['minutes']} min, seed {f['seed']} (replay: `python -m tests.chaos --seed {f['seed']} "
             f"--minutes {f['minutes']}{' --exactly-once' if f['mode'] == 'exactly-once' else ''}`), engine {f['engine']}, "
             f"{f['mode']}, {f['callers']} callers through two frontends, three handler processes, a three-node cluster.", "",
             "| check | result |", "|---|--:|",
             f"| calls made | {f['calls']} |",
             f"| request records in Kafka | {f['request_records']} |",
             f"| replies to the wrong caller, or wrong answers | {f['misdelivered']} |",
             f"| calls never ended (5 s past their deadline) | {f['hung']} |",
             f"| request records never run | {f['skipped']} |",
             f"| keyed calls run twice in one process | {f['keyed_reran_in_same_process']} |",
             f"| keyed calls run again in another process (partition moved) | {f['keyed_reran_elsewhere']} |",
             f"| requests with two committed replies (exactly-once) | {f['committed_twice']} |",
             f"| longest time without a successful call | {f['longest_gap_s']} s |",
             f"| **invariants held** | **{'yes' if f['ok'] else 'NO'}** |", "",
             "| kind | " + " | ".join(sorted({code for k in KINDS for code in f['by_kind'][k]})) + " |"]
    codes = sorted({code for k in KINDS for code in f["by_kind"][k]})
    lines.append("|---|" + "--:|" * len(codes))
    for k in KINDS:
        lines.append(f"| {k} | " + " | ".join(str(f["by_kind"][k].get(code, 0)) for code in codes) + " |")
    lines += ["", "Faults: " + ", ".join(f"{kind} {n}" for kind, n in sorted(f["faults_by_kind"].items())), "",
              "| at (s) | fault | target | down (s) |", "|--:|---|---|--:|"]
    lines += [f"| {x['at']} | {x['kind']} | {x['target']} | {x['down_s']} |" for x in f["faults"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the load and the faults run (default 10)")
    parser.add_argument("--seed", type=int, default=None, help="seed of the fault schedule and the load (default: random)")
    parser.add_argument("--exactly-once", action="store_true", help="run the handlers with --exactly-once")
    parser.add_argument("--callers", type=int, default=100, help="concurrent callers (default 100)")
    parser.add_argument("--port", type=int, default=29092, help="the cluster's first port (default 29092; six are used)")
    parser.add_argument("--keep-cluster", action="store_true", help="leave the cluster running afterwards")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.randrange(1_000_000)
    soak = Soak(args)
    try:
        figures = soak.run()
    finally:
        if not args.keep_cluster:
            soak.cluster.down()
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{soak.name}.json").write_text(json.dumps(figures, indent=2) + "\n")
    (RESULTS / f"{soak.name}.md").write_text(markdown(figures))
    print(markdown(figures))
    print(f"chaos: results in {RESULTS / soak.name}.{{json,md}}; calls and logs in {soak.logs}")
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
