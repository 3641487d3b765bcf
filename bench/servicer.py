"""The servicer every Python scenario runs, and the plain gRPC server of the "direct" scenario.

    python -m bench.servicer --listen 127.0.0.1:0      # prints "direct: serving on HOST:PORT"
    python -m handlers bench.servicer:Echo ...         # the same servicer behind Kafka

``Echo`` is ``async def``: a handler process awaits it on its event loop, as grpc.aio does,
so both scenarios run the same code (a ``def`` method would add a thread-pool hop in the
handler process; `docs/performance.md` measures that separately).
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import grpc
from rpctest.v1 import kitchen_pb2_grpc


class Echo(kitchen_pb2_grpc.KitchenServicer):
    """rpctest.v1.Kitchen with Echo implemented: returns the request."""

    async def Echo(self, request, context):  # type: ignore[no-untyped-def]
        return request


class SyncEcho(kitchen_pb2_grpc.KitchenServicer):
    """The same with ``def``: a handler process runs it on its thread pool (one more thread hop)."""

    def Echo(self, request, context):  # type: ignore[no-untyped-def]
        return request


async def serve(listen: str) -> None:
    server = grpc.aio.server()
    kitchen_pb2_grpc.add_KitchenServicer_to_server(Echo(), server)
    port = server.add_insecure_port(listen)
    await server.start()
    print(f"direct: serving on {listen.rsplit(':', 1)[0]}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.servicer", description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:0")
    asyncio.run(serve(parser.parse_args().listen))


if __name__ == "__main__":
    main()
