"""gRPC-to-Kafka RPC adapter: the frontend and the request/reply core.

    python -m adapter --proto-path protos

Public API: `Gateway`, `Requester`, the configs and the error tree; `KafkaChannel` and
`AioKafkaChannel`, channels for generated stubs that call handler processes through Kafka
with no frontend in between::

    from adapter import KafkaChannel
    with KafkaChannel.connect([mail_pb2], bootstrap_servers="127.0.0.1:9092") as channel:
        reply = mail_pb2_grpc.MailServiceStub(channel).SendMail(request, timeout=5)
"""

from __future__ import annotations

from typing import Any

__all__ = ["AioKafkaChannel", "KafkaChannel"]


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `python -m adapter --help` does not load grpc and Kafka.
    if name == "KafkaChannel":
        from adapter.channel import KafkaChannel

        return KafkaChannel
    if name == "AioKafkaChannel":
        from adapter.aio_channel import AioKafkaChannel

        return AioKafkaChannel
    raise AttributeError(f"module 'adapter' has no attribute {name!r}")
