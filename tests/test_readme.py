"""The README, run as written: if it and the program disagree, these tests fail.

- the quick start: the processes `make run` starts (scripts/run-local.sh), then every command of
  the README's grpcurl session, each output compared with the README's;
- every other console block with output (`--print-config`), and the protoc recipe;
- the Python snippets: `KafkaChannel` against the demo's handlers, the test kit's pytest file,
  and the servicer of "Writing handlers" in a handler process started as the README says;
- every flag the README names exists, and every flag of `--help` is in the README.

In an expected output, a line `...` stands for any lines, and timestamps match any timestamp.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.procs import REPO, Proc, child_env

pytestmark = pytest.mark.kafka

README = (REPO / "README.md").read_text()
QUICK_START_ADDRESS = "127.0.0.1:50051"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")


@dataclass(frozen=True)
class Command:
    line: str  # as typed, continuation lines joined
    output: list[str]  # as the README shows it


def blocks(language: str, after: str = "") -> list[str]:
    """The fenced code blocks of `language`, from the heading `after` on."""
    text = README[README.index(after):] if after else README
    return re.findall(rf"^```{language}\n(.*?)^```", text, flags=re.S | re.M)


def commands(block: str) -> list[Command]:
    found: list[Command] = []
    lines = block.rstrip("\n").split("\n")
    i = 0
    while i < len(lines):
        if not lines[i].startswith("$ "):
            i += 1
            continue
        line = lines[i][2:]
        while line.endswith("\\"):
            i += 1
            line = line[:-1].rstrip() + " " + lines[i].strip()
        i += 1
        output = []
        while i < len(lines) and not lines[i].startswith("$ "):
            output.append(lines[i])
            i += 1
        while output and not output[-1].strip():
            output.pop()
        found.append(Command(line, output))
    return found


def matches(expected: list[str], actual: list[str]) -> bool:
    """Line by line, with `...` for any lines and timestamps for any timestamp."""
    expected = [TIMESTAMP.sub("<time>", line) for line in expected]
    actual = [TIMESTAMP.sub("<time>", line) for line in actual]
    if not expected:
        return not actual
    if expected[0] == "...":
        return any(matches(expected[1:], actual[i:]) for i in range(len(actual) + 1))
    return bool(actual) and expected[0] == actual[0] and matches(expected[1:], actual[1:])


def run(line: str, env: dict[str, str], cwd: Path = REPO) -> list[str]:
    done = subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    return (done.stdout + done.stderr).rstrip("\n").split("\n") if (done.stdout + done.stderr).strip() else []


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of a new user's shell, their virtualenv active: none of our settings
    from the test run."""
    env = {k: v for k, v in child_env().items() if not k.startswith(("KAFKA_RPC_", "KAFKA_BOOTSTRAP"))}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ["PATH"]])
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def demo(tmp_path: Path, kafka_bootstrap: str) -> Iterator[tuple[str, dict[str, str], Path]]:
    """What `make run` starts (its recipe runs this script), on a free port; stopped as Ctrl-C would."""
    assert "scripts/run-local.sh" in subprocess.run(["make", "-n", "run"], cwd=REPO, capture_output=True,
                                                    text=True, check=True).stdout
    address = f"127.0.0.1:{free_port()}"
    outbox = tmp_path / "outbox"
    env = clean_env(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, KAFKA_RPC_LISTEN=address, MAIL_OUTBOX=str(outbox))
    proc = Proc(["bash", "scripts/run-local.sh"], tmp_path / "run.log", env=env)
    try:
        deadline = time.monotonic() + 90
        with grpc.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            for service in ("shop.mail.v1.MailService", "shop.coupon.v1.CouponService"):
                while True:  # ready: a handler process consumes each service's topic
                    try:
                        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
                        if status == health_pb2.HealthCheckResponse.SERVING:
                            break
                    except grpc.RpcError:
                        pass
                    assert time.monotonic() < deadline and proc.popen.poll() is None, proc.output()
                    time.sleep(0.2)
        yield address, env, outbox
    finally:
        proc.stop(signal.SIGTERM)  # the script's trap stops both processes
    assert "run: stopping" in proc.output()


def test_the_quick_start_session_answers_as_the_readme_shows(demo: tuple[str, dict[str, str], Path],
                                                             grpcurl: str) -> None:
    address, env, _ = demo
    session = [c for c in commands(blocks("console", "## Quick start")[0]) if "grpcurl" in c.line]
    assert len(session) >= 6, "the quick start lost its grpcurl session"
    for command in session:
        if command.line.startswith("make tools"):
            assert Path(grpcurl).exists()  # `make test` ran `make tools`
            continue
        actual = run(command.line.replace(QUICK_START_ADDRESS, address), env)
        assert matches(command.output, actual), (
            f"$ {command.line}\nREADME shows:\n" + "\n".join(command.output) + "\nthe program says:\n" + "\n".join(actual))


