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
#: 2100-01-01T00:00:00Z: a deadline that never passes while the vectors are in use.
FAR_DEADLINE = b"4102444800000"
FAIL = kitchen_pb2.FailRequest


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
           message: Message | None = None, partition: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"topic": topic}
    if partition is not None or topic == REPLIES:
        out["partition"] = partition
    out["key"] = b64(key)
    out["value"] = b64(value)
    if message is not None:
        out["value_decoded"] = proto(message)
    out["headers"] = [[name, b64(data)] for name, data in headers]
    return out


def request_decoded(correlation: bytes, method: str = "", reply_topic: str | None = REPLIES, partition: int | None = None,
                    deadline_ms: int | None = None, metadata: list[tuple[str, str | bytes]] = (), payload: bytes = b"",
                    ) -> dict[str, Any]:
    return {
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
    headers = [("kafka_correlationId", correlation), ("rpc-status", str(code).encode())]
    if message:
        headers.append(("rpc-message", message.encode()))
    headers.extend(("rpc-tm-" + k, v) for k, v in trailers)
    return headers


def call(name: str, description: str, method: str, request: Message | bytes, correlation: bytes, *,
         reply: Message | bytes | None = b"", code: int = 0, code_name: str = "OK", message: str = "",
         partition: int | None = None, key: bytes | None = None, deadline: bool = False,
         metadata: list[tuple[str, str | bytes]] = (), trailers: list[tuple[str, str | bytes]] = (),
         topic: str = KITCHEN, ignore: list[str] = (), implementation_specific: list[str] = ()) -> dict[str, Any]:
    """A canonical call: the request exactly as our requester writes it, and the reply a handler owes."""
    payload = request if isinstance(request, bytes) else request.SerializeToString()
    headers: list[tuple[str, bytes]] = [("kafka_correlationId", correlation), ("rpc-method", method.encode()),
                                        ("kafka_replyTopic", REPLIES.encode())]
    if partition is not None:
        headers.append(("kafka_replyPartition", partition.to_bytes(4, "big", signed=True)))
    if deadline:
        headers.append(("rpc-deadline", FAR_DEADLINE))
    headers.extend(("rpc-md-" + k, v if isinstance(v, bytes) else v.encode()) for k, v in metadata)
    reply_payload = reply if isinstance(reply, bytes) or reply is None else reply.SerializeToString()
    encoded_trailers = [(k, v if isinstance(v, bytes) else v.encode()) for k, v in trailers]
    return {
        "name": name,
        "description": description,
        "handler": True,
        "canonical": True,
        "request": {
            **record(topic, headers, payload, key, None if isinstance(request, bytes) else request),
            "decoded": request_decoded(correlation, method, REPLIES, partition,
                                       int(FAR_DEADLINE) if deadline else None, metadata, payload),
        },
        "reply": {
            **record(REPLIES, reply_headers(correlation, code, message, encoded_trailers), reply_payload or b"", key,
                     None if isinstance(reply, bytes) or reply is None else reply, partition),
            "decoded": reply_decoded(correlation, code, code_name, message, trailers, reply_payload or b""),
        },
        "ignore": list(ignore),
        "implementation_specific": list(implementation_specific),
    }


def malformed(name: str, description: str, headers: list[tuple[str, bytes | None]], error: str,
              value: bytes = b"", topic: str = KITCHEN) -> dict[str, Any]:
    return {
        "name": name,
        "description": description + " A handler skips it (logging topic/partition/offset) and sends no reply.",
        "handler": True,
        "canonical": False,
        "request": {**record(topic, headers, value), "error": error},
        "reply": None,
        "ignore": [],
        "implementation_specific": ["request.error"],
    }


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
             "kafka_replyPartition; rpc-deadline far in the future.",
             "/rpctest.v1.Kitchen/Echo", echo, cid(1), reply=echo, partition=1, deadline=True),
        call("ok-empty-message", "An empty message is an empty value, both ways. No kafka_replyPartition: the reply "
             "may go to any partition of the reply topic.",
             "/rpctest.v1.Kitchen/Nothing", empty, cid(2), reply=empty),
        call("ok-key-echoed", "A keyed request: the reply carries the request's key.",
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
    out.append({
        "name": "spring-string-correlation",
        "description": "A Spring ReplyingKafkaTemplate request with setBinaryCorrelation(false): the correlation id "
                       "is the UUID's 36 ASCII characters, echoed verbatim. The caller added rpc-method itself; "
                       "Spring added kafka_replyTopic, kafka_replyPartition and kafka_correlationId, in that order. "
                       "An unknown header (b3) is ignored.",
        "handler": True,
        "canonical": False,
        "request": {
            **record(KITCHEN, [("rpc-method", b"/rpctest.v1.Kitchen/Echo"), ("b3", b"80f198ee56343ba8-e457b5a2e4d86bd1-1"),
                               ("kafka_replyTopic", REPLIES.encode()), ("kafka_replyPartition", b"\x00\x00\x00\x02"),
                               ("kafka_correlationId", spring_cid)], echo.SerializeToString(), None, echo),
            "decoded": request_decoded(spring_cid, "/rpctest.v1.Kitchen/Echo", REPLIES, 2, payload=echo.SerializeToString()),
        },
        "reply": {
            **record(REPLIES, reply_headers(spring_cid, 0), echo.SerializeToString(), None, echo, 2),
            "decoded": reply_decoded(spring_cid, payload=echo.SerializeToString()),
        },
        "ignore": [],
        "implementation_specific": [],
    })
    keyed = kitchen_pb2.KeyedRequest(customer="c-7")
    out.append({
        "name": "spring-no-method-single-topic",
        "description": "A Spring request with Spring's headers only (no rpc-method) on a topic that carries a single "
                       "method (rpctest.keyed carries only Kitchen/Keyed): that method is meant. The decoded method "
                       "is empty; the handler infers it from the topic.",
        "handler": True,
        "canonical": False,
        "request": {
            **record(KEYED, [("kafka_replyTopic", REPLIES.encode()), ("kafka_correlationId", cid(12))],
                     keyed.SerializeToString(), b"c-7", keyed),
            "decoded": request_decoded(cid(12), "", REPLIES, payload=keyed.SerializeToString()),
        },
        "reply": {
            **record(REPLIES, reply_headers(cid(12), 0), None, b"c-7"),
            "decoded": reply_decoded(cid(12)),
        },
        "ignore": ["reply.value"],
        "implementation_specific": [],
    })
    out.append({
        "name": "repeated-headers-last-wins",
        "description": "A header name given twice: the last one counts (as in Spring), for every header but "
                       "rpc-md-*. The reply echoes the last correlation id and goes to the last reply topic.",
        "handler": True,
        "canonical": False,
        "request": {
            **record(KITCHEN, [("kafka_correlationId", cid(98)), ("rpc-method", b"/rpctest.v1.Kitchen/NoSuchMethod"),
                               ("kafka_replyTopic", b"nowhere"), ("rpc-method", b"/rpctest.v1.Kitchen/Nothing"),
                               ("kafka_replyTopic", REPLIES.encode()), ("kafka_correlationId", cid(13))], b""),
            "decoded": request_decoded(cid(13), "/rpctest.v1.Kitchen/Nothing", REPLIES),
        },
        "reply": {
            **record(REPLIES, reply_headers(cid(13), 0), b"", None, empty),
            "decoded": reply_decoded(cid(13)),
        },
        "ignore": [],
        "implementation_specific": [],
    })
    out.append({
        "name": "expired-deadline-no-reply",
        "description": "rpc-deadline already passed when the handler would start: the method does not run and no "
                       "reply is sent (the caller has given up).",
        "handler": True,
        "canonical": True,
        "request": {
            **record(KITCHEN, [("kafka_correlationId", cid(14)), ("rpc-method", b"/rpctest.v1.Kitchen/Nothing"),
                               ("kafka_replyTopic", REPLIES.encode()), ("rpc-deadline", b"1000")], b""),
            "decoded": request_decoded(cid(14), "/rpctest.v1.Kitchen/Nothing", deadline_ms=1000),
        },
        "reply": None,
        "ignore": [],
        "implementation_specific": [],
    })
    out.append({
        "name": "no-reply-topic",
        "description": "No kafka_replyTopic: fire and forget. The method runs; no reply is sent.",
        "handler": True,
        "canonical": True,
        "request": {
            **record(KITCHEN, [("kafka_correlationId", cid(15)), ("rpc-method", b"/rpctest.v1.Kitchen/Nothing")], b""),
            "decoded": request_decoded(cid(15), "/rpctest.v1.Kitchen/Nothing", None),
        },
        "reply": None,
        "ignore": [],
        "implementation_specific": [],
    })
    out.append({
        "name": "null-values",
        "description": "Kafka allows a null value and null header values (Java clients send them): a null value is "
                       "an empty message, a null text metadata value is the empty string, a null -bin value is empty "
                       "bytes. Decode only: not every client can produce nulls.",
        "handler": False,
        "canonical": False,
        "request": {
            **record(KITCHEN, [("kafka_correlationId", cid(16)), ("rpc-method", b"/rpctest.v1.Kitchen/Nothing"),
                               ("kafka_replyTopic", REPLIES.encode()), ("rpc-md-x-empty", None),
                               ("rpc-md-x-empty-bin", None)], None),
            "decoded": request_decoded(cid(16), "/rpctest.v1.Kitchen/Nothing",
                                       metadata=[("x-empty", ""), ("x-empty-bin", b"")]),
        },
        "reply": None,
        "ignore": [],
        "implementation_specific": [],
    })

    method = ("rpc-method", b"/rpctest.v1.Kitchen/Nothing")
    reply_to = ("kafka_replyTopic", REPLIES.encode())
    out += [
        malformed("malformed-no-correlation-id", "No kafka_correlationId.", [method, reply_to],
                  "missing kafka_correlationId header"),
        malformed("malformed-empty-correlation-id", "An empty kafka_correlationId.",
                  [("kafka_correlationId", b""), method, reply_to], "missing kafka_correlationId header"),
        malformed("malformed-reply-partition", "kafka_replyPartition of 3 bytes.",
                  [("kafka_correlationId", cid(20)), method, reply_to, ("kafka_replyPartition", b"\x00\x00\x01")],
                  "kafka_replyPartition must be a 4-byte big-endian int"),
        malformed("malformed-deadline", "rpc-deadline that is not decimal milliseconds.",
                  [("kafka_correlationId", cid(21)), method, reply_to, ("rpc-deadline", b"2026-11-25T12:00:00Z")],
                  "rpc-deadline must be decimal epoch milliseconds"),
        malformed("malformed-text-metadata", "A text metadata value that is not UTF-8 (binary keys end in -bin).",
                  [("kafka_correlationId", cid(22)), method, reply_to, ("rpc-md-x-user", b"\xff\xfe")],
                  "header 'rpc-md-x-user' is not UTF-8 (binary keys end in -bin)"),
        malformed("malformed-empty-metadata-key", "A metadata header with an empty key.",
                  [("kafka_correlationId", cid(23)), method, reply_to, ("rpc-md-", b"v")],
                  "empty metadata key in header 'rpc-md-'"),
        malformed("malformed-method-not-utf8", "rpc-method that is not UTF-8.",
                  [("kafka_correlationId", cid(24)), ("rpc-method", b"/rpctest.v1.Kitchen/\xff"), reply_to],
                  "rpc-method header is not UTF-8"),
    ]

    # Replies a requester must read: decode only.
    shouted = b"\n\x05HELLO\x12\x13kafka_correlationId"
    out += [
        {
            "name": "reply-spring-no-status",
            "description": "The reply of a plain Spring @KafkaListener + @SendTo replier: only kafka_correlationId, "
                           "no rpc-status. It is OK, and the value is the response.",
            "handler": False,
            "canonical": False,
            "request": None,
            "reply": {**record(REPLIES, [("kafka_correlationId", cid(30))], shouted, partition=0),
                      "decoded": reply_decoded(cid(30), payload=shouted)},
            "ignore": [],
            "implementation_specific": [],
        },
        {
            "name": "reply-unknown-status",
            "description": "An rpc-status number gRPC does not define is read as UNKNOWN (2); the message is kept.",
            "handler": False,
            "canonical": False,
            "request": None,
            "reply": {**record(REPLIES, [("kafka_correlationId", cid(31)), ("rpc-status", b"99"),
                                         ("rpc-message", b"from the future")], b"", partition=0),
                      "decoded": reply_decoded(cid(31), 2, "UNKNOWN", "from the future")},
            "ignore": [],
            "implementation_specific": [],
        },
        {
            "name": "reply-malformed-status",
            "description": "An rpc-status that is not a decimal number: the reply is malformed.",
            "handler": False,
            "canonical": False,
            "request": None,
            "reply": {**record(REPLIES, [("kafka_correlationId", cid(32)), ("rpc-status", b"OK")], b"", partition=0),
                      "error": "rpc-status must be a decimal gRPC status code"},
            "ignore": [],
            "implementation_specific": ["reply.error"],
        },
        {
            "name": "reply-no-correlation-id",
            "description": "A reply without kafka_correlationId belongs to no call: malformed (a requester drops it).",
            "handler": False,
            "canonical": False,
            "request": None,
            "reply": {**record(REPLIES, [("rpc-status", b"0")], b"", partition=0),
                      "error": "missing kafka_correlationId header"},
            "ignore": [],
            "implementation_specific": ["reply.error"],
        },
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
