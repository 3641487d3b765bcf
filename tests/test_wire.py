"""The wire protocol (adapter.protocol.wire): round trips, Spring compatibility, malformed records."""

from __future__ import annotations

import contextlib
import uuid

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from adapter.errors import MalformedRecord
from adapter.protocol import wire
from adapter.protocol.wire import Reply, Request

CID = bytes(range(16))


def header(headers: list[tuple[str, bytes]], name: str) -> list[bytes]:
    return [value for key, value in headers if key == name]


# Round trips.


def test_request_round_trip_with_everything() -> None:
    request = Request(
        method="/pkg.Svc/Do",
        correlation_id=CID,
        reply_topic="replies",
        reply_partition=7,
        deadline=1_700_000_000.123,
        metadata=(("x-user", "ünïcødé ✓"), ("x-trace-bin", b"\x00\xff"), ("x-user", "again")),
        payload=b"\x08\x01",
    )
    headers = request.encode_headers()
    assert header(headers, wire.REPLY_PARTITION) == [b"\x00\x00\x00\x07"]
    assert header(headers, wire.DEADLINE) == [b"1700000000123"]
    assert Request.decode(headers, request.payload) == request


def test_request_round_trip_with_a_verified_caller() -> None:
    request = wire.Request("/s.S/M", b"c", "replies", auth=(("x509_common_name", b"ann"),
                           ("x509_subject_alternative_name", b"ann.example"), ("x509_subject_alternative_name", b"a2")),
                           identity_key="x509_subject_alternative_name")
    headers = request.encode_headers()
    assert ("rpc-auth-x509_common_name", b"ann") in headers
    assert ("rpc-peer-identity-key", b"x509_subject_alternative_name") in headers
    decoded = wire.Request.decode(headers, b"")
    assert decoded == request
    assert decoded.peer_identities() == [b"ann.example", b"a2"]
    assert wire.Request.decode(wire.Request("/s.S/M", b"c", "r").encode_headers(), b"").peer_identities() is None


def test_request_round_trip_minimal() -> None:
    request = Request(method="/pkg.Svc/Do", correlation_id=CID, reply_topic=None)
    headers = request.encode_headers()
    assert {name for name, _ in headers} == {wire.CORRELATION_ID, wire.METHOD}
    decoded = Request.decode(headers, None)
    assert decoded == request
    assert decoded.reply_partition is None and decoded.deadline is None and decoded.time_remaining() is None


def test_request_metadata_keeps_order_and_repeated_keys() -> None:
    metadata = (("a", "1"), ("b-bin", b"\x01"), ("a", "2"), ("b-bin", b"\x02"))
    request = Request(method="/p.S/M", correlation_id=CID, reply_topic="r", metadata=metadata)
    assert Request.decode(request.encode_headers(), b"").metadata == metadata


def test_reply_round_trip() -> None:
    reply = Reply(
        correlation_id=CID,
        code=grpc.StatusCode.FAILED_PRECONDITION,
        message="nicht möglich ✗",
        trailing_metadata=(("x-t", "v"), ("x-t", "w"), ("grpc-status-details-bin", b"\x08\x09")),
    )
    headers = reply.encode_headers()
    assert header(headers, wire.STATUS) == [b"9"]
    assert Reply.decode(headers, b"") == reply


def test_reply_ok_round_trip_has_no_message_header() -> None:
    reply = Reply(correlation_id=CID, payload=b"response")
    headers = reply.encode_headers()
    assert header(headers, wire.STATUS_MESSAGE) == []
    assert Reply.decode(headers, reply.payload) == reply


def test_time_remaining() -> None:
    request = Request(method="/p.S/M", correlation_id=CID, reply_topic="r", deadline=100.0)
    assert request.time_remaining(now=98.5) == 1.5
    assert request.time_remaining(now=101.0) == -1.0


# Spring Kafka compatibility.


def test_binary_correlation_id_is_echoed_verbatim() -> None:
    cid = uuid.uuid4().bytes
    request = Request.decode([(wire.CORRELATION_ID, cid), (wire.REPLY_TOPIC, b"spring-replies")], b"payload")
    assert request.correlation_id == cid
    assert request.method == ""  # a plain Spring requester sends no rpc-method
    reply_headers = Reply(correlation_id=request.correlation_id).encode_headers()
    assert header(reply_headers, wire.CORRELATION_ID) == [cid]


def test_string_correlation_id_is_echoed_verbatim() -> None:
    cid = str(uuid.uuid4()).encode()
    assert len(cid) == 36
    request = Request.decode([(wire.CORRELATION_ID, cid)], b"")
    assert request.correlation_id == cid
    assert header(Reply(correlation_id=request.correlation_id).encode_headers(), wire.CORRELATION_ID) == [cid]


