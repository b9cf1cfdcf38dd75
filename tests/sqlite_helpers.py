"""Real SQLite WALs for the tests: written by stdlib sqlite3 or apsw, then read back by SQLite itself."""

from __future__ import annotations

import shutil
import sqlite3
import struct
from pathlib import Path

from replicator import wal


def open_writer(path: Path, page_size: int = 4096) -> sqlite3.Connection:
    """A stdlib connection in WAL mode that never checkpoints on its own."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute(f"PRAGMA page_size={page_size}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE IF NOT EXISTS t(tx INTEGER, data BLOB)")
    return conn


def write_transactions(conn: sqlite3.Connection, first: int, count: int, rows: int = 1, size: int = 100) -> None:
    """Transactions numbered first..first+count-1, each inserting `rows` rows tagged with its number."""
    for tx in range(first, first + count):
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t VALUES (?, randomblob(?))", [(tx, size)] * rows)
        conn.execute("COMMIT")


def snapshot_files(db: Path, dest: Path, wal_bytes: bytes | None = None) -> Path:
    """Copy the database and its WAL (optionally replaced by `wal_bytes`) to `dest`; no -shm, as after a crash."""
    dest.mkdir(parents=True, exist_ok=True)
    copy = dest / db.name
    shutil.copyfile(db, copy)
    data = Path(f"{db}-wal").read_bytes() if wal_bytes is None else wal_bytes
    Path(f"{copy}-wal").write_bytes(data)
    return copy


def sqlite_last_tx(db: Path) -> int:
    """The highest transaction number SQLite itself recovers from the database + WAL at `db` (0 if none)."""
    conn = sqlite3.connect(db)
    try:
        row = conn.execute("SELECT max(tx) FROM t").fetchone()
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    except sqlite3.OperationalError as exc:  # the table itself was in a transaction SQLite dropped
        if "no such table" not in str(exc):
            raise
        return 0
    finally:
        conn.close()
    return int(row[0] or 0)


def rewrite_checksums(data: bytes, *, big_endian: bool) -> bytes:
    """Re-encode a WAL with the other checksum byte order (magic and every checksum recomputed).

    Only frames up to the first invalid one are kept, as only those carry a meaningful chain.
    """
    contents = wal.read_wal(data)
    assert contents.header is not None
    header = bytearray(data[:32])
    struct.pack_into(">I", header, 0, wal.MAGIC_BIG_ENDIAN if big_endian else wal.MAGIC_LITTLE_ENDIAN)
    ck = wal.checksum(header[:24], big_endian=big_endian)
    struct.pack_into(">II", header, 24, *ck)
    out = bytearray(header)
    size = contents.header.frame_size
    for i in range(contents.valid_frames):
        frame = bytearray(data[32 + i * size : 32 + (i + 1) * size])
        ck = wal.checksum(frame[:8], ck, big_endian=big_endian)
        ck = wal.checksum(frame[24:], ck, big_endian=big_endian)
        struct.pack_into(">II", frame, 16, *ck)
        out += frame
    return bytes(out)
