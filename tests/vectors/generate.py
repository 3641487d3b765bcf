"""Write the conformance vectors (tests/vectors/*.json) from the definitions below.

    .venv/bin/python tests/vectors/generate.py     # from the repository root

The JSON files are what tests and other implementations read (README.md beside this file
explains the format); this script only spares writing base64 by hand. The expected replies
are written from docs/protocol.md, not recorded from our handler, and `tests/test_vectors.py`
checks that a real handler process produces them. After changing a vector here, regenerate
and review the diff of the JSON.
"""

from __future__ import annotations

import base64
import fnmatch
import json
import sys
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent.parent), str(HERE.parent.parent / "gen")]

from google.protobuf import any_pb2, empty_pb2, json_format  # noqa: E402
from google.protobuf.message import Message  # noqa: E402
from google.rpc import error_details_pb2, status_pb2  # noqa: E402
from rpctest.v1 import kitchen_pb2  # noqa: E402

KITCHEN = "rpctest.v1.Kitchen"
KEYED = "rpctest.keyed"
REPLIES = "replies"
#: The handler's dead-letter topic (ours: --dead-letter-topic), relative like every topic name here.
DEAD_LETTERS = "dead-letters"
#: The allow-list of reply topics the vectors' handler runs with (ours: --allow-reply-topic), as
#: fnmatch patterns, relative like every topic name here.
ALLOWED_REPLY_TOPICS = (REPLIES,)
#: A reply topic the allow-list refuses.
NOT_ALLOWED = "evil-topic"
#: rpc-dead-letter-source names the request record: TOPIC/PARTITION@OFFSET, known only when it is produced.
SOURCE = "{topic}/PARTITION@OFFSET"
#: 2100-01-01T00:00:00Z: a deadline that never passes while the vectors are in use.
FAR_DEADLINE = b"4102444800000"
FAIL = kitchen_pb2.FailRequest
CORRELATION_ID, REPLY_TOPIC = "kafka_correlationId", "kafka_replyTopic"


def b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode()


def cid(n: int) -> bytes:
    """A fixed 16-byte binary correlation id (Spring's default form)."""
    return uuid.UUID(f"0f0e0d0c-0b0a-4908-8706-{n:012x}").bytes


def string_cid(n: int) -> bytes:
    """Spring's setBinaryCorrelation(false) form: the UUID's 36 characters."""
    return str(uuid.UUID(f"5a5a5a5a-1234-4abc-9def-{n:012x}")).encode()


def proto(message: Message) -> dict[str, Any]:
    """A readable form of a value: its type and its proto3 JSON (for people, not for tests)."""
    return {"type": message.DESCRIPTOR.full_name,
            "json": json_format.MessageToDict(message, preserving_proto_field_name=True)}


def record(topic: str, headers: list[tuple[str, bytes | None]], value: bytes | None = b"", key: bytes | None = None,
           message: Message | None = None, partition: int | None = None, placed: bool = False) -> dict[str, Any]:
    """A record; `placed` records (replies, dead letters) say which partition they go to (None: any)."""
    out: dict[str, Any] = {"topic": topic}
    if placed:
        out["partition"] = partition
    out["key"] = b64(key)
    out["value"] = b64(value)
    if message is not None:
        out["value_decoded"] = proto(message)
    out["headers"] = [[name, b64(data)] for name, data in headers]
    return out


def request_decoded(correlation: bytes, method: str = "", reply_topic: str | None = REPLIES, partition: int | None = None,
                    deadline_ms: int | None = None, metadata: list[tuple[str, str | bytes]] = (), payload: bytes = b"",
                    kind: str | None = None) -> dict[str, Any]:
    return {
        "kind": kind,
        "method": method,
        "correlation_id": b64(correlation),
        "reply_topic": reply_topic,
        "reply_partition": partition,
        "deadline_ms": deadline_ms,
        "metadata": [[k, b64(v) if isinstance(v, bytes) else v] for k, v in metadata],
        "payload": b64(payload),
    }


