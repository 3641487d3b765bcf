"""Spring Kafka peers, both directions, as real processes against the real broker.

- A Spring `ReplyingKafkaTemplate` (tests/interop/spring, `interop.Caller`) calls our handler
  processes, with binary and string correlation ids, with and without kafka_replyPartition,
  and reads our errors with its `ReplyErrorChecker`.
- Our frontend calls a plain Spring `@KafkaListener` + `@SendTo` replier (`interop.Replier`)
  that knows nothing of our rpc-* headers.

The Java programs are built once per session with Maven (offline when ~/.m2 has what they
need, else from the registry).
"""

from __future__ import annotations

import base64
import functools
import json
import os
import re
import struct
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory
from google.rpc import error_details_pb2, status_pb2
from kafka import KafkaConsumer, TopicPartition

from adapter.protocol.protoset import ProtoSet
from tests import procs

#: Runs on every Kafka engine (.ci/run repeats it with KAFKA_RPC_KAFKA_CLIENT=kafka-python).
pytestmark = [pytest.mark.kafka, pytest.mark.engines]

SPRING = procs.REPO / "tests" / "interop" / "spring"
#: interop.v1.Shout, served by the Spring replier: a test-only service, kept out of protos/.
INTEROP_PROTOS = procs.REPO / "tests" / "interop" / "protos"
JVM_FLAGS = ["-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Xss512k",
             "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn", "-Dorg.slf4j.simpleLogger.logFile=System.err"]


@pytest.fixture(scope="session")
def spring_classpath() -> str:
    """Compile tests/interop/spring; the classpath to run its programs with."""
    command = ["mvn", "-q", "-B", "-f", str(SPRING / "pom.xml"), "compile"]
    built = subprocess.run([*command, "-o"], capture_output=True, text=True, timeout=600, check=False)
    if built.returncode != 0:  # ~/.m2 lacks something: fetch it
        built = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert built.returncode == 0, f"maven build failed:\n{built.stdout}\n{built.stderr}"
    dependencies = (SPRING / "target" / "classpath.txt").read_text().strip()
    return os.pathsep.join([str(SPRING / "target" / "classes"), dependencies])


def java(classpath: str, main: str, *args: str) -> list[str]:
    return ["java", *JVM_FLAGS, "-cp", classpath, main, *args]


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def last_header(headers: list[list[str]], name: str) -> bytes | None:
    found = None
    for key, value in headers:
        if key == name:
            found = base64.b64decode(value)
    return found


# Java caller -> our handler processes.


@dataclass
class CallerRun:
    prefix: str
    handler_pid: int
    cases: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def caller(kafka_bootstrap: str, spring_classpath: str, tmp_path_factory: pytest.TempPathFactory) -> CallerRun:
    """Run interop.Caller once against a handler process; its results by case name."""
    tmp = tmp_path_factory.mktemp("spring-caller")
    prefix = f"t{uuid.uuid4().hex[:10]}."
    worker = procs.handler(tmp / "handler.log", kafka_bootstrap, prefix, targets=["tests.kitchen_service:Kitchen"])
    try:
        run = subprocess.run(java(spring_classpath, "interop.Caller", "--bootstrap", kafka_bootstrap, "--prefix", prefix),
                             capture_output=True, text=True, timeout=180, check=False)
    finally:
        assert worker.stop() == 0, worker.output()
    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}"
    lines = json_lines(run.stdout)
    assert lines and lines[-1] == {"event": "done"}, run.stdout + run.stderr
    return CallerRun(prefix, worker.pid, {line["case"]: line for line in lines if "case" in line})


def check_round_trip(run: CallerRun, case: dict[str, Any], correlation: str, replies: str) -> None:
    """Correlation bytes echoed verbatim, reply topic and partition as Spring asked."""
    assert case["ok"], case
    sent = last_header(case["request_headers"], "kafka_correlationId")
    assert sent is not None and last_header(case["reply_headers"], "kafka_correlationId") == sent
    if correlation == "binary":
        assert len(sent) == 16  # UUID bytes, most significant first, as Python's uuid.UUID.bytes
    else:
        assert len(sent) == 36 and str(uuid.UUID(sent.decode())) == sent.decode()
    reply_topic = last_header(case["request_headers"], "kafka_replyTopic")
    assert reply_topic == f"{run.prefix}java.replies.{correlation}.{replies}".encode()
    assert case["reply_topic"] == reply_topic.decode()
    partition = last_header(case["request_headers"], "kafka_replyPartition")
    if replies == "pinned":
        assert partition == struct.pack(">i", 2)
        assert case["reply_partition"] == 2
    else:
        assert partition is None
    assert last_header(case["reply_headers"], "rpc-status") == b"0"