def test_reply_partition_is_four_byte_big_endian() -> None:
    request = Request.decode([(wire.CORRELATION_ID, CID), (wire.REPLY_PARTITION, b"\x00\x00\x01\x02")], b"")
    assert request.reply_partition == 258
    encoded = Request(method="", correlation_id=CID, reply_topic="r", reply_partition=65536).encode_headers()
    assert header(encoded, wire.REPLY_PARTITION) == [b"\x00\x01\x00\x00"]


def test_reply_without_status_is_ok() -> None:
    reply = Reply.decode([(wire.CORRELATION_ID, CID)], b"spring response")
    assert reply == Reply(correlation_id=CID, code=grpc.StatusCode.OK, payload=b"spring response")


def test_new_correlation_id_is_a_fresh_binary_uuid() -> None:
    first, second = wire.new_correlation_id(), wire.new_correlation_id()
    assert len(first) == 16 and first != second
    assert uuid.UUID(bytes=first).version == 4


def test_last_header_wins() -> None:
    headers = [
        (wire.CORRELATION_ID, b"first"),
        (wire.METHOD, b"/a.A/A"),
        (wire.REPLY_PARTITION, b"\x00\x00\x00\x01"),
        (wire.CORRELATION_ID, b"second"),
        (wire.METHOD, b"/b.B/B"),
        (wire.REPLY_PARTITION, b"\x00\x00\x00\x02"),
    ]
    request = Request.decode(headers, b"")
    assert (request.correlation_id, request.method, request.reply_partition) == (b"second", "/b.B/B", 2)
    assert wire.correlation_id_of(headers) == b"second"
    status_twice = [(wire.CORRELATION_ID, CID), (wire.STATUS, b"5"), (wire.STATUS, b"7")]
    assert Reply.decode(status_twice, b"").code is grpc.StatusCode.PERMISSION_DENIED


def test_correlation_id_of() -> None:
    assert wire.correlation_id_of(None) is None
    assert wire.correlation_id_of([(wire.METHOD, b"x")]) is None
    assert wire.correlation_id_of([(wire.CORRELATION_ID, CID)]) == CID


# Status codes.


@pytest.mark.parametrize("code", list(grpc.StatusCode))
def test_every_status_code_round_trips(code: grpc.StatusCode) -> None:
    assert Reply.decode(Reply(correlation_id=CID, code=code).encode_headers(), b"").code is code
    assert wire.status_code(code.value[0]) is code


@pytest.mark.parametrize("number", [b"17", b"99", b"-1", b"4294967296"])
def test_unknown_status_number_is_unknown(number: bytes) -> None:
    reply = Reply.decode([(wire.CORRELATION_ID, CID), (wire.STATUS, number)], b"")
    assert reply.code is grpc.StatusCode.UNKNOWN


# Malformed records: each names the header at fault.

MISSING_CID: list[tuple[str, bytes]] = [(wire.METHOD, b"/p.S/M")]
MALFORMED_REQUESTS = {
    "missing correlation id": (MISSING_CID, wire.CORRELATION_ID),
    "empty correlation id": ([(wire.CORRELATION_ID, b"")], wire.CORRELATION_ID),
    "3-byte reply partition": ([(wire.CORRELATION_ID, CID), (wire.REPLY_PARTITION, b"\x00\x00\x01")],
                               wire.REPLY_PARTITION),
    "8-byte reply partition": ([(wire.CORRELATION_ID, CID), (wire.REPLY_PARTITION, b"\x00" * 8)],
                               wire.REPLY_PARTITION),
    "text reply partition": ([(wire.CORRELATION_ID, CID), (wire.REPLY_PARTITION, b"3")], wire.REPLY_PARTITION),
    "non-numeric deadline": ([(wire.CORRELATION_ID, CID), (wire.DEADLINE, b"soon")], wire.DEADLINE),
    "fractional deadline": ([(wire.CORRELATION_ID, CID), (wire.DEADLINE, b"1.5")], wire.DEADLINE),
    "non-ASCII deadline": ([(wire.CORRELATION_ID, CID), (wire.DEADLINE, "١٢٣".encode())], wire.DEADLINE),
    "non-UTF-8 method": ([(wire.CORRELATION_ID, CID), (wire.METHOD, b"\xff")], wire.METHOD),
    "non-UTF-8 reply topic": ([(wire.CORRELATION_ID, CID), (wire.REPLY_TOPIC, b"\xc3")], wire.REPLY_TOPIC),
    "non-UTF-8 text metadata": ([(wire.CORRELATION_ID, CID), ("rpc-md-x-user", b"\xff\xfe")], "rpc-md-x-user"),
    "empty metadata key": ([(wire.CORRELATION_ID, CID), ("rpc-md-", b"v")], "rpc-md-"),
}
MALFORMED_REPLIES = {
    "missing correlation id": ([(wire.STATUS, b"0")], wire.CORRELATION_ID),
    "non-numeric status": ([(wire.CORRELATION_ID, CID), (wire.STATUS, b"OK")], wire.STATUS),
    "empty status": ([(wire.CORRELATION_ID, CID), (wire.STATUS, b"")], wire.STATUS),
    "non-UTF-8 message": ([(wire.CORRELATION_ID, CID), (wire.STATUS_MESSAGE, b"\x80")], wire.STATUS_MESSAGE),
    "non-UTF-8 text trailer": ([(wire.CORRELATION_ID, CID), ("rpc-tm-x-why", b"\xff")], "rpc-tm-x-why"),
    "empty trailer key": ([(wire.CORRELATION_ID, CID), ("rpc-tm-", b"v")], "rpc-tm-"),
}


