"""Compacted segments restore exactly what their inputs restore, in fewer objects."""

from __future__ import annotations

import io
import itertools
import random
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicator import segment
from replicator.compaction import NotARun, merge, plan_compaction, spent
from replicator.config import DEFAULT_COMPACTION
from replicator.errors import CorruptSegment
from replicator.keys import ObjectKey, SegmentKey, SnapshotKey
from replicator.rebuild import plan_restore
from replicator.segment import Commit, Kind, SegmentHeader, SegmentReader

PS = 512
GEN = 0x77


def image(pgno: int, version: int) -> bytes:
    return (pgno.to_bytes(4, "big") + version.to_bytes(4, "big")) * (PS // 8)


# A history: commits of (db size after it, pages it writes), split into shipped segments.
Record = tuple[int, list[int]]
records = st.tuples(st.integers(min_value=1, max_value=24), st.lists(st.integers(1, 24), max_size=6)).map(
    lambda r: (r[0], sorted({p for p in r[1] if p <= r[0]}))
)
histories = st.lists(records, min_size=1, max_size=30)


def shipped(history: list[Record], cuts: list[int], first_txid: int = 1) -> list[tuple[SegmentKey, bytes]]:
    """Encode the history as level-0 segments, cut before the record indexes in `cuts`."""
    bounds = sorted({0, len(history), *(c for c in cuts if 0 < c < len(history))})
    out = []
    for start, end in itertools.pairwise(bounds):
        commits = []
        for i in range(start, end):
            size, pgnos = history[i]
            txid = first_txid + i
            commits.append((Commit(txid, 1000 * txid, size, tuple(pgnos)), [image(p, txid) for p in pgnos]))
        first, last = commits[0][0], commits[-1][0]
        pages = sum(len(c.pgnos) for c, _ in commits)
        header = SegmentHeader(
            Kind.SEGMENT, PS, last.db_size, GEN, first.txid, last.txid, first.time_us, last.time_us, len(commits), pages
        )
        out.append((segment.key_for(header), segment.encode(header, commits)))
    return out


def apply(db: bytearray, key: SegmentKey, data: bytes) -> None:
    """What restore does with a segment (restore._apply_segment), on bytes in memory."""
    for commit, pages in SegmentReader(io.BytesIO(data), key.key, expect=key).commits():
        for pgno, page in pages:
            end = pgno * PS
            if len(db) < end:
                db.extend(bytes(end - len(db)))
            db[end - PS : end] = page
        del db[commit.db_size * PS :]
        db.extend(bytes(commit.db_size * PS - len(db)))


def merged(parts: list[tuple[SegmentKey, bytes]], level: int = 1) -> tuple[SegmentKey, bytes]:
    out = io.BytesIO()
    header = merge(((k, io.BytesIO(d)) for k, d in parts), out, level=level)
    return segment.key_for(header), out.getvalue()


@settings(max_examples=300, deadline=None)
@given(histories, st.lists(st.integers(0, 30), max_size=8), st.integers(0, 24))
def test_a_merged_run_restores_exactly_what_its_inputs_restore(
    history: list[Record], cuts: list[int], base_pages: int
) -> None:
    parts = shipped(history, cuts)
    base = bytearray(b"".join(image(p, 0) for p in range(1, base_pages + 1)))
    one_by_one, at_once = bytearray(base), bytearray(base)
    for key, data in parts:
        apply(one_by_one, key, data)
    key, data = merged(parts)
    apply(at_once, key, data)
    assert at_once == one_by_one
    assert (key.first_txid, key.last_txid, key.level) == (parts[0][0].first_txid, parts[-1][0].last_txid, 1)


def test_a_merged_run_holds_each_page_once_in_its_newest_version() -> None:
    history: list[Record] = [(4, [1, 2, 3, 4]), (4, [2]), (4, [2, 3]), (4, [2])]
    key, data = merged(shipped(history, [1, 2, 3]))
    header = segment.parse_header(data, key.key)
    assert (header.commit_count, header.page_count) == (1, 4)
    [(_, pages)] = [(c, list(p)) for c, p in SegmentReader(io.BytesIO(data), key.key).commits()]
    assert pages == [(1, image(1, 1)), (2, image(2, 4)), (3, image(3, 3)), (4, image(4, 1))]


def test_a_page_cut_off_by_a_shrink_and_regrown_unwritten_reads_as_zeros() -> None:
    history: list[Record] = [(6, [5, 6]), (2, []), (6, [3])]
    base = bytearray(b"".join(image(p, 0) for p in range(1, 7)))
    key, data = merged(shipped(history, [1, 2]))
    commits = [c for c, _ in SegmentReader(io.BytesIO(data), key.key).commits()]
    assert [(c.txid, c.db_size, list(c.pgnos)) for c in commits] == [(2, 2, []), (3, 6, [3])]
    apply(base, key, data)
    assert base[4 * PS :] == bytes(2 * PS)


def test_a_run_with_a_gap_is_refused() -> None:
    parts = shipped([(2, [1]), (2, [2]), (2, [1])], [1, 2])
    with pytest.raises(NotARun, match="does not continue"):
        merged([parts[0], parts[2]])


def test_a_corrupt_input_is_named_and_nothing_is_written() -> None:
    parts = shipped([(2, [1]), (2, [2])], [1])
    key, data = parts[1]
    damaged = bytearray(data)
    damaged[-20] ^= 1
    out = io.BytesIO()
    with pytest.raises(CorruptSegment, match=key.key):
        merge(((k, io.BytesIO(d)) for k, d in [parts[0], (key, bytes(damaged))]), out, level=1)
    assert out.getvalue() == b""


def test_compacted_segments_merge_again_into_a_higher_level() -> None:
    rng = random.Random(7)
    history: list[Record] = [(16, sorted(rng.sample(range(1, 17), 3))) for _ in range(40)]
    parts = shipped(history, list(range(1, 40)))
    lower = [merged(parts[i : i + 10]) for i in range(0, 40, 10)]
    top_from_lower, top_from_shipped = merged(lower, level=2), merged(parts, level=2)
    one_by_one, at_once = bytearray(), bytearray()
    for key, data in parts:
        apply(one_by_one, key, data)
    apply(at_once, *top_from_lower)
    assert at_once == one_by_one
    assert top_from_lower == top_from_shipped


def test_merging_a_large_run_holds_page_numbers_not_pages_in_memory() -> None:
    history: list[Record] = [(20_000, list(range(1 + 500 * i, 501 + 500 * i))) for i in range(40)]
    parts = shipped(history, list(range(1, 40)))
    tracemalloc.start()
    try:
        merged(parts)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # the run's 20,000 pages are 10 MB


# -- what to build, and when ----------------------------------------------------------------------------

S = 1_000_000  # microseconds in a second


def at(txid: int, second: float, level: int = 0, first: int | None = None) -> SegmentKey:
    return SegmentKey(GEN, txid if first is None else first, txid, int(second * S), level)


def test_a_window_is_merged_once_it_has_passed() -> None:
    shipped_ = [at(t, t) for t in range(1, 13)]  # one txid a second
    assert plan_compaction(shipped_, [10 * S], now_us=9 * S) == []
    [job] = plan_compaction(shipped_, [10 * S], now_us=10 * S)
    assert job.inputs == tuple(shipped_[:9]) and job.output == at(9, 9, level=1, first=1)


def test_levels_above_are_planned_from_the_outputs_below_in_one_call() -> None:
    shipped_ = [at(t, t) for t in range(1, 65)]
    jobs = plan_compaction(shipped_, [10 * S, 60 * S], now_us=64 * S)
    assert [j.level for j in jobs] == [1] * 6 + [2]
    assert jobs[-1].inputs == tuple(j.output for j in jobs[:6])
    assert jobs[-1].output == at(59, 59, level=2, first=1)


def test_a_window_whose_cover_is_one_object_gets_nothing() -> None:
    """The same bytes are never stored at two levels."""
    sparse = [at(1, 5), at(2, 25)]  # one commit in each 10 s window
    assert plan_compaction(sparse, [10 * S, 60 * S], now_us=70 * S)[-1].inputs == (at(1, 5), at(2, 25))
    assert plan_compaction([at(1, 5)], [10 * S, 60 * S], now_us=70 * S) == []


def test_a_window_already_compacted_is_not_built_again() -> None:
    shipped_ = [at(t, t) for t in range(1, 10)]
    assert plan_compaction([*shipped_, at(9, 9, level=1, first=1)], [10 * S], now_us=20 * S) == []


def test_a_window_with_a_gap_in_what_is_at_hand_is_skipped() -> None:
    holed = [at(t, t) for t in (1, 2, 4, 5)]
    assert plan_compaction(holed, [10 * S], now_us=20 * S) == []


def test_what_a_higher_level_covers_or_a_passed_top_window_holds_is_spent() -> None:
    shipped_ = [at(t, t) for t in range(1, 25)]
    built = [j.output for j in plan_compaction(shipped_, [10 * S, 60 * S], now_us=25 * S)]
    held = {*shipped_, *built}
    assert spent(held, [10 * S, 60 * S], now_us=25 * S) == set(shipped_[:19])
    assert spent(held, [10 * S, 60 * S], now_us=60 * S) == held


def test_a_simulated_day_of_one_second_segments_restores_in_few_requests() -> None:
    """Issue targets: latest in about 20 GETs, any point of the day in at most 100, with the default levels;
    every point as precise as without compaction."""
    levels = [int(s * S) for s in DEFAULT_COMPACTION]
    day = 86_400
    built_at: dict[ObjectKey, int] = {SnapshotKey(GEN, 0, 0): 0}
    cache: set[SegmentKey] = set()
    for second in range(1, day + 1):
        key = at(second, second)
        built_at[key] = second
        cache.add(key)
        now = second * S + S // 2
        if second % 10 == 0:
            for job in plan_compaction(cache, levels, now):
                cache.add(job.output)
                built_at[job.output] = second
            cache -= spent(cache, levels, now)
    assert len(cache) <= 10
    rng = random.Random(5)
    latest = []
    for moment in [rng.randrange(3600, day) for _ in range(20)]:
        plan = plan_restore([k for k, t in built_at.items() if t <= moment])
        assert plan.txid == moment
        latest.append(len(plan.objects))
    assert sum(latest) / len(latest) <= 21 and max(latest) <= 37
    everything = list(built_at)
    for _ in range(20):
        second = rng.randrange(1, day)
        plan = plan_restore(everything, timestamp_us=second * S + S // 2)
        assert plan.txid == second
        assert len(plan.objects) <= 100


@settings(max_examples=150, deadline=None)
@given(
    histories,
    st.lists(st.integers(0, 30), max_size=12),
    st.lists(st.integers(1, 4), min_size=1, max_size=3),
    st.integers(0, 30),
)
def test_any_history_restores_the_same_at_any_target_with_or_without_compaction(
    history: list[Record], cuts: list[int], ratios: list[int], target: int
) -> None:
    """Segments ship one record a second; levels of 2 s and multiples merge them; every target restores alike."""
    parts = dict(shipped(history, cuts))
    intervals, interval = [], 2 * S // 1000  # the segments' times are 1000 * txid microseconds
    for ratio in ratios:
        intervals.append(interval)
        interval *= ratio + 1
    objects: dict[ObjectKey, bytes] = {SnapshotKey(GEN, 0, 0): b"", **parts}
    for job in plan_compaction(parts, intervals, now_us=10**9):
        out = io.BytesIO()
        merge(((k, io.BytesIO(objects[k])) for k in job.inputs), out, level=job.level)
        objects[job.output] = out.getvalue()

    def restored(keys: list[ObjectKey]) -> tuple[int, bytes]:
        plan = plan_restore(keys, txid=min(target, len(history)))
        db = bytearray()
        for key in plan.segments:
            apply(db, key, objects[key])
        return plan.txid, bytes(db)

    assert restored(list(objects)) == restored([SnapshotKey(GEN, 0, 0), *parts])
