"""Handler processes: run gRPC servicers against Kafka request topics.

    python -m handlers examples.mail:MailService --group mail

Public API: `ServiceRegistry` for decorated handler functions, `HandlerContext`.
"""

from handlers.context import HandlerContext
from handlers.registry import ServiceRegistry

__all__ = ["HandlerContext", "ServiceRegistry"]
