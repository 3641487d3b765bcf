"""OffsetTracker (handlers.offsets): commit only past the longest replied prefix."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from handlers.offsets import DONE_PREFIX, OffsetTracker, decode_done, encode_done

T = "requests"


def tracker_with(*offsets: int, partition: int = 0) -> OffsetTracker:
    tracker = OffsetTracker()
    for offset in offsets:
        tracker.add(T, partition, offset)
    return tracker


def test_nothing_to_commit_before_anything_is_done() -> None:
    tracker = tracker_with(10, 11)
    assert tracker.committable() == {}
    assert tracker.pending == 2


def test_in_order_completion() -> None:
    tracker = tracker_with(10, 11, 12)
    tracker.done(T, 0, 10)
    assert tracker.committable() == {(T, 0): 11}
    tracker.done(T, 0, 11)
    assert tracker.committable() == {(T, 0): 12}
    tracker.done(T, 0, 12)
    assert tracker.committable() == {(T, 0): 13}
    assert tracker.pending == 0


def test_out_of_order_completion_waits_for_the_gap() -> None:
    tracker = tracker_with(10, 11, 12, 13)
    tracker.done(T, 0, 12)
    tracker.done(T, 0, 11)
    assert tracker.committable() == {}  # 10 is still being handled
    assert tracker.pending == 2  # done records waiting behind 10 are not pending work
    tracker.done(T, 0, 10)
    assert tracker.committable() == {(T, 0): 13}
    assert tracker.pending == 1
    tracker.done(T, 0, 13)
    assert tracker.committable() == {(T, 0): 14}


def test_offsets_with_gaps_between_them() -> None:
    # Compacted topics and transaction markers leave holes in the offsets.
    tracker = tracker_with(3, 7, 20)
    tracker.done(T, 0, 7)
    tracker.done(T, 0, 3)
    assert tracker.committable() == {(T, 0): 8}


def test_committable_is_not_repeated_after_committed() -> None:
    tracker = tracker_with(0, 1)
    tracker.done(T, 0, 0)
    offsets = tracker.committable()
    assert offsets == {(T, 0): 1}
    tracker.committed(offsets)
    assert tracker.committable() == {}
    tracker.done(T, 0, 1)
    assert tracker.committable() == {(T, 0): 2}


def test_partitions_are_independent_and_can_be_filtered() -> None:
    tracker = OffsetTracker()
    for partition in (0, 1):
        for offset in (5, 6):
            tracker.add(T, partition, offset)
    tracker.add("other", 0, 5)
    tracker.done(T, 0, 5)
    tracker.done(T, 1, 6)
    tracker.done("other", 0, 5)
    assert tracker.committable() == {(T, 0): 6, ("other", 0): 6}
    assert tracker.committable({(T, 0), (T, 1)}) == {(T, 0): 6}
    assert tracker.pending == 2


def test_forget_on_revocation() -> None:
    tracker = tracker_with(0, 1)
    tracker.add(T, 1, 0)
    tracker.done(T, 0, 0)
    tracker.done(T, 1, 0)
    tracker.forget({(T, 0)})
    assert tracker.committable() == {(T, 1): 1}
    assert tracker.pending == 0
    # A handler finishing after the revocation must not resurrect the partition.
    tracker.done(T, 0, 1)
    assert tracker.committable() == {(T, 1): 1}
    assert tracker.pending == 0


def test_partition_assigned_again_starts_afresh() -> None:
    tracker = tracker_with(0, 1)
    tracker.done(T, 0, 0)
    tracker.committed(tracker.committable())
    tracker.forget({(T, 0)})
    tracker.add(T, 0, 1)  # redelivered: offset 1 was never committed
    assert tracker.committable() == {}
    tracker.done(T, 0, 1)
    assert tracker.committable() == {(T, 0): 2}


# The exactly-once mode commits each partition's first record not done, with the done ones after it.

def test_positions_name_the_first_open_record_and_the_done_ones_after_it() -> None:
    tracker = tracker_with(10, 11, 12, 13, 15)
    tracker.done(T, 0, 12)
    tracker.done(T, 0, 15)
    assert tracker.positions() == {(T, 0): (10, {12, 15})}
    tracker.done(T, 0, 10)
    tracker.done(T, 0, 11)
    assert tracker.positions() == {(T, 0): (13, {15})}
    tracker.done(T, 0, 13)
    assert tracker.positions() == {(T, 0): (16, set())}


def test_done_twice_counts_once() -> None:
    tracker = tracker_with(10, 11)
    tracker.done(T, 0, 10)
    tracker.done(T, 0, 10)  # the reply's send marked it, then the call's end
    assert tracker.pending == 1
    assert tracker.positions() == {(T, 0): (11, set())}


def test_done_sets_survive_their_encoding() -> None:
    for position, done in [(0, {1}), (100, {101, 108, 109, 250}), (7, set(range(8, 20_000)))]:
        metadata = encode_done(position, done)
        assert len(metadata) < 4000
        assert decode_done(position, metadata) == done
    assert encode_done(5, set()) == ""


def test_foreign_or_broken_metadata_skips_nothing() -> None:
    assert decode_done(3, "") == set()
    assert decode_done(3, "written by some other consumer") == set()
    assert decode_done(3, DONE_PREFIX + "not base64!") == set()
    assert decode_done(3, DONE_PREFIX + "aGVsbG8=") == set()  # base64, not zlib


def test_records_the_previous_owner_answered_are_skipped_and_done() -> None:
    tracker = OffsetTracker()
    tracker.skip(T, 0, decode_done(10, encode_done(10, {11, 13})))
    seen = []
    for offset in (10, 11, 12, 13):
        tracker.add(T, 0, offset)
        if not tracker.skipped(T, 0, offset):
            seen.append(offset)
    assert seen == [10, 12]
    assert tracker.positions() == {(T, 0): (10, {11, 13})}
    tracker.done(T, 0, 10)
    tracker.done(T, 0, 12)
    assert tracker.positions() == {(T, 0): (14, set())}


def test_forget_everything() -> None:
    tracker = tracker_with(1, 2)
    tracker.skip(T, 1, {5})
    tracker.forget()
    assert tracker.positions() == {} and tracker.pending == 0
    tracker.add(T, 1, 5)
    assert not tracker.skipped(T, 1, 5)


# ---- review defect: stale "done" offsets must not corrupt the exactly-once metadata ----


def test_encoding_ignores_offsets_at_or_before_the_position() -> None:
    # Before the fix: decode_done(10, encode_done(10, {5, 20})) gave {20, 21} (21 never answered),
    # and encode_done(10, {5}) raised inside a commit.
    assert decode_done(10, encode_done(10, {5, 20})) == {20}
    assert encode_done(10, {5}) == ""
    assert encode_done(10, {10}) == ""


@given(st.integers(min_value=0, max_value=10_000), st.sets(st.integers(min_value=0, max_value=12_000), max_size=200))
def test_done_sets_round_trip_for_any_position_and_offsets(position: int, done: set[int]) -> None:
    assert decode_done(position, encode_done(position, done)) == {o for o in done if o > position}


def test_done_for_an_offset_never_added_is_ignored() -> None:
    tracker = OffsetTracker()
    for offset in (10, 11):
        tracker.add("t", 0, offset)
    tracker.done("t", 0, 5)   # from a call of an earlier assignment
    tracker.done("t", 0, 12)  # not fetched yet
    assert tracker.positions() == {("t", 0): (10, set())}
    assert tracker.pending == 2


def test_done_from_an_earlier_assignment_of_the_partition_is_ignored() -> None:
    tracker = OffsetTracker()
    tracker.add("t", 0, 7)
    stale = tracker.generation("t", 0)  # a call starts on record 7 ...
    tracker.forget({("t", 0)})          # ... the partition moves away and comes back
    tracker.add("t", 0, 7)              # record 7 is fetched again and runs again
    tracker.done("t", 0, 7, stale)      # the first run ends: it says nothing of the second
    assert tracker.positions() == {("t", 0): (7, set())} and tracker.pending == 1
    tracker.done("t", 0, 7, tracker.generation("t", 0))
    assert tracker.committable() == {("t", 0): 8}


@given(st.lists(st.tuples(st.sampled_from(["add", "done", "stale", "forget"]), st.integers(0, 30)), max_size=120))
def test_positions_only_name_added_records_whatever_the_history(steps: list[tuple[str, int]]) -> None:
    tracker = OffsetTracker()
    added: set[int] = set()
    next_offset = 0
    old_generation = tracker.generation("t", 0)
    for action, n in steps:
        if action == "add":
            tracker.add("t", 0, next_offset)
            added.add(next_offset)
            next_offset += 1 + n % 3
        elif action == "done":
            tracker.done("t", 0, n, tracker.generation("t", 0))
        elif action == "stale":
            tracker.done("t", 0, n, old_generation)
        else:
            old_generation = tracker.generation("t", 0)
            tracker.forget({("t", 0)})
            added.clear()
        for position, done in tracker.positions().values():
            assert done <= added and all(o > position for o in done)
            assert decode_done(position, encode_done(position, done)) == done


def test_a_failed_commit_is_committable_again() -> None:
    tracker = OffsetTracker()
    for offset in range(3):
        tracker.add(T, 0, offset)
        tracker.done(T, 0, offset)
    assert tracker.committable() == {(T, 0): 3}
    tracker.committed({(T, 0): 3})
    assert tracker.committable() == {}
    tracker.uncommitted([(T, 0)])  # the asynchronous commit failed after all
    assert tracker.committable() == {(T, 0): 3}
