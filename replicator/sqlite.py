"""The apsw edge: our two connections to the app's database, and raw reads of its WAL and -shm files.

Rules:
1. We never change the app's data. The only write-side thing we do is take SQLite's write lock with an
   empty BEGIN IMMEDIATE (rolled back), so that nobody commits while we move our read lock.
2. The reader connection holds a read transaction (the "pin") at all times except inside `repin()`. While a
   pin is held, SQLite cannot restart or truncate the WAL past it, so no committed frame disappears before
   we have read it (sqlite.org/wal.html, "WAL reset"; walformat.html on read marks).
3. We never close a file descriptor of the database or its -shm while our connections are open: POSIX
   drops every lock a process holds on a file when any descriptor of that file is closed, which would
   silently release SQLite's locks, the pin included. Database opens each once and reads through it.
4. Our connections never checkpoint on close (SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE) and never auto-checkpoint:
   checkpoints happen only where replicate.py decides, as PASSIVE ones, which never wait on the app.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import apsw

from . import wal
from .errors import ReplicatorError

SQLITE_MAGIC = b"SQLite format 3\0"


class NotADatabase(ReplicatorError):
    """The path holds something that is not a SQLite database."""


class DatabaseBusy(ReplicatorError):
    """SQLite's lock could not be had within the timeout."""


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """Which file the path names: a replaced database (restored, swapped in) has a new identity."""

    device: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        st = os.stat(path)
        return cls(st.st_dev, st.st_ino)


def check_database_file(path: Path) -> bool:
    """True if `path` is a SQLite database; False if it does not exist yet or is still empty.

    Raises NotADatabase for any other content: we then touch nothing.
    """
    try:
        with open(path, "rb") as f:
            head = f.read(100)
    except FileNotFoundError:
        return False
    if not head:
        return False
    if not head.startswith(SQLITE_MAGIC):
        raise NotADatabase(f"{path} is not a SQLite database (no SQLite header); refusing to touch it")
    return True


class Database:
    """The app's database as we see it: a pinned reader, a lock-only writer, and the raw WAL and -shm."""

    def __init__(self, path: Path, *, lock_timeout_ms: int = 100) -> None:
        self.path = path
        self.wal_path = Path(f"{path}-wal")
        self.shm_path = Path(f"{path}-shm")
        self.lock_timeout_ms = lock_timeout_ms
        self.identity = FileIdentity.of(path)
        flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_URI
        self._reader = apsw.Connection(str(path), flags=flags)
        self._writer = apsw.Connection(str(path), flags=flags)
        for conn in (self._reader, self._writer):
            conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
            conn.set_busy_timeout(1000)
            conn.execute("PRAGMA wal_autocheckpoint=0")
        self._writer.set_busy_timeout(lock_timeout_ms)
        self._pinned = False
        self._db_fd = os.open(path, os.O_RDONLY)
        self._shm_fd: int | None = None

    def close(self) -> None:
        self.unpin()
        self._writer.close()
        self._reader.close()
        # Only now: closing these earlier would drop the connections' POSIX locks (rule 3).
        os.close(self._db_fd)
        if self._shm_fd is not None:
            os.close(self._shm_fd)
            self._shm_fd = None

    # -- journal mode ---------------------------------------------------------------------------------

    def ensure_wal_mode(self) -> bool:
        """Switch the database to WAL mode if it is not; True if we switched it."""
        mode = str(self._reader.execute("PRAGMA journal_mode").fetchall()[0][0]).lower()
        if mode == "wal":
            return False
        new = str(self._reader.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]).lower()
        if new != "wal":
            raise DatabaseBusy(f"could not switch {self.path} to WAL mode (still {new}); is it locked?")
        return True

    # -- the pin --------------------------------------------------------------------------------------

    def pin(self) -> None:
        """Start the long read transaction that keeps SQLite from restarting the WAL under us."""
        if not self._pinned:
            self._reader.execute("BEGIN")
            self._reader.execute("SELECT count(*) FROM sqlite_schema").fetchall()
            self._pinned = True

    def unpin(self) -> None:
        if self._pinned:
            self._reader.execute("ROLLBACK")
            self._pinned = False

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        """Hold SQLite's write lock (no commits by anyone) for the block; DatabaseBusy if not had in time."""
        try:
            self._writer.execute("BEGIN IMMEDIATE")
        except apsw.BusyError:
            raise DatabaseBusy(f"{self.path}: write lock busy") from None
        try:
            yield
        finally:
            self._writer.execute("ROLLBACK")

    def checkpoint(self) -> tuple[int, int, int]:
        """PASSIVE checkpoint: copies what it can, never waits. Returns (busy, wal frames, backfilled).

        Pinned, it runs on the writer connection and copies frames up to our pin; unpinned (inside
        write_lock, where the writer connection is busy holding the lock) it runs on the reader.
        """
        conn = self._writer if self._pinned else self._reader
        busy, frames, backfilled = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()[0]
        assert isinstance(busy, int) and isinstance(frames, int) and isinstance(backfilled, int)
        return busy, frames, backfilled

    # -- raw files ------------------------------------------------------------------------------------

    def read_index(self) -> wal.WalIndexHeader | None:
        """SQLite's own record of the committed end of the WAL, or None if unreadable right now."""
        if self._shm_fd is None:
            try:
                self._shm_fd = os.open(self.shm_path, os.O_RDONLY)
            except FileNotFoundError:
                return None
        for _ in range(3):  # a torn read (a writer mid-update) is retried at once
            index = wal.parse_wal_index(os.pread(self._shm_fd, wal.WAL_INDEX_HEADER_SIZE, 0))
            if index is not None:
                return index
        return None

    def read_file(self, offset: int, length: int) -> bytes:
        """Raw bytes of the database file (through our one descriptor, see rule 3)."""
        return os.pread(self._db_fd, length, offset)

    def file_size(self) -> int:
        return os.fstat(self._db_fd).st_size

    def page_size(self) -> int:
        size = self._reader.execute("PRAGMA page_size").fetchall()[0][0]
        assert isinstance(size, int)
        return size
