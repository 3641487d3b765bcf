"""TLS and mutual TLS on the gRPC frontend, with certificates the test makes (openssl)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2
from rpctest.v1 import kitchen_pb2_grpc

from tests import procs

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.usefixtures("openssl"),
]


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _pki(folder: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, signed by it."""
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=test-ca",
             "-keyout", "ca.key", "-out", "ca.pem", cwd=folder)
    (folder / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name, ext in (("server", ["-extfile", "server.ext"]), ("client", [])):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}", "-keyout", f"{name}.key",
                 "-out", f"{name}.csr", cwd=folder)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-days", "2", "-out", f"{name}.pem", *ext, cwd=folder)
    return folder


def _call(address: str, folder: Path, client_cert: bool) -> grpc.StatusCode:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(folder / "ca.pem").read_bytes(),
        private_key=(folder / "client.key").read_bytes() if client_cert else None,
        certificate_chain=(folder / "client.pem").read_bytes() if client_cert else None,
    )
    with grpc.secure_channel(address, credentials) as channel:
        try:
            kitchen_pb2_grpc.KitchenStub(channel).Nothing(empty_pb2.Empty(), timeout=15)
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()


def _meta(address: str, folder: Path) -> dict[str, str]:
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(folder / "ca.pem").read_bytes(), private_key=(folder / "client.key").read_bytes(),
        certificate_chain=(folder / "client.pem").read_bytes())
    with grpc.secure_channel(address, credentials) as channel:
        reply = kitchen_pb2_grpc.KitchenStub(channel).Meta(
            empty_pb2.Empty(), metadata=(("x509_common_name", "admin"), ("rpc-auth-x509_common_name", "admin")),
            timeout=15)
    return dict(reply.text)


@pytest.mark.parametrize("mutual", [False, True])
def test_frontend_serves_over_tls(kafka_bootstrap: str, prefix: str, tmp_path: Path, mutual: bool) -> None:
    pki = _pki(tmp_path)
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, targets=["tests.kitchen_service:Kitchen"])
    tls = ["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")]
    if mutual:
        tls += ["--tls-client-ca", str(pki / "ca.pem")]
    front, address = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix, *tls)
    try:
        assert _call(address, pki, client_cert=True) == grpc.StatusCode.OK
        # #12.12: the handler sees the caller TLS verified (mutual TLS only), never what a client claims.
        seen = _meta(address, pki)
        if mutual:
            assert seen["auth:peer"] == "client" and seen["auth:x509_common_name"] == "client", seen
        else:
            assert not [k for k in seen if k.startswith("auth:")], seen
        assert seen["x509_common_name"] == "admin"  # a client's claim stays plain metadata
        # Without a client certificate: fine over TLS, refused under mutual TLS.
        expected = grpc.StatusCode.UNAVAILABLE if mutual else grpc.StatusCode.OK
        assert _call(address, pki, client_cert=False) == expected
        # A plaintext client cannot talk to a TLS port.
        with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as info:
            kitchen_pb2_grpc.KitchenStub(channel).Nothing(empty_pb2.Empty(), timeout=5)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        front.stop()
        worker.stop()
