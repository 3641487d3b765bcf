"""Real processes for tests (and the benchmarks): the frontend and handler processes, started and stopped cleanly."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from rpctest.v1 import kitchen_pb2_grpc

REPO = Path(__file__).resolve().parent.parent
#: Every process started, so the session can stop what a failed test left running.
STARTED: list[Proc] = []


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "gen"), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


class Proc:
    """A child process whose output goes to a log file that callers can wait on (the benchmarks'
    processes too: `bench.procs`). With `stdout`, only its stderr goes to the log."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None, *, name: str | None = None,
                 stdout: int | None = None) -> None:
        self.args = args
        #: What errors call it: the module it runs, unless told.
        self.name = name or (args[2] if len(args) > 2 else " ".join(args))
        self.log = log
        self._out = log.open("wb")
        self.popen = subprocess.Popen(args, cwd=REPO, env=env or child_env(),
                                      stdout=self._out if stdout is None else stdout,
                                      stderr=subprocess.STDOUT if stdout is None else self._out)
        STARTED.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        if not self._out.closed:
            self._out.flush()  # what a pipe reader (bench.procs) wrote
        return self.log.read_text(errors="replace")

    def tail(self, lines: int = 15) -> str:
        return "\n".join(self.output().splitlines()[-lines:])

    def wait_for(self, pattern: str, timeout: float = 60.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        while time.monotonic() < deadline:
            match = regex.search(self.output())
            if match:
                return match
            if self.popen.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.popen.returncode}:\n{self.output()}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {pattern!r} from {' '.join(self.args)}:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self in STARTED:
            STARTED.remove(self)
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._out.close()
        return self.popen.returncode


def frontend(log: Path, bootstrap: str, prefix: str, *extra: str, reply_topic: str | None = None,
             env: dict[str, str] | None = None) -> tuple[Proc, str]:
    """Start `python -m adapter` on a free port; return it and its address."""
    proc = Proc(
        [sys.executable, "-m", "adapter", "--proto-path", "protos", "--listen", "127.0.0.1:0",
         "--bootstrap-servers", bootstrap, "--topic-prefix", prefix,
         "--reply-topic", reply_topic or f"{prefix}replies", "--reply-partitions", "4",
         "--topic-partitions", "4", *extra],
        log,
        env=child_env(**(env or {})),
    )
    try:
        address = proc.wait_for(r"serving on (\S+)").group(1)
    except AssertionError:
        proc.stop()
        raise
    return proc, address


HANDLER_TARGETS = ["tests.kitchen_service:Kitchen", "examples.shop.mail:MailService", "examples.shop.coupon:CouponService"]


def handler(log: Path, bootstrap: str, prefix: str, *extra: str, env: dict[str, str] | None = None,
            targets: list[str] | None = None, default_allow_list: bool = False) -> Proc:
    """Start `python -m handlers` and wait until it has subscribed.

    Replies may go to any topic under `prefix` (the tests' reply topics), unless `extra` says
    otherwise or `default_allow_list` keeps the handler's own default."""
    proc = Proc(
        [sys.executable, "-m", "handlers", *(targets or HANDLER_TARGETS), "--bootstrap-servers", bootstrap,
         "--topic-prefix", prefix, "--group", f"{prefix}handlers", "--topic-partitions", "4",
         *([] if "--allow-reply-topic" in extra or default_allow_list else ["--allow-reply-topic", f"{prefix}*"]),
         *extra],
        log,
        env=child_env(**(env or {})),
    )
    try:
        proc.wait_for(r"handlers: serving")
        # Only once the group has given it partitions is a call served without a join delay.
        proc.wait_for(r"partitions assigned", timeout=90)
    except AssertionError:
        proc.stop()
        raise
    return proc


@contextmanager
def kitchen(tmp_path: Path, bootstrap: str, prefix: str, *handler_args: str) -> Iterator[tuple[kitchen_pb2_grpc.KitchenStub, Proc]]:
    """A handler process serving the test Kitchen, a frontend, and a stub calling through them
    (with the handler, for its output); both processes are stopped afterwards."""
    worker = handler(tmp_path / "h.log", bootstrap, prefix, *handler_args, targets=["tests.kitchen_service:Kitchen"])
    try:
        front, address = frontend(tmp_path / "f.log", bootstrap, prefix)
        try:
            with grpc.insecure_channel(address) as channel:
                yield kitchen_pb2_grpc.KitchenStub(channel), worker
        finally:
            front.stop()
    finally:
        worker.stop()


def status_of(future: grpc.Future) -> grpc.StatusCode:
    """The status a gRPC call future ended with (waiting for it)."""
    try:
        future.result()
        return grpc.StatusCode.OK
    except grpc.RpcError as exc:
        return exc.code()


def events(path: Path) -> list[str]:
    """The lines the Kitchen servicer recorded (KITCHEN_EVENTS) so far."""
    return path.read_text().splitlines() if path.exists() else []


def wait_for_event(path: Path, line: str, timeout: float = 15) -> None:
    """Wait until the Kitchen servicer has recorded `line` in `path`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if line in events(path):
            return
        time.sleep(0.05)
    raise AssertionError(f"handler never recorded {line!r}; it recorded {events(path)}")