def reply_decoded(correlation: bytes, code: int = 0, name: str = "OK", message: str = "",
                  trailers: list[tuple[str, str | bytes]] = (), payload: bytes = b"") -> dict[str, Any]:
    return {
        "correlation_id": b64(correlation),
        "code": code,
        "code_name": name,
        "message": message,
        "trailing_metadata": [[k, b64(v) if isinstance(v, bytes) else v] for k, v in trailers],
        "payload": b64(payload),
    }


def reply_headers(correlation: bytes, code: int, message: str = "",
                  trailers: list[tuple[str, bytes]] = ()) -> list[tuple[str, bytes]]:
    headers = [(CORRELATION_ID, correlation), ("rpc-status", str(code).encode())]
    if message:
        headers.append(("rpc-message", message.encode()))
    headers.extend(("rpc-tm-" + k, v) for k, v in trailers)
    return headers


def frame_headers(correlation: bytes, kind: str, seq: int | None = None) -> list[tuple[str, bytes]]:
    """A stream frame's headers as adapter.protocol.wire writes them: rpc-seq on messages only."""
    headers = [(CORRELATION_ID, correlation), ("rpc-kind", kind.encode())]
    if kind == "msg":
        headers.append(("rpc-seq", str(seq).encode()))
    return headers


def frame(topic: str, correlation: bytes, kind: str, seq: int | None = None, message: Message | None = None,
          key: bytes | None = None, partition: int | None = None, placed: bool = False) -> dict[str, Any]:
    """A canonical frame (msg, end, cancel) of a stream: the record and what a decoder reads from it."""
    payload = b"" if message is None else message.SerializeToString()
    return {
        **record(topic, frame_headers(correlation, kind, seq), payload, key, message, partition, placed),
        "decoded": {"kind": kind, "correlation_id": b64(correlation), "seq": seq, "payload": b64(payload)},
    }


def vector(name: str, description: str, *, handler: bool = True, canonical: bool = False,
           request: dict[str, Any] | None = None, request_frames: list[dict[str, Any]] = (),
           reply_frames: list[dict[str, Any]] = (), reply: dict[str, Any] | None = None,
           dead_letter: dict[str, Any] | None = None, ignore: list[str] = (),
           implementation_specific: list[str] = ()) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "handler": handler,
        "canonical": canonical,
        "request": request,
        "request_frames": list(request_frames),
        "reply_frames": list(reply_frames),
        "reply": reply,
        "dead_letter": dead_letter,
        "ignore": list(ignore),
        "implementation_specific": list(implementation_specific),
    }


def call(name: str, description: str, method: str, request: Message | bytes, correlation: bytes, *,
         reply: Message | bytes | None = b"", code: int = 0, code_name: str = "OK", message: str = "",
         partition: int | None = None, key: bytes | None = None, deadline: bool = False,
         metadata: list[tuple[str, str | bytes]] = (), trailers: list[tuple[str, str | bytes]] = (),
         topic: str = KITCHEN, opens_stream: bool = False, request_frames: list[dict[str, Any]] = (),
         reply_frames: list[Message] = (), ignore: list[str] = (),
         implementation_specific: list[str] = ()) -> dict[str, Any]:
    """A canonical call: the request exactly as our requester writes it, and the replies a handler owes.

    Without a partition key the requester keys the record with its correlation id, and a
    reply carries the request's key. A client stream's `open` record is followed by
    `request_frames`; a server stream's messages (`reply_frames`) come before its final reply.
    """
    key = correlation if key is None else key
    payload = request if isinstance(request, bytes) else request.SerializeToString()
    headers: list[tuple[str, bytes]] = [(CORRELATION_ID, correlation), ("rpc-method", method.encode())]
    if opens_stream:
        headers.append(("rpc-kind", b"open"))
    headers.append((REPLY_TOPIC, REPLIES.encode()))
    if partition is not None:
        headers.append(("kafka_replyPartition", partition.to_bytes(4, "big", signed=True)))
    if deadline:
        headers.append(("rpc-deadline", FAR_DEADLINE))
    headers.extend(("rpc-md-" + k, v if isinstance(v, bytes) else v.encode()) for k, v in metadata)
    reply_payload = reply if isinstance(reply, bytes) or reply is None else reply.SerializeToString()
    encoded_trailers = [(k, v if isinstance(v, bytes) else v.encode()) for k, v in trailers]
    return vector(
        name, description, canonical=True,
        request={
            **record(topic, headers, payload, key, None if isinstance(request, bytes) else request),
            "decoded": request_decoded(correlation, method, REPLIES, partition, int(FAR_DEADLINE) if deadline else None,
                                       metadata, payload, "open" if opens_stream else None),
        },
        request_frames=request_frames,
        reply_frames=[frame(REPLIES, correlation, "msg", seq, item, key, partition, placed=True)
                      for seq, item in enumerate(reply_frames)],
        reply={
            **record(REPLIES, reply_headers(correlation, code, message, encoded_trailers), reply_payload or b"", key,
                     None if isinstance(reply, bytes) or reply is None else reply, partition, placed=True),
            "decoded": reply_decoded(correlation, code, code_name, message, trailers, reply_payload or b""),
        },
        ignore=ignore,
        implementation_specific=implementation_specific,
    )


