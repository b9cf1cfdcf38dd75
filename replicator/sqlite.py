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
   checkpoints happen only where tracker.py decides (capture.py carries them out), as PASSIVE ones, which
   never wait on the app, and one TRUNCATE when an idle app's WAL is wholly copied but large (it waits at
   most the lock timeout).
"""

from __future__ import annotations

import enum
import fcntl
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import apsw

from . import wal
from .errors import ReplicatorError

SQLITE_MAGIC = b"SQLite format 3\0"


def _configure_sqlite() -> None:
    """No lookaside memory: it costs ~45 kB per connection, two per database, and our SQL is a few pragmas.

    Global, so it must happen before the process opens any connection: at import of this module.
    """
    try:
        apsw.shutdown()
        apsw.config(apsw.SQLITE_CONFIG_LOOKASIDE, 0, 0)
        apsw.initialize()
    except apsw.Error:
        pass  # connections exist already (an embedding process): keep SQLite's defaults


_configure_sqlite()
_JOURNAL_HEADER = 28  # what SQLite zeroes in a rollback journal once a transaction is over
# The unix VFS's lock bytes (os_unix.c): on the database file, and the "dead man switch" on the -shm.
_PENDING_BYTE = 0x40000000
_SHARED_FIRST, _SHARED_SIZE = _PENDING_BYTE + 2, 510
_SHM_DMS = 128
_FLOCK = struct.Struct("hhqqi4x")  # struct flock on Linux: type, whence, start, len, pid


class NotADatabase(ReplicatorError):
    """The path holds something that is not a SQLite database."""


class DatabaseBusy(ReplicatorError):
    """SQLite's lock could not be had within the timeout."""


class ExclusiveLockingMode(ReplicatorError):
    """The app holds the database with PRAGMA locking_mode=EXCLUSIVE: no other process can read it."""


@dataclass(frozen=True, slots=True)
class FileIdentity:
    """Which file the path names: a replaced database (restored, swapped in) has a new identity."""

    device: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileIdentity:
        st = os.stat(path)
        return cls(st.st_dev, st.st_ino)


@dataclass(frozen=True, slots=True)
class ExclusiveHolder:
    """A process that holds SQLite's EXCLUSIVE lock on the database while it looks idle."""

    pid: int
    certain: bool  # the file shows locking_mode=EXCLUSIVE; else it only may (see exclusive_mode_holder)


def exclusive_mode_holder(path: Path) -> ExclusiveHolder | None:
    """Who holds the database in locking_mode=EXCLUSIVE, if someone seems to.

    The signature (checked against SQLite 3.40 and 3.5x): another process holds SQLite's EXCLUSIVE lock on
    the file while no transaction is being written. In WAL mode a normal connection never holds it outside a
    last-close checkpoint, and it would use the -shm: certain. In rollback mode, a transaction being
    written has a journal whose header names the page size; an exclusive-mode connection between
    transactions zeroes the whole header (certain), or truncates the journal or has none yet, which a
    transaction that has not written yet (BEGIN EXCLUSIVE) also shows: uncertain, so the caller waits longer.
    A caller should see it persist (a last-close checkpoint or a commit also holds the lock, briefly).
    Call it only while we have no connection open on the file: opening and closing a descriptor of it drops
    this process's own POSIX locks (see rule 3).
    """
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        pid = _lock_holder(fd, _SHARED_FIRST, _SHARED_SIZE)
        head = os.pread(fd, 100, 0)
    finally:
        os.close(fd)
    if pid is None:
        return None
    if len(head) >= 20 and head[18] == 2:  # WAL mode (file format version 2)
        return None if shm_in_use(path) else ExclusiveHolder(pid, certain=True)
    try:
        with open(f"{path}-journal", "rb") as journal:
            header = journal.read(_JOURNAL_HEADER)
    except FileNotFoundError:
        header = b""
    if len(header) < _JOURNAL_HEADER:
        return ExclusiveHolder(pid, certain=False)
    return ExclusiveHolder(pid, certain=True) if not any(header) else None


