"""Child processes of a benchmark run, and what they cost: CPU seconds and peak RSS.

Servers (frontend, handler processes, repliers) write to log files under the run's log
folder; a load client's stdout is a pipe carrying the line protocol of `bench.stats`.
`Monitor` samples every tracked process's RSS a few times a second and reads CPU times
when asked, so each measured window gets its own CPU seconds and peak RSS per process.
"""

from __future__ import annotations

import json
import os
import queue
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import psutil

from tests import procs


def python(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


class Proc(procs.Proc):
    """A child process of a run, tracked by `role`. With `pipe`, its stdout lines are read into
    `events` (JSON) as they come; the rest of its output goes to its log."""

    def __init__(self, role: str, args: list[str], log: Path, pipe: bool = False, env: dict[str, str] | None = None) -> None:
        super().__init__(args, log, procs.child_env(**(env or {})), name=role,
                         stdout=subprocess.PIPE if pipe else None)
        self.role = role
        self.events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        if pipe:
            assert self.popen.stdout is not None
            threading.Thread(target=self._read, args=(self.popen.stdout,), daemon=True).start()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            line = raw.decode(errors="replace").strip()
            if line.startswith("{"):
                self.events.put(json.loads(line))
            elif line:
                self._out.write(raw)
                self._out.flush()
        self.events.put(None)

    def next_event(self, timeout: float) -> dict[str, Any]:
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            raise RuntimeError(f"{self.role}: no progress for {timeout:.0f}s; see {self.log}") from None
        if event is None:
            self.popen.wait(10)
            raise RuntimeError(f"{self.role} exited with {self.popen.returncode}; see {self.log}:\n{self.tail()}")
        return event

    def wait_for(self, pattern: str, timeout: float = 90.0) -> re.Match[str]:
        try:
            return super().wait_for(pattern, timeout)
        except AssertionError as exc:  # a failed run, not a failed test
            raise RuntimeError(str(exc)) from None


@dataclass
class Snapshot:
    """CPU seconds of each tracked process, and of the whole machine, at one moment."""

    at: float
    cpu: dict[str, float]
    machine_busy: float
    peaks: dict[str, float] = field(default_factory=dict)


class Monitor:
    """Tracks processes by role; `snapshot()` reads CPU times and ends a peak-RSS period."""

    def __init__(self, interval: float = 0.2) -> None:
        self._procs: dict[str, psutil.Process] = {}
        self._peaks: dict[str, int] = {}
        self._lock = threading.Lock()
        self._interval = interval
        self._stop = threading.Event()
        self._self = psutil.Process()
        self._series: dict[str, list[tuple[float, float]]] = {}
        threading.Thread(target=self._sample, name="rss-sampler", daemon=True).start()

    def track(self, role: str, pid: int) -> None:
        with self._lock:
            self._procs[role] = psutil.Process(pid)
            self._peaks[role] = 0

    def untrack(self, role: str) -> None:
        with self._lock:
            self._procs.pop(role, None)
            self._peaks.pop(role, None)

    def rss_mb(self, role: str) -> float:
        """The current RSS of `role` in MB (0.0 if it is gone)."""
        with self._lock:
            proc = self._procs.get(role)
        try:
            return proc.memory_info().rss / 2**20 if proc else 0.0
        except psutil.Error:
            return 0.0

    def record_series(self, role: str) -> list[tuple[float, float]]:
        """From now on, keep every RSS sample (seconds, MB) of `role` in the returned list."""
        series: list[tuple[float, float]] = []
        with self._lock:
            self._series[role] = series
        return series

    def stop_series(self, role: str) -> None:
        with self._lock:
            self._series.pop(role, None)

    def _sample(self) -> None:
        while not self._stop.wait(self._interval):
            with self._lock:
                self._sample_locked()

    def _sample_locked(self) -> None:
        now = time.monotonic()
        for role, proc in self._procs.items():
            try:
                rss = proc.memory_info().rss
            except psutil.Error:
                continue
            self._peaks[role] = max(self._peaks[role], rss)
            if role in self._series:
                self._series[role].append((now, rss / 2**20))

    def snapshot(self) -> Snapshot:
        with self._lock:
            self._sample_locked()
            cpu: dict[str, float] = {}
            for role, proc in self._procs.items():
                try:
                    times = proc.cpu_times()
                    cpu[role] = times.user + times.system
                except psutil.Error:
                    pass
            own = self._self.cpu_times()
            cpu["bench"] = own.user + own.system
            peaks = {role: rss / 2**20 for role, rss in self._peaks.items()}
            self._peaks = dict.fromkeys(self._peaks, 0)
        total = psutil.cpu_times()
        busy = sum(total) - total.idle - getattr(total, "iowait", 0.0)
        return Snapshot(time.monotonic(), cpu, busy, peaks)

    @staticmethod
    def window(start: Snapshot, end: Snapshot, calls: int) -> dict[str, Any]:
        """Per process: CPU seconds, CPU microseconds per call, peak RSS (MB) between two snapshots."""
        procs: dict[str, dict[str, float]] = {}
        for role, cpu in end.cpu.items():
            if role not in start.cpu:
                continue
            used = cpu - start.cpu[role]
            procs[role] = {"cpu_s": round(used, 3), "cpu_us_per_call": round(used / calls * 1e6, 1) if calls else 0.0}
            if role in end.peaks:
                procs[role]["peak_rss_mb"] = round(end.peaks[role], 1)
        ours = sum(p["cpu_s"] for p in procs.values())
        busy = end.machine_busy - start.machine_busy
        seconds = end.at - start.at
        return {
            "processes": procs,
            "machine": {
                "cpu_busy_s": round(busy, 3),
                # CPU that none of our processes (nor the broker) used: other work on the machine.
                "foreign_cpu_s": round(max(0.0, busy - ours), 3),
                "cpu_capacity_s": round(seconds * (psutil.cpu_count() or 1), 3),
                "loadavg": [round(x, 2) for x in os.getloadavg()],
            },
        }

    def close(self) -> None:
        self._stop.set()
