"""Retention: deletes what no restore inside the window [now - window, now] can need, and nothing else.

The oracle for "can need" is the restore planner itself: every moment of the window that restored before
retention restores to exactly the same plan after it.
"""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from replicator.keys import ObjectKey, SegmentKey, SnapshotKey
from replicator.rebuild import RestoreError, RestorePlan, plan_restore
from replicator.retention import plan_retention


def snap(generation: int, txid: int, time_us: int) -> SnapshotKey:
    return SnapshotKey(generation, txid, time_us)


def seg(generation: int, first: int, last: int, time_us: int) -> SegmentKey:
    return SegmentKey(generation, first, last, time_us)


def kept_after(objects: list[ObjectKey], now_us: int, window_us: int) -> list[ObjectKey]:
    doomed = set(plan_retention(objects, now_us, window_us))
    return [o for o in objects if o not in doomed]


def restore_at(objects: list[ObjectKey], t: int) -> RestorePlan | None:
    try:
        return plan_restore(objects, timestamp_us=t)
    except RestoreError:
        return None


# One generation with snapshots at txids 0, 3 and 6 (times 0, 15, 25) and segments up to txid 9 (time 30).
G1_SNAP0 = snap(1, 0, 0)
G1_SEG1 = seg(1, 1, 3, 10)
G1_SNAP3 = snap(1, 3, 15)
G1_SEG4 = seg(1, 4, 6, 20)
G1_SNAP6 = snap(1, 6, 25)
G1_SEG7 = seg(1, 7, 9, 30)
GENERATION_1 = [G1_SNAP0, G1_SEG1, G1_SNAP3, G1_SEG4, G1_SNAP6, G1_SEG7]


def test_empty_inventory_deletes_nothing() -> None:
    assert plan_retention([], now_us=1_000, window_us=100) == []


def test_single_generation_with_one_snapshot_keeps_everything_however_old() -> None:
    objects: list[ObjectKey] = [G1_SNAP0, G1_SEG1, G1_SEG4, G1_SEG7]
    assert plan_retention(objects, now_us=10**9, window_us=1) == []


def test_single_generation_keeps_base_snapshot_and_chain_after_it() -> None:
    # cutoff 22: the newest snapshot at or before it is G1_SNAP3 (time 15).
    doomed = plan_retention(GENERATION_1, now_us=122, window_us=100)
    assert doomed == [G1_SNAP0, G1_SEG1]


def test_snapshot_taken_exactly_at_cutoff_becomes_the_base_snapshot() -> None:
    doomed = plan_retention(GENERATION_1, now_us=125, window_us=100)
    assert doomed == [G1_SNAP0, G1_SNAP3, G1_SEG1, G1_SEG4]


def test_single_generation_keeps_its_newest_snapshot_when_window_ends_after_all_writes() -> None:
    doomed = plan_retention(GENERATION_1, now_us=10**9, window_us=1)
    assert G1_SNAP6 not in doomed
    assert G1_SEG7 not in doomed


def test_window_reaching_before_every_write_deletes_nothing() -> None:
    assert plan_retention(GENERATION_1, now_us=30, window_us=1_000) == []


def test_older_generations_are_deleted_entirely_once_a_newer_one_started_before_cutoff() -> None:
    old = [snap(1, 0, 0), seg(1, 1, 5, 40), snap(1, 5, 50)]
    new = [snap(2, 0, 100), seg(2, 1, 2, 120)]
    doomed = plan_retention(old + new, now_us=250, window_us=100)  # cutoff 150: generation 2 had started
    assert doomed == [snap(1, 0, 0), snap(1, 5, 50), seg(1, 1, 5, 40)]


def test_generation_started_after_cutoff_keeps_the_previous_generation() -> None:
    old = [snap(1, 0, 0), seg(1, 1, 5, 40)]
    new = [snap(2, 0, 200), seg(2, 1, 2, 220)]
    doomed = plan_retention(old + new, now_us=250, window_us=100)  # cutoff 150: only generation 1 had started
    assert doomed == []
    plan = plan_restore(old + new, timestamp_us=150)
    assert (plan.generation, plan.txid) == (1, 5)


