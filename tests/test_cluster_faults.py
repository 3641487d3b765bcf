"""Faults of a replicated Kafka cluster under load: leader and coordinator crashes, a rolling
restart, exactly-once through failovers, and broker, handler and frontend crashes together.

Each test runs a frontend and two handler processes against the session's three-node cluster
(kafka/cluster.sh: replication factor 3, min.insync.replicas=2), keeps `CALLERS` calls in flight
(tests/load.py), injects its fault, and prints what became of every call: calls made, OK, the
other statuses, replies to the wrong caller, calls never answered, calls that ended late,
request records no handler ran, executions per request, and the longest time without a
successful call. The invariants are asserted; the figures are in docs/reliability.md.
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupTopicPartitions
from confluent_kafka.admin import AdminClient
from rpctest.v1 import kitchen_pb2

from tests import procs
from tests.brokers import Cluster, end_offsets, free_port, replies_in, requests_in
from tests.conftest import engine
from tests.load import REPORTED, Load, Report

#: Every engine (.ci/run repeats it with KAFKA_RPC_KAFKA_CLIENT=kafka-python), on the cluster.
pytestmark = [pytest.mark.kafka, pytest.mark.engines, pytest.mark.cluster]
KITCHEN = ["tests.kitchen_service:Kitchen"]
CALLERS = 200
#: Longer than any failover here, so that no request expires before a handler runs it: every
#: request record must then have run ("skipped" counts those that did not).
DEADLINE = 30.0
#: Statuses a call may end with while the cluster fails over: never a wrong or a hung answer.
ALLOWED = {"DEADLINE_EXCEEDED", "UNAVAILABLE"}
#: How soon after a fault calls must succeed again (the failover itself takes one broker
#: session, 6 s on the test cluster, plus the clients' metadata refresh).
RECOVERY = 45.0


@dataclass
class Rig:
    """The processes of one test and the load through them."""

    cluster: Cluster
    prefix: str
    tmp: Path
    events: Path
    port: int
    front: procs.Proc
    handlers: list[procs.Proc]
    load: Load
    handler_args: tuple[str, ...]

    @property
    def request_topic(self) -> str:
        return f"{self.prefix}rpctest.v1.Kitchen"

    @property
    def reply_topic(self) -> str:
        return f"{self.prefix}replies"

    @property
    def group(self) -> str:
        return f"{self.prefix}handlers"

    def start_frontend(self) -> procs.Proc:
        name = f"f{len(list(self.tmp.glob('f*.log')))}"
        self.front, _ = procs.frontend(self.tmp / f"{name}.log", self.cluster.bootstrap, self.prefix,
                                       "--listen", f"127.0.0.1:{self.port}")
        return self.front

    def start_handler(self) -> procs.Proc:
        name = f"h{len(list(self.tmp.glob('h*.log')))}"
        handler = procs.handler(self.tmp / f"{name}.log", self.cluster.bootstrap, self.prefix, *self.handler_args,
                                *(["--transactional-id", f"{self.prefix}{name}"] if "--exactly-once" in self.handler_args else []),
                                targets=KITCHEN, env={"KITCHEN_EVENTS": str(self.events)})
        self.handlers.append(handler)
        return handler

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}:\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(self.tmp.glob("*.log")))

    def drain(self, timeout: float = 60) -> None:
        """Wait until the group has committed every request record (offsets equal end offsets)."""
        admin = AdminClient({"bootstrap.servers": self.cluster.bootstrap})
        deadline = time.monotonic() + timeout
        committed: dict[int, int] = {}
        ends: dict[int, int] = {}
        while time.monotonic() < deadline:
            ends = end_offsets(self.cluster.bootstrap, self.request_topic)
            try:
                result = admin.list_consumer_group_offsets([ConsumerGroupTopicPartitions(self.group)])[self.group]
                committed = {tp.partition: tp.offset for tp in result.result(timeout=10).topic_partitions
                             if tp.topic == self.request_topic}
            except Exception:  # the coordinator may be moving: ask again
                committed = {}
            if all(committed.get(p, -1) >= end for p, end in ends.items() if end > 0):
                return
            time.sleep(0.5)
        raise AssertionError(f"the handlers did not commit every request within {timeout}s: "
                             f"committed {committed}, end offsets {ends}\n{self.logs()}")

    def requested(self) -> set[str]:
        """The tags of every request record in the request topic."""
        return {kitchen_pb2.Count.FromString(request.payload).tag
                for request in requests_in(self.cluster.bootstrap, self.request_topic)}

    def finish(self, name: str, **extra: object) -> Report:
        """Stop the load, let the handlers commit everything, and check and print the figures."""
        self.load.stop()
        self.drain()
        report = self.load.report(self.events, self.requested())
        report.extra.update(extra)
        print(report.line(name))
        REPORTED.append(f"[{engine()}] {report.line(name)}")
        assert report.made > CALLERS, report.line(name)
        assert report.wrong_caller == 0, report.line(name)
        assert report.unanswered == 0, report.line(name)
        assert report.late == 0, report.line(name)
        assert report.skipped == 0, report.line(name)
        assert set(report.failed) <= ALLOWED, report.line(name) + "\n" + self.logs()
        return report


@contextmanager
def rig(cluster: Cluster, prefix: str, tmp_path: Path, *handler_args: str) -> Iterator[Rig]:
    """A frontend and two handlers on the cluster, and `CALLERS` callers through them."""
    port = free_port()
    r = Rig(cluster, prefix, tmp_path, tmp_path / "events", port, None, [], None, handler_args)  # type: ignore[arg-type]
    try:
        r.start_frontend()
        r.start_handler()
        r.start_handler()
        assert cluster.replicas(r.request_topic) == (3, "2"), "topics on the cluster: 3 replicas, min.insync.replicas 2"
        assert cluster.replicas(r.reply_topic) == (3, "2")
        r.load = Load(f"127.0.0.1:{port}", callers=CALLERS, deadline=DEADLINE).start()
        r.load.wait_ok_since(r.load.started, 60, count=CALLERS)
        yield r
    finally:
        if r.load is not None and not r.load.stopped:
            r.load.stop()
        for proc in [*r.handlers, r.front]:
            if proc is not None:
                proc.stop()


def _kill_and_recover(r: Rig, node: int, what: str) -> float:
    """kill -9 `node` under load; wait until calls succeed again; start the node again (in the
    background: the next test's `cluster` fixture waits for it)."""
    killed = time.monotonic()
    r.cluster.kill(node)
    try:
        recovered = r.load.wait_ok_since(killed, RECOVERY)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{r.logs()}") from None
    print(f"{what}: node {node} killed; calls succeeded again {recovered:.1f}s later")
    time.sleep(2)  # some load on the failed-over cluster
    r.cluster.start_soon(node)
    return recovered


def test_request_partition_leader_killed(cluster: Cluster, prefix: str, tmp_path: Path) -> None:
    with rig(cluster, prefix, tmp_path) as r:
        node = cluster.leader_of(r.request_topic, 0)
        recovered = _kill_and_recover(r, node, "request leader")
        r.finish("request partition leader killed", recovered_s=round(recovered, 1))


def test_reply_partition_leader_killed(cluster: Cluster, prefix: str, tmp_path: Path) -> None:
    with rig(cluster, prefix, tmp_path) as r:
        node = cluster.leader_of(r.reply_topic, 0)
        recovered = _kill_and_recover(r, node, "reply leader")
        r.finish("reply partition leader killed", recovered_s=round(recovered, 1))


def test_reply_group_coordinator_killed(cluster: Cluster, prefix: str, tmp_path: Path) -> None:
    """The frontends' reply group loses its coordinator: the frontend keeps its reply partitions
    (lost with the group session, then given back) and reads on where it stopped: no call fails."""
    with rig(cluster, prefix, tmp_path) as r:
        node = cluster.coordinator_of(f"kafka-rpc-frontends.{r.reply_topic}")
        recovered = _kill_and_recover(r, node, "reply group coordinator")
        report = r.finish("reply group coordinator killed", recovered_s=round(recovered, 1))
        assert "moved to another frontend" not in r.front.output()
        assert not report.failed, report.line("reply group coordinator killed")


def test_group_coordinator_killed(cluster: Cluster, prefix: str, tmp_path: Path) -> None:
    with rig(cluster, prefix, tmp_path) as r:
        node = cluster.coordinator_of(r.group)
        recovered = _kill_and_recover(r, node, "group coordinator")
        # Commits resume: finish() waits until the group's offsets reach the end offsets.
        r.finish("group coordinator killed", recovered_s=round(recovered, 1))


def test_rolling_restart(cluster: Cluster, prefix: str, tmp_path: Path) -> None:
    with rig(cluster, prefix, tmp_path) as r:
        began = time.monotonic()
        for node in Cluster.NODES:
            cluster.stop(node)
            cluster.start(node)
            cluster.wait_in_sync()
            print(f"rolling restart: node {node} back and in sync {time.monotonic() - began:.1f}s into the restart")
        time.sleep(2)
        report = r.finish("rolling restart", restart_s=round(time.monotonic() - began, 1))
        print(f"rolling restart: error rate {sum(report.failed.values()) / report.made:.2%}")


def test_exactly_once_through_leader_and_coordinator_kills(cluster: Cluster, prefix: str, tmp_path: Path) -> None:
    with rig(cluster, prefix, tmp_path, "--exactly-once") as r:
        _kill_and_recover(r, cluster.leader_of(r.request_topic, 0), "exactly-once, request leader")
        cluster.wait_in_sync()
        _kill_and_recover(r, cluster.coordinator_of(r.group), "exactly-once, group coordinator")
        r.finish("exactly-once through a leader kill and a coordinator kill")
        # Each request's reply is committed once at most (read_committed, per correlation id),
        # and a request has none only if its deadline passed first (the handler then answers
        # nothing: its caller has gone with DEADLINE_EXCEEDED).
        tags = {request.correlation_id: kitchen_pb2.Count.FromString(request.payload).tag
                for request in requests_in(cluster.bootstrap, r.request_topic)}
        replies = Counter(reply.correlation_id for reply in replies_in(cluster.bootstrap, r.reply_topic)
                          if reply.correlation_id in tags)
        twice = {cid: n for cid, n in replies.items() if n > 1}
        codes = {c.tag: c.code for c in r.load.calls}
        unanswered = Counter(codes.get(tags[cid], "not ours") for cid in set(tags) - set(replies))
        line = (f"exactly-once: {len(tags)} requests, {sum(replies.values())} committed replies, {len(twice)} twice; "
                f"without a committed reply: {dict(unanswered)}")
        print(line)
        REPORTED.append(f"[{engine()}] {line}")
        assert not twice, f"{len(twice)} requests have more than one committed reply"
        assert set(unanswered) <= {"DEADLINE_EXCEEDED"}, f"requests without a committed reply: {dict(unanswered)}"


def test_broker_handler_and_frontend_crash_together(cluster: Cluster, prefix: str, tmp_path: Path) -> None:
    with rig(cluster, prefix, tmp_path) as r:
        node = cluster.leader_of(r.request_topic, 0)
        killed = time.monotonic()
        cluster.kill(node)
        time.sleep(1)
        r.handlers[0].stop(signal.SIGKILL)
        r.front.stop(signal.SIGKILL)
        # Replacements while the broker is still down: the frontend on the same address.
        r.start_frontend()
        r.start_handler()
        recovered = r.load.wait_ok_since(killed, RECOVERY)
        print(f"together: broker {node}, a handler and the frontend killed; calls succeeded again {recovered:.1f}s later")
        # In the background, as after a single kill: a CI run saw this start take over 60 s under
        # the load, and the next test's fixture waits for it anyway.
        cluster.start_soon(node)
        time.sleep(2)
        r.finish("broker, handler and frontend crash together", recovered_s=round(recovered, 1))


def test_kafka_stays_reachable_while_the_node_named_controller_is_down(cluster: Cluster, prefix: str) -> None:
    """A client whose metadata names a dead node as the controller still connects, reports Kafka
    reachable and creates topics: the probes go to any live broker (the CI run of 819ffde failed a frontend's
    start for 30 s on the confluent engine, whose probe waited for that controller)."""
    from adapter.kafka import open_engine
    from adapter.runtime.config import KafkaConfig

    servers = cluster.bootstrap.split(",")
    engine_ = open_engine(KafkaConfig(bootstrap_servers=tuple(servers)))
    admin = engine_.admin(timeout=20)
    try:
        victim = _controller_named_by(admin, cluster)
        cluster.kill(victim)
        # The same client, its cached metadata still naming the dead node.
        assert admin.healthy(5.0), f"Kafka unreachable for a client whose metadata names dead node {victim}"
        # Topic creation goes to the controller itself: it must find a live one.
        topic = f"{prefix}created-while-{victim}-is-down"
        admin.ensure_topics({topic: 2})
        assert cluster.admin().list_topics(topic, timeout=10).topics[topic].error is None
        # A new client, the dead node first in its bootstrap list, as a frontend restarted meanwhile.
        first = servers[victim - 1]
        again = open_engine(KafkaConfig(bootstrap_servers=(first, *[s for s in servers if s != first]))).admin(timeout=20)
        again.close()
    finally:
        admin.close()


def _controller_named_by(admin: object, cluster: Cluster) -> int:
    """The node `admin`'s own metadata names as the controller (the confluent engine's cache)."""
    client = getattr(admin, "_client", None)
    if engine() == "confluent" and client is not None:
        return int(client.list_topics(timeout=10).controller_id)
    return int(cluster.admin().list_topics(timeout=10).controller_id)  # kafka-python asks any node