@pytest.mark.parametrize(("headers", "named"), MALFORMED_REQUESTS.values(), ids=MALFORMED_REQUESTS.keys())
def test_malformed_request_names_the_header(headers: list[tuple[str, bytes]], named: str) -> None:
    with pytest.raises(MalformedRecord, match=named):
        Request.decode(headers, b"")


@pytest.mark.parametrize(("headers", "named"), MALFORMED_REPLIES.values(), ids=MALFORMED_REPLIES.keys())
def test_malformed_reply_names_the_header(headers: list[tuple[str, bytes]], named: str) -> None:
    with pytest.raises(MalformedRecord, match=named):
        Reply.decode(headers, b"")


def test_decode_without_headers_is_malformed() -> None:
    with pytest.raises(MalformedRecord, match=wire.CORRELATION_ID):
        Request.decode(None, None)
    with pytest.raises(MalformedRecord, match=wire.CORRELATION_ID):
        Reply.decode(None, None)


def test_binary_metadata_need_not_be_utf8() -> None:
    request = Request.decode([(wire.CORRELATION_ID, CID), ("rpc-md-x-raw-bin", b"\xff\xfe")], b"")
    assert request.metadata == (("x-raw-bin", b"\xff\xfe"),)


@pytest.mark.parametrize("name", ["rpc-md-x-user", "rpc-tm-x-user-bin"])
def test_null_metadata_header_value_is_not_a_crash(name: str) -> None:
    headers = [(wire.CORRELATION_ID, CID), (name, None)]
    for decode in (Request.decode, Reply.decode):
        with contextlib.suppress(MalformedRecord):
            decode(headers, b"")  # type: ignore[arg-type]


# call_metadata: what of an incoming gRPC call's metadata travels to the handler.


