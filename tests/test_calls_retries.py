"""Retries with an idempotency key (`Calls` with a `ReplyCache`), without Kafka: what a call
leaves for them when its reply is refused, and when it is cancelled before it starts."""

from __future__ import annotations

import asyncio
import dataclasses

import grpc
from prometheus_client import CollectorRegistry
from rpctest.v1 import kitchen_pb2

from adapter.errors import RecordRefused, TransportError
from adapter.protocol import wire
from adapter.runtime.metrics import HandlerMetrics
from handlers.calls import Calls
from handlers.dedupe import ReplyCache
from handlers.dispatcher import Dispatcher
from handlers.registry import collect
from tests.kitchen_service import Kitchen
from tests.test_early_reply import ECHO, Kafka, _request


def _calls(kafka: Kafka, replies: ReplyCache) -> tuple[Calls, Dispatcher]:
    dispatcher = Dispatcher(collect([Kitchen])[0], 4, HandlerMetrics(CollectorRegistry()))
    return Calls(dispatcher, kafka.send, send_now=kafka.send_now, replies=replies), dispatcher


def _keyed() -> wire.Request:
    return dataclasses.replace(_request("Echo", ECHO), idempotency_key=b"k1")


def _twice(error: Exception, replies: ReplyCache) -> tuple[Kafka, list[bytes], list[BaseException | None]]:
    """Serve the same keyed call twice, one after the other, Kafka failing the first reply with
    `error`: the stand-in producer, the correlation ids and the outcomes."""
    async def run() -> tuple[Kafka, list[bytes], list[BaseException | None]]:
        kafka = Kafka(error=error, errors=1)
        calls, dispatcher = _calls(kafka, replies)
        ids: list[bytes] = []
        outcomes: list[BaseException | None] = []
        try:
            for _ in range(2):
                request = _keyed()
                ids.append(request.correlation_id)
                work = calls.accept(request, peer="memory")
                assert work is not None
                outcomes.append((await asyncio.gather(work, return_exceptions=True))[0])
        finally:
            dispatcher.close()
        return kafka, ids, outcomes

    return asyncio.run(run())


def test_a_retry_of_a_call_whose_reply_was_refused_in_passing_gets_that_reply() -> None:
    kafka, ids, outcomes = _twice(TransportError("REQUEST_TIMED_OUT"), ReplyCache(60, 100))
    assert isinstance(outcomes[0], TransportError) and outcomes[1] is None, outcomes
    # The handler ran once (its thread sent the first reply); the retry got that reply again,
    # under its own correlation id, from the kept replies: the handler's work is not done twice.
    assert [path for path, _, _ in kafka.sent] == ["now", "loop"], kafka.sent
    first, again = kafka.sent[0][1], kafka.sent[1][1]
    assert isinstance(first, wire.Reply) and isinstance(again, wire.Reply)
    assert (first.correlation_id, again.correlation_id) == (ids[0], ids[1])
    assert again.payload == first.payload and kitchen_pb2.Everything.FromString(again.payload) == ECHO


def test_a_reply_refused_for_what_it_is_leaves_its_status_for_retries() -> None:
    replies = ReplyCache(60, 100)
    kafka, _, outcomes = _twice(RecordRefused("producing to replies: MSG_SIZE_TOO_LARGE"), replies)
    assert isinstance(outcomes[0], RecordRefused) and outcomes[1] is None, outcomes
    # The handler ran once; its retry was sent the status its caller is told (the worker's
    # refusal path), not the reply Kafka cannot take, and the cache holds no payload.
    assert [path for path, _, _ in kafka.sent] == ["now", "loop"], kafka.sent
    status = kafka.sent[1][1]
    assert isinstance(status, wire.Reply) and status.code == grpc.StatusCode.RESOURCE_EXHAUSTED, status
    assert "could not be written to Kafka" in status.message and not status.payload
    assert replies.bytes < 1000


def test_a_call_cancelled_before_it_starts_leaves_nothing_behind() -> None:
    async def run() -> tuple[Kafka, int, BaseException | None]:
        kafka = Kafka()
        calls, dispatcher = _calls(kafka, ReplyCache(60, 100))
        try:
            first = _keyed()
            work = calls.accept(first, peer="memory")
            assert work is not None
            calls.cancel(first.correlation_id)  # a CANCEL frame in the same batch: before its first step
            await asyncio.gather(work, return_exceptions=True)
            await asyncio.sleep(0)
            left = len(calls)
            # A retry with its key runs, rather than waiting for a call that never ran.
            retry = calls.accept(_keyed(), peer="memory")
            assert retry is not None
            outcome = (await asyncio.gather(asyncio.wait_for(retry, 10), return_exceptions=True))[0]
        finally:
            dispatcher.close()
        return kafka, left, outcome

    kafka, left, outcome = asyncio.run(run())
    assert left == 0
    assert outcome is None, outcome
    assert [path for path, _, _ in kafka.sent] == ["now"], kafka.sent
