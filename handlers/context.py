"""`HandlerContext`: what a servicer's ``context`` argument offers in a handler process.

It behaves like ``grpc.ServicerContext`` for what handlers use, so a servicer written
for ``grpc.server`` runs unchanged. `abort` raises at once, so both ``context.abort(...)``
and ``await context.abort(...)`` work.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, NoReturn

import grpc

from adapter.errors import MalformedRecord
from adapter.protocol import wire

log = logging.getLogger(__name__)


class Abort(Exception):
    """Raised by `HandlerContext.abort`; carries nothing, the context holds the status."""


class HandlerContext:
    """The context of one call being handled."""

    def __init__(self, request: wire.Request, peer: str) -> None:
        self._request = request
        self._peer = peer
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None
        self._trailing: wire.Metadata = ()
        self._callbacks: list[Callable[[], None]] = []
        self._callbacks_lock = threading.Lock()
        self._callbacks_ran = False
        self._cancelled = False
        self.aborted = False

    # Reading the call.
    def invocation_metadata(self) -> wire.Metadata:
        return self._request.metadata

    def time_remaining(self) -> float | None:
        remaining = self._request.time_remaining()
        return None if remaining is None else max(0.0, remaining)

    def is_active(self) -> bool:
        remaining = self._request.time_remaining()
        return not self._cancelled and (remaining is None or remaining > 0)

    def peer(self) -> str:
        """Where the call came from: ``kafka:TOPIC/PARTITION@OFFSET``."""
        return self._peer

    def method(self) -> str:
        return self._request.method

    def correlation_id(self) -> bytes:
        """The call's correlation id (the ``kafka_correlationId`` header), for logs."""
        return self._request.correlation_id

    # Ending the call.
    def abort(self, code: grpc.StatusCode, details: str) -> NoReturn:
        if code is grpc.StatusCode.OK:
            log.error("abort() called with code OK; using UNKNOWN as grpc does")
            code = grpc.StatusCode.UNKNOWN
        self._code, self._details, self.aborted = code, details, True
        raise Abort()

    def abort_with_status(self, status: Any) -> NoReturn:
        """Abort with a ``grpc.Status`` (e.g. from ``grpc_status.rpc_status.to_status``)."""
        self.set_trailing_metadata(tuple(status.trailing_metadata or ()))
        self.abort(status.code, status.details)

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str | None:
        return self._details

    def set_trailing_metadata(self, metadata: Any) -> None:
        self._trailing = tuple((k, v) for k, v in metadata)

    def trailing_metadata(self) -> wire.Metadata:
        return self._trailing

    def add_callback(self, callback: Callable[[], None]) -> bool:
        """Run `callback` when the call ends; False (not registered) once it has, as under grpc.

        Safe from a def handler's thread while the event loop runs the callbacks."""
        with self._callbacks_lock:
            if self._callbacks_ran:
                return False
            self._callbacks.append(callback)
            return True

    def cancel(self) -> None:
        self._cancelled = True

    @property
    def cancelled(self) -> bool:
        return self._cancelled

    # Accepted for compatibility; they have no meaning over Kafka.
    def send_initial_metadata(self, metadata: Any) -> None:
        log.debug("initial metadata is not carried over Kafka; ignored")

    def set_compression(self, compression: Any) -> None:
        pass

    def disable_next_message_compression(self) -> None:
        pass

    def auth_context(self) -> dict[str, list[bytes]]:
        """The caller as the frontend's TLS verified it (grpc's auth context, certificates left
        out): empty without mutual TLS, or for a record not written by a frontend."""
        context: dict[str, list[bytes]] = {}
        for name, value in self._request.auth:
            context.setdefault(name, []).append(value)
        return context

    def peer_identities(self) -> list[bytes] | None:
        return self._request.peer_identities()

    def peer_identity_key(self) -> str | None:
        return self._request.identity_key

    def run_callbacks(self) -> None:
        with self._callbacks_lock:
            self._callbacks_ran = True
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:
                log.exception("callback of %s failed", self._request.method)

    def reply(self, payload: bytes | None, error: BaseException | None = None) -> wire.Reply:
        """The reply for this call, following grpc's rules for codes set, aborts and errors."""
        code, details = self._code, self._details
        if error is not None and not self.aborted:
            code = code or grpc.StatusCode.UNKNOWN
            details = details if details is not None else f"Exception calling application: {error}"
        elif payload is None and (code is None or code is grpc.StatusCode.OK):
            code, details = grpc.StatusCode.INTERNAL, "handler returned no response message"
        code = code or grpc.StatusCode.OK
        trailing = self._trailing
        try:
            wire.check_metadata(trailing)
        except MalformedRecord as exc:
            # As grpc.server does: a reply the caller could not read becomes INTERNAL.
            code, details, trailing = grpc.StatusCode.INTERNAL, f"invalid trailing metadata: {exc}", ()
        return wire.Reply(
            correlation_id=self._request.correlation_id,
            code=code,
            message=details or "",
            trailing_metadata=trailing,
            payload=payload if code is grpc.StatusCode.OK and payload is not None else b"",
        )
