"""Steady load through a frontend, and what became of every call: for the cluster fault tests.

`Load` runs callers in a thread of its own (grpc.aio), each making one `Kitchen.Tally` call at
a time with a tag no other call has; the handler records every execution of a tag in the
KITCHEN_EVENTS file. `Load.report` sets each call's outcome beside those executions and beside
the request records in Kafka, and gives the figures the fault tests print and check.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from rpctest.v1 import kitchen_pb2, kitchen_pb2_grpc

#: Every report line of this test session, printed again at its end (tests/conftest.py).
REPORTED: list[str] = []
#: How long past its deadline a call may take to end before it counts as never answered.
HANG_GRACE = 5.0
#: How long past its deadline a call may end and still count as ending "within its deadline":
#: the frontend's timer, a loaded 2-core machine's scheduling, and the client's own timer.
LATE_GRACE = 2.0


@dataclass
class Call:
    tag: str
    started: float
    ended: float = 0.0
    code: str = ""  # a grpc.StatusCode name, or HUNG
    wrong: bool = False  # OK, but the reply carried another call's tag


@dataclass
class Report:
    """What became of the calls a `Load` made."""

    made: int
    ok: int
    failed: Counter[str]  # non-OK status name -> calls
    wrong_caller: int  # OK replies carrying another call's tag
    unanswered: int  # calls still open HANG_GRACE past their deadline
    late: int  # calls that ended more than LATE_GRACE past their deadline
    runs: Counter[int]  # executions per request -> requests (from the handlers' events)
    skipped: int  # request records in Kafka that no handler ever ran
    longest_gap: float  # longest time without a successful call ending, while the load ran
    extra: dict[str, object] = field(default_factory=dict)

    def line(self, name: str) -> str:
        failed = ", ".join(f"{code} {n}" for code, n in sorted(self.failed.items())) or "none"
        runs = ", ".join(f"{k}x: {n}" for k, n in sorted(self.runs.items()))
        extra = "".join(f"; {k} {v}" for k, v in self.extra.items())
        return (f"{name}: {self.made} calls, {self.ok} OK, failed: {failed}; wrong caller {self.wrong_caller}, "
                f"unanswered {self.unanswered}, late {self.late}, skipped {self.skipped}; "
                f"executions per request: {runs}; longest gap {self.longest_gap:.1f}s{extra}")


class Load:
    """`callers` concurrent callers of Kitchen.Tally through `address`, until `stop()`."""

    def __init__(self, address: str, *, callers: int = 100, deadline: float = 10.0, name: str = "c") -> None:
        self.address, self.callers, self.deadline, self.name = address, callers, deadline, name
        self.calls: list[Call] = []
        self.started = self.stopped = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="load", daemon=True)

    def start(self) -> Load:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop making calls and wait for every open call to end (or be given up as hung)."""
        self._stop.set()
        self._thread.join(self.deadline + HANG_GRACE + 10)
        assert not self._thread.is_alive(), "the load's callers did not finish"
        self.stopped = time.monotonic()

    def ok_since(self, moment: float) -> int:
        """Successful calls that started after `moment` (time.monotonic)."""
        return sum(1 for c in list(self.calls) if c.code == "OK" and c.started > moment)

    def wait_ok_since(self, moment: float, timeout: float, count: int = 20) -> float:
        """Wait until `count` calls that started after `moment` succeeded; return how long that took after it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ok_since(moment) >= count:
                return time.monotonic() - moment
            time.sleep(0.1)
        codes = Counter(c.code for c in list(self.calls) if c.started > moment)
        raise AssertionError(f"no {count} successful calls within {timeout}s after the fault; calls since: {codes}")

    async def _main(self) -> None:
        async with grpc.aio.insecure_channel(self.address) as channel:
            stub = kitchen_pb2_grpc.KitchenStub(channel)
            await asyncio.gather(*(self._caller(stub, i) for i in range(self.callers)))

    async def _caller(self, stub: kitchen_pb2_grpc.KitchenStub, index: int) -> None:
        n = 0
        while not self._stop.is_set():
            call = Call(f"{self.name}-{index}-{n}", time.monotonic())
            n += 1
            self.calls.append(call)
            try:
                reply = await asyncio.wait_for(stub.Tally(kitchen_pb2.Count(tag=call.tag), timeout=self.deadline),
                                               self.deadline + HANG_GRACE)
                call.code, call.wrong = "OK", reply.tag != call.tag
            except grpc.aio.AioRpcError as exc:
                call.code = exc.code().name
            except TimeoutError:
                call.code = "HUNG"
            call.ended = time.monotonic()
            if call.code != "OK":
                await asyncio.sleep(0.2)  # back off, as clients do, from a frontend that fails fast

    def report(self, events: Path, requested: set[str] | None = None) -> Report:
        """The figures, from the calls, the handlers' `events` file, and the tags of the request
        records read back from Kafka (`requested`; None: not checked)."""
        assert self.stopped, "stop() the load first"
        runs_per_tag = Counter(line.split()[1] for line in _lines(events) if line.startswith("ran "))
        ours = list(self.calls)
        tags = {c.tag for c in ours}
        ok_ends = sorted(c.ended for c in ours if c.code == "OK")
        marks = [self.started, *ok_ends, self.stopped]
        skipped = len({t for t in (requested or set()) if t in tags} - set(runs_per_tag))
        return Report(
            made=len(ours),
            ok=sum(c.code == "OK" for c in ours),
            failed=Counter(c.code for c in ours if c.code != "OK"),
            wrong_caller=sum(c.wrong for c in ours),
            unanswered=sum(c.code == "HUNG" for c in ours),
            late=sum(c.ended - c.started > self.deadline + LATE_GRACE for c in ours),
            runs=Counter(runs_per_tag[t] for t in tags if runs_per_tag[t] or t in (requested or ())),
            skipped=skipped,
            longest_gap=max(b - a for a, b in itertools.pairwise(marks)),
        )


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []
