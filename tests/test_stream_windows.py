"""The per-stream windows of docs/protocol.md: at most 64 messages of a stream sent and not yet
acknowledged by Kafka, in each direction; the sender waits for acknowledgements beyond that
(#12.17). Unit tests: Kafka's acknowledgements are held back by a stand-in for the producer.
"""

from __future__ import annotations

import asyncio

from rpctest.v1 import kitchen_pb2

from adapter.caller.stream import SEND_WINDOW, Stream
from adapter.protocol import wire
from adapter.protocol.routing import routes_for
from adapter.runtime.config import KafkaConfig, WorkerConfig
from handlers.registry import collect, load_target
from handlers.worker import STREAM_WINDOW, Worker


class _Requester:
    """What a Stream asks of its requester: frames are kept, acknowledged when the test says."""

    def __init__(self) -> None:
        self.acks: list[object] = []

    def send_frame(self, stream: Stream, frame: wire.Frame, on_ack: object = None) -> None:
        self.acks.append(on_ack)


def test_the_frontend_sends_at_most_64_unacknowledged_request_messages_per_stream() -> None:
    async def run() -> tuple[int, int, int]:
        requester = _Requester()
        request = wire.Request("/rpctest.v1.Kitchen/Collect", wire.new_correlation_id(), "replies", opens_stream=True)
        stream = Stream(requester, request, "requests", b"", 0, max_buffered=1 << 20)  # type: ignore[arg-type]

        async def client() -> None:
            for i in range(SEND_WINDOW + 10):
                await stream.send(kitchen_pb2.Item(i=i).SerializeToString())

        sending = asyncio.ensure_future(client())
        await asyncio.sleep(0.1)
        held = len(requester.acks)
        for ack in requester.acks[:3]:
            ack()  # type: ignore[operator]
        await asyncio.sleep(0.1)
        after_three = len(requester.acks)
        for ack in requester.acks[3:]:
            ack()  # type: ignore[operator]
        await asyncio.wait_for(sending, 5)
        return held, after_three, len(requester.acks)

    held, after_three, total = asyncio.run(run())
    assert held == SEND_WINDOW == 64
    assert after_three == SEND_WINDOW + 3
    assert total == SEND_WINDOW + 10


def test_a_handler_sends_at_most_64_unacknowledged_response_messages_per_stream() -> None:
    async def run() -> tuple[int, bool, int]:
        methods, services = collect([load_target("tests.kitchen_service:Kitchen")])
        worker = Worker(WorkerConfig(kafka=KafkaConfig(), group="g"), methods, routes_for(services, ""))
        acks: list[asyncio.Future[None]] = []

        async def produce(topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]],
                          partition: int | None = None) -> asyncio.Future[None]:
            acks.append(asyncio.get_running_loop().create_future())
            return acks[-1]

        worker.policy.produce = produce  # type: ignore[method-assign]
        request = wire.Request("/rpctest.v1.Kitchen/CountUp", wire.new_correlation_id(), "replies")
        sent = 0

        async def generator() -> None:
            nonlocal sent
            for i in range(STREAM_WINDOW + 10):
                await worker._send(request, wire.Frame(request.correlation_id, wire.MESSAGE, i, b"x"), None)
                sent += 1

        emitting = asyncio.ensure_future(generator())
        await asyncio.sleep(0.1)
        held, waiting = len(acks), not emitting.done()
        for ack in acks:
            ack.set_result(None)
        await asyncio.sleep(0.1)
        for ack in acks:
            if not ack.done():
                ack.set_result(None)
        await asyncio.wait_for(emitting, 5)
        worker.dispatcher.close()
        return held, waiting, sent

    held, waiting, sent = asyncio.run(run())
    assert held == STREAM_WINDOW == 64, "the generator ran ahead of Kafka's acknowledgements"
    assert waiting
    assert sent == STREAM_WINDOW + 10
