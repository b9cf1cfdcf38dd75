"""Restore planning from a listing alone: which generation, which snapshot, which unbroken run of segments."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicator.keys import ObjectKey, SegmentKey, SnapshotKey
from replicator.rebuild import ReplicaEmpty, RestoreError, RestorePlan, plan_restore


def snap(generation: int, txid: int, time_us: int) -> SnapshotKey:
    return SnapshotKey(generation, txid, time_us)


def seg(generation: int, first: int, last: int, time_us: int) -> SegmentKey:
    return SegmentKey(generation, first, last, time_us)


# Generation 1: snapshots at txids 0, 3 and 6 (times 0, 15, 25), segments up to txid 9 (time 30).
G1 = [snap(1, 0, 0), seg(1, 1, 3, 10), snap(1, 3, 15), seg(1, 4, 6, 20), snap(1, 6, 25), seg(1, 7, 9, 30)]
# Generation 2 starts after generation 1's last write.
G2 = [snap(2, 0, 100), seg(2, 1, 2, 110), seg(2, 3, 5, 120)]


# -- latest ---------------------------------------------------------------------------------------------


def test_latest_uses_the_newest_snapshot_and_every_segment_after_it() -> None:
    plan = plan_restore(G1)
    assert plan == RestorePlan(1, snap(1, 6, 25), (seg(1, 7, 9, 30),))
    assert plan.txid == 9


def test_latest_picks_the_generation_written_last() -> None:
    plan = plan_restore(G1 + G2)
    assert (plan.generation, plan.txid) == (2, 5)


def test_latest_picks_the_newest_generation_even_if_an_older_one_was_written_later() -> None:
    """Two live writers (an overlapping deploy): the older one's late writes lose, as it is told at run time
    (uploader.py, rule 5) and says by failing its final sync; the newer generation is the database now."""
    written_last = [snap(1, 0, 0), seg(1, 1, 4, 500)]
    newer = [snap(9, 0, 100), seg(9, 1, 1, 200)]
    plan = plan_restore(written_last + newer)
    assert (plan.generation, plan.txid) == (9, 1)


def test_snapshot_without_later_segments_is_a_plan_on_its_own() -> None:
    plan = plan_restore([snap(1, 0, 0)])
    assert plan == RestorePlan(1, snap(1, 0, 0), ())
    assert plan.txid == 0
    assert plan.objects == (snap(1, 0, 0),)


def test_plan_lists_the_snapshot_then_segments_in_chain_order() -> None:
    plan = plan_restore([snap(1, 0, 0), seg(1, 4, 4, 20), seg(1, 1, 3, 10), seg(1, 5, 8, 30)])
    assert plan.objects == (snap(1, 0, 0), seg(1, 1, 3, 10), seg(1, 4, 4, 20), seg(1, 5, 8, 30))


@given(st.permutations(G1 + G2))
def test_plan_does_not_depend_on_listing_order(objects: list[ObjectKey]) -> None:
    assert plan_restore(objects) == plan_restore(G1 + G2)
    assert plan_restore(objects, timestamp_us=22) == plan_restore(G1 + G2, timestamp_us=22)


# -- timestamp ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("t", "generation"),
    [(0, 1), (30, 1), (99, 1), (100, 2), (10**9, 2)],
)
def test_timestamp_picks_the_newest_generation_started_by_then(t: int, generation: int) -> None:
    assert plan_restore(G1 + G2, timestamp_us=t).generation == generation


@pytest.mark.parametrize(
    ("t", "snapshot_txid", "txid"),
    [(0, 0, 0), (9, 0, 0), (10, 0, 3), (15, 3, 3), (22, 3, 6), (25, 6, 6), (29, 6, 6), (30, 6, 9)],
)
def test_timestamp_starts_from_the_newest_snapshot_at_or_before_it(t: int, snapshot_txid: int, txid: int) -> None:
    plan = plan_restore(G1, timestamp_us=t)
    assert plan.snapshot.txid == snapshot_txid
    assert plan.txid == txid


def test_timestamp_stops_before_the_first_segment_written_after_it() -> None:
    objects = [snap(1, 0, 0), seg(1, 1, 2, 10), seg(1, 3, 4, 20), seg(1, 5, 6, 30)]
    plan = plan_restore(objects, timestamp_us=25)
    assert plan.segments == (seg(1, 1, 2, 10), seg(1, 3, 4, 20))


def test_timestamp_before_the_earliest_snapshot_is_rejected() -> None:
    with pytest.raises(RestoreError, match="before the earliest restorable point"):
        plan_restore(G2, timestamp_us=99)


def test_timestamp_and_generation_together_restore_that_generation_at_that_time() -> None:
    plan = plan_restore(G1 + G2, generation=1, timestamp_us=200)
    assert (plan.generation, plan.txid) == (1, 9)


# -- txid -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("target", "snapshot_txid", "txid"), [(0, 0, 0), (3, 3, 3), (6, 6, 6), (9, 6, 9)])
def test_txid_restores_exactly_that_transaction_at_a_segment_boundary(
    target: int, snapshot_txid: int, txid: int
) -> None:
    plan = plan_restore(G1, txid=target)
    assert plan.snapshot.txid == snapshot_txid
    assert plan.txid == txid


def test_txid_inside_a_segment_stops_at_the_last_whole_segment_before_it() -> None:
    objects = [snap(1, 0, 0), seg(1, 1, 3, 10), seg(1, 4, 9, 20)]
    plan = plan_restore(objects, txid=5)
    assert plan.txid == 3


def test_txid_before_the_earliest_remaining_snapshot_is_rejected() -> None:
    pruned = [snap(1, 10, 100), seg(1, 11, 12, 110)]
    with pytest.raises(RestoreError, match="no snapshot at or before the target"):
        plan_restore(pruned, txid=5)


# -- explicit generation --------------------------------------------------------------------------------


def test_explicit_generation_is_restored_even_when_another_is_newer() -> None:
    plan = plan_restore(G1 + G2, generation=1)
    assert (plan.generation, plan.txid) == (1, 9)


def test_unknown_generation_is_rejected() -> None:
    with pytest.raises(RestoreError, match="0000000000000007 is not in the replica"):
        plan_restore(G1 + G2, generation=7)


def test_generation_without_a_snapshot_is_rejected() -> None:
    with pytest.raises(RestoreError, match="0000000000000003 is not in the replica"):
        plan_restore([*G1, seg(3, 1, 2, 200)], generation=3)


# -- gaps and empty replicas ----------------------------------------------------------------------------


def test_gap_in_the_segment_chain_is_rejected_naming_the_missing_transactions() -> None:
    objects = [snap(1, 0, 0), seg(1, 1, 3, 10), seg(1, 7, 9, 30)]
    with pytest.raises(RestoreError, match=r"missing transactions 4\.\.6"):
        plan_restore(objects)


def test_a_generation_two_writers_continued_is_refused_naming_the_fork_and_the_way_out() -> None:
    """Two copies restored from one seal both shipped txid 4 onwards: no single history to pick from."""
    objects = [snap(1, 0, 0), seg(1, 1, 3, 10), seg(1, 4, 6, 20), seg(1, 4, 5, 21), seg(1, 7, 8, 30)]
    with pytest.raises(RestoreError, match=r"forked at txid 4.*--txid 3"):
        plan_restore(objects)
    assert plan_restore(objects, txid=3).txid == 3


def test_gap_before_the_chosen_snapshot_does_not_matter() -> None:
    objects = [snap(1, 0, 0), seg(1, 1, 3, 10), snap(1, 6, 25), seg(1, 7, 9, 30)]
    assert plan_restore(objects).txid == 9


def test_gap_after_the_target_does_not_matter() -> None:
    objects = [snap(1, 0, 0), seg(1, 1, 3, 10), seg(1, 7, 9, 30)]
    assert plan_restore(objects, txid=3).txid == 3
    assert plan_restore(objects, timestamp_us=15).txid == 3


def test_gap_wholly_before_a_txid_target_is_rejected() -> None:
    objects = [snap(1, 0, 0), seg(1, 1, 3, 10), seg(1, 7, 9, 30)]
    with pytest.raises(RestoreError, match=r"missing transactions 4\.\.6"):
        plan_restore(objects, txid=8)


def test_empty_replica_is_reported_as_empty() -> None:
    with pytest.raises(ReplicaEmpty):
        plan_restore([])


def test_replica_with_segments_but_no_snapshot_is_reported_as_empty() -> None:
    with pytest.raises(ReplicaEmpty):
        plan_restore([seg(1, 1, 3, 10), seg(2, 1, 1, 20)])


def test_generation_without_a_snapshot_is_ignored_when_choosing_the_latest() -> None:
    plan = plan_restore([*G1, seg(3, 1, 5, 500)])
    assert plan.generation == 1


# -- compacted segments ---------------------------------------------------------------------------------


def compacted(generation: int, first: int, last: int, time_us: int, level: int = 1) -> SegmentKey:
    return SegmentKey(generation, first, last, time_us, level)


# Generation 5: shipped segments of one txid each at times 10, 20, ... 120; level 1 merges four at a time,
# level 2 the first eight.
SHIPPED = [seg(5, t, t, 10 * t) for t in range(1, 13)]
LEVEL_1 = [compacted(5, 1, 4, 40), compacted(5, 5, 8, 80), compacted(5, 9, 12, 120)]
LEVEL_2 = [compacted(5, 1, 8, 80, level=2)]
LEVELLED = [snap(5, 0, 0), *SHIPPED, *LEVEL_1, *LEVEL_2]


def test_latest_takes_the_largest_compacted_segments_that_reach_it() -> None:
    plan = plan_restore(LEVELLED)
    assert plan.segments == (compacted(5, 1, 8, 80, level=2), compacted(5, 9, 12, 120))


@pytest.mark.parametrize(
    ("t", "segments"),
    [
        (35, (seg(5, 1, 1, 10), seg(5, 2, 2, 20), seg(5, 3, 3, 30))),
        (45, (compacted(5, 1, 4, 40),)),
        (95, (compacted(5, 1, 8, 80, level=2), seg(5, 9, 9, 90))),
        (115, (compacted(5, 1, 8, 80, level=2), seg(5, 9, 9, 90), seg(5, 10, 10, 100), seg(5, 11, 11, 110))),
    ],
)
def test_a_point_in_time_uses_compacted_segments_that_end_by_then_and_shipped_ones_after(
    t: int, segments: tuple[SegmentKey, ...]
) -> None:
    plan = plan_restore(LEVELLED, timestamp_us=t)
    assert plan.segments == segments
    assert plan.txid == plan_restore([snap(5, 0, 0), *SHIPPED], timestamp_us=t).txid


@pytest.mark.parametrize("target", range(13))
def test_every_txid_restores_as_precisely_as_without_compaction(target: int) -> None:
    assert plan_restore(LEVELLED, txid=target).txid == target


def test_overlapping_levels_are_not_a_fork() -> None:
    assert plan_restore(LEVELLED, txid=7).txid == 7


def test_two_compacted_segments_of_one_level_covering_a_txid_both_are_a_fork() -> None:
    with pytest.raises(RestoreError, match=r"forked at txid 3"):
        plan_restore([*LEVELLED, compacted(5, 3, 6, 60)])


def test_a_compacted_segment_may_span_a_later_snapshot() -> None:
    objects = [snap(5, 0, 0), *SHIPPED, snap(5, 6, 65), *LEVEL_1]
    assert len(plan_restore(objects).objects) == 4
    assert plan_restore(objects, timestamp_us=68).objects == (snap(5, 6, 65),)
    without_snapshot = plan_restore([o for o in objects if o != snap(5, 6, 65)])
    assert without_snapshot.segments == tuple(LEVEL_1)


def test_compacted_segments_stand_in_for_shipped_ones_that_are_gone() -> None:
    objects = [snap(5, 0, 0), *SHIPPED[8:], *LEVEL_2]
    assert plan_restore(objects).segments == (compacted(5, 1, 8, 80, level=2), *SHIPPED[8:])


def test_a_gap_that_no_level_covers_is_still_rejected() -> None:
    objects = [snap(5, 0, 0), *SHIPPED[:4], *SHIPPED[6:], compacted(5, 1, 4, 40)]
    with pytest.raises(RestoreError, match=r"missing transactions 5\.\.6"):
        plan_restore(objects)


def test_sizes_choose_between_paths_of_as_many_objects() -> None:
    objects = [snap(5, 0, 0), compacted(5, 1, 4, 40), seg(5, 5, 8, 80), seg(5, 1, 3, 30), compacted(5, 4, 8, 80, 2)]
    sizes: dict[ObjectKey, int] = {k: 100 for k in objects}
    sizes[compacted(5, 1, 4, 40)] = 900
    assert plan_restore(objects, sizes=sizes).segments == (seg(5, 1, 3, 30), compacted(5, 4, 8, 80, 2))