def test_the_python_channel_snippet_reaches_the_demo_handlers(demo: tuple[str, dict[str, str], Path],
                                                              kafka_bootstrap: str, tmp_path: Path) -> None:
    _, env, outbox = demo
    [snippet] = [b for b in blocks("python", "## Calling handlers from Python") if "KafkaChannel.connect" in b][:1]
    assert '"127.0.0.1:9092"' in snippet
    script = tmp_path / "snippet.py"
    script.write_text(snippet.replace('"127.0.0.1:9092"', repr(kafka_bootstrap)) + "\nprint(repr(reply))\n")
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert "FAILED" not in done.stdout
    # The demo's mail handler wrote the mail the snippet asked for.
    assert any("ann@example.com" in mail.read_text() for mail in outbox.glob("*.eml"))


def test_the_test_kit_snippet_passes_under_plain_pytest(tmp_path: Path) -> None:
    [snippet] = [b for b in blocks("python", "## Testing your handlers") if "serve_in_memory" in b][:1]
    (tmp_path / "test_mail.py").write_text(snippet)
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_mail.py"],
                          cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout + done.stderr


def test_the_servicer_of_writing_handlers_runs_as_the_readme_starts_it(tmp_path: Path, kafka_bootstrap: str,
                                                                       prefix: str) -> None:
    from shop.mail.v1 import mail_pb2, mail_pb2_grpc

    from adapter import KafkaChannel

    [code] = [b for b in blocks("python", "## Writing handlers") if b.startswith("# myapp/mail.py")]
    [start] = [b for b in blocks("sh", "## Writing handlers") if "python -m handlers myapp.mail" in b]
    (tmp_path / "myapp").mkdir()
    (tmp_path / "myapp" / "mail.py").write_text(code)
    # The README's command as typed, in a new user's project folder (topics under a prefix of
    # the test's own, so that no other test's handlers answer).
    env = clean_env(KAFKA_BOOTSTRAP_SERVERS=kafka_bootstrap, KAFKA_RPC_TOPIC_PREFIX=prefix,
                    PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO), str(REPO / "gen")]))
    proc = Proc(["bash", "-c", "exec " + start.strip()], tmp_path / "h.log", env=env)
    try:
        proc.wait_for(r"handlers: serving 1 methods of shop.mail.v1.MailService .* in group mail")
        proc.wait_for(r"partitions assigned", timeout=90)
        with KafkaChannel.connect([mail_pb2], bootstrap_servers=kafka_bootstrap, topic_prefix=prefix) as channel:
            mail = mail_pb2_grpc.MailServiceStub(channel)
            reply = mail.SendMail(mail_pb2.SendMailRequest(user_id="u1", to="ann@example.com"), timeout=30)
            assert reply.result == mail_pb2.SENT
            with pytest.raises(grpc.RpcError) as refused:
                mail.SendMail(mail_pb2.SendMailRequest(user_id="u1", to="nobody"), timeout=30)
            assert refused.value.code() is grpc.StatusCode.INVALID_ARGUMENT
            assert refused.value.details() == "not a mail address"
    finally:
        proc.stop()


def test_other_console_blocks_print_what_the_readme_shows() -> None:
    checked = 0
    for block in blocks("console"):
        for command in commands(block):
            if "--print-config" not in command.line:
                continue
            actual = run(command.line, clean_env())
            assert matches(command.output, actual), (
                f"$ {command.line}\nREADME shows:\n" + "\n".join(command.output) + "\nthe program says:\n" + "\n".join(actual))
            checked += 1
    assert checked >= 1


def test_the_protoc_recipe_compiles_a_service_with_routing_options(tmp_path: Path) -> None:
    [block] = [b for b in blocks("console") if "grpc_tools.protoc" in b]
    (tmp_path / "myprotos" / "shop" / "mail" / "v1").mkdir(parents=True)
    (tmp_path / "myprotos" / "shop" / "mail" / "v1" / "mail.proto").write_text(
        (REPO / "protos" / "shop" / "mail" / "v1" / "mail.proto").read_text())
    (tmp_path / "gen").mkdir()
    env = clean_env()
    for command in commands(block):
        script = "\n".join(c.line for c in commands(block)[: commands(block).index(command) + 1])
        assert run(script, env, cwd=tmp_path) == command.output
    assert (tmp_path / "gen" / "shop" / "mail" / "v1" / "mail_pb2_grpc.py").exists()


def _flags(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9_-]+)", text)) - {"--help"}


def test_every_flag_the_readme_names_exists_and_every_flag_is_in_the_readme() -> None:
    helps = {}
    for module in ("adapter", "handlers", "tests.chaos"):
        done = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, env=clean_env(), capture_output=True,
                              text=True, timeout=60, check=True)
        helps[module] = _flags(done.stdout)
    # Flags of other programs the README shows.
    others = {"--python_out", "--grpc_python_out", "--pyi_out", "--upgrade", "--quiet", "--strict-markers"}
    named = _flags(README) - others
    unknown = named - set().union(*helps.values())
    assert not unknown, f"the README names flags no program has: {sorted(unknown)}"
    for module in ("adapter", "handlers"):
        missing = helps[module] - named
        assert not missing, f"python -m {module} has flags the README does not mention: {sorted(missing)}"