@pytest.mark.parametrize("correlation", ["binary", "string"])
@pytest.mark.parametrize("replies", ["group", "pinned"])
def test_spring_caller_without_rpc_method_on_single_method_topic(caller: CallerRun, correlation: str, replies: str) -> None:
    case = caller.cases[f"keyed/{correlation}/{replies}"]
    check_round_trip(caller, case, correlation, replies)
    assert last_header(case["request_headers"], "rpc-method") is None
    assert case["reply"]["pid"] == caller.handler_pid
    assert case["reply"]["peer"].startswith(f"kafka:{caller.prefix}rpctest.keyed/")


@pytest.mark.parametrize("correlation", ["binary", "string"])
@pytest.mark.parametrize("replies", ["group", "pinned"])
def test_spring_caller_reply_carries_the_request_key(caller: CallerRun, correlation: str, replies: str) -> None:
    case = caller.cases[f"keyed/{correlation}/{replies}"]
    assert case["ok"], case
    assert case["reply_key"] == base64.b64encode(b"c-42").decode()  # docs/protocol.md: "with the request's key"


@pytest.mark.parametrize("correlation", ["binary", "string"])
@pytest.mark.parametrize("replies", ["group", "pinned"])
def test_spring_caller_with_rpc_method_echoes_protobuf(caller: CallerRun, correlation: str, replies: str) -> None:
    case = caller.cases[f"echo/{correlation}/{replies}"]
    check_round_trip(caller, case, correlation, replies)
    assert last_header(case["request_headers"], "rpc-method") == b"/rpctest.v1.Kitchen/Echo"
    reply = case["reply"]
    assert reply["equal"], reply
    assert reply["text"] == "héllo ✓ 🎉"
    assert reply["tags"] == ["ç", "日本", ""]
    assert base64.b64decode(reply["blob"]) == bytes(range(256))


@pytest.mark.parametrize(
    ("name", "code", "status", "message"),
    [
        ("fail/abort", 5, "NOT_FOUND", "nicht gefunden ✗"),
        ("fail/raise", 2, "UNKNOWN", "Exception calling application: boom"),
        ("fail/rich", 3, "INVALID_ARGUMENT", "bad field"),
    ],
    ids=["abort", "raise", "rich"],
)
def test_reply_error_checker_raises_with_code_and_message(caller: CallerRun, name: str, code: int, status: str,
                                                          message: str) -> None:
    case = caller.cases[name]
    assert not case["ok"]
    assert (case["error"], case["code"], case["status"], case["message"]) == ("RpcStatusException", code, status, message)


def test_reply_error_checker_exposes_rich_details(caller: CallerRun) -> None:
    details = caller.cases["fail/rich"]["status_details"]
    assert details is not None
    status = status_pb2.Status.FromString(base64.b64decode(details))
    bad = error_details_pb2.BadRequest()
    assert status.code == 3 and status.details[0].Unpack(bad)
    assert bad.field_violations[0].description == "bad field"


def test_spring_caller_without_rpc_method_on_shared_topic_is_unimplemented(caller: CallerRun) -> None:
    case = caller.cases["no-method"]
    assert (case["error"], case["code"], case["status"]) == ("RpcStatusException", 12, "UNIMPLEMENTED")
    assert "rpc-method" in case["message"]


def test_expired_rpc_deadline_gets_no_reply(caller: CallerRun) -> None:
    case = caller.cases["expired"]
    assert case["error"] == "KafkaReplyTimeoutException"
    assert case["seconds"] >= 1.9


# Our frontend -> a plain Spring @KafkaListener + @SendTo replier.


@dataclass
class ShoutStack:
    prefix: str
    replier: procs.Proc
    channel: grpc.Channel
    bootstrap: str

    def requests(self, topic: str) -> list[dict[str, Any]]:
        """What the listener received on `topic` (unprefixed), from its JSON lines."""
        return [e for e in json_lines(self.replier.output())
                if e.get("event") == "request" and e["topic"] == self.prefix + topic]


@functools.cache
def shout_types() -> tuple[Any, Any]:
    """interop.v1.Text and Shouted, from the .proto (as the frontend loads it; no generated code needed)."""
    pool = ProtoSet.load([INTEROP_PROTOS]).pool
    return (message_factory.GetMessageClass(pool.FindMessageTypeByName("interop.v1.Text")),
            message_factory.GetMessageClass(pool.FindMessageTypeByName("interop.v1.Shouted")))