def shm_in_use(path: Path) -> bool:
    """Whether some process has the database's -shm mapped (each WAL connection read-locks its DMS byte)."""
    try:
        fd = os.open(f"{path}-shm", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return _lock_holder(fd, _SHM_DMS, 1) is not None
    finally:
        os.close(fd)


class StaleWal(enum.Enum):
    """What remove_stale_wal found beside a deleted or replaced database."""

    REMOVED = "removed"  # nobody used them: gone, as after SQLite's own last close
    NEW_LIFE = "new life"  # the app restarted the WAL for the new file: it is the new file's
    IN_USE = "in use"  # a connection is attached to the old WAL: left alone


def remove_stale_wal(path: Path, salt: tuple[int, int] | None) -> StaleWal:
    """Remove a deleted or replaced database's -wal and -shm, as SQLite's last close would have.

    Only a WAL of the life we followed (`salt`) or an empty one, and only while no process has the -shm
    mapped (we hold its DMS byte meanwhile, as SQLite does while it initialises the index).
    """
    shm_path, wal_path = Path(f"{path}-shm"), Path(f"{path}-wal")
    try:
        with open(wal_path, "rb") as f:
            head = f.read(wal.WAL_HEADER_SIZE)
    except FileNotFoundError:
        head = b""
    if head:
        try:
            if wal.parse_header(head).salt != salt:
                return StaleWal.NEW_LIFE
        except ReplicatorError:
            pass  # not a valid WAL: SQLite would ignore it, and so can we
    try:
        fd = os.open(shm_path, os.O_RDWR)
    except FileNotFoundError:
        fd = None
    try:
        if fd is not None:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, _SHM_DMS)
            except OSError:
                return StaleWal.IN_USE
        wal_path.unlink(missing_ok=True)
        shm_path.unlink(missing_ok=True)
        return StaleWal.REMOVED
    finally:
        if fd is not None:
            os.close(fd)


