"""The WAL reader agrees with SQLite about what is committed, for every shape of WAL SQLite leaves behind."""

from __future__ import annotations

import os
import sqlite3
import struct
from pathlib import Path

import apsw
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlite_helpers import (
    open_writer,
    rewrite_checksums,
    snapshot_files,
    sqlite_last_tx,
    write_transactions,
)

from replicator import wal
from replicator.errors import InvalidWalHeader
from replicator.walfile import WalFile


def commit_ends(conn: sqlite3.Connection, db: Path, first: int, count: int, **kw: int) -> dict[int, int]:
    """Write transactions one by one, recording the WAL size after each commit (one WAL life only)."""
    ends = {}
    for tx in range(first, first + count):
        write_transactions(conn, tx, 1, **kw)
        ends[tx] = os.path.getsize(f"{db}-wal")
    return ends


def committed_end(data: bytes) -> int:
    contents = wal.read_wal(data)
    assert contents.header is not None
    return contents.header.frame_offset(contents.committed_frames)


def test_reads_every_transaction_written_by_stdlib_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    conn = open_writer(db)
    write_transactions(conn, 1, 50, rows=3)
    data = Path(f"{db}-wal").read_bytes()
    contents = wal.read_wal(data)
    assert contents.header is not None and contents.header.page_size == 4096
    assert len(contents.transactions) == 51  # CREATE TABLE, then the 50 inserts
    assert contents.committed_frames == contents.valid_frames == (len(data) - 32) // contents.header.frame_size
    conn.close()


