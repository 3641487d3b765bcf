"""Topics the adapter creates (#12.6): replicas from the cluster's broker count, min.insync.replicas
set, whatever the bootstrap address looks like. The three-broker case is in the cluster tests."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from tests import procs

pytestmark = [pytest.mark.kafka, pytest.mark.engines]


def _topic(bootstrap: str, name: str) -> tuple[int, str]:
    """(replicas of partition 0, min.insync.replicas) of topic `name`."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        described = admin.describe_topics([name])[0]
        replicas = len(described["partitions"][0]["replica_nodes"])
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name)])
        entry = configs["topic"][name]["min.insync.replicas"]
        assert entry["config_source"] == "DYNAMIC_TOPIC_CONFIG"  # set on the topic, not the broker's default
        return replicas, entry["value"]
    finally:
        admin.close()


def test_created_topics_get_the_clusters_replication(kafka_bootstrap: str, prefix: str, tmp_path: Path) -> None:
    worker = procs.handler(tmp_path / "h.log", kafka_bootstrap, prefix, targets=["tests.kitchen_service:Kitchen"])
    try:
        assert "1 replicas, min.insync.replicas 1" in worker.output()
    finally:
        worker.stop()
    # One broker here: one replica, and min.insync.replicas 1 set on the topic itself.
    assert _topic(kafka_bootstrap, f"{prefix}rpctest.v1.Kitchen") == (1, "1")


def test_more_replicas_than_brokers_is_one_clear_line(kafka_bootstrap: str, prefix: str) -> None:
    out = subprocess.run([sys.executable, "-m", "handlers", "tests.kitchen_service:Kitchen", "--bootstrap-servers",
                          kafka_bootstrap, "--topic-prefix", prefix, "--replication-factor", "2"],
                         cwd=procs.REPO, env=procs.child_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2, out.stdout + out.stderr
    assert "replication_factor: 2 replicas need as many brokers; the cluster has 1" in out.stderr
    assert "Traceback" not in out.stderr
