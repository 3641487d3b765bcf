"""Handler processes: run gRPC servicers against Kafka request topics.

    python -m handlers examples.shop.mail:MailService --group mail

What users import is here (`__all__`): `ServiceRegistry` for decorated handler functions,
`HandlerContext` (the `context` a handler gets), and the test kit's `serve_in_memory`. The
other modules are the implementation (docs/architecture.md).
"""

from __future__ import annotations

from typing import Any

from handlers.context import HandlerContext
from handlers.registry import ServiceRegistry

__all__ = ["HandlerContext", "ServiceRegistry", "serve_in_memory"]


def __getattr__(name: str) -> Any:
    # The test kit loads the caller core: only when asked for.
    if name == "serve_in_memory":
        from handlers.testing import serve_in_memory

        return serve_in_memory
    raise AttributeError(f"module 'handlers' has no attribute {name!r}")