def rejection(topic: str, headers: list[tuple[str, bytes]], reason: str, key: bytes | None = None,
              value: bytes = b"") -> tuple[dict[str, Any] | None, dict[str, Any] | None, str]:
    """What a handler does with a record it will not serve: (reply, dead letter, the rule that applied).

    With a non-empty kafka_correlationId and an allowed kafka_replyTopic (the last of each),
    it answers INVALID_ARGUMENT with the reason as rpc-message, to the partition kafka_replyPartition
    names when that header is well-formed (else to any: it may be what is wrong), with the
    request's key. Otherwise it copies
    the record (key, value, headers) to its dead-letter topic, adding why and from where.
    """
    last = dict(headers)
    correlation, reply_topic = last.get(CORRELATION_ID), last.get(REPLY_TOPIC)
    if correlation and reply_topic is not None and any(
            fnmatch.fnmatchcase(reply_topic.decode(), pattern) for pattern in ALLOWED_REPLY_TOPICS):
        raw = last.get("kafka_replyPartition")
        partition = int.from_bytes(raw, "big", signed=True) if raw is not None and len(raw) == 4 else None
        reply = {**record(reply_topic.decode(), reply_headers(correlation, 3, reason), b"", key, partition=partition,
                          placed=True),
                 "decoded": reply_decoded(correlation, 3, "INVALID_ARGUMENT", reason)}
        where = "to no particular partition" if partition is None else f"to the partition it names ({partition})"
        return reply, None, ("The handler answers INVALID_ARGUMENT (3) on the named reply topic, with the reason as "
                             f"rpc-message and {where}.")
    why = ("it has no correlation id" if not correlation else "it names no reply topic" if reply_topic is None
           else "its reply topic is not allowed")
    source = SOURCE.format(topic=topic)
    dead = {**record(DEAD_LETTERS, [*headers, ("rpc-dead-letter-reason", reason.encode()),
                                    ("rpc-dead-letter-source", source.encode())], value, key, placed=True),
            "decoded": {"reason": reason, "source": source}}
    return None, dead, (f"No reply can be sent ({why}): the handler copies the record to its dead-letter topic, "
                        "adding rpc-dead-letter-reason and rpc-dead-letter-source.")


def malformed(name: str, description: str, headers: list[tuple[str, bytes]], error: str, *, value: bytes = b"",
              key: bytes | None = None, topic: str = KITCHEN, is_frame: bool = False) -> dict[str, Any]:
    """A record adapter.protocol.wire refuses (MalformedRecord `error`): the handler rejects it."""
    reply, dead, outcome = rejection(topic, headers, f"malformed request: {error}", key, value)
    bad = {**record(topic, headers, value, key), "error": error}
    return vector(
        name, f"{description} {outcome}",
        request=None if is_frame else bad,
        request_frames=[bad] if is_frame else [],
        reply=reply,
        dead_letter=dead,
        ignore=["dead_letter.header:rpc-dead-letter-source"] if dead else [],
        implementation_specific=["request.error", "reply.header:rpc-message" if reply else
                                 "dead_letter.header:rpc-dead-letter-reason"],
    )


def rich_status() -> bytes:
    detail = any_pb2.Any()
    detail.Pack(error_details_pb2.BadRequest(field_violations=[
        error_details_pb2.BadRequest.FieldViolation(field="message", description="bad field")
    ]))
    return status_pb2.Status(code=3, message="bad field", details=[detail]).SerializeToString()


