"""kafka/cluster.sh, the parts that need no broker."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

from tests import procs


def _cluster_sh(state: Path, script: str) -> list[str]:
    """Run `script` in bash after sourcing kafka/cluster.sh; return the words it printed."""
    done = subprocess.run(["bash", "-c", f"source kafka/cluster.sh; {script}"], cwd=procs.REPO, capture_output=True,
                          text=True, timeout=60, env={**os.environ, "KAFKA_CLUSTER_STATE_DIR": str(state)}, check=True)
    return done.stdout.split()


def test_cluster_ids_never_start_with_a_dash(tmp_path: Path) -> None:
    # One random base64url id in 64 starts with '-', which Kafka's storage tool took for an
    # option: now and then, a cluster failed to format.
    ids = _cluster_sh(tmp_path, "for _ in $(seq 500); do new_cluster_id; done")
    assert len(ids) == 500
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(base64.urlsafe_b64decode(i + "==")) == 16 for i in ids)
    assert len(set(ids)) == 500


def test_a_cluster_keeps_its_id(tmp_path: Path) -> None:
    first, second = _cluster_sh(tmp_path, "cluster_id; cluster_id")
    assert first == second == (tmp_path / "cluster.id").read_text().strip()
