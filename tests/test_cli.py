"""The command lines: --help, one-line errors, missing topics named."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests import procs
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
        (["handlers", "tests.kitchen_service:Kitchen", "--transactional-id", "h1"],
         "transactional_id: needs exactly_once"),
        (["adapter", "--proto-path", "protos", "--kafka-client", "librdkafka"],
         "argument --kafka-client: invalid choice: 'librdkafka'"),
        (["handlers", "tests.kitchen_service:Kitchen", "--kafka-client", "kafka-python", "--group-protocol", "consumer"],
         "handlers: error: group_protocol: kafka-python has no consumer protocol (KIP-848)"),
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


def _settings(module: str, *args: str, env: dict[str, str] | None = None) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-m", module, *args, "--print-config"], cwd=REPO,
                         env=child_env(**(env or {})), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return dict(line.split(" = ", 1) for line in out.stdout.splitlines())


def test_flags_beat_environment_beat_file_beat_defaults(tmp_path: Path) -> None:
    config = tmp_path / "rpc.toml"
    config.write_text(
        '[kafka]\nbootstrap_servers = ["10.0.0.1:9092"]\ntopic-prefix = "file."\n'
        '[kafka.client]\nsecurity_protocol = "SASL_SSL"\nsasl_plain_password = "hunter2"\n'
        '[frontend]\nlisten = "0.0.0.0:6000"\nreply_topic = "file-replies"\ndefault_timeout = 12\n'
        'proto_path = ["protos"]\n'
    )
    settings = _settings("adapter", "--config", str(config), "--listen", "127.0.0.1:7000",
                         env={"KAFKA_RPC_REPLY_TOPIC": "env-replies"})
    assert settings["listen"] == "'127.0.0.1:7000'"  # flag
    assert settings["reply_topic"] == "'env-replies'"  # environment over file
    assert settings["topic_prefix"] == "'file.'" and settings["default_timeout"] == "12.0"  # file
    assert settings["bootstrap_servers"] == "['10.0.0.1:9092']"
    assert settings["max_in_flight"] == "10000"  # default
    assert settings["kafka.client.security_protocol"] == "'SASL_SSL'"
    assert settings["kafka.client.sasl_plain_password"] == "***"  # secrets never printed


def test_handler_targets_and_lists_from_file_and_environment(tmp_path: Path) -> None:
    config = tmp_path / "rpc.toml"
    config.write_text('[handlers]\ntargets = ["tests.kitchen_service:Kitchen"]\nconcurrency = 4\n')
    settings = _settings("handlers", env={"KAFKA_RPC_CONFIG": str(config), "KAFKA_RPC_ALLOW_REPLY_TOPIC": "a*,b*"})
    assert settings["targets"] == "['tests.kitchen_service:Kitchen']"
    assert settings["concurrency"] == "4"
    assert settings["allow_reply_topic"] == "['a*', 'b*']"


@pytest.mark.parametrize(
    ("content", "env", "message"),
    [
        ("[frontend]\nbogus = 1\n", {}, "unknown setting frontend.bogus"),
        ("[frontend\n", {}, "is not valid TOML"),
        ("", {"KAFKA_RPC_MAX_IN_FLIGHT": "many"}, "max_in_flight: 'many' is not a valid value"),
        ("", {"KAFKA_RPC_LOG_LEVEL": "LOUD"}, "log_level: 'LOUD' is not one of"),
        ("", {"KAFKA_RPC_KAFKA_CLIENT": "java"}, "kafka_client: 'java' is not one of confluent, kafka-python"),
    ],
)
def test_bad_configuration_is_one_line_naming_the_setting(tmp_path: Path, content: str, env: dict[str, str],
                                                          message: str) -> None:
    config = tmp_path / "rpc.toml"
    config.write_text(content)
    out = subprocess.run([sys.executable, "-m", "adapter", "--proto-path", "protos", "--config", str(config)],
                         cwd=REPO, env=child_env(**env), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert message in out.stderr and "Traceback" not in out.stderr


@pytest.mark.kafka
def test_json_logs_are_one_object_per_line(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    import json

    from tests import procs

    front, _ = procs.frontend(tmp_path / "f.log", kafka_bootstrap, prefix, "--log-format", "json")
    front.stop()
    entries = [json.loads(line) for line in front.output().splitlines() if line.startswith("{")]
    assert any(e["message"].startswith("serving 3 services") for e in entries), front.output()
    assert all({"time", "level", "process", "logger", "message"} <= set(e) for e in entries)
    assert all(e["process"].startswith("adapter[") for e in entries)


@pytest.mark.kafka
def test_json_error_lines_carry_the_call_fields(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    import json

    from kafka import KafkaProducer

    from adapter.protocol import wire
    from tests import procs

    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, "--log-format", "json",
                           targets=["tests.kitchen_service:Kitchen"])
    try:
        topic = f"{prefix}rpctest.v1.Kitchen"
        producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
        sent = producer.send(topic, value=b"", partition=1, headers=[
            (wire.CORRELATION_ID, bytes(range(16))), (wire.METHOD, b"/rpctest.v1.Kitchen/Echo"),
            (wire.REPLY_TOPIC, b"not-allowed-here"),
        ]).get(timeout=30)
        garbage = producer.send(topic, value=b"x", partition=2, headers=[("rpc-deadline", b"soon")]).get(timeout=30)
        from rpctest.v1 import kitchen_pb2

        failing = wire.Request("/rpctest.v1.Kitchen/Fail", bytes(16), f"{prefix}replies", payload=kitchen_pb2.FailRequest(
            mode=kitchen_pb2.FailRequest.RAISE, message="boom").SerializeToString())
        raised = producer.send(topic, value=failing.payload, partition=3, headers=failing.encode_headers()).get(timeout=30)
        producer.close()

        def rejected() -> list[dict[str, object]]:
            entries = [json.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
            return [e for e in entries if e["message"].startswith("rejected")]

        def failed() -> list[dict[str, object]]:
            entries = [json.loads(line) for line in worker.output().splitlines() if line.startswith("{")]
            return [e for e in entries if "raised RuntimeError" in str(e["message"])]

        deadline = time.monotonic() + 30
        while (len(rejected()) < 2 or not failed()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert {k: failed()[0][k] for k in ("method", "correlation_id", "topic", "partition", "offset")} == {
            "method": "/rpctest.v1.Kitchen/Fail", "correlation_id": bytes(16).hex(), "topic": topic,
            "partition": 3, "offset": raised.offset}
        forbidden, malformed = sorted(rejected(), key=lambda e: e["partition"])  # type: ignore[arg-type, return-value]
        assert forbidden["level"] == "WARNING"
        assert {k: forbidden[k] for k in ("method", "correlation_id", "topic", "partition", "offset")} == {
            "method": "/rpctest.v1.Kitchen/Echo", "correlation_id": bytes(range(16)).hex(), "topic": topic,
            "partition": 1, "offset": sent.offset}
        assert "not allowed" in str(forbidden["message"])
        assert (malformed["topic"], malformed["partition"], malformed["offset"]) == (topic, 2, garbage.offset)
        assert "method" not in malformed and "correlation_id" not in malformed
    finally:
        worker.stop()


def test_engine_and_dotted_client_settings_from_file_and_environment(tmp_path: Path) -> None:
    """librdkafka's dotted names written bare in TOML are nested tables: they come out as dotted settings."""
    config = tmp_path / "rpc.toml"
    config.write_text('[kafka]\nkafka_client = "kafka-python"\n[kafka.client]\nsecurity.protocol = "SSL"\n'
                      '"sasl.password" = "hunter2"\n')
    out = subprocess.run([sys.executable, "-m", "adapter", "--proto-path", "protos", "--config", str(config),
                          "--print-config"], cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    printed = dict(line.split(" = ", 1) for line in out.stdout.splitlines())
    assert printed["kafka_client"] == "'kafka-python'"
    assert printed["kafka.client.security.protocol"] == "'SSL'"
    assert printed["kafka.client.sasl.password"] == "***"
    out = subprocess.run([sys.executable, "-m", "adapter", "--proto-path", "protos", "--config", str(config),
                          "--print-config"], cwd=REPO, env=child_env(KAFKA_RPC_KAFKA_CLIENT="confluent"),
                         capture_output=True, text=True, timeout=60)
    assert "kafka_client = 'confluent'" in out.stdout


def test_kafka_options_from_the_environment_may_hold_commas_and_are_never_echoed() -> None:
    """#12.14: a comma in a value stays in it; an item that is not KEY=VALUE is not printed."""
    settings = _settings("adapter", env={
        "KAFKA_RPC_KAFKA_OPTION": "sasl.password=pa,ss,w0rd,security.protocol=SASL_SSL, sasl.mechanism=SCRAM-SHA-512"})
    assert settings["kafka.client.security.protocol"] == "'SASL_SSL'"
    assert settings["kafka.client.sasl.mechanism"] == "'SCRAM-SHA-512'"
    assert settings["kafka.client.sasl.password"] == "***"
    assert "pa,ss" not in repr(settings) and "w0" not in repr(settings)
    out = subprocess.run([sys.executable, "-m", "adapter", "--proto-path", "protos", "--print-config",
                          "--kafka-option", "s3cr3t-fragment"], cwd=REPO, env=child_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and "not KEY=VALUE" in out.stderr
    assert "s3cr3t" not in out.stderr + out.stdout


@pytest.mark.kafka
def test_the_metrics_endpoint_listens_where_it_is_told(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, "--metrics-port", "0", "--metrics-address",
                           "127.0.0.1", targets=["tests.kitchen_service:Kitchen"])
    try:
        port = int(worker.wait_for(r"metrics on http://127\.0\.0\.1:(\d+)/metrics").group(1))
        connections = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, timeout=10,
                                     check=True)
        assert [line.split()[3] for line in connections.stdout.splitlines()] == [f"127.0.0.1:{port}"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert b"kafka_rpc_handler" in response.read()
    finally:
        worker.stop()


@pytest.mark.parametrize("env, capped", [({}, True), ({"MALLOC_ARENA_MAX": "8"}, False)])
def test_both_commands_cap_malloc_arenas_unless_malloc_arena_max_says(env: dict[str, str], capped: bool) -> None:
    """`cli.command` (python -m adapter and python -m handlers) caps glibc's malloc arenas before
    any thread starts (the frontend's RSS with 1,000 calls of 10 KiB in flight); a
    MALLOC_ARENA_MAX the user set is left to glibc."""
    script = (
        "import argparse, asyncio\n"
        "from adapter.runtime import arenas, cli\n"
        "seen = []\n"
        "real = arenas.limit_malloc_arenas\n"
        "cli.limit_malloc_arenas = lambda: seen.append(real()) or seen[-1]\n"
        "args = argparse.Namespace(log_level='WARNING', log_format='text', event_loop='auto')\n"
        "async def serve(args, stop): pass\n"
        "assert cli.command('t', lambda argv: args, [], serve) == 0\n"
        "print(seen)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env={**child_env(), **env},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"[{capped}]"


@pytest.mark.parametrize("choice, loop", [("auto", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")])
def test_both_commands_run_on_the_event_loop_chosen(choice: str, loop: str) -> None:
    """`cli.command` runs `serve` on uvloop's loop unless --event-loop asyncio says otherwise."""
    script = (
        "import argparse, asyncio\n"
        "from adapter.runtime import cli\n"
        f"args = argparse.Namespace(log_level='WARNING', log_format='text', event_loop={choice!r})\n"
        "async def serve(args, stop): print(type(asyncio.get_running_loop()).__module__.split('.')[0])\n"
        "assert cli.command('t', lambda argv: args, [], serve) == 0\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=child_env(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == loop


def test_event_loop_uvloop_without_uvloop_is_one_clear_line() -> None:
    script = (
        "import argparse, sys\n"
        "sys.modules['uvloop'] = None  # as if not installed\n"
        "from adapter.runtime import cli\n"
        "args = argparse.Namespace(log_level='WARNING', log_format='text', event_loop='{choice}')\n"
        "async def serve(args, stop): print('served')\n"
        "sys.exit(cli.command('handlers', lambda argv: args, [], serve))\n")
    done = subprocess.run([sys.executable, "-c", script.replace("{choice}", "uvloop")], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and not done.stdout
    assert done.stderr.strip() == ("handlers: error: --event-loop uvloop: uvloop is not installed (pip install uvloop), "
                                   "or choose --event-loop asyncio")
    # auto falls back to asyncio's loop
    done = subprocess.run([sys.executable, "-c", script.replace("{choice}", "auto")], cwd=REPO, env=child_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "served", done.stderr