def test_call_metadata_drops_hop_headers_and_pseudo_headers() -> None:
    incoming: list[tuple[str, str | bytes]] = [
        (":authority", "localhost:50051"),
        (":path", "/p.S/M"),
        ("grpc-timeout", "99m"),
        ("grpc-encoding", "identity"),
        ("grpc-accept-encoding", "identity,deflate,gzip"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
        ("user-agent", "grpc-python/1.85"),
        ("x-user", "alice"),
        ("x-trace-bin", b"\x01\x02"),
        ("x-user", "bob"),
    ]
    assert wire.call_metadata(incoming) == (
        ("user-agent", "grpc-python/1.85"),
        ("x-user", "alice"),
        ("x-trace-bin", b"\x01\x02"),
        ("x-user", "bob"),
    )
    assert wire.call_metadata(None) == ()


# Properties.

_TEXT_KEY = st.text(min_size=1).filter(lambda key: not key.endswith("-bin"))
_BIN_KEY = st.text().map(lambda key: key + "-bin")
_METADATA = st.lists(
    st.one_of(st.tuples(_TEXT_KEY, st.text()), st.tuples(_BIN_KEY, st.binary()))
).map(tuple)

requests = st.builds(
    Request,
    method=st.text(),
    correlation_id=st.binary(min_size=1),
    reply_topic=st.none() | st.text(min_size=1),  # empty means "no reply topic"
    reply_partition=st.none() | st.integers(-(2**31), 2**31 - 1),
    # Deadlines travel in whole milliseconds.
    deadline=st.none() | st.integers(0, 2**50).map(lambda ms: ms / 1000),
    metadata=_METADATA,
    payload=st.binary(),
    opens_stream=st.booleans(),
    idempotency_key=st.none() | st.binary(),
    auth=st.lists(st.tuples(st.text(min_size=1), st.binary())).map(tuple),
    identity_key=st.none() | st.text(min_size=1),
)
frames = st.builds(
    wire.Frame,
    correlation_id=st.binary(min_size=1),
    kind=st.sampled_from([wire.MESSAGE, wire.HALF_CLOSE, wire.CANCEL]),
    seq=st.integers(0, 2**40),
    payload=st.binary(),
).map(lambda f: f if f.kind == wire.MESSAGE else wire.Frame(f.correlation_id, f.kind, 0, f.payload))
replies = st.builds(
    Reply,
    correlation_id=st.binary(min_size=1),
    code=st.sampled_from(list(grpc.StatusCode)),
    message=st.text(),
    trailing_metadata=_METADATA,
    payload=st.binary(),
)


@given(requests)
def test_any_request_round_trips(request: Request) -> None:
    assert Request.decode(request.encode_headers(), request.payload) == request


@given(replies)
def test_any_reply_round_trips(reply: Reply) -> None:
    assert Reply.decode(reply.encode_headers(), reply.payload) == reply


@given(frames)
def test_any_frame_round_trips_through_both_dispatching_decoders(frame: wire.Frame) -> None:
    assert wire.decode_request(frame.encode_headers(), frame.payload) == frame
    if frame.kind == wire.MESSAGE:  # only messages travel back on reply topics
        assert wire.decode_reply(frame.encode_headers(), frame.payload) == frame


@given(requests)
def test_any_request_is_a_request_to_the_dispatching_decoder(request: Request) -> None:
    assert wire.decode_request(request.encode_headers(), request.payload) == request


_NAMES = st.sampled_from(
    [wire.CORRELATION_ID, wire.REPLY_TOPIC, wire.REPLY_PARTITION, wire.METHOD, wire.DEADLINE, wire.STATUS,
     wire.STATUS_MESSAGE, wire.METADATA_PREFIX, wire.TRAILER_PREFIX, "rpc-md-x", "rpc-md-x-bin", "rpc-tm-y", "rpc-tm-y-bin",
     wire.KIND, wire.SEQ, wire.IDEMPOTENCY_KEY, wire.AUTH_PREFIX + "x509_common_name", wire.PEER_IDENTITY_KEY,
     "traceparent", "tracestate"]
) | st.text()
_VALUES = (st.binary() | st.integers().map(lambda n: str(n).encode()) | st.text().map(str.encode)
           | st.sampled_from([b"open", b"msg", b"end", b"cancel", b"\x00\x00\x00\x01", b"OK"]))
_HEADERS = st.none() | st.lists(st.tuples(_NAMES, _VALUES))


@given(_HEADERS, st.none() | st.binary())
def test_whatever_decodes_re_encodes_to_itself(headers: list[tuple[str, bytes]] | None, value: bytes | None) -> None:
    """Any headers: each decoder raises nothing but MalformedRecord, and what it accepts encodes to
    records that decode to the same thing (no field is lost or altered on the way)."""
    decoders = (Request.decode, Reply.decode, wire.Frame.decode, wire.decode_request, wire.decode_reply)
    for decode in decoders:
        try:
            decoded = decode(headers, value)
        except MalformedRecord:
            continue
        again = type(decoded).decode(decoded.encode_headers(), decoded.payload)
        assert again == decoded, (decode.__qualname__, headers)


def test_an_empty_reply_topic_means_no_reply() -> None:
    headers = [(wire.CORRELATION_ID, CID), (wire.METHOD, b"/p.S/M"), (wire.REPLY_TOPIC, b"")]
    assert Request.decode(headers, b"").reply_topic is None


def test_plain_trace_context_headers_count_as_metadata() -> None:
    # What Spring's (Micrometer) and OpenTelemetry's Kafka instrumentations write on a record.
    parent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    headers = [(wire.CORRELATION_ID, b"c" * 16), ("traceparent", parent.encode()), ("tracestate", b"v=1")]
    request = wire.decode_request(headers, b"")
    assert isinstance(request, wire.Request)
    assert request.metadata == (("traceparent", parent), ("tracestate", "v=1"))
    # rpc-md-traceparent wins: it is the frontend's span, the plain header an outer hop's.
    ours = wire.decode_request([*headers, ("rpc-md-traceparent", b"00-ours")], b"")
    assert isinstance(ours, wire.Request) and ours.metadata == (("traceparent", "00-ours"),)
    # Someone else's undecodable header is ignored, not refused.
    odd = wire.decode_request([(wire.CORRELATION_ID, b"c" * 16), ("traceparent", b"\xff\xfe")], b"")
    assert isinstance(odd, wire.Request) and odd.metadata == ()
