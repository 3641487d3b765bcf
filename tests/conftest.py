"""Session fixtures: a real Kafka broker (started through kafka/broker.sh when none answers)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.brokers import Cluster

REPO = Path(__file__).resolve().parent.parent


def _reachable(address: str) -> bool:
    host, _, port = address.split(",")[0].rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def engine() -> str:
    """The Kafka engine under test: KAFKA_RPC_KAFKA_CLIENT (which the processes read too), or the default."""
    from adapter.runtime.config import KAFKA_CLIENTS

    return os.environ.get("KAFKA_RPC_KAFKA_CLIENT") or KAFKA_CLIENTS[0]


@pytest.fixture(scope="session")
def kafka_client() -> str:
    """The Kafka engine under test (`engine()`), for configs built in the test's own process."""
    return engine()


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Bootstrap address of a real broker: KAFKA_BOOTSTRAP_SERVERS, or the local one (started if needed)."""
    external = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if external:
        return external
    address = f"127.0.0.1:{os.environ.get('KAFKA_PORT', '9092')}"
    if not _reachable(address):
        subprocess.run(["bash", str(REPO / "kafka" / "broker.sh"), "up"], check=True)
    return address


@pytest.fixture(scope="session")
def kafka_cluster(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[Cluster]:
    """A three-node KRaft cluster (kafka/cluster.sh) of this session's own, started on first use.

    It depends on `kafka_bootstrap` for the jars the single broker fetched."""
    cluster = Cluster(tmp_path_factory.mktemp("kafka-cluster"))
    cluster.up()
    yield cluster
    cluster.down()


@pytest.fixture
def cluster(kafka_cluster: Cluster) -> Cluster:
    """The session's cluster with all three nodes running and every partition fully replicated
    (a test before may have killed, stopped or paused nodes)."""
    kafka_cluster.up()
    kafka_cluster.wait_in_sync()
    return kafka_cluster


@pytest.fixture
def prefix() -> str:
    """A fresh topic prefix, so each test (or module) gets its own topics and groups."""
    return f"t{uuid.uuid4().hex[:10]}."


@pytest.fixture(scope="session")
def openssl() -> str:
    """The openssl command, which makes the TLS tests' certificates: a failure, not a skip, without it."""
    path = shutil.which("openssl")
    if path is None:
        pytest.fail("the TLS tests need the openssl command (Debian package openssl); it is not on PATH")
    return path


@pytest.fixture(scope="session")
def grpcurl() -> str:
    """Path to grpcurl, installed from the Go module proxy by `make tools` when missing."""
    path = REPO / ".tools" / "bin" / "grpcurl"
    if not path.exists():
        subprocess.run(["make", "-s", "-C", str(REPO), "tools"], check=True)
    return str(path)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The cluster fault tests' figures (tests/load.py), whatever pytest captured."""
    from tests.load import REPORTED

    if REPORTED:
        terminalreporter.section("cluster faults: what became of every call")
        for line in REPORTED:
            terminalreporter.write_line(line)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Stop processes a failed test left running (a passing test stops its own)."""
    from tests import procs

    for proc in list(procs.STARTED):
        proc.stop(timeout=10)
