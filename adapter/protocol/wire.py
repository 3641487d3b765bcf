"""The wire protocol: how a gRPC call is written into Kafka records, and read back.

This module is the only place that knows header names and encodings; the frontend,
the handler processes and the tests all go through it. `docs/protocol.md` is its
prose twin: change both together.

A request record::

    topic   = the method's request topic (see `adapter.protocol.routing`)
    key     = the partition key (or none)
    value   = the request message, serialized protobuf (no gRPC framing)
    headers = kafka_correlationId, kafka_replyTopic, kafka_replyPartition,
              rpc-method, rpc-deadline, rpc-md-<name>...

A reply record::

    topic/partition = the request's kafka_replyTopic / kafka_replyPartition
    key     = the request's key
    value   = the response message (empty when the status is not OK)
    headers = kafka_correlationId (copied byte for byte), rpc-status, rpc-message,
              rpc-tm-<name>...

Example::

    >>> req = Request(method="/shop.Mail/Send", correlation_id=b"\\x01" * 16,
    ...               reply_topic="replies", reply_partition=3, payload=b"...")
    >>> Request.decode(req.encode_headers(), req.payload) == req
    True

The whole wire format is this one module (and docs/protocol.md), on purpose, whatever its
length (~390 lines): nothing else encodes or decodes a header.
"""

from __future__ import annotations

import struct
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import grpc

from adapter.errors import MalformedRecord

Headers = Sequence[tuple[str, bytes]]
#: gRPC metadata as grpc uses it: text values are ``str``, ``-bin`` values are ``bytes``.
Metadata = tuple[tuple[str, str | bytes], ...]

# Spring Kafka's names (KafkaHeaders), so ReplyingKafkaTemplate peers interoperate.
CORRELATION_ID = "kafka_correlationId"
REPLY_TOPIC = "kafka_replyTopic"
REPLY_PARTITION = "kafka_replyPartition"
# Ours.
METHOD = "rpc-method"
DEADLINE = "rpc-deadline"
STATUS = "rpc-status"
STATUS_MESSAGE = "rpc-message"
METADATA_PREFIX = "rpc-md-"
TRAILER_PREFIX = "rpc-tm-"
KIND = "rpc-kind"
SEQ = "rpc-seq"
IDEMPOTENCY_KEY = "rpc-idempotency-key"
#: The frontend's verified view of its gRPC peer, one header per value: ``rpc-auth-<property>``
#: (grpc's auth context, e.g. x509_common_name), and which property names the peer.
AUTH_PREFIX = "rpc-auth-"
PEER_IDENTITY_KEY = "rpc-peer-identity-key"
#: A verified caller's properties, as grpc's auth context has them: (property, value) pairs.
Auth = tuple[tuple[str, bytes], ...]
# On records moved to the dead-letter topic, beside the original headers.
DEAD_LETTER_REASON = "rpc-dead-letter-reason"
DEAD_LETTER_SOURCE = "rpc-dead-letter-source"

#: gRPC metadata key a client sets to make retries of a call idempotent.
IDEMPOTENCY_METADATA = "idempotency-key"

# Values of rpc-kind. A record without it is a whole call (request) or its final status (reply).
OPEN = "open"  # request: opens a client or bidi stream; the call's headers, no message
MESSAGE = "msg"  # one message of a stream, either direction
HALF_CLOSE = "end"  # request: the client has sent its last message
CANCEL = "cancel"  # request: the caller is gone; stop and send nothing more
_FRAME_KINDS = frozenset({MESSAGE, HALF_CLOSE, CANCEL})

#: Metadata keys that describe the HTTP/2 transport of one hop, not the call itself.
#: W3C trace context as plain record headers, as Kafka instrumentations write them (Spring's
#: Micrometer tracing, OpenTelemetry's kafka-clients instrumentation): a request without the
#: same keys in its rpc-md-* metadata takes them from there.
TRACE_HEADERS = ("traceparent", "tracestate")
_HOP_METADATA = frozenset(
    {"grpc-timeout", "grpc-encoding", "grpc-accept-encoding", "content-type", "te"}
)
_CODES = {code.value[0]: code for code in grpc.StatusCode}
_INT32 = struct.Struct(">i")


