"""gRPC-to-Kafka RPC adapter: the frontend and the request/reply core.

    python -m adapter --proto-path protos

Public API: `Gateway`, `Requester`, the configs and the error tree.
"""
