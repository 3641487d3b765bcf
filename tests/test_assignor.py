"""adapter.kafka.balanced: per-topic balance, stickiness, and the cooperative two-round hand-over."""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.structs import TopicPartition

from adapter.kafka.balanced import TopicBalancedAssignor, balance

TP = TopicPartition


def per_topic(assignment: dict[str, set[TopicPartition]], topic: str) -> list[int]:
    return sorted(sum(tp.topic == topic for tp in tps) for tps in assignment.values())


def test_every_topic_is_spread_over_its_members() -> None:
    result = balance({"busy": 8, "quiet": 8}, {"a": {"busy", "quiet"}, "b": {"busy", "quiet"}}, {})
    assert per_topic(result, "busy") == per_topic(result, "quiet") == [4, 4]


def test_a_joining_member_takes_only_its_share_and_owners_keep_the_rest() -> None:
    before = balance({"t": 8, "u": 4}, {"a": {"t", "u"}}, {})
    after = balance({"t": 8, "u": 4}, {"a": {"t", "u"}, "b": {"t", "u"}}, before)
    assert per_topic(after, "t") == [4, 4] and per_topic(after, "u") == [2, 2]
    assert after["a"] <= before["a"]  # a gave some up and took nothing
    third = balance({"t": 8, "u": 4}, {"a": {"t", "u"}, "b": {"t", "u"}, "c": {"t", "u"}}, after)
    moved = sum(len(third[m] - after[m]) for m in ("a", "b"))
    assert moved == 0 and len(third["c"]) == 4  # 12 partitions over 3: only c's 4 moved


def test_uneven_topics_keep_totals_even() -> None:
    result = balance({"t1": 3, "t2": 3, "t3": 3}, {m: {"t1", "t2", "t3"} for m in "ab"}, {})
    assert sorted(len(tps) for tps in result.values()) == [4, 5]


def test_members_get_only_topics_they_serve() -> None:
    result = balance({"t": 4, "u": 2}, {"a": {"t"}, "b": {"t", "u"}}, {"a": {TP("u", 0)}})
    assert all(tp.topic == "t" for tp in result["a"]) and per_topic(result, "t") == [2, 2]
    assert {tp for tp in result["b"] if tp.topic == "u"} == {TP("u", 0), TP("u", 1)}


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from("tuvw"), st.integers(0, 12), min_size=1),
       st.lists(st.sampled_from("abcde"), min_size=1, max_size=5, unique=True), st.randoms())
def test_always_complete_disjoint_and_balanced(partitions: dict[str, int], members: list[str], rnd: object) -> None:
    subscriptions = {m: set(partitions) for m in members}
    owned: dict[str, set[TopicPartition]] = {m: set() for m in members}
    for topic, count in partitions.items():
        for p in range(count):
            owned[rnd.choice(members)].add(TP(topic, p))  # type: ignore[attr-defined]
    result = balance(partitions, subscriptions, owned)
    everything = Counter(tp for tps in result.values() for tp in tps)
    assert set(everything) == {TP(t, p) for t, n in partitions.items() for p in range(n)}
    assert set(everything.values()) <= {1}
    for topic in partitions:
        counts = per_topic(result, topic)
        assert counts[-1] - counts[0] <= 1


def _member(member_id: str, topics: list[str], owned: dict[str, list[int]]) -> SimpleNamespace:
    owned_partitions = [SimpleNamespace(topic=t, partitions=ps) for t, ps in owned.items()]
    return SimpleNamespace(member_id=member_id, metadata=SimpleNamespace(
        topics=topics, owned_partitions=owned_partitions, generation_id=1))


def test_a_moving_partition_is_assigned_only_once_its_owner_gave_it_up() -> None:
    cluster = SimpleNamespace(partitions_for_topic=lambda topic: set(range(4)))
    assignor = TopicBalancedAssignor()
    assert isinstance(assignor, CooperativeStickyAssignor)
    first = assignor.assign(cluster, [_member("a", ["t"], {"t": [0, 1, 2, 3]}), _member("b", ["t"], {})])
    a_keeps = dict(first["a"].assigned_partitions)["t"]
    assert len(a_keeps) == 2 and dict(first["b"].assigned_partitions).get("t", []) == []  # round 1
    second = assignor.assign(cluster, [_member("a", ["t"], {"t": a_keeps}), _member("b", ["t"], {})])
    assert dict(second["a"].assigned_partitions)["t"] == a_keeps
    assert sorted(dict(second["b"].assigned_partitions)["t"] + a_keeps) == [0, 1, 2, 3]  # round 2
