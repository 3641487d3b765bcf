"""Kafka over SSL and SASL/SCRAM (issue #7), against a private broker with such listeners.

kafka/broker.sh starts it with KAFKA_SSL_PORT and KAFKA_SASL_PORT: an SSL listener and a
SASL_SSL one (SCRAM-SHA-256 and -512), with a CA it makes in its state dir. Real frontend and
handler processes connect to those listeners only; the SCRAM password is unique to this run,
so finding it in any output is a leak.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2
from rpctest.v1 import kitchen_pb2_grpc

from tests import procs
from tests.brokers import Broker, free_port
from tests.conftest import engine

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.engines,
    pytest.mark.usefixtures("openssl"),  # kafka/broker.sh makes the TLS listeners' certificates with it
]

USER = "rpc-test"
PASSWORD = f"pw-{uuid.uuid4().hex}"
KITCHEN = ["tests.kitchen_service:Kitchen"]
#: The engine the processes run on (.ci/run runs this module on each).
ENGINE = engine()
#: Client settings in the engine's own names.
NAMES = {
    "confluent": {"protocol": "security.protocol", "ca": "ssl.ca.location", "mechanism": "sasl.mechanism",
                  "user": "sasl.username", "password": "sasl.password"},
    "kafka-python": {"protocol": "security_protocol", "ca": "ssl_cafile", "mechanism": "sasl_mechanism",
                     "user": "sasl_plain_username", "password": "sasl_plain_password"},
}[ENGINE]
#: kafka-python retries a failing bootstrap for bootstrap_timeout_ms (30 s by default); the
#: failure tests shorten it so the module stays fast. librdkafka gives up on its own.
SHORT_BOOTSTRAP = ["--kafka-option", "bootstrap_timeout_ms=5000"] if ENGINE == "kafka-python" else []


@dataclass(frozen=True)
class Secure:
    broker: Broker
    ssl: str
    sasl: str
    ca: Path


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[Secure]:
    """One broker for the module, with PLAINTEXT, SSL and SASL_SSL listeners."""
    ssl_port, sasl_port = free_port(), free_port()
    # No class-data-sharing archive: it would be dumped at 'down' for a broker started once.
    broker = Broker(tmp_path_factory.mktemp("kafka-secure"), KAFKA_SSL_PORT=str(ssl_port),
                    KAFKA_SASL_PORT=str(sasl_port), KAFKA_SCRAM_USER=USER, KAFKA_SCRAM_PASSWORD=PASSWORD,
                    KAFKA_CDS="0")
    printed = broker.up()
    ca = broker.state / "tls" / "ca.pem"
    try:
        assert f"ssl bootstrap servers: 127.0.0.1:{ssl_port} (security_protocol=SSL, ssl_cafile={ca})" in printed
        assert f"sasl_ssl bootstrap servers: 127.0.0.1:{sasl_port}" in printed
        assert ca.is_file()
        assert PASSWORD not in printed
        yield Secure(broker, f"127.0.0.1:{ssl_port}", f"127.0.0.1:{sasl_port}", ca)
    finally:
        broker.down()
    assert PASSWORD not in (broker.state / "broker.log").read_text(errors="replace")


def _sasl_config(path: Path, secure: Secure, mechanism: str, password: str = PASSWORD, extra: str = "") -> Path:
    path.write_text(
        "[kafka.client]\n"
        f'{NAMES["protocol"]} = "SASL_SSL"\n'
        f'{NAMES["ca"]} = "{secure.ca}"\n'
        f'{NAMES["mechanism"]} = "{mechanism}"\n'
        f'{NAMES["user"]} = "{USER}"\n'
        f'{NAMES["password"]} = "{password}"\n'
        f"{extra}"
    )
    return path


def _whoami(address: str) -> tuple[int, str]:
    with grpc.insecure_channel(address) as channel:
        reply = kitchen_pb2_grpc.KitchenStub(channel).Whoami(empty_pb2.Empty(), timeout=30)
    return reply.pid, reply.peer


def _run(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=procs.REPO, env=procs.child_env(**(env or {})),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _fails_in_one_line(processes: list[subprocess.Popen[str]], limit: float) -> list[str]:
    """Wait for processes that must fail; return the one line each wrote."""
    started = time.monotonic()
    lines = []
    for process in processes:
        try:
            out, err = process.communicate(timeout=max(1.0, limit - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            raise AssertionError(f"{process.args[2]} still running after {limit}s:\n{out}{err}") from None
        assert process.returncode == 2, (process.returncode, out, err)
        assert out == "" and "Traceback" not in err, (out, err)
        assert len(err.strip().splitlines()) == 1, err
        lines.append(err.strip())
    return lines


def test_ssl_frontend_and_handler_serve_a_call(secure: Secure, prefix: str, tmp_path: Path) -> None:
    tls = ["--kafka-option", f"{NAMES['protocol']}=SSL", "--kafka-option", f"{NAMES['ca']}={secure.ca}"]
    worker = procs.handler(tmp_path / "h.log", secure.ssl, prefix, *tls, targets=KITCHEN)
    front, address = procs.frontend(tmp_path / "f.log", secure.ssl, prefix, *tls)
    try:
        pid, peer = _whoami(address)
        assert pid == worker.pid
        assert peer.startswith(f"kafka:{prefix}")
    finally:
        front.stop()
        worker.stop()


def test_sasl_scram_from_config_file_and_the_password_stays_secret(secure: Secure, prefix: str, tmp_path: Path) -> None:
    # The frontend names its file with --config and uses SCRAM-SHA-512; the handler process gets
    # its file from KAFKA_RPC_CONFIG and uses SCRAM-SHA-256. Both log at DEBUG.
    front_config = _sasl_config(tmp_path / "frontend.toml", secure, "SCRAM-SHA-512")
    worker_config = _sasl_config(tmp_path / "handlers.toml", secure, "SCRAM-SHA-256")
    worker = procs.handler(tmp_path / "h.log", secure.sasl, prefix, "--log-level", "DEBUG", targets=KITCHEN,
                           env={"KAFKA_RPC_CONFIG": str(worker_config)})
    front, address = procs.frontend(tmp_path / "f.log", secure.sasl, prefix, "--config", str(front_config),
                                    "--log-level", "DEBUG")
    try:
        pid, _ = _whoami(address)
        assert pid == worker.pid
    finally:
        front.stop()
        worker.stop()
    for proc in (front, worker):
        assert PASSWORD not in proc.output()

    printed = [
        subprocess.run([sys.executable, "-m", "adapter", "--config", str(front_config), "--print-config"],
                       cwd=procs.REPO, env=procs.child_env(), capture_output=True, text=True, timeout=60),
        subprocess.run([sys.executable, "-m", "handlers", *KITCHEN, "--print-config"], cwd=procs.REPO,
                       env=procs.child_env(KAFKA_RPC_CONFIG=str(worker_config)), capture_output=True, text=True,
                       timeout=60),
    ]
    for done in printed:
        assert done.returncode == 0, done.stderr
        assert f"kafka.client.{NAMES['password']} = ***" in done.stdout
        assert f"kafka.client.{NAMES['user']} = '{USER}'" in done.stdout
        assert PASSWORD not in done.stdout + done.stderr


def test_wrong_scram_password_exits_with_one_line_saying_authentication_failed(secure: Secure, prefix: str,
                                                                               tmp_path: Path) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    config = _sasl_config(tmp_path / "wrong.toml", secure, "SCRAM-SHA-512", password=wrong,
                          extra="bootstrap_timeout_ms = 5000\n" if ENGINE == "kafka-python" else "")
    common = ["--config", str(config), "--bootstrap-servers", secure.sasl, "--topic-prefix", prefix,
              "--log-level", "WARNING"]
    lines = _fails_in_one_line([
        _run("adapter", "--proto-path", "protos", "--listen", "127.0.0.1:0", *common),
        _run("handlers", *KITCHEN, "--group", f"{prefix}handlers", *common),
    ], limit=45)
    for line, name in zip(lines, ("adapter", "handlers"), strict=True):
        assert line.startswith(f"{name}: error: connecting to Kafka at {secure.sasl}: "
                               f"authentication failed for user '{USER}': "), line
        assert line.endswith("invalid credentials with SASL mechanism SCRAM-SHA-512"), line
        assert wrong not in line and PASSWORD not in line


def test_plaintext_client_to_the_ssl_port_fails_in_bounded_time(secure: Secure, prefix: str) -> None:
    common = ["--bootstrap-servers", secure.ssl, "--topic-prefix", prefix, *SHORT_BOOTSTRAP, "--log-level", "WARNING"]
    started = time.monotonic()
    lines = _fails_in_one_line([
        _run("adapter", "--proto-path", "protos", "--listen", "127.0.0.1:0", *common),
        _run("handlers", *KITCHEN, "--group", f"{prefix}handlers", *common),
    ], limit=15)  # well under the 30 s connection deadline: the TLS listener is recognised at once
    print(f"plaintext to the SSL port: both processes exited after {time.monotonic() - started:.1f}s")
    for line in lines:
        assert f"connecting to Kafka at {secure.ssl}: " in line
        assert line.endswith(f"{secure.ssl} expects TLS: set {NAMES['protocol']} to SSL or SASL_SSL"), line


def test_server_certificate_from_another_ca_fails_the_tls_handshake(secure: Secure, prefix: str, tmp_path: Path) -> None:
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "1", "-subj", "/CN=another CA", "-keyout", "other.key", "-out", "other-ca.pem"],
                   cwd=tmp_path, check=True, capture_output=True, timeout=60)
    [line] = _fails_in_one_line([
        _run("adapter", "--proto-path", "protos", "--listen", "127.0.0.1:0", "--bootstrap-servers", secure.ssl,
             "--topic-prefix", prefix, "--kafka-option", f"{NAMES['protocol']}=SSL",
             "--kafka-option", f"{NAMES['ca']}={tmp_path / 'other-ca.pem'}", *SHORT_BOOTSTRAP,
             "--log-level", "WARNING"),
    ], limit=45)
    assert line.startswith(f"adapter: error: connecting to Kafka at {secure.ssl}: TLS handshake failed: "), line
    assert "CERTIFICATE_VERIFY_FAILED" in line.upper().replace(" ", "_"), line


@pytest.mark.parametrize("where", ["flag", "env"])
def test_print_config_masks_a_password_given_as_kafka_option(where: str) -> None:
    option = f"{NAMES['password']}={PASSWORD}"
    args = ["--kafka-option", option] if where == "flag" else []
    env = {"KAFKA_RPC_KAFKA_OPTION": option} if where == "env" else {}
    done = subprocess.run([sys.executable, "-m", "handlers", *KITCHEN, *args, "--print-config"], cwd=procs.REPO,
                          env=procs.child_env(**env), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"kafka.client.{NAMES['password']} = ***" in done.stdout
    assert PASSWORD not in done.stdout + done.stderr
