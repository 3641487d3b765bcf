"""grpcurl (a Go client with no proto files) through server reflection, against real processes."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator

import pytest

from tests import procs

pytestmark = pytest.mark.kafka


@pytest.fixture(scope="module")
def address(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    tmp = tmp_path_factory.mktemp("grpcurl")
    prefix = f"t{uuid.uuid4().hex[:10]}."
    front, address = procs.frontend(tmp / "frontend.log", kafka_bootstrap, prefix)
    worker = procs.handler(tmp / "handler.log", kafka_bootstrap, prefix,
                           env={"COUPON_MAIL_TARGET": address, "MAIL_OUTBOX": str(tmp / "outbox")})
    yield address
    worker.stop()
    front.stop()


def run(grpcurl: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([grpcurl, "-plaintext", "-max-time", "30", *args], capture_output=True, text=True, timeout=60)


def test_list(grpcurl: str, address: str) -> None:
    out = run(grpcurl, address, "list")
    assert out.returncode == 0, out.stderr
    services = set(out.stdout.split())
    assert {"rpctest.v1.Kitchen", "shop.coupon.v1.CouponService", "shop.mail.v1.MailService",
            "grpc.health.v1.Health"} <= services


def test_describe_shows_methods_and_options(grpcurl: str, address: str) -> None:
    out = run(grpcurl, address, "describe", "shop.mail.v1.MailService")
    assert out.returncode == 0, out.stderr
    assert "rpc SendMail ( .shop.mail.v1.SendMailRequest ) returns ( .shop.mail.v1.SendMailReply )" in out.stdout
    assert '(.kafka_rpc.topic) = "SEND_MAIL"' in out.stdout
    message = run(grpcurl, address, "describe", "rpctest.v1.Everything")
    assert "map<string, int64> counts" in message.stdout


def test_call_with_json(grpcurl: str, address: str) -> None:
    body = {"user_id": "u9", "email": "zoe@example.com", "campaign": "autumn"}
    out = run(grpcurl, "-d", json.dumps(body), address, "shop.coupon.v1.CouponService/IssueCoupon")
    assert out.returncode == 0, out.stderr
    reply = json.loads(out.stdout)
    assert reply["code"].startswith("AUTUMN-")
    assert "expiresAt" in reply


def test_call_with_well_known_types_and_error(grpcurl: str, address: str) -> None:
    body = {"at": "2024-01-02T03:04:05Z", "took": "1.500s", "doc": {"a": [1, "b"]}, "maybe": "x", "text": "héllo"}
    out = run(grpcurl, "-d", json.dumps(body), address, "rpctest.v1.Kitchen/Echo")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == body
    failed = run(grpcurl, "-d", '{"mode": "ABORT", "code": 7, "message": "no way"}', address, "rpctest.v1.Kitchen/Fail")
    assert failed.returncode != 0
    assert "PermissionDenied" in failed.stderr and "no way" in failed.stderr


def test_health_check(grpcurl: str, address: str) -> None:
    out = run(grpcurl, address, "grpc.health.v1.Health/Check")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"status": "SERVING"}