def test_generation_started_after_cutoff_still_lets_previous_generation_be_pruned() -> None:
    old = [snap(1, 0, 0), seg(1, 1, 5, 40), snap(1, 5, 50), seg(1, 6, 7, 60)]
    new = [snap(2, 0, 200)]
    doomed = plan_retention(old + new, now_us=250, window_us=100)  # cutoff 150: base is generation 1 at txid 5
    assert doomed == [snap(1, 0, 0), seg(1, 1, 5, 40)]


def test_intermediate_generations_started_after_cutoff_are_kept() -> None:
    objects = [snap(1, 0, 0), snap(2, 0, 200), seg(2, 1, 1, 210), snap(3, 0, 300)]
    assert plan_retention(objects, now_us=250, window_us=100) == []


def test_older_generation_without_any_snapshot_is_deleted() -> None:
    orphan = [seg(2, 1, 3, 110), seg(2, 4, 4, 120)]
    objects = [snap(1, 0, 0), *orphan, snap(3, 0, 200)]
    doomed = plan_retention(objects, now_us=150, window_us=100)  # cutoff 50: generation 1 is the base
    assert doomed == orphan


def test_newest_generation_without_a_snapshot_yet_is_kept() -> None:
    objects = [snap(1, 0, 0), seg(1, 1, 2, 10), seg(2, 1, 3, 200)]
    assert plan_retention(objects, now_us=250, window_us=100) == []


def test_newest_generation_loses_nothing_when_it_started_after_cutoff() -> None:
    newest = [snap(2, 0, 200), seg(2, 1, 3, 210), snap(2, 3, 220), seg(2, 4, 4, 230)]
    doomed = plan_retention([snap(1, 0, 0), *newest], now_us=300, window_us=150)
    assert not set(doomed) & set(newest)


def test_deletion_order_is_older_generations_first_and_snapshots_before_segments() -> None:
    generation_1 = [snap(1, 0, 0), seg(1, 1, 3, 10), snap(1, 3, 20), seg(1, 4, 6, 30)]
    generation_2 = [snap(2, 0, 100), seg(2, 1, 2, 110), snap(2, 2, 120), seg(2, 3, 4, 130)]
    generation_3 = [snap(3, 0, 300)]
    objects: list[ObjectKey] = generation_1 + generation_2 + generation_3
    random.Random(7).shuffle(objects)
    doomed = plan_retention(objects, now_us=225, window_us=100)  # cutoff 125: base is generation 2 at txid 2
    assert doomed == [
        snap(1, 0, 0),
        snap(1, 3, 20),
        seg(1, 1, 3, 10),
        seg(1, 4, 6, 30),
        snap(2, 0, 100),
        seg(2, 1, 2, 110),
    ]


@st.composite
def inventories(draw: st.DrawFn) -> list[ObjectKey]:
    """Well-formed generations one after another: a snapshot at txid 0, contiguous segments, maybe snapshots.

    Times never go backwards: a later snapshot is taken after the segment it follows was written, and a new
    generation starts after the previous one's last write (ties allowed everywhere).
    """
    objects: list[ObjectKey] = []
    clock = draw(st.integers(0, 50))
    generation = 0
    for _ in range(draw(st.integers(1, 4))):
        generation += draw(st.integers(1, 3))
        objects.append(snap(generation, 0, clock))
        txid = 0
        for _ in range(draw(st.integers(0, 6))):
            clock += draw(st.integers(0, 20))
            first, txid = txid + 1, txid + draw(st.integers(1, 3))
            objects.append(seg(generation, first, txid, clock))
            if draw(st.booleans()):
                clock += draw(st.integers(0, 20))
                objects.append(snap(generation, txid, clock))
        clock += draw(st.integers(0, 20))
    return draw(st.permutations(objects))


