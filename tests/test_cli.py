"""The command lines: --help, one-line errors, missing topics named."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.procs import REPO, child_env


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, env=child_env(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("module", ["adapter", "handlers"])
def test_help_lists_settings_with_defaults(module: str) -> None:
    out = cli(module, "--help")
    assert out.returncode == 0
    assert "--bootstrap-servers" in out.stdout and "default 127.0.0.1:9092" in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["adapter", "--proto-path", "/no/such/dir"], "adapter: error: proto_paths: '/no/such/dir' is not a folder"),
        (["adapter", "--proto-path", "protos", "--listen", "nowhere"], "adapter: error: listen: 'nowhere' is not HOST:PORT"),
        (["adapter", "--proto-path", "protos", "--bootstrap-servers", "x"], "bootstrap_servers: 'x' is not HOST:PORT"),
        (["adapter", "--proto-path", "protos", "--tls-cert", "pyproject.toml"], "tls_cert and tls_key: give both"),
        (["adapter", "--proto-path", "protos", "--tls-cert", "x.pem", "--tls-key", "y.pem"],
         "tls_cert: 'x.pem' is not a readable file"),
        (["handlers", "no_such_module:Thing"], "handlers: error: cannot import 'no_such_module'"),
        (["handlers", "tests.kitchen_service"], "must be MODULE:ATTR"),
        (["handlers", "tests.kitchen_service:os"], "is not a generated *Servicer"),
        (["handlers", "tests.kitchen_service:Kitchen", "--concurrency", "0"], "concurrency must be positive"),
    ],
)
def test_bad_settings_give_one_clear_line(args: list[str], message: str) -> None:
    out = cli(*args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.kafka
@pytest.mark.parametrize("module", ["adapter", "handlers"])
def test_missing_topic_is_named_when_creation_is_off(module: str, kafka_bootstrap: str, prefix: str) -> None:
    target = ["--proto-path", "protos"] if module == "adapter" else ["tests.kitchen_service:Kitchen"]
    out = cli(module, *target, "--bootstrap-servers", kafka_bootstrap, "--topic-prefix", prefix, "--no-create-topics")
    assert out.returncode == 2
    assert f"{prefix}rpctest.v1.Kitchen" in out.stderr and "topic creation is off" in out.stderr