def vectors() -> list[dict[str, Any]]:
    echo = kitchen_pb2.Everything(text="héllo ✓ 日本", tags=["a", "ç"], blob=b"\x00\xff\x10")
    empty = empty_pb2.Empty()
    out = [
        call("ok-echo", "An OK reply: the value is the response message; rpc-status is 0; the reply goes to "
             "kafka_replyPartition; rpc-deadline far in the future. Without a partition key, the request's key is "
             "its correlation id (as our requester sends it), and the reply carries the request's key.",
             "/rpctest.v1.Kitchen/Echo", echo, cid(1), reply=echo, partition=1, deadline=True),
        call("ok-empty-message", "An empty message is an empty value, both ways. No kafka_replyPartition: the reply "
             "may go to any partition of the reply topic.",
             "/rpctest.v1.Kitchen/Nothing", empty, cid(2), reply=empty),
        call("ok-key-echoed", "A keyed request (Keyed declares partition_key customer): the reply carries the "
             "request's key.",
             "/rpctest.v1.Kitchen/Keyed", kitchen_pb2.KeyedRequest(customer="c-42", seq=1), cid(3), topic=KEYED,
             key=b"c-42", partition=3, reply=None, ignore=["reply.value"]),
        call("error-abort", "context.abort(NOT_FOUND, ...): rpc-status 5, rpc-message in UTF-8, empty value.",
             "/rpctest.v1.Kitchen/Fail", FAIL(mode=FAIL.ABORT, code=5, message="nicht gefunden ✗"), cid(4),
             code=5, code_name="NOT_FOUND", message="nicht gefunden ✗", partition=0),
        call("error-set-code", "context.set_code(FAILED_PRECONDITION) + set_details, then returning: rpc-status 9.",
             "/rpctest.v1.Kitchen/Fail", FAIL(mode=FAIL.SET_CODE, code=9, message="précondition"), cid(5),
             code=9, code_name="FAILED_PRECONDITION", message="précondition", partition=0),
        call("error-exception", "An uncaught exception: UNKNOWN (2) with grpc's wording of the message.",
             "/rpctest.v1.Kitchen/Fail", FAIL(mode=FAIL.RAISE, message="boom"), cid(6),
             code=2, code_name="UNKNOWN", message="Exception calling application: boom", partition=0),
        call("error-rich-details", "abort_with_status with google.rpc.Status details: they travel as the trailer "
             "rpc-tm-grpc-status-details-bin (a serialized google.rpc.Status), as gRPC carries them.",
             "/rpctest.v1.Kitchen/Fail", FAIL(mode=FAIL.RICH, code=3, message="bad field"), cid(7),
             code=3, code_name="INVALID_ARGUMENT", message="bad field", partition=0,
             trailers=[("grpc-status-details-bin", rich_status())]),
        call("error-unknown-method", "An rpc-method the handler does not serve: UNIMPLEMENTED (12).",
             "/rpctest.v1.Kitchen/NoSuchMethod", b"", cid(8), code=12, code_name="UNIMPLEMENTED",
             message="method /rpctest.v1.Kitchen/NoSuchMethod is not served here", partition=0,
             implementation_specific=["reply.header:rpc-message"]),
        call("error-servicer-unimplemented", "A method the servicer does not implement: grpc's generated base "
             "class answers UNIMPLEMENTED.",
             "/rpctest.v1.Kitchen/NotImplemented", empty, cid(9), code=12, code_name="UNIMPLEMENTED",
             message="Method not implemented!", partition=0, implementation_specific=["reply.header:rpc-message"]),
        call("error-undecodable-request", "A value that does not parse as the request type: INVALID_ARGUMENT (3).",
             "/rpctest.v1.Kitchen/Echo", b"\xff\xff\xff", cid(10), code=3, code_name="INVALID_ARGUMENT",
             message="cannot decode request of /rpctest.v1.Kitchen/Echo: Error parsing message", partition=0,
             ignore=["reply.header:rpc-message"], implementation_specific=["reply.header:rpc-message"]),
        call("metadata-text-and-bin", "Call metadata as rpc-md-* headers, in order, a repeated key repeated; "
             "-bin values raw. The servicer echoes what it saw (a map, so the last x-user wins there) and sets "
             "trailing metadata, sent as rpc-tm-* headers.",
             "/rpctest.v1.Kitchen/Meta", empty, cid(11),
             metadata=[("x-user", "ann"), ("x-token-bin", b"\x00\x01\xfe\xff"), ("x-user", "bob ✓")],
             reply=kitchen_pb2.MetaReply(text={"x-user": "bob ✓"}, binary={"x-token-bin": b"\x00\x01\xfe\xff"}),
             trailers=[("x-handled-by", "PID"), ("x-trace-bin", b"\x00\xff\x10")], partition=2,
             ignore=["reply.header:rpc-tm-x-handled-by"]),
    ]

    # As a Spring ReplyingKafkaTemplate sends them: Spring's headers after the caller's own.
    spring_cid = string_cid(1)
    out.append(vector(
        "spring-string-correlation",
        "A Spring ReplyingKafkaTemplate request with setBinaryCorrelation(false): the correlation id is the UUID's "
        "36 ASCII characters, echoed verbatim. The caller added rpc-method itself; Spring added kafka_replyTopic, "
        "kafka_replyPartition and kafka_correlationId, in that order. An unknown header (b3) is ignored. No key: "
        "the reply has none either.",
        request={
            **record(KITCHEN, [("rpc-method", b"/rpctest.v1.Kitchen/Echo"), ("b3", b"80f198ee56343ba8-e457b5a2e4d86bd1-1"),
                               (REPLY_TOPIC, REPLIES.encode()), ("kafka_replyPartition", b"\x00\x00\x00\x02"),
                               (CORRELATION_ID, spring_cid)], echo.SerializeToString(), None, echo),
            "decoded": request_decoded(spring_cid, "/rpctest.v1.Kitchen/Echo", REPLIES, 2, payload=echo.SerializeToString()),
        },
        reply={
            **record(REPLIES, reply_headers(spring_cid, 0), echo.SerializeToString(), None, echo, 2, placed=True),
            "decoded": reply_decoded(spring_cid, payload=echo.SerializeToString()),
        },
    ))
    keyed = kitchen_pb2.KeyedRequest(customer="c-7")
    out.append(vector(
        "spring-no-method-single-topic",
        "A Spring request with Spring's headers only (no rpc-method) on a topic that carries a single method "
        "(rpctest.keyed carries only Kitchen/Keyed): that method is meant. The decoded method is empty; the handler "
        "infers it from the topic.",
        request={
            **record(KEYED, [(REPLY_TOPIC, REPLIES.encode()), (CORRELATION_ID, cid(12))],
                     keyed.SerializeToString(), b"c-7", keyed),
            "decoded": request_decoded(cid(12), "", REPLIES, payload=keyed.SerializeToString()),
        },
        reply={
            **record(REPLIES, reply_headers(cid(12), 0), None, b"c-7", placed=True),
            "decoded": reply_decoded(cid(12)),
        },
        ignore=["reply.value"],
    ))
    out.append(vector(
        "repeated-headers-last-wins",
        "A header name given twice: the last one counts (as in Spring), for every header but rpc-md-*. The reply "
        "echoes the last correlation id and goes to the last reply topic.",
        request={
            **record(KITCHEN, [(CORRELATION_ID, cid(98)), ("rpc-method", b"/rpctest.v1.Kitchen/NoSuchMethod"),
                               (REPLY_TOPIC, b"nowhere"), ("rpc-method", b"/rpctest.v1.Kitchen/Nothing"),
                               (REPLY_TOPIC, REPLIES.encode()), (CORRELATION_ID, cid(13))], b""),
            "decoded": request_decoded(cid(13), "/rpctest.v1.Kitchen/Nothing", REPLIES),
        },
        reply={
            **record(REPLIES, reply_headers(cid(13), 0), b"", None, empty, placed=True),
            "decoded": reply_decoded(cid(13)),
        },
    ))
    out.append(vector(
        "expired-deadline-no-reply",
        "rpc-deadline already passed when the handler would start: the method does not run and no reply is sent "
        "(the caller has given up).",
        canonical=True,
        request={
            **record(KITCHEN, [(CORRELATION_ID, cid(14)), ("rpc-method", b"/rpctest.v1.Kitchen/Nothing"),
                               (REPLY_TOPIC, REPLIES.encode()), ("rpc-deadline", b"1000")], b"", cid(14)),
            "decoded": request_decoded(cid(14), "/rpctest.v1.Kitchen/Nothing", deadline_ms=1000),
        },
    ))
    out.append(vector(
        "no-reply-topic",
        "No kafka_replyTopic: fire and forget. The method runs; no reply is sent.",
        canonical=True,
        request={
            **record(KITCHEN, [(CORRELATION_ID, cid(15)), ("rpc-method", b"/rpctest.v1.Kitchen/Nothing")], b"", cid(15)),
            "decoded": request_decoded(cid(15), "/rpctest.v1.Kitchen/Nothing", None),
        },
    ))
    out.append(vector(
        "null-values",
        "Kafka allows a null value and null header values (Java clients send them): a null value is an empty "
        "message, a null text metadata value is the empty string, a null -bin value is empty bytes. Decode only: "
        "not every client can produce nulls.",
        handler=False,
        request={
            **record(KITCHEN, [(CORRELATION_ID, cid(16)), ("rpc-method", b"/rpctest.v1.Kitchen/Nothing"),
                               (REPLY_TOPIC, REPLIES.encode()), ("rpc-md-x-empty", None),
                               ("rpc-md-x-empty-bin", None)], None),
            "decoded": request_decoded(cid(16), "/rpctest.v1.Kitchen/Nothing",
                                       metadata=[("x-empty", ""), ("x-empty-bin", b"")]),
        },
    ))

    # Streams (docs/protocol.md, "Streaming calls"): rpc-kind open/msg/end/cancel, rpc-seq.
    def items(*numbers: int, size: int = 2) -> list[kitchen_pb2.Item]:
        return [kitchen_pb2.Item(i=i, data=b"x" * size) for i in numbers]

    count_up = "/rpctest.v1.Kitchen/CountUp"
    out += [
        call("stream-server", "Server streaming (CountUp n=3): one request record without rpc-kind; the handler "
             "sends each response message as an rpc-kind msg record with rpc-seq 0, 1, 2, then the final record "
             "without rpc-kind: the status and trailers (x-count), empty value. All go to kafka_replyPartition, "
             "with the request's key.",
             count_up, kitchen_pb2.Count(n=3, size=2), cid(40), partition=1, deadline=True,
             reply_frames=items(0, 1, 2), trailers=[("x-count", "3")]),
        call("stream-server-no-messages", "Server streaming of no messages (CountUp n=0): only the final record.",
             count_up, kitchen_pb2.Count(n=0), cid(41), partition=1, reply_frames=[], trailers=[("x-count", "0")]),
        call("stream-server-error-mid-stream", "A server stream that fails after two messages (CountUp fail_at=2 "
             "aborts with FAILED_PRECONDITION): msg 0 and 1, then the final record with the error status.",
             count_up, kitchen_pb2.Count(n=5, size=1, fail_at=2), cid(42), partition=2,
             reply_frames=items(0, 1, size=1), code=9, code_name="FAILED_PRECONDITION", message="failed at 2"),
    ]
    summary = kitchen_pb2.Summary(count=3, total_bytes=6, order=[7, 8, 9])
    collect = "/rpctest.v1.Kitchen/Collect"
    out += [
        call("stream-client", "Client streaming (Collect): an rpc-kind open record (the call's headers, empty value), "
             "then rpc-kind msg records with rpc-seq 0, 1, 2 (just kafka_correlationId, rpc-kind and rpc-seq), then "
             "rpc-kind end (half-close). Every record of the call carries the same key, the correlation id, so they "
             "all reach one partition in order. The final reply carries the one response message.",
             collect, b"", cid(43), opens_stream=True, partition=3, deadline=True, reply=summary,
             request_frames=[*(frame(KITCHEN, cid(43), "msg", seq, item, cid(43))
                               for seq, item in enumerate(items(7, 8, 9))),
                             frame(KITCHEN, cid(43), "end", key=cid(43))]),
        call("stream-client-no-messages", "A client stream closed at once: open, then end; the response is an empty "
             "Summary (an empty value).",
             collect, b"", cid(44), opens_stream=True, partition=3, reply=kitchen_pb2.Summary(),
             request_frames=[frame(KITCHEN, cid(44), "end", key=cid(44))]),
        vector("stream-cancel-unknown-call",
               "A cancel frame for a call that is not running on this handler (it ended, or never started): dropped "
               "(and counted); no reply, no dead letter.",
               canonical=True, request_frames=[frame(KITCHEN, cid(45), "cancel", key=cid(45))]),
    ]

    method = ("rpc-method", b"/rpctest.v1.Kitchen/Nothing")
    reply_to = (REPLY_TOPIC, REPLIES.encode())
    out += [
        malformed("malformed-no-correlation-id", "No kafka_correlationId.", [method, reply_to],
                  "missing kafka_correlationId header", key=b"order-17"),
        malformed("malformed-empty-correlation-id", "An empty kafka_correlationId.",
                  [(CORRELATION_ID, b""), method, reply_to], "missing kafka_correlationId header"),
        malformed("malformed-reply-partition", "kafka_replyPartition of 3 bytes.",
                  [(CORRELATION_ID, cid(20)), method, reply_to, ("kafka_replyPartition", b"\x00\x00\x01")],
                  "kafka_replyPartition must be a 4-byte big-endian int"),
        malformed("malformed-deadline", "rpc-deadline that is not decimal milliseconds.",
                  [(CORRELATION_ID, cid(21)), method, reply_to, ("rpc-deadline", b"2026-11-25T12:00:00Z")],
                  "rpc-deadline must be decimal epoch milliseconds"),
        malformed("malformed-text-metadata", "A text metadata value that is not UTF-8 (binary keys end in -bin).",
                  [(CORRELATION_ID, cid(22)), method, reply_to, ("rpc-md-x-user", b"\xff\xfe")],
                  "header 'rpc-md-x-user' is not UTF-8 (binary keys end in -bin)"),
        malformed("malformed-empty-metadata-key", "A metadata header with an empty key.",
                  [(CORRELATION_ID, cid(23)), method, reply_to, ("rpc-md-", b"v")],
                  "empty metadata key in header 'rpc-md-'"),
        malformed("malformed-method-not-utf8", "rpc-method that is not UTF-8.",
                  [(CORRELATION_ID, cid(24)), ("rpc-method", b"/rpctest.v1.Kitchen/\xff"), reply_to],
                  "rpc-method header is not UTF-8"),
        malformed("malformed-no-reply-topic", "A malformed request (rpc-deadline not a number) without "
                  "kafka_replyTopic.",
                  [(CORRELATION_ID, cid(25)), method, ("rpc-deadline", b"soon")],
                  "rpc-deadline must be decimal epoch milliseconds", key=cid(25)),
        malformed("malformed-reply-topic-not-allowed", "A malformed request (rpc-deadline not a number) naming a "
                  f"reply topic the handler does not allow ({NOT_ALLOWED}): never answered there.",
                  [(CORRELATION_ID, cid(26)), method, (REPLY_TOPIC, NOT_ALLOWED.encode()), ("rpc-deadline", b"soon")],
                  "rpc-deadline must be decimal epoch milliseconds", key=cid(26)),
        malformed("malformed-frame-seq", "A msg frame whose rpc-seq is not a decimal number. A frame names no reply "
                  "topic.",
                  [(CORRELATION_ID, cid(27)), ("rpc-kind", b"msg"), ("rpc-seq", b"first")],
                  "rpc-seq must be a decimal sequence number", value=kitchen_pb2.Item(i=1).SerializeToString(),
                  key=cid(27), is_frame=True),
        malformed("malformed-frame-kind", "An rpc-kind that is none of open, msg, end, cancel (here on a record "
                  "that otherwise reads as a request).",
                  [(CORRELATION_ID, cid(28)), method, ("rpc-kind", b"push"), reply_to],
                  "rpc-kind 'push' is not one of cancel, end, msg", key=None, is_frame=True),
    ]

    # A well-formed request whose reply topic is not on the handler's allow-list.
    headers = [(CORRELATION_ID, cid(29)), method, (REPLY_TOPIC, NOT_ALLOWED.encode()), ("rpc-deadline", FAR_DEADLINE)]
    reply, dead, outcome = rejection(KITCHEN, headers, f"reply topic '{NOT_ALLOWED}' is not allowed", b"c-9")
    out.append(vector(
        "rejected-reply-topic-not-allowed",
        f"A request naming a reply topic ({NOT_ALLOWED}) that the handler's allow-list (here only {REPLIES}) "
        f"does not match: the method does not run. {outcome} A handler must never produce to a topic a "
        "request names unless it is allowed.",
        request={**record(KITCHEN, headers, b"", b"c-9"),
                 "decoded": request_decoded(cid(29), "/rpctest.v1.Kitchen/Nothing", NOT_ALLOWED,
                                            deadline_ms=int(FAR_DEADLINE))},
        reply=reply,
        dead_letter=dead,
        ignore=["dead_letter.header:rpc-dead-letter-source"],
        implementation_specific=["dead_letter.header:rpc-dead-letter-reason"],
    ))

    # Replies a requester must read: decode only.
    shouted = b"\n\x05HELLO\x12\x13kafka_correlationId"
    out += [
        vector("reply-spring-no-status",
               "The reply of a plain Spring @KafkaListener + @SendTo replier: only kafka_correlationId, no rpc-status. "
               "It is OK, and the value is the response.",
               handler=False,
               reply={**record(REPLIES, [(CORRELATION_ID, cid(30))], shouted, partition=0, placed=True),
                      "decoded": reply_decoded(cid(30), payload=shouted)}),
        vector("reply-unknown-status",
               "An rpc-status number gRPC does not define is read as UNKNOWN (2); the message is kept.",
               handler=False,
               reply={**record(REPLIES, [(CORRELATION_ID, cid(31)), ("rpc-status", b"99"),
                                         ("rpc-message", b"from the future")], b"", partition=0, placed=True),
                      "decoded": reply_decoded(cid(31), 2, "UNKNOWN", "from the future")}),
        vector("reply-malformed-status",
               "An rpc-status that is not a decimal number: the reply is malformed.",
               handler=False,
               reply={**record(REPLIES, [(CORRELATION_ID, cid(32)), ("rpc-status", b"OK")], b"", partition=0,
                               placed=True),
                      "error": "rpc-status must be a decimal gRPC status code"},
               implementation_specific=["reply.error"]),
        vector("reply-no-correlation-id",
               "A reply without kafka_correlationId belongs to no call: malformed (a requester drops it).",
               handler=False,
               reply={**record(REPLIES, [("rpc-status", b"0")], b"", partition=0, placed=True),
                      "error": "missing kafka_correlationId header"},
               implementation_specific=["reply.error"]),
        vector("reply-stream-seq-malformed",
               "A streamed response message whose rpc-seq is not a decimal number: malformed. A requester drops it, "
               "like any malformed reply (the stream's next message then shows a gap: rule 2 ends the call).",
               handler=False,
               reply_frames=[{**record(REPLIES, [(CORRELATION_ID, cid(33)), ("rpc-kind", b"msg"), ("rpc-seq", b"")],
                                       b"", partition=0, placed=True),
                              "error": "rpc-seq must be a decimal sequence number"}],
               implementation_specific=["reply_frames.error"]),
    ]
    return out


def dumps(value: Any, indent: str = "") -> str:
    """JSON with two-space indents, lists of scalars (header pairs...) on one line."""
    inner = indent + "  "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {dumps(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if isinstance(value, list) and value and any(isinstance(v, dict | list) for v in value):
        return "[\n" + ",\n".join(inner + dumps(v, inner) for v in value) + "\n" + indent + "]"
    return json.dumps(value, ensure_ascii=False)


def main() -> None:
    for old in HERE.glob("*.json"):
        old.unlink()
    for vector in vectors():
        path = HERE / f"{vector['name']}.json"
        path.write_text(dumps(vector) + "\n")
    print(f"wrote {len(vectors())} vectors to {HERE}")


if __name__ == "__main__":
    main()
