"""`Calls.abort` when partitions move: each call gets one final reply, whatever ends first.

In one process with a stand-in for the producer whose sends wait, as they do while a
transaction commits. The chaos soak (exactly-once) found streams with two committed final
replies, OK and then ABORTED: a stream that ended while the calls before it were being aborted
was sent ABORTED too.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import grpc
from prometheus_client import CollectorRegistry
from rpctest.v1 import kitchen_pb2

from adapter.protocol import wire
from adapter.runtime.metrics import HandlerMetrics
from handlers.calls import Calls
from handlers.dispatcher import Dispatcher
from handlers.registry import collect
from tests.kitchen_service import Kitchen

PARTITION = ("requests", 0)


def _stream(n: int, delay: float) -> wire.Request:
    return wire.Request("/rpctest.v1.Kitchen/AsyncCountUp", wire.new_correlation_id(), "replies",
                        payload=kitchen_pb2.Count(n=n, delay=delay).SerializeToString())


def test_a_stream_that_ends_while_others_are_aborted_gets_one_final_reply() -> None:
    async def run() -> tuple[Counter[tuple[bytes, str]], wire.Request, wire.Request]:
        finals: Counter[tuple[bytes, str]] = Counter()

        async def send(request: wire.Request, record: wire.Reply | wire.Frame, key: bytes | None) -> None:
            if isinstance(record, wire.Reply):
                finals[(record.correlation_id, record.code.name)] += 1
                if record.code == grpc.StatusCode.ABORTED:
                    await asyncio.sleep(0.5)  # a commit runs: the send waits

        dispatcher = Dispatcher(collect([Kitchen])[0], 4, HandlerMetrics(CollectorRegistry()))
        calls = Calls(dispatcher, send, metrics=HandlerMetrics(CollectorRegistry()))
        try:
            endless, ending = _stream(1000, 0.1), _stream(2, 0.1)  # the second ends 0.2 s after it starts
            work = [calls.accept(r, peer="memory", partition=PARTITION, key=None) for r in (endless, ending)]
            tasks = [asyncio.ensure_future(w) for w in work if w is not None]
            await asyncio.sleep(0.1)
            # Aborting the first waits 0.5 s in its send; the second ends meanwhile, and replies OK.
            await calls.abort({PARTITION}, grpc.StatusCode.ABORTED, "the call's partition moved")
            await asyncio.gather(*tasks, return_exceptions=True)
            return finals, endless, ending
        finally:
            dispatcher.close()

    finals, endless, ending = asyncio.run(run())
    assert finals[(endless.correlation_id, "ABORTED")] == 1
    assert finals[(ending.correlation_id, "OK")] == 1
    assert finals[(ending.correlation_id, "ABORTED")] == 0, "a stream that had replied OK was sent ABORTED too"