def _lock_holder(fd: int, start: int, length: int) -> int | None:
    """The PID of another process holding a lock that a write lock on [start, start + length) would meet."""
    probe = _FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, start, length, 0)
    kind, _, _, _, pid = _FLOCK.unpack(fcntl.fcntl(fd, fcntl.F_GETLK, probe))
    return None if kind == fcntl.F_UNLCK else int(pid)


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
        self._reader = self._connect()
        self._writer_conn: apsw.Connection | None = None  # opened when needed, released when idle
        self._pinned = False
        self._db_fd = os.open(path, os.O_RDONLY)
        self._shm_fd: int | None = None

    def _connect(self) -> apsw.Connection:
        conn = apsw.Connection(str(self.path), flags=apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_URI)
        conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
        conn.set_busy_timeout(1000)
        conn.execute("PRAGMA wal_autocheckpoint=0")
        return conn

    @property
    def _writer(self) -> apsw.Connection:
        if self._writer_conn is None:
            self._writer_conn = self._connect()
            self._writer_conn.set_busy_timeout(self.lock_timeout_ms)
        return self._writer_conn

    def release_writer(self) -> None:
        """Close the lock-only connection while the database is idle (each costs ~100 kB of SQLite memory).

        Safe for the pin: SQLite's unix VFS keeps a closed connection's descriptors open while another
        connection of the process holds locks on the file (rule 3 is about our own descriptors).
        """
        if self._writer_conn is not None:
            self._writer_conn.close()
            self._writer_conn = None

    def close(self) -> None:
        self.unpin()
        self.release_writer()
        self._reader.close()
        # Only now: closing these earlier would drop the connections' POSIX locks (rule 3).
        os.close(self._db_fd)
        if self._shm_fd is not None:
            os.close(self._shm_fd)
            self._shm_fd = None

    # -- journal mode ---------------------------------------------------------------------------------

    def ensure_wal_mode(self) -> bool:
        """Switch the database to WAL mode if it is not; True if we switched it."""
        with _busy_is(f"{self.path} is locked by the app"), _corrupt_is(self.path):
            mode = str(self._reader.execute("PRAGMA journal_mode").fetchall()[0][0]).lower()
            if mode == "wal":
                return False
            new = str(self._reader.execute("PRAGMA journal_mode=WAL").fetchall()[0][0]).lower()
        if new != "wal":
            raise DatabaseBusy(f"could not switch {self.path} to WAL mode (still {new}); is it locked?")
        return True

    def gone(self) -> bool:
        """True once the file we hold is no longer the one at the path (deleted, or replaced by another)."""
        if os.fstat(self._db_fd).st_nlink == 0:
            return True
        try:
            return FileIdentity.of(self.path) != self.identity
        except FileNotFoundError:
            return True

    # -- the pin --------------------------------------------------------------------------------------

    def pin(self) -> None:
        """Start the long read transaction that keeps SQLite from restarting the WAL under us."""
        if not self._pinned:
            with _busy_is(f"{self.path} is locked by the app"):
                self._reader.execute("BEGIN")
                try:
                    self._reader.execute("SELECT count(*) FROM sqlite_schema").fetchall()
                except BaseException:
                    self._reader.execute("ROLLBACK")
                    raise
            self._pinned = True

    def unpin(self) -> None:
        if self._pinned:
            self._reader.execute("ROLLBACK")
            self._pinned = False

    @contextmanager
    def write_lock(self) -> Iterator[None]:
        """Hold SQLite's write lock (no commits by anyone) for the block; DatabaseBusy if not had in time."""
        with _busy_is(f"{self.path}: write lock busy"):
            self._writer.execute("BEGIN IMMEDIATE")
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

    def truncate_wal(self) -> bool:
        """Cut the -wal file to zero bytes once everything in it is in the database; True if it was.

        A TRUNCATE checkpoint on the writer connection, while the pin holds read lock 0 (armed): it copies
        nothing (the WAL is wholly in the file), waits at most the lock timeout for app readers still on
        the WAL, and gives up if they stay. SQLite restarts the WAL header itself, so the app's next commit
        starts a new life at frame 1, which the pin's lock 0 lets us continue (replicate.py). Without it the
        file keeps its high-water size after a burst: SQLite only shrinks it for the connection that set
        `journal_size_limit`, the app's, not ours.
        """
        with _busy_is(f"{self.path}: WAL in use"):
            busy, frames, _ = self._writer.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()[0]
        return busy == 0 and frames == 0

    def wal_size(self) -> int:
        try:
            return os.stat(self.wal_path).st_size
        except FileNotFoundError:
            return 0

    def opened_elsewhere(self) -> bool:
        """Whether another process has the database open: every WAL connection read-locks the -shm's DMS
        byte, and F_GETLK through our own descriptor reports only other processes' locks (rule 3 holds:
        the descriptor stays open until `close`)."""
        fd = self._shm()
        return fd is not None and _lock_holder(fd, _SHM_DMS, 1) is not None

    def _shm(self) -> int | None:
        if self._shm_fd is None:
            try:
                self._shm_fd = os.open(self.shm_path, os.O_RDONLY)
            except FileNotFoundError:
                return None
        return self._shm_fd

    # -- raw files ------------------------------------------------------------------------------------

    def read_index(self) -> wal.WalIndexHeader | None:
        """SQLite's own record of the committed end of the WAL, or None if unreadable right now."""
        fd = self._shm()
        if fd is None:
            return None
        for _ in range(3):  # a torn read (a writer mid-update) is retried at once
            index = wal.parse_wal_index(os.pread(fd, wal.WAL_INDEX_HEADER_SIZE, 0))
            if index is not None:
                return index
        return None

    def read_file(self, offset: int, length: int) -> bytes:
        """Raw bytes of the database file (through our one descriptor, see rule 3)."""
        return os.pread(self._db_fd, length, offset)

    def file_size(self) -> int:
        return os.fstat(self._db_fd).st_size

    def page_size(self) -> int:
        with _busy_is(f"{self.path} is locked by the app"):
            size = self._reader.execute("PRAGMA page_size").fetchall()[0][0]
        assert isinstance(size, int)
        return size


@contextmanager
def _corrupt_is(path: Path) -> Iterator[None]:
    """A file with SQLite's magic but garbage after it: one clear error, not a traceback."""
    try:
        yield
    except (apsw.NotADBError, apsw.CorruptError) as exc:
        raise NotADatabase(
            f"{path} is not a valid SQLite database (SQLite says: {exc}); refusing to touch it"
        ) from None


@contextmanager
def _busy_is(message: str) -> Iterator[None]:
    """SQLite's busy answers become DatabaseBusy: the caller waits and retries, it is not a failure."""
    try:
        yield
    except apsw.BusyError:
        raise DatabaseBusy(message) from None
