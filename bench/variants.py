"""Run the frontend or a handler process with an experimental change, to measure a lever
without editing adapter/ or handlers/.

    python -m bench.variants linger=1,switch=0.001 adapter --proto-path protos ...
    python -m bench --only adapter --variant commit=0.2        # the suite starts them so

Each variant patches one named function at start-up and fails loudly if that name has moved
(the code under measurement changes; a silent no-op would measure nothing). Variants:

- ``switch=S``: ``sys.setswitchinterval(S)`` (default 0.005): how long a thread that wants
  the GIL waits before the holder is asked to drop it.
- ``linger=MS``: producers' ``linger_ms`` (ours: 0): batch records produced within MS.
- ``replyfetch=MS``: the reply listener's ``fetch_max_wait_ms`` (ours: 100).
- ``replybytes=N``: the reply listener's ``fetch_max_bytes`` (kafka-python's default: 50 MiB).
- ``commit=S``: a handler commits offsets at most every S seconds (ours: after every poll).
- ``trace=DIR``: timestamps at each hand-off of a call, written to DIR (`bench.trace`).
"""

from __future__ import annotations

import functools
import importlib
import runpy
import sys
import time
from typing import Any


def _module(name: str) -> Any:
    return importlib.import_module(name)


def _wrap_factory(module: str, name: str, **forced: Any) -> None:
    mod = _module(module)
    original = getattr(mod, name)  # AttributeError here: the code moved, update the variant

    @functools.wraps(original)
    def factory(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **(kwargs | forced))

    setattr(mod, name, factory)


def switch(value: str) -> None:
    sys.setswitchinterval(float(value))


def linger(value: str) -> None:
    for module in ("adapter.transport", "handlers.worker"):
        _wrap_factory(module, "make_producer", linger_ms=int(value))


def replyfetch(value: str) -> None:
    _wrap_factory("adapter.replies", "make_consumer", fetch_max_wait_ms=int(value))


def replybytes(value: str) -> None:
    _wrap_factory("adapter.replies", "make_consumer", fetch_max_bytes=int(value))


def commit(value: str) -> None:
    worker = _module("handlers.worker").Worker
    original = worker._commit
    every = float(value)

    @functools.wraps(original)
    async def throttled(self: Any, sync: bool, *args: Any, **kwargs: Any) -> None:
        now = time.monotonic()
        if not sync and now - getattr(self, "_bench_last_commit", 0.0) < every:
            return
        self._bench_last_commit = now
        await original(self, sync, *args, **kwargs)

    worker._commit = throttled


def trace(value: str) -> None:
    from bench import trace as tracing

    tracing.install(value)


VARIANTS = {"switch": switch, "linger": linger, "replyfetch": replyfetch, "replybytes": replybytes, "commit": commit,
            "trace": trace}


def apply(spec: str) -> None:
    for item in filter(None, spec.split(",")):
        name, _, value = item.partition("=")
        if name not in VARIANTS:
            raise SystemExit(f"bench.variants: unknown variant {name!r} (known: {', '.join(VARIANTS)})")
        VARIANTS[name](value)


def main() -> None:
    if len(sys.argv) < 3:
        raise SystemExit("usage: python -m bench.variants SPEC adapter|handlers ARGS...")
    spec, module, *args = sys.argv[1:]
    sys.argv = [module, *args]
    apply(spec)
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
