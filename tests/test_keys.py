"""Object keys: one layout, parsed strictly, sorted numerically by plain string order."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from replicator import keys
from replicator.errors import MalformedKey
from replicator.keys import SegmentKey, SnapshotKey

u64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
snapshot_keys = st.builds(SnapshotKey, u64, u64, u64)
segment_keys = st.tuples(u64, u64, u64, u64).map(lambda t: SegmentKey(t[0], min(t[1], t[2]), max(t[1], t[2]), t[3]))
compacted_keys = st.tuples(segment_keys, st.integers(min_value=1, max_value=keys.MAX_LEVEL)).map(
    lambda t: SegmentKey(t[0].generation, t[0].first_txid, t[0].last_txid, t[0].last_time_us, t[1])
)


@given(st.one_of(snapshot_keys, segment_keys, compacted_keys))
def test_build_then_parse_is_identity(key: keys.ObjectKey) -> None:
    assert keys.parse(key.key) == key


@given(st.lists(segment_keys, min_size=2, max_size=20))
def test_lexical_order_is_numeric_order(found: list[SegmentKey]) -> None:
    by_name = sorted(found, key=lambda k: k.key)
    by_number = sorted(found)
    assert [k.key for k in by_name] == [k.key for k in by_number]


def test_layout_is_as_documented() -> None:
    assert SnapshotKey(1, 2, 3).key == ("generations/0000000000000001/snapshots/0000000000000002-0000000000000003.snap")
    assert SegmentKey(0xAB, 3, 9, 0x10).key == (
        "generations/00000000000000ab/segments/0000000000000003-0000000000000009-0000000000000010.seg"
    )
    assert SegmentKey(0xAB, 3, 9, 0x10, level=2).key == (
        "generations/00000000000000ab/levels/2/0000000000000003-0000000000000009-0000000000000010.seg"
    )


def test_a_probe_listing_from_past_segments_sees_no_compacted_segment() -> None:
    compacted = SegmentKey(1, 5, 90, 7, level=1)
    assert compacted.key < keys.past_segments(1, 0)


@pytest.mark.parametrize(
    "key",
    [
        "generations/0000000000000001/snapshots/0000000000000002-0000000000000003.snap.tmp",
        "generations/000000000000000A/snapshots/0000000000000002-0000000000000003.snap",
        "generations/0000000000000001/snapshots/000000000000002-0000000000000003.snap",
        "generations/0000000000000001/segments/0000000000000009-0000000000000003-0000000000000003.seg",
        "generations/0000000000000001/other/0000000000000002-0000000000000003.snap",
        "generations/0000000000000001/levels/0/0000000000000002-0000000000000003-0000000000000003.seg",
        "generations/0000000000000001/levels/10/0000000000000002-0000000000000003-0000000000000003.seg",
        "generations/0000000000000001/levels/1/0000000000000002-0000000000000003.snap",
        "/generations/0000000000000001/snapshots/0000000000000002-0000000000000003.snap",
        "generations/../snapshots/0000000000000002-0000000000000003.snap",
        "backup.sql",
        "",
    ],
)
def test_foreign_or_malformed_keys_are_rejected(key: str) -> None:
    with pytest.raises(MalformedKey):
        keys.parse(key)


def test_numbers_beyond_64_bits_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match="64 bits"):
        _ = SnapshotKey(1 << 64, 0, 0).key


def test_generation_ids_sort_by_creation_time() -> None:
    ids = [keys.new_generation_id(now_ms=ms) for ms in (1_000, 2_000, 3_000)]
    assert ids == sorted(ids)
    assert keys.new_generation_id() > ids[-1]