def new_correlation_id() -> bytes:
    """A fresh 16-byte correlation id (the same bytes as Spring's binary UUID)."""
    return uuid.uuid4().bytes


def status_code(value: int) -> grpc.StatusCode:
    """The `grpc.StatusCode` for a numeric code; unknown numbers map to UNKNOWN."""
    return _CODES.get(value, grpc.StatusCode.UNKNOWN)


@dataclass(frozen=True)
class Request:
    """One gRPC request as carried by a Kafka record."""

    method: str
    correlation_id: bytes
    reply_topic: str | None
    reply_partition: int | None = None
    #: Absolute deadline, seconds since the epoch (wall clock), or None.
    deadline: float | None = None
    metadata: Metadata = ()
    payload: bytes = b""
    #: True for a client or bidi stream: this record opens it and its messages follow as Frames.
    opens_stream: bool = False
    #: Same key, same method: a retry of the same call (the handler may return the first reply).
    idempotency_key: bytes | None = None
    #: The caller as the frontend verified it (grpc's auth context): (property, value) pairs.
    auth: Auth = ()
    #: The `auth` property that names the caller (grpc's peer_identity_key), if any.
    identity_key: str | None = None

    def peer_identities(self) -> list[bytes] | None:
        """The caller's verified identities (grpc's ``peer_identities``), or None."""
        if self.identity_key is None:
            return None
        return [value for name, value in self.auth if name == self.identity_key] or None

    def encode_headers(self) -> list[tuple[str, bytes]]:
        """The Kafka headers for this request (the value is `payload`)."""
        headers = [(CORRELATION_ID, self.correlation_id), (METHOD, self.method.encode())]
        if self.opens_stream:
            headers.append((KIND, OPEN.encode()))
        if self.idempotency_key is not None:
            headers.append((IDEMPOTENCY_KEY, self.idempotency_key))
        if self.reply_topic is not None:
            headers.append((REPLY_TOPIC, self.reply_topic.encode()))
        if self.reply_partition is not None:
            headers.append((REPLY_PARTITION, _INT32.pack(self.reply_partition)))
        if self.deadline is not None:
            headers.append((DEADLINE, str(round(self.deadline * 1000)).encode()))
        headers.extend((AUTH_PREFIX + name, value) for name, value in self.auth)
        if self.identity_key is not None:
            headers.append((PEER_IDENTITY_KEY, self.identity_key.encode()))
        headers.extend(_encode_metadata(METADATA_PREFIX, self.metadata))
        return headers

    @classmethod
    def decode(cls, headers: Headers | None, value: bytes | None) -> Request:
        """Read a request record. Raises `MalformedRecord` naming the bad header.

        Without `rpc-method` the method is ``""``: the caller decides what that means
        (a plain Spring requester does not send it).
        """
        last = _last_values(headers)
        correlation_id = _correlation_id(last)
        reply_partition = None
        if REPLY_PARTITION in last:
            raw = last[REPLY_PARTITION]
            if len(raw) != 4:
                raise MalformedRecord(f"{REPLY_PARTITION} must be a 4-byte big-endian int")
            reply_partition = _INT32.unpack(raw)[0]
        deadline = None
        if DEADLINE in last:
            try:
                deadline = int(last[DEADLINE].decode("ascii")) / 1000
            except (UnicodeDecodeError, ValueError):
                raise MalformedRecord(f"{DEADLINE} must be decimal epoch milliseconds") from None
        return cls(
            method=_text(last, METHOD) or "",
            correlation_id=correlation_id,
            reply_topic=_text(last, REPLY_TOPIC) or None,  # empty: no reply wanted
            reply_partition=reply_partition,
            deadline=deadline,
            metadata=_with_trace_headers(_decode_metadata(METADATA_PREFIX, headers), last),
            payload=value or b"",
            opens_stream=last.get(KIND) == OPEN.encode(),
            idempotency_key=last.get(IDEMPOTENCY_KEY),
            auth=tuple((name[len(AUTH_PREFIX):], bytes(value or b"")) for name, value in headers or ()
                       if name.startswith(AUTH_PREFIX)),
            identity_key=_text(last, PEER_IDENTITY_KEY) or None,
        )

    def time_remaining(self, now: float | None = None) -> float | None:
        """Seconds until the deadline (negative once passed), or None without one."""
        if self.deadline is None:
            return None
        return self.deadline - (time.time() if now is None else now)