def test_reads_a_wal_written_by_apsw(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    conn = apsw.Connection(str(db))
    for statement in ("PRAGMA journal_mode=WAL", "PRAGMA wal_autocheckpoint=0", "CREATE TABLE t(tx, data)"):
        conn.execute(statement).fetchall()
    for tx in range(1, 21):
        conn.execute("INSERT INTO t VALUES (?, randomblob(5000))", (tx,))
    data = Path(f"{db}-wal").read_bytes()
    contents = wal.read_wal(data)
    assert len(contents.transactions) == 21
    copy = snapshot_files(db, tmp_path / "copy", data)
    assert sqlite_last_tx(copy) == 20
    conn.close()


def test_transactions_carry_page_numbers_and_db_size(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    conn = open_writer(db)
    write_transactions(conn, 1, 1, rows=40, size=1000)
    contents = wal.read_wal(Path(f"{db}-wal").read_bytes())
    last = contents.transactions[-1]
    db_pages = conn.execute("PRAGMA page_count").fetchone()[0]
    assert last.db_size == db_pages
    assert max(last.pgnos) <= db_pages and min(last.pgnos) >= 1
    assert last.first_frame == contents.transactions[-2].end_frame
    conn.close()


@pytest.mark.parametrize("page_size", [512, 1024, 4096, 16384, 65536])
def test_every_page_size(tmp_path: Path, page_size: int) -> None:
    db = tmp_path / "app.db"
    conn = open_writer(db, page_size)
    write_transactions(conn, 1, 10, rows=2, size=300)
    data = Path(f"{db}-wal").read_bytes()
    contents = wal.read_wal(data)
    assert contents.header is not None and contents.header.page_size == page_size
    assert len(contents.transactions) == 11
    assert committed_end(data) == len(data)
    conn.close()


def test_big_endian_checksums_are_verified(tmp_path: Path) -> None:
    """A WAL with magic 0x377f0683 (as a big-endian machine writes) reads the same, and SQLite agrees."""
    db = tmp_path / "app.db"
    conn = open_writer(db)
    write_transactions(conn, 1, 30, rows=2)
    little = Path(f"{db}-wal").read_bytes()
    big = rewrite_checksums(little, big_endian=True)
    assert struct.unpack(">I", big[:4])[0] == wal.MAGIC_BIG_ENDIAN

    ours = wal.read_wal(big)
    assert ours.header is not None and ours.header.big_endian
    assert [t.pgnos for t in ours.transactions] == [t.pgnos for t in wal.read_wal(little).transactions]
    assert sqlite_last_tx(snapshot_files(db, tmp_path / "copy", big)) == 30
    # A wrong byte order is a broken chain: nothing validates.
    wrong = big[:32] + rewrite_checksums(little, big_endian=False)[32:]
    assert wal.read_wal(wrong).transactions == []
    conn.close()


def test_torn_last_frame_ends_at_the_previous_commit(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    conn = open_writer(db)
    ends = commit_ends(conn, db, 1, 5)
    data = Path(f"{db}-wal").read_bytes()
    torn = data[: ends[5] - 100]  # the last commit frame lost its tail
    assert committed_end(torn) == ends[4]
    assert sqlite_last_tx(snapshot_files(db, tmp_path / "copy", torn)) == 4
    conn.close()


def test_corrupt_frame_ends_the_wal_there(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    conn = open_writer(db)
    ends = commit_ends(conn, db, 1, 10)
    data = bytearray(Path(f"{db}-wal").read_bytes())
    data[ends[6] + 24 + 50] ^= 0xFF  # inside the page of transaction 7's first frame
    assert committed_end(bytes(data)) == ends[6]
    assert sqlite_last_tx(snapshot_files(db, tmp_path / "copy", bytes(data))) == 6
    conn.close()


def test_stale_frames_of_a_previous_wal_life_are_ignored(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    conn = open_writer(db)
    write_transactions(conn, 1, 40, rows=5)
    first_life = wal.read_wal(Path(f"{db}-wal").read_bytes())
    assert conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0
    write_transactions(conn, 41, 2)  # restarts the WAL from frame 0 with new salts
    data = Path(f"{db}-wal").read_bytes()
    second_life = wal.read_wal(data)
    assert first_life.header is not None and second_life.header is not None
    assert second_life.header.salt != first_life.header.salt
    assert second_life.header.checkpoint_seq == first_life.header.checkpoint_seq + 1
    assert len(second_life.transactions) == 2
    assert second_life.valid_frames < first_life.valid_frames  # old frames remain in the file, unread
    assert sqlite_last_tx(snapshot_files(db, tmp_path / "copy", data)) == 42
    conn.close()


def test_a_scanner_of_the_old_life_rejects_the_restarted_wal(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    conn = open_writer(db)
    write_transactions(conn, 1, 3)
    old = wal.parse_header(Path(f"{db}-wal").read_bytes())
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    write_transactions(conn, 4, 3)
    data = Path(f"{db}-wal").read_bytes()
    scanner = wal.FrameScanner(old)
    assert scanner.feed(data[32:]) == []
    assert scanner.stopped_at_invalid and scanner.next_frame == 0
    conn.close()


def test_uncommitted_frames_are_pending_not_committed(tmp_path: Path) -> None:
    """A transaction larger than the page cache spills frames before its commit frame exists."""
    db = tmp_path / "app.db"
    conn = open_writer(db)
    ends = commit_ends(conn, db, 1, 3)
    conn.execute("PRAGMA cache_size=10")
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO t VALUES (?, randomblob(2000))", [(4,)] * 200)
    data = Path(f"{db}-wal").read_bytes()
    assert len(data) > ends[3]  # the spill reached the WAL
    header = wal.parse_header(data)
    scanner = wal.FrameScanner(header)
    scanner.feed(data[32:])
    assert header.frame_offset(scanner.committed_frames) == ends[3]
    assert scanner.pending_frames > 0
    assert sqlite_last_tx(snapshot_files(db, tmp_path / "copy", data)) == 3
    conn.execute("ROLLBACK")
    conn.close()


def test_empty_and_header_only_wals_hold_nothing(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    conn = open_writer(db)
    data = Path(f"{db}-wal").read_bytes()
    assert wal.read_wal(b"") == wal.WalContents(None)
    assert wal.read_wal(data[:20]).header is None
    header_only = wal.read_wal(data[:32])
    assert header_only.header is not None and header_only.transactions == []
    assert header_only.db_size is None
    conn.close()


@pytest.mark.parametrize(
    ("offset", "value", "problem"),
    [(0, 0x12345678, "magic"), (4, 3007001, "version"), (8, 1000, "page size"), (24, 1, "checksum")],
)
def test_invalid_headers_are_rejected(offset: int, value: int, problem: str) -> None:
    header = bytearray(struct.pack(">IIIIII", wal.MAGIC_LITTLE_ENDIAN, 3007000, 4096, 0, 1, 2))
    header += struct.pack(">II", *wal.checksum(header))
    wal.parse_header(bytes(header))
    struct.pack_into(">I", header, offset, value)
    with pytest.raises(InvalidWalHeader, match=problem):
        wal.parse_header(bytes(header))


@pytest.fixture(scope="module")
def sample_wal(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    db = tmp_path_factory.mktemp("sample") / "app.db"
    conn = open_writer(db, 1024)
    write_transactions(conn, 1, 60, rows=3, size=200)
    data = Path(f"{db}-wal").read_bytes()
    conn.close()
    return data


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=7000), min_size=1, max_size=12))
def test_feeding_in_any_chunks_equals_reading_at_once(sample_wal: bytes, cuts: list[int]) -> None:
    header = wal.parse_header(sample_wal)
    body = sample_wal[32:]
    scanner = wal.FrameScanner(header)
    found: list[wal.Transaction] = []
    for cut in [*sorted(cuts), len(body)]:
        start = scanner.next_frame * header.frame_size
        found += scanner.feed(body[start : max(start, cut)])
    assert found == wal.read_wal(sample_wal).transactions


def test_scanner_resumes_from_a_known_position(sample_wal: bytes) -> None:
    contents = wal.read_wal(sample_wal)
    assert contents.header is not None
    resume_at = contents.transactions[20]
    scanner = wal.FrameScanner(contents.header, resume_at.end_frame, resume_at.checksum)
    rest = scanner.feed(sample_wal[contents.header.frame_offset(resume_at.end_frame) :])
    assert rest == contents.transactions[21:]


def test_a_wrong_resume_checksum_accepts_nothing(sample_wal: bytes) -> None:
    contents = wal.read_wal(sample_wal)
    assert contents.header is not None
    t = contents.transactions[20]
    scanner = wal.FrameScanner(contents.header, t.end_frame, (t.checksum[0] ^ 1, t.checksum[1]))
    assert scanner.feed(sample_wal[contents.header.frame_offset(t.end_frame) :]) == []


@settings(max_examples=30, deadline=None)
@given(st.data())
def test_vectorised_checksum_matches_the_reference(data: st.DataObject) -> None:
    """Build frames with the plain-Python checksum; the scanner must accept exactly the intact ones."""
    big_endian = data.draw(st.booleans())
    page_size = data.draw(st.sampled_from([512, 1024, 4096]))
    n = data.draw(st.integers(min_value=1, max_value=6))
    header = bytearray(
        struct.pack(
            ">IIIIII", wal.MAGIC_BIG_ENDIAN if big_endian else wal.MAGIC_LITTLE_ENDIAN, 3007000, page_size, 0, 7, 9
        )
    )
    ck = wal.checksum(header, big_endian=big_endian)
    header += struct.pack(">II", *ck)
    frames = bytearray()
    for i in range(n):
        page = data.draw(st.binary(min_size=page_size, max_size=page_size))
        head = struct.pack(">II", i + 1, i + 1 if i == n - 1 else 0)
        ck = wal.checksum(page, wal.checksum(head, ck, big_endian=big_endian), big_endian=big_endian)
        frames += head + struct.pack(">IIII", 7, 9, *ck) + page
    contents = wal.read_wal(bytes(header + frames))
    assert contents.valid_frames == n and len(contents.transactions) == 1
    flip = data.draw(st.integers(min_value=0, max_value=len(frames) - 1))
    frames[flip] ^= 0x01  # any header field, salt, checksum or page byte
    damaged = wal.read_wal(bytes(header + frames))
    assert damaged.valid_frames == flip // (24 + page_size)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    tx_rows=st.lists(st.integers(min_value=1, max_value=30), min_size=1, max_size=12),
    checkpoint_after=st.integers(min_value=0, max_value=12),
    cut=st.floats(min_value=0.0, max_value=1.0),
)
def test_committed_prefix_matches_sqlite_after_reopening(
    tmp_path_factory: pytest.TempPathFactory, tx_rows: list[int], checkpoint_after: int, cut: float
) -> None:
    """Random transactions, maybe a WAL restart part-way, then the WAL cut anywhere: we and SQLite agree."""
    tmp = tmp_path_factory.mktemp("prop")
    db = tmp / "app.db"
    conn = open_writer(db, 1024)
    for tx, rows in enumerate(tx_rows, start=1):
        write_transactions(conn, tx, 1, rows=rows, size=150)
        if tx == checkpoint_after:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    data = Path(f"{db}-wal").read_bytes()
    cut_data = data[: int(len(data) * cut)]
    copy = snapshot_files(db, tmp / "copy", cut_data)

    ours = wal.read_wal(cut_data)
    sqlite_sees = sqlite_last_tx(copy)
    # Rebuild what our reader claims: the checkpointed database plus our committed frames, applied by SQLite.
    claimed = cut_data[: ours.header.frame_offset(ours.committed_frames)] if ours.header else b""
    assert sqlite_last_tx(snapshot_files(db, tmp / "claimed", claimed)) == sqlite_sees
    conn.close()


# -- the live WAL file (walfile.py) ----------------------------------------------------------------------


def test_frames_a_scan_kept_stay_readable_after_the_wal_restarts_over_them(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    conn = open_writer(db)
    write_transactions(conn, 1, 5, rows=3)
    before = Path(f"{db}-wal").read_bytes()
    header = wal.parse_header(before)
    wal_file = WalFile(Path(f"{db}-wal"))
    scanner = wal.FrameScanner(header)
    transactions = list(wal_file.scan(scanner, 10_000))
    frames = list(range(transactions[-1].end_frame))
    expected = {f: before[header.frame_offset(f) + 24 : header.frame_offset(f + 1)] for f in frames}
    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    write_transactions(conn, 6, 5, rows=3)  # a new life, written over the old frames

    assert wal_file.read_verified(header, frames) == expected  # kept: nothing read again
    wal_file.forget()
    assert wal_file.read_verified(header, [0]) == {0: None}  # read again: overwritten by the new life
    wal_file.close()
    conn.close()
