"""Private Kafka brokers for tests that stop them or need other listeners: kafka/broker.sh on free ports."""

from __future__ import annotations

import os
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from adapter.protocol import wire
from tests import procs


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A broker of its own in `state`, on free ports; `env` adds kafka/broker.sh settings."""

    def __init__(self, state: Path, **env: str) -> None:
        self.port = free_port_run(2)  # restarted on the same ports: outside the ephemeral range
        self.controller = self.port + 1
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


def free_port_run(count: int) -> int:
    """The first of `count` consecutive free ports on 127.0.0.1, below the ephemeral range: a
    killed broker's port must still be free when it starts again, and a port in that range may
    meanwhile be taken as the local end of some client's connection."""
    try:
        ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral = 32768
    for base in random.sample(range(10000, ephemeral - count, count), 200):
        try:
            for port in range(base, base + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise AssertionError(f"no {count} consecutive free ports found")


class Cluster:
    """A three-node KRaft cluster of its own (kafka/cluster.sh) in `state`, on free ports.

    Nodes are numbered 1-3, as Kafka numbers them (node id = broker id)."""

    NODES = (1, 2, 3)

    def __init__(self, state: Path, base: int | None = None, cds: bool = False) -> None:
        self.base = base or free_port_run(6)
        self.env = {**os.environ, "KAFKA_CLUSTER_STATE_DIR": str(state), "KAFKA_CLUSTER_PORT": str(self.base),
                    # Off for a cluster per test session: no class-data archive written at each exit.
                    "KAFKA_CDS": "1" if cds else "0",
                    # A node restarted under the tests' full load on two cores has taken over 60 s
                    # (broker.sh's default) in a CI run; the load, not the node, is slow then.
                    "KAFKA_START_TIMEOUT": "180"}
        main_libs = procs.REPO / ".kafka" / "libs"
        if main_libs.is_dir():
            self.env["KAFKA_LIBS_DIR"] = str(main_libs)  # the jars the single broker fetched
        self.state = state
        self.paused: set[int] = set()
        self._admin: AdminClient | None = None
        self._starting: list[tuple[int, subprocess.Popen[str]]] = []

    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{self.base + 2 * (n - 1)}" for n in self.NODES)

    def run(self, *args: str, timeout: float = 240) -> str:
        """Run kafka/cluster.sh with `args`; return its output, or fail with it."""
        done = subprocess.run(["bash", "kafka/cluster.sh", *args], cwd=procs.REPO, env=self.env, capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode:
            raise AssertionError(f"kafka/cluster.sh {' '.join(args)} failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        return done.stdout

    def up(self) -> None:
        self._started()
        for node in sorted(self.paused):
            self.resume(node)
        self.run("up")

    def down(self) -> None:
        self._started()
        for node in sorted(self.paused):
            self.resume(node)  # a stopped process cannot act on SIGTERM
        self.run("down")

    def kill(self, node: int) -> None:
        """kill -9 the node: a crash."""
        self.run("kill", str(node))

    def stop(self, node: int) -> None:
        """SIGTERM: a clean stop (its leaders move first)."""
        self.run("stop", str(node))

    def start(self, node: int) -> None:
        self.run("start", str(node))

    def start_soon(self, node: int) -> None:
        """Start the node again in the background (a test need not wait for it); `up` waits."""
        self._starting.append((node, subprocess.Popen(["bash", "kafka/cluster.sh", "start", str(node)], cwd=procs.REPO,
                                                      env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                      text=True)))

    def _started(self) -> None:
        starting, self._starting = self._starting, []
        for node, proc in starting:
            out, _ = proc.communicate(timeout=240)
            if proc.returncode:
                raise AssertionError(f"kafka/cluster.sh start {node} failed ({proc.returncode}):\n{out}")

    def pause(self, node: int) -> None:
        self.run("pause", str(node))
        self.paused.add(node)

    def resume(self, node: int) -> None:
        self.run("resume", str(node))
        self.paused.discard(node)

    def admin(self) -> AdminClient:
        """An admin client of the cluster (kept: a dropped AdminClient never completes its futures)."""
        if self._admin is None:
            self._admin = AdminClient({"bootstrap.servers": self.bootstrap, "allow.auto.create.topics": False})
        return self._admin

    def leader_of(self, topic: str, partition: int = 0) -> int:
        """The node leading `topic`'s `partition`."""
        meta = self.admin().list_topics(topic, timeout=10).topics[topic]
        assert meta.error is None, meta.error
        return int(meta.partitions[partition].leader)

    def coordinator_of(self, group: str) -> int:
        """The node coordinating consumer group `group`."""
        description = self.admin().describe_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
        return int(description.coordinator.id)

    def replicas(self, topic: str) -> tuple[int, str]:
        """`topic`'s replication factor and min.insync.replicas."""
        admin = self.admin()
        meta = admin.list_topics(topic, timeout=10).topics[topic]
        factor = {len(p.replicas) for p in meta.partitions.values()}
        assert len(factor) == 1, f"partitions of {topic} have different replica counts: {factor}"
        resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
        configs = admin.describe_configs([resource])[resource].result(timeout=15)
        return factor.pop(), configs["min.insync.replicas"].value

    def wait_in_sync(self, timeout: float = 90) -> None:
        """Wait until every partition of every topic has a leader and all three replicas in sync."""
        deadline = time.monotonic() + timeout
        lagging: list[str] = []
        while time.monotonic() < deadline:
            try:
                topics = self.admin().list_topics(timeout=5).topics
                lagging = [f"{name}-{p.id} isr={p.isrs} leader={p.leader}" for name, meta in topics.items()
                           for p in meta.partitions.values() if p.leader < 0 or len(p.isrs) < len(self.NODES)]
                if not lagging:
                    return
            except Exception as exc:  # a node still starting: ask again
                lagging = [repr(exc)]
            time.sleep(0.5)
        raise AssertionError(f"partitions not in sync after {timeout}s: {lagging[:10]}")


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """`topic`'s end offset per partition."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "offsets-reader", "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in meta.partitions}
    finally:
        consumer.close()


def read_records(bootstrap: str, topic: str, isolation: str) -> Iterator[tuple[list[tuple[str, bytes]] | None, bytes | None]]:
    """Every record of `topic`, from the beginning to the end offsets (read_committed: the last stable offsets)."""
    ends = end_offsets(bootstrap, topic)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader", "enable.auto.commit": False,
                         "isolation.level": isolation, "enable.partition.eof": True})
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in ends])
        left = {p for p, end in ends.items() if end > 0}
        deadline = time.monotonic() + 60
        while left and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None:
                continue
            error, partition, offset = message.error(), message.partition() or 0, message.offset() or 0
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    left.discard(partition)
                continue
            if offset + 1 >= ends[partition]:
                left.discard(partition)
            yield message.headers(), message.value()  # type: ignore[misc]
        assert not left, f"could not read {topic} to its end: partitions {left} left"
    finally:
        consumer.close()


def requests_in(bootstrap: str, topic: str) -> list[wire.Request]:
    """Every request record of `topic` (stream frames left out)."""
    return [r for r in (wire.decode_request(h, v) for h, v in read_records(bootstrap, topic, "read_uncommitted"))
            if isinstance(r, wire.Request)]


def replies_in(bootstrap: str, topic: str) -> list[wire.Reply]:
    """Every committed final reply of `topic` (read_committed; stream frames left out)."""
    return [r for r in (wire.decode_reply(h, v) for h, v in read_records(bootstrap, topic, "read_committed"))
            if isinstance(r, wire.Reply)]