@dataclass(frozen=True)
class Reply:
    """The outcome of one call as carried by a Kafka record."""

    correlation_id: bytes
    code: grpc.StatusCode = grpc.StatusCode.OK
    message: str = ""
    trailing_metadata: Metadata = ()
    payload: bytes = b""

    def encode_headers(self) -> list[tuple[str, bytes]]:
        """The Kafka headers for this reply (the value is `payload`)."""
        headers = [(CORRELATION_ID, self.correlation_id), (STATUS, str(self.code.value[0]).encode())]
        if self.message:
            headers.append((STATUS_MESSAGE, self.message.encode()))
        headers.extend(_encode_metadata(TRAILER_PREFIX, self.trailing_metadata))
        return headers

    @classmethod
    def decode(cls, headers: Headers | None, value: bytes | None) -> Reply:
        """Read a reply record. A reply without `rpc-status` is OK (a Spring replier)."""
        last = _last_values(headers)
        correlation_id = _correlation_id(last)
        code = grpc.StatusCode.OK
        if STATUS in last:
            try:
                code = status_code(int(last[STATUS].decode("ascii")))
            except (UnicodeDecodeError, ValueError):
                raise MalformedRecord(f"{STATUS} must be a decimal gRPC status code") from None
        return cls(
            correlation_id=correlation_id,
            code=code,
            message=_text(last, STATUS_MESSAGE) or "",
            trailing_metadata=_decode_metadata(TRAILER_PREFIX, headers),
            payload=value or b"",
        )


@dataclass(frozen=True)
class Frame:
    """A record inside a streaming call: a message (either way), a half-close or a cancel."""

    correlation_id: bytes
    kind: str
    #: Position of a MESSAGE in its direction of the call, from 0.
    seq: int = 0
    payload: bytes = b""

    def encode_headers(self) -> list[tuple[str, bytes]]:
        """The Kafka headers for this frame (the value is `payload`)."""
        headers = [(CORRELATION_ID, self.correlation_id), (KIND, self.kind.encode())]
        if self.kind == MESSAGE:
            headers.append((SEQ, str(self.seq).encode()))
        return headers

    @classmethod
    def decode(cls, headers: Headers | None, value: bytes | None) -> Frame:
        last = _last_values(headers)
        correlation_id = _correlation_id(last)
        kind = _text(last, KIND) or ""
        if kind not in _FRAME_KINDS:
            raise MalformedRecord(f"{KIND} {kind!r} is not one of {', '.join(sorted(_FRAME_KINDS))}")
        seq = 0
        if kind == MESSAGE:
            try:
                seq = int(last.get(SEQ, b"").decode("ascii"))
            except (UnicodeDecodeError, ValueError):
                raise MalformedRecord(f"{SEQ} must be a decimal sequence number") from None
        return cls(correlation_id=correlation_id, kind=kind, seq=seq, payload=value or b"")


def _with_trace_headers(metadata: Metadata, last: dict[str, bytes]) -> Metadata:
    if any(key == TRACE_HEADERS[0] for key, _ in metadata) or TRACE_HEADERS[0] not in last:
        return metadata
    found = []
    for name in TRACE_HEADERS:
        try:
            text = last[name].decode("ascii") if name in last else ""
        except UnicodeDecodeError:
            return metadata  # not W3C trace context: someone else's header, not ours to refuse
        if text:
            found.append((name, text))
    return (*metadata, *found)