@pytest.fixture(scope="module")
def shout(kafka_bootstrap: str, spring_classpath: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ShoutStack]:
    tmp = tmp_path_factory.mktemp("spring-replier")
    prefix = f"t{uuid.uuid4().hex[:10]}."
    replier = procs.Proc(java(spring_classpath, "interop.Replier", "--bootstrap", kafka_bootstrap, "--prefix", prefix),
                         tmp / "replier.log")
    try:
        for topic in ("interop.shout.upper", "interop.shout.ignore", "interop.shout.refuse"):
            replier.wait_for(r'"event":"assigned","partitions":\[[^\]]*' + re.escape(f"{prefix}{topic}-"))
        front, address = procs.frontend(tmp / "frontend.log", kafka_bootstrap, prefix, "--proto-path", str(INTEROP_PROTOS))
    except BaseException:
        replier.stop()
        raise
    channel = grpc.insecure_channel(address)
    try:
        yield ShoutStack(prefix, replier, channel, kafka_bootstrap)
    finally:
        channel.close()
        assert front.stop() == 0, front.output()
        assert replier.stop() in (0, 143), replier.output()  # 143: the JVM's exit on SIGTERM


def test_frontend_call_answered_by_spring_listener(shout: ShoutStack) -> None:
    text, shouted = shout_types()
    upper = shout.channel.unary_unary("/interop.v1.Shout/Upper", request_serializer=text.SerializeToString,
                                      response_deserializer=shouted.FromString)
    reply, call = upper.with_call(text(text="héllo, spring ✓"), timeout=20, metadata=[("x-user", "ann")])
    assert call.code() == grpc.StatusCode.OK
    assert reply.text == "HÉLLO, SPRING ✓"
    # The listener saw Spring's headers (and ours, which it ignores).
    assert {"kafka_correlationId", "kafka_replyTopic", "kafka_replyPartition", "rpc-method", "rpc-deadline",
            "rpc-md-x-user"} <= set(reply.request_headers)
    [request] = shout.requests("interop.shout.upper")
    assert last_header(request["headers"], "kafka_replyTopic") == f"{shout.prefix}replies".encode()
    assert last_header(request["headers"], "rpc-method") == b"/interop.v1.Shout/Upper"
    correlation = last_header(request["headers"], "kafka_correlationId")
    reply_partition = last_header(request["headers"], "kafka_replyPartition")
    assert correlation is not None and len(correlation) == 16 and reply_partition is not None
    # @SendTo answered on the partition our frontend named, with the correlation id and no rpc-status.
    [record] = reply_records(shout, correlation)
    assert record.partition == struct.unpack(">i", reply_partition)[0]
    names = [name for name, _ in record.headers]
    assert "rpc-status" not in names and "rpc-message" not in names
    assert shouted.FromString(record.value) == reply


def test_spring_listener_sending_no_reply_gives_deadline_exceeded(shout: ShoutStack) -> None:
    text, shouted = shout_types()
    ignore = shout.channel.unary_unary("/interop.v1.Shout/Ignore", request_serializer=text.SerializeToString,
                                       response_deserializer=shouted.FromString)
    started = time.monotonic()
    with pytest.raises(grpc.RpcError) as info:
        ignore(text(text="anyone there?"), timeout=2)
    elapsed = time.monotonic() - started
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert 1.9 <= elapsed < 5
    # It was delivered, and deliberately left unanswered.
    [request] = shout.requests("interop.shout.ignore")
    assert text.FromString(base64.b64decode(request["value"])).text == "anyone there?"


def test_spring_listener_can_reply_with_a_status(shout: ShoutStack) -> None:
    text, shouted = shout_types()
    refuse = shout.channel.unary_unary("/interop.v1.Shout/Refuse", request_serializer=text.SerializeToString,
                                       response_deserializer=shouted.FromString)
    with pytest.raises(grpc.RpcError) as info:
        refuse(text(text="bitte"), timeout=20)
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert info.value.details() == "refusé: bitte"


def reply_records(shout: ShoutStack, correlation: bytes, timeout: float = 10.0) -> list[Any]:
    """Records on the frontend's reply topic that carry `correlation` (read without joining its group)."""
    topic = f"{shout.prefix}replies"
    consumer = KafkaConsumer(bootstrap_servers=shout.bootstrap)
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        found: list[Any] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(consumer.position(tp) < end for tp, end in ends.items()):
            for records in consumer.poll(timeout_ms=200).values():
                found.extend(r for r in records if dict(r.headers).get("kafka_correlationId") == correlation)
        return found
    finally:
        consumer.close()


def test_spring_programs_are_built_under_target(spring_classpath: str) -> None:
    # Build output stays under tests/interop/spring/target, which tests/interop/.gitignore ignores.
    assert spring_classpath.split(os.pathsep)[0] == str(SPRING / "target" / "classes")
    assert "spring/target/" in (SPRING.parent / ".gitignore").read_text()
    assert (SPRING / "target" / "classes" / "interop" / "RpcReplyErrorChecker.class").exists()
