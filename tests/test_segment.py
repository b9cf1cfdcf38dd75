"""Segments and snapshots round-trip, and no corruption or truncation goes unnoticed."""

from __future__ import annotations

import io
import os
import struct
import tracemalloc
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from replicator import keys, segment
from replicator.errors import CorruptSegment, UnsupportedFormatVersion
from replicator.segment import Commit, Kind, SegmentHeader, SegmentReader

PS = 512


def page(seed: int) -> bytes:
    return (bytes([seed % 251]) * 16 + os.urandom(16)) * (PS // 32)


def make_segment() -> tuple[bytes, list[tuple[Commit, list[bytes]]]]:
    commits = [
        (Commit(5, 1_000, 4, (1, 3, 4)), [page(1), page(3), page(4)]),
        (Commit(7, 2_000, 6, (2, 6)), [page(2), page(6)]),
        (Commit(8, 2_000, 2, ()), []),  # a commit that only truncates
    ]
    header = SegmentHeader(Kind.SEGMENT, PS, 2, 0xABC, 5, 8, 1_000, 2_000, 3, 5)
    return segment.encode(header, commits), commits


def read_all(data: bytes, name: str = "obj") -> list[tuple[Commit, list[tuple[int, bytes]]]]:
    reader = SegmentReader(io.BytesIO(data), name)
    return [(commit, list(pages)) for commit, pages in reader.commits()]


def test_segment_round_trip() -> None:
    data, commits = make_segment()
    decoded = read_all(data)
    assert [c for c, _ in decoded] == [c for c, _ in commits]
    for (commit, pages), (_, images) in zip(decoded, commits, strict=True):
        assert pages == list(zip(commit.pgnos, images, strict=True))


def test_header_alone_describes_the_object() -> None:
    data, _ = make_segment()
    header = segment.parse_header(data[: segment.HEADER_SIZE], "obj")
    assert (header.generation, header.first_txid, header.last_txid, header.db_size) == (0xABC, 5, 8, 2)
    assert (header.first_time_us, header.last_time_us, header.commit_count, header.page_count) == (1000, 2000, 3, 5)


def test_snapshot_round_trip_in_chunks() -> None:
    image = b"".join(page(i) for i in range(1, 301))
    header = SegmentHeader(Kind.SNAPSHOT, PS, 300, 1, 42, 42, 9, 9, 0, 300)
    data = segment.encode(header, image=image)
    chunks = list(SegmentReader(io.BytesIO(data), "snap").image(chunk_size=10_000))
    assert b"".join(chunks) == image
    assert all(len(c) % PS == 0 and len(c) <= 10_000 for c in chunks)


def test_unread_pages_are_skipped() -> None:
    data, commits = make_segment()
    reader = SegmentReader(io.BytesIO(data), "obj")
    assert [c for c, _ in reader.commits()] == [c for c, _ in commits]


@pytest.mark.parametrize("region", ["header", "body", "trailer"])
def test_every_flipped_byte_is_detected(region: str) -> None:
    data, _ = make_segment()
    bounds = {
        "header": range(segment.HEADER_SIZE),
        "body": range(segment.HEADER_SIZE, len(data) - segment.TRAILER_SIZE),
        "trailer": range(len(data) - segment.TRAILER_SIZE, len(data)),
    }[region]
    for i in bounds:
        damaged = bytearray(data)
        damaged[i] ^= 0x20
        with pytest.raises(CorruptSegment):
            read_all(bytes(damaged))


def test_every_truncation_is_detected() -> None:
    data, _ = make_segment()
    for n in range(len(data)):
        with pytest.raises(CorruptSegment):
            read_all(data[:n])


def test_appended_bytes_are_detected() -> None:
    data, _ = make_segment()
    with pytest.raises(CorruptSegment):
        read_all(data + b"\0")


def test_errors_name_the_object() -> None:
    data, _ = make_segment()
    with pytest.raises(CorruptSegment, match=r"generations/00/segments/x\.seg"):
        read_all(data[:-1], "generations/00/segments/x.seg")


def test_unknown_format_version_is_its_own_error() -> None:
    data = bytearray(make_segment()[0])
    struct.pack_into(">H", data, 4, 99)
    struct.pack_into(">I", data, segment.HEADER_SIZE - 4, zlib.crc32(data[: segment.HEADER_SIZE - 4]))
    with pytest.raises(UnsupportedFormatVersion, match="version 99"):
        read_all(bytes(data))


def _as_version_1(data: bytes) -> bytes:
    """The same object as a version-1 writer wrote it (the level byte was reserved, zero)."""
    out = bytearray(data)
    struct.pack_into(">H", out, 4, 1)
    struct.pack_into(">I", out, segment.HEADER_SIZE - 4, zlib.crc32(out[: segment.HEADER_SIZE - 4]))
    body_end = len(out) - segment.TRAILER_SIZE
    struct.pack_into(">I", out, len(out) - 4, zlib.crc32(out[:body_end]))
    return bytes(out)


def test_version_1_objects_are_still_read_as_level_0() -> None:
    data, commits = make_segment()
    old = _as_version_1(data)
    assert struct.unpack_from(">H", data, 4) == (2,)
    assert [c for c, _ in read_all(old)] == [c for c, _ in commits]
    assert segment.parse_header(old, "obj").level == 0


def test_a_level_in_a_version_1_header_is_corruption() -> None:
    data, _ = make_segment()
    old = bytearray(_as_version_1(data))
    old[64] = 2
    struct.pack_into(">I", old, segment.HEADER_SIZE - 4, zlib.crc32(old[: segment.HEADER_SIZE - 4]))
    with pytest.raises(CorruptSegment, match="reserved"):
        segment.parse_header(old, "obj")


def test_a_compacted_segment_carries_its_level_in_header_and_key() -> None:
    header = SegmentHeader(Kind.SEGMENT, PS, 4, 0xABC, 5, 20, 1_000, 9_000, 1, 1, level=2)
    data = segment.encode(header, [(Commit(20, 9_000, 4, (3,)), [page(3)])])
    key = segment.key_for(segment.parse_header(data, "obj"))
    assert key == keys.SegmentKey(0xABC, 5, 20, 9_000, level=2)
    assert key.key == "generations/0000000000000abc/levels/2/0000000000000005-0000000000000014-0000000000002328.seg"
    assert keys.parse(key.key) == key
    SegmentReader(io.BytesIO(data), key.key, expect=key)
    shipped = keys.SegmentKey(0xABC, 5, 20, 9_000)
    with pytest.raises(CorruptSegment, match="does not match the object's key"):
        SegmentReader(io.BytesIO(data), shipped.key, expect=shipped)


def test_only_a_compacted_segment_may_start_its_records_after_its_first_time() -> None:
    late_first = [(Commit(20, 9_000, 4, (3,)), [page(3)])]
    segment.encode(SegmentHeader(Kind.SEGMENT, PS, 4, 1, 5, 20, 1_000, 9_000, 1, 1, level=1), late_first)
    with pytest.raises(ValueError, match="does not start"):
        segment.encode(SegmentHeader(Kind.SEGMENT, PS, 4, 1, 5, 20, 1_000, 9_000, 1, 1), late_first)


def test_a_snapshot_has_no_level() -> None:
    with pytest.raises(ValueError, match="no level"):
        SegmentHeader(Kind.SNAPSHOT, PS, 1, 1, 1, 1, 1, 1, 0, 1, level=1)


def test_not_an_object_of_ours() -> None:
    with pytest.raises(CorruptSegment, match="bad magic"):
        read_all(b"SQLite format 3\0" + bytes(100))


def test_reading_the_wrong_kind_is_an_error() -> None:
    header = SegmentHeader(Kind.SNAPSHOT, PS, 1, 1, 1, 1, 1, 1, 0, 1)
    data = segment.encode(header, image=page(1))
    with pytest.raises(CorruptSegment, match="found a snapshot"):
        read_all(data)


@pytest.mark.parametrize(
    ("commit", "problem"),
    [
        (Commit(5, 1_000, 4, (3, 1)), "strictly increase"),
        (Commit(5, 1_000, 2, (1, 3)), "1\\.\\.2"),
        (Commit(5, 1_000, 4, (1,)), None),
        (Commit(4, 1_000, 4, (1,)), "first commit"),
        (Commit(9, 1_000, 4, (1,)), "beyond"),
    ],
)
def test_writer_rejects_commits_outside_the_header(commit: Commit, problem: str | None) -> None:
    header = SegmentHeader(Kind.SEGMENT, PS, 4, 1, 5, 8, 1_000, 2_000, 2, 2)
    writer = segment.SegmentWriter(io.BytesIO(), header)
    if problem is None:  # the control case: a commit that fits is accepted
        writer.write_commit(commit, [page(1)] * len(commit.pgnos))
        return
    with pytest.raises(ValueError, match=problem):
        writer.write_commit(commit, [page(1)] * len(commit.pgnos))


def test_writer_rejects_a_last_commit_that_does_not_end_the_range() -> None:
    header = SegmentHeader(Kind.SEGMENT, PS, 4, 1, 5, 8, 1_000, 2_000, 1, 1)
    writer = segment.SegmentWriter(io.BytesIO(), header)
    with pytest.raises(ValueError, match="last commit does not end"):
        writer.write_commit(Commit(5, 1_000, 4, (1,)), [page(1)])


def test_writer_rejects_a_body_that_does_not_match_the_header() -> None:
    header = SegmentHeader(Kind.SEGMENT, PS, 4, 1, 5, 8, 1_000, 2_000, 2, 2)
    writer = segment.SegmentWriter(io.BytesIO(), header)
    writer.write_commit(Commit(5, 1_000, 4, (1,)), [page(1)])
    with pytest.raises(ValueError, match="declared 2 and 2"):
        writer.close()


def test_header_rejects_impossible_values() -> None:
    with pytest.raises(ValueError, match="page size"):
        SegmentHeader(Kind.SEGMENT, 1000, 1, 1, 1, 1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="reversed"):
        SegmentHeader(Kind.SEGMENT, PS, 1, 1, 5, 4, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="cannot cover"):
        SegmentHeader(Kind.SEGMENT, PS, 1, 1, 1, 2, 1, 1, 3, 1)


def test_decoding_a_large_snapshot_uses_bounded_memory() -> None:
    pages = 16384  # 64 MiB at 4 KiB pages
    header = SegmentHeader(Kind.SNAPSHOT, 4096, pages, 1, 1, 1, 1, 1, 0, pages)
    out = io.BytesIO()
    writer = segment.SegmentWriter(out, header)
    block = os.urandom(4096) * 256
    for _ in range(pages // 256):
        writer.write_image(block)
    writer.close()
    out.seek(0)
    tracemalloc.start()
    try:
        total = sum(len(c) for c in SegmentReader(out, "snap").image())
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert total == pages * 4096
    assert peak < 8 << 20


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sets(st.integers(min_value=1, max_value=40), max_size=6), st.integers(min_value=0, max_value=5)),
        min_size=1,
        max_size=5,
    )
)
def test_any_commit_sequence_round_trips(spec: list[tuple[set[int], int]]) -> None:
    commits = []
    txid, time_us = 10, 100
    for pgnos, gap in spec:
        txid += 1 + gap
        time_us += gap
        ordered = tuple(sorted(pgnos))
        commits.append((Commit(txid, time_us, 40, ordered), [page(p) for p in ordered]))
    first, last = commits[0][0], commits[-1][0]
    header = SegmentHeader(
        Kind.SEGMENT, PS, 40, 7, first.txid, last.txid, first.time_us, last.time_us, len(commits),
        sum(len(c.pgnos) for c, _ in commits),
    )  # fmt: skip
    decoded = read_all(segment.encode(header, commits, level=3))
    assert [c for c, _ in decoded] == [c for c, _ in commits]
    assert [[p for _, p in pages] for _, pages in decoded] == [images for _, images in commits]


def test_the_key_an_object_is_stored_under_is_checked_against_its_header() -> None:
    data, _ = make_segment()
    header = segment.parse_header(data, "obj")
    key = segment.key_for(header)
    assert key == keys.SegmentKey(0xABC, 5, 8, 2_000)
    SegmentReader(io.BytesIO(data), key.key, expect=key)
    for wrong in (
        keys.SegmentKey(0xABC, 5, 9, 2_000),
        keys.SegmentKey(0xABD, 5, 8, 2_000),
        keys.SegmentKey(0xABC, 5, 8, 2_001),
        keys.SnapshotKey(0xABC, 8, 2_000),
    ):
        with pytest.raises(CorruptSegment, match="does not match the object's key"):
            SegmentReader(io.BytesIO(data), wrong.key, expect=wrong)