def decode_request(headers: Headers | None, value: bytes | None) -> Request | Frame:
    """Read any record of a request topic: a call, a stream's opening, or a frame of a stream."""
    if _is_frame(headers):
        return Frame.decode(headers, value)
    return Request.decode(headers, value)


def decode_reply(headers: Headers | None, value: bytes | None) -> Reply | Frame:
    """Read any record of a reply topic: a streamed message, or the call's final status."""
    if _is_frame(headers):
        return Frame.decode(headers, value)
    return Reply.decode(headers, value)


def _is_frame(headers: Headers | None) -> bool:
    kind = None
    for name, value in headers or ():
        if name == KIND:
            kind = value
    return kind is not None and kind not in (b"", OPEN.encode())


def dead_letter_headers(headers: Headers | None, reason: str, source: str) -> list[tuple[str, bytes]]:
    """The headers of a record moved to the dead-letter topic: its own, then why and whence."""
    return [*(headers or ()), (DEAD_LETTER_REASON, reason.encode()), (DEAD_LETTER_SOURCE, source.encode())]


def reply_partition_of(headers: Headers | None) -> int | None:
    """The reply partition of a request (last header wins), or None if absent or malformed,
    without decoding the rest: where to answer a request that cannot be decoded."""
    found = None
    for name, value in headers or ():
        if name == REPLY_PARTITION:
            found = value
    if found is None or len(found) != 4:
        return None
    return int(_INT32.unpack(bytes(found))[0])


def correlation_id_of(headers: Headers | None) -> bytes | None:
    """The correlation id of any record (last header wins), without decoding the rest."""
    found = None
    for name, value in headers or ():
        if name == CORRELATION_ID:
            found = value
    return found


def call_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> Metadata:
    """The metadata of an incoming gRPC call that belongs to the call, not to the hop."""
    return tuple(
        (key, value)
        for key, value in metadata or ()
        if not key.startswith(":") and key not in _HOP_METADATA
    )


def check_metadata(metadata: Metadata) -> None:
    """Raise `MalformedRecord` for metadata that a receiver could not decode."""
    for key, value in metadata:
        if not key:
            raise MalformedRecord("empty metadata key")
        if key.endswith("-bin") != isinstance(value, bytes):
            raise MalformedRecord(f"metadata {key!r}: keys ending in -bin take bytes, other keys take str")


def _encode_metadata(prefix: str, metadata: Metadata) -> Iterable[tuple[str, bytes]]:
    for key, value in metadata:
        yield prefix + key, value if isinstance(value, bytes) else value.encode()


def _decode_metadata(prefix: str, headers: Headers | None) -> Metadata:
    out: list[tuple[str, str | bytes]] = []
    for name, value in headers or ():
        if not name.startswith(prefix):
            continue
        key = name[len(prefix) :]
        if not key:
            raise MalformedRecord(f"empty metadata key in header {name!r}")
        raw = b"" if value is None else bytes(value)  # Kafka header values may be null
        if key.endswith("-bin"):
            out.append((key, raw))
        else:
            try:
                out.append((key, raw.decode()))
            except UnicodeDecodeError:
                raise MalformedRecord(f"header {name!r} is not UTF-8 (binary keys end in -bin)") from None
    return tuple(out)


def _correlation_id(last: dict[str, bytes]) -> bytes:
    correlation_id = last.get(CORRELATION_ID)
    if not correlation_id:
        raise MalformedRecord(f"missing {CORRELATION_ID} header")
    return correlation_id


def _last_values(headers: Headers | None) -> dict[str, bytes]:
    # Kafka allows repeated headers; like Spring, the last one of a name wins.
    return {name: bytes(value) if value is not None else b"" for name, value in headers or ()}


def _text(last: dict[str, bytes], name: str) -> str | None:
    if name not in last:
        return None
    try:
        return last[name].decode()
    except UnicodeDecodeError:
        raise MalformedRecord(f"{name} header is not UTF-8") from None
