"""Topics and groups of one benchmark run: all named under the run's own prefix, removed at the end."""

from __future__ import annotations

import logging
import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError

log = logging.getLogger("bench")


def create(bootstrap: str, partitions: dict[str, int]) -> None:
    """Create the topics of `partitions` and wait until their metadata is visible."""
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, n, 1, topic_configs={"max.message.bytes": str(4 * 2**20 + 65536)})
                             for name, n in partitions.items()])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            found = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(partitions))
                     if not t.get("error_code")}
            if all(found.get(name) == n for name, n in partitions.items()):
                return
            time.sleep(0.2)
        raise RuntimeError(f"topics {sorted(partitions)} not ready within 30 s")
    finally:
        admin.close()


def remove(bootstrap: str, marker: str) -> None:
    """Delete every topic and consumer group whose name contains `marker` (the run's prefix)."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    except KafkaError as exc:
        log.warning("cannot clean up topics of %s: %s", marker, exc)
        return
    try:
        topics = [t for t in admin.list_topics() if marker in t]
        if topics:
            admin.delete_topics(topics)
        mine = [g["group_id"] for g in admin.list_groups() if marker in g["group_id"]]
        if mine:
            admin.delete_groups(mine)
        log.info("removed %d topics and %d consumer groups of this run", len(topics), len(mine))
    except KafkaError as exc:
        log.warning("cleaning up %s: %s", marker, exc)
    finally:
        admin.close()