def last_time(objects: list[ObjectKey]) -> int:
    return max(o.time_us if isinstance(o, SnapshotKey) else o.last_time_us for o in objects)


def moments_in_window(objects: list[ObjectKey], now_us: int, window_us: int) -> set[int]:
    """Every distinct outcome of a restore in the window: a plan only changes at an object's time."""
    cutoff = now_us - window_us
    times = {o.time_us if isinstance(o, SnapshotKey) else o.last_time_us for o in objects}
    return {cutoff, now_us} | {t for t in times if cutoff <= t <= now_us}


@given(inventories(), st.integers(0, 100), st.integers(0, 400))
def test_every_moment_of_the_window_restores_the_same_after_retention(
    objects: list[ObjectKey], after_last_write: int, window_us: int
) -> None:
    now_us = last_time(objects) + after_last_write
    kept = kept_after(objects, now_us, window_us)
    for t in sorted(moments_in_window(objects, now_us, window_us)):
        before = restore_at(objects, t)
        if before is not None:
            assert restore_at(kept, t) == before, f"restore at {t} changed"


@given(inventories(), st.lists(st.integers(0, 100), min_size=2, max_size=4), st.integers(0, 400))
def test_retention_applied_again_as_time_passes_keeps_the_current_window_restorable(
    objects: list[ObjectKey], steps: list[int], window_us: int
) -> None:
    now_us = last_time(objects)
    kept = objects
    for step in steps:
        now_us += step
        kept = kept_after(kept, now_us, window_us)
    for t in sorted(moments_in_window(objects, now_us, window_us)):
        before = restore_at(objects, t)
        if before is not None:
            assert restore_at(kept, t) == before, f"restore at {t} changed"


@given(inventories(), st.integers(0, 1_000), st.integers(0, 400))
def test_deletions_are_distinct_objects_of_the_inventory_in_safe_order(
    objects: list[ObjectKey], now_us: int, window_us: int
) -> None:
    doomed = plan_retention(objects, now_us, window_us)
    assert len(set(doomed)) == len(doomed)
    assert set(doomed) <= set(objects)
    generations = [o.generation for o in doomed]
    assert generations == sorted(generations)
    for generation in set(generations):
        kinds = [isinstance(o, SegmentKey) for o in doomed if o.generation == generation]
        assert kinds == sorted(kinds), f"generation {generation}: a snapshot is deleted after a segment"


@given(inventories(), st.integers(0, 1_000), st.integers(0, 400))
def test_newest_generation_keeps_its_newest_snapshot_and_everything_after_it(
    objects: list[ObjectKey], now_us: int, window_us: int
) -> None:
    newest = max(o.generation for o in objects)
    mine = [o for o in objects if o.generation == newest]
    last_snapshot = max((o for o in mine if isinstance(o, SnapshotKey)), key=lambda o: o.txid)
    doomed = set(plan_retention(objects, now_us, window_us))
    assert last_snapshot not in doomed
    assert not {o for o in mine if isinstance(o, SegmentKey) and o.first_txid > last_snapshot.txid} & doomed


def test_compacted_segments_go_with_the_history_they_stand_for() -> None:
    """One that starts by the base snapshot goes, even if it reaches past it: nothing before the base is restored."""
    before, across = SegmentKey(1, 1, 3, 10, level=1), SegmentKey(1, 1, 6, 20, level=2)
    after = SegmentKey(1, 4, 9, 30, level=1)
    objects = [*GENERATION_1, before, across, after]
    doomed = set(plan_retention(objects, now_us=122, window_us=100))  # base snapshot: txid 3
    assert before in doomed and across in doomed and after not in doomed
    kept = kept_after(objects, 122, 100)
    for t in range(22, 123):
        assert plan_restore(kept, timestamp_us=t).txid == plan_restore(objects, timestamp_us=t).txid
