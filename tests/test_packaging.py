"""The wheel as users install it (#12.15): outside the checkout, a .proto importing the options.

The wheel is built from this tree and installed into a fresh virtualenv; its dependencies come
from this project's virtualenv (a path line, which adds no editable install), so nothing is
downloaded. Both commands run from a folder outside the checkout, with no PYTHONPATH.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import grpc
import pytest

from tests import procs

pytestmark = [pytest.mark.kafka]

DEMO = """syntax = "proto3";
package demo.v1;
import "kafka_rpc/options.proto";
message Ping { string text = 1; }
service Demo {
  option (kafka_rpc.service_topic) = "demo-requests";
  rpc Echo(Ping) returns (Ping) { option (kafka_rpc.partition_key) = "text"; }
}
"""
SERVICER = """from demo.v1 import demo_pb2, demo_pb2_grpc


class Demo(demo_pb2_grpc.DemoServicer):
    def Echo(self, request, context):
        return demo_pb2.Ping(text=request.text.upper())
"""


def _run(*args: str | Path, cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    out = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{args}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def test_the_installed_wheel_serves_a_proto_that_uses_the_options(kafka_bootstrap: str, prefix: str,
                                                                  tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONUNBUFFERED"] = "1"
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist",
         procs.REPO, cwd=tmp_path, env=env)
    wheel = next((tmp_path / "dist").glob("kafka_grpc_adapter-*.whl"))
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, cwd=tmp_path, env=env)
    python = venv / "bin" / "python"
    site = Path(_run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path,
                     env=env).strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp_path, env=env)
    where = _run(python, "-c", "import adapter, handlers; print(adapter.__file__, handlers.__file__)", cwd=tmp_path,
                 env=env)
    assert str(procs.REPO) not in where and str(site) in where, where

    protos = tmp_path / "protos" / "demo" / "v1"
    protos.mkdir(parents=True)
    (protos / "demo.proto").write_text(DEMO)
    options_root = _run(python, "-c", "import adapter.protocol.protoset as p; print(p.OPTIONS_ROOT)", cwd=tmp_path,
                        env=env).strip()
    gen = tmp_path / "gen"
    gen.mkdir()
    _run(python, "-m", "grpc_tools.protoc", f"-I{tmp_path / 'protos'}", f"-I{options_root}", f"--python_out={gen}",
         f"--grpc_python_out={gen}", "kafka_rpc/options.proto", "demo/v1/demo.proto", cwd=tmp_path, env=env)
    (gen / "demo_service.py").write_text(SERVICER)

    printed = _run(python, "-m", "adapter", "--proto-path", tmp_path / "protos", "--print-config", cwd=tmp_path, env=env)
    assert "proto_path" in printed
    kafka = ["--bootstrap-servers", kafka_bootstrap, "--topic-prefix", prefix]
    worker = procs.Proc([str(python), "-m", "handlers", "demo_service:Demo", *kafka, "--group", f"{prefix}demo"],
                        tmp_path / "h.log", env={**env, "PYTHONPATH": str(gen)})
    front = procs.Proc([str(python), "-m", "adapter", "--proto-path", str(tmp_path / "protos"), "--listen",
                        "127.0.0.1:0", *kafka], tmp_path / "f.log", env=env)
    try:
        worker.wait_for("partitions assigned", timeout=90)
        address = front.wait_for(r"serving on (\S+)").group(1)
        assert f"{prefix}demo-requests" in worker.output()  # the service_topic option was read
        with grpc.insecure_channel(address) as channel:
            echo = channel.unary_unary("/demo.v1.Demo/Echo")
            # demo.v1.Ping{text: "hi"}, encoded by hand: this process has no generated code for it.
            assert echo(b"\x0a\x02hi", timeout=30) == b"\x0a\x02HI"
    finally:
        front.stop()
        worker.stop()
