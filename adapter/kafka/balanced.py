"""How handler processes share request partitions: balanced per topic, sticky, cooperative.

    consumer = KafkaConsumer(..., partition_assignment_strategy=[TopicBalancedAssignor])

Each topic's partitions are spread evenly over the processes that serve it, so a busy topic
never sits on one process (Kafka's sticky assignors balance only the total). A process joining
or leaving moves the fewest partitions that balance needs, and only those: the rebalance is
cooperative (KIP-429), so every other partition keeps being served, its streams and calls
untouched. A moving partition is revoked by its owner in one rebalance and assigned to its new
owner in the next, as kafka-python's `CooperativeStickyAssignor` does.

All processes of a group must use this assignor: a group cannot mix it with the range
assignor of earlier versions (stop them all, then start the new ones).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Set
from typing import Any

from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.protocol.consumer.metadata import ConsumerProtocolAssignment
from kafka.structs import TopicPartition


def balance(partitions: Mapping[str, int], subscriptions: Mapping[str, Set[str]],
            owned: Mapping[str, Set[TopicPartition]]) -> dict[str, set[TopicPartition]]:
    """The final assignment: each topic's `partitions` split evenly over its subscribers.

    `subscriptions` maps member ids to their topics; `owned` what each member holds now. A
    member keeps what it owns up to its share; the rest goes to those below theirs. Where a
    topic does not split evenly, its extra partitions go to the members with the least in
    total so far (so totals stay even across topics too), then to those holding them already.
    """
    result: dict[str, set[TopicPartition]] = {member: set() for member in subscriptions}
    load = dict.fromkeys(subscriptions, 0)
    owner = {tp: member for member, tps in owned.items() if member in subscriptions for tp in tps}
    for topic in sorted(partitions):
        members = sorted(m for m, topics in subscriptions.items() if topic in topics)
        if not members:
            continue
        tps = [TopicPartition(topic, p) for p in range(partitions[topic])]
        base, extra = divmod(len(tps), len(members))
        holding = {m: [tp for tp in tps if owner.get(tp) == m] for m in members}
        ranked = sorted(members, key=lambda m: (load[m], -min(len(holding[m]), base + 1), m))
        quota = {m: base + (1 if rank < extra else 0) for rank, m in enumerate(ranked)}
        free = [tp for tp in tps if owner.get(tp) not in holding]
        for m in members:
            result[m].update(holding[m][:quota[m]])
            free.extend(holding[m][quota[m]:])
        free.sort()
        for m in members:
            need = quota[m] - len(holding[m][:quota[m]])
            result[m].update(free[:need])
            free = free[need:]
            load[m] += quota[m]
    return result


class TopicBalancedAssignor(CooperativeStickyAssignor):
    """kafka-python's cooperative protocol with `balance` as the placement."""

    name = "kafka-rpc-topic-balanced"

    def assign(self, cluster: Any, members: Any) -> dict[str, ConsumerProtocolAssignment]:
        parsed = {m.member_id: self.parse_member_metadata(m.metadata) for m in members}
        topics = {topic for meta in parsed.values() for topic in meta.subscription}
        counts = {topic: len(cluster.partitions_for_topic(topic) or ()) for topic in topics}
        final = balance({t: n for t, n in counts.items() if n},
                        {member: set(meta.subscription) for member, meta in parsed.items()},
                        {member: set(meta.partitions) for member, meta in parsed.items()})
        current = {tp: member for member, meta in parsed.items() for tp in meta.partitions}
        assignment = {}
        for member, tps in final.items():
            # A partition another member still owns is left out this round: that member revokes
            # it, rejoins, and the next round gives it here (KIP-429).
            by_topic: dict[str, list[int]] = defaultdict(list)
            for tp in tps:
                if current.get(tp, member) == member:
                    by_topic[tp.topic].append(tp.partition)
            assignment[member] = ConsumerProtocolAssignment(
                self.version, sorted((t, sorted(ps)) for t, ps in by_topic.items()), b"")
        return assignment
