"""Private Kafka brokers for tests that stop them or need other listeners: kafka/broker.sh on free ports."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from tests import procs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A broker of its own in `state`, on free ports; `env` adds kafka/broker.sh settings."""

    def __init__(self, state: Path, **env: str) -> None:
        self.port, self.controller = free_port(), free_port()
        self.env = {**os.environ, "KAFKA_STATE_DIR": str(state), "KAFKA_PORT": str(self.port),
                    "KAFKA_CONTROLLER_PORT": str(self.controller), **env}
        self.env.pop("KAFKA_BOOTSTRAP_SERVERS", None)
        self.state = state
        # Reuse the jars the main broker fetched.
        main_libs = procs.REPO / ".kafka" / "libs"
        if main_libs.is_dir() and not (state / "libs").exists():
            state.mkdir(parents=True, exist_ok=True)
            (state / "libs").symlink_to(main_libs)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def up(self) -> str:
        """Start (or reuse) the broker; return what kafka/broker.sh printed."""
        done = subprocess.run(["bash", "kafka/broker.sh", "up"], cwd=procs.REPO, env=self.env, capture_output=True,
                              text=True, timeout=120)
        if done.returncode:
            raise AssertionError(f"kafka/broker.sh up failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done.stdout

    def down(self) -> None:
        subprocess.run(["bash", "kafka/broker.sh", "down"], cwd=procs.REPO, env=self.env, check=True,
                       capture_output=True, timeout=120)
