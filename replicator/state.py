"""Local state, kept next to the database in `.<db name>-replicator/` (e.g. `.app.db-replicator/`).

    lock                 held (flock) by the one replicator of this database; holds its PID
    state.json           where the shipper is: generation, last txid, WAL life (salts) and position in it;
                         also left by a restore of the latest state (record_restored), so that replication
                         of the restored file continues its generation instead of taking a new snapshot
    spool/generations/…  objects captured but not yet uploaded to every replica (same layout as a replica)
    cache/generations/…  segments kept for compaction (compactor.py): hard links of what was spooled

Everything is written atomically (temporary file, fsync, rename), so a kill -9 leaves either the old or
the new version. None of it is trusted blindly: replicate.py checks it against the WAL and the replicas at
start-up, and a fresh container simply has none of it (a new generation starts). How far each replica
is comes from what it lists, never from a local note.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .errors import ReplicatorError
from .storage.file import FileClient, atomic_writer


class StateDirError(ReplicatorError):
    """The state directory cannot be created or written."""


class AlreadyReplicating(ReplicatorError):
    """Another replicator process holds this database's lock."""


@dataclass(frozen=True, slots=True)
class WalPosition:
    """How far into one life of the WAL we have captured."""

    salt: tuple[int, int]
    checkpoint_seq: int
    frames: int  # committed frames captured from this life
    checksum: tuple[int, int]  # cumulative checksum after those frames (the header's when frames == 0)


@dataclass(frozen=True, slots=True)
class ShipperState:
    generation: int
    txid: int  # last transaction captured into the spool
    db_size: int  # pages in the database as of txid
    page_size: int
    device: int
    inode: int
    wal: WalPosition | None  # None: there was no WAL when we started this generation
    last_snapshot_us: int
    # Set by a restore, while `wal` is None: the sha256 of the file it wrote, which proves the file is
    # exactly txid of generation (replicate.py checks it before continuing the generation from there).
    restored_digest: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ShipperState:
        w = data["wal"]
        position = None
        if w is not None:
            position = WalPosition(tuple(w["salt"]), w["checkpoint_seq"], w["frames"], tuple(w["checksum"]))
        return cls(**{**data, "wal": position})


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with atomic_writer(path) as f:
        f.write(json.dumps(data, sort_keys=True).encode())


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):  # none, or unreadable (the state path is a file, say): as good as none
        return None
    return data if isinstance(data, dict) else None


class StateDir:
    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.path = db_path.parent / f".{db_path.name}-replicator"
        self.spool = FileClient(self.path / "spool")
        self.control = self.path / "control.sock"  # control.py: the running replicator's socket
        self._lock_fd: int | None = None

    def lock(self) -> None:
        """Become the one replicator of this database, or raise naming the process that is.

        An flock on `lock` in the state directory: released by the kernel when the process dies, however
        it dies, so a kill -9 never leaves a stale lock behind.
        """
        try:
            self.path.mkdir(exist_ok=True)
            fd = os.open(self.path / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        except FileExistsError:
            raise StateDirError(
                f"cannot keep replication state in {self.path}: it exists and is not a directory"
            ) from None
        except OSError as exc:
            raise StateDirError(f"cannot keep replication state in {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if exc.errno in (errno.EAGAIN, errno.EACCES):
                raise AlreadyReplicating(
                    f"{self.db_path} is already being replicated by PID {holder} "
                    f"(it holds {self.path / 'lock'}); stop it first"
                ) from None
            raise StateDirError(f"cannot lock {self.path / 'lock'}: {exc.strerror}") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the PID is a courtesy for the next process's message; a full disk must not stop us
        self._lock_fd = fd

    def unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def load(self) -> ShipperState | None:
        """The saved state, or None if there is none or it cannot be read (then we start afresh)."""
        data = _read_json(self.path / "state.json")
        if data is None:
            return None
        try:
            return ShipperState.from_json(data)
        except (KeyError, TypeError, ValueError):
            return None

    def save(self, state: ShipperState) -> None:
        _write_json(self.path / "state.json", state.to_json())


def digest(read: Callable[[int, int], bytes], size: int) -> str:
    """The sha256 of `size` bytes read as `read(offset, length)` (about 1.4 GB/s; hashing releases the GIL).

    Through a reader, so that the replicator hashes the database through the descriptor it already holds:
    opening and closing another would drop SQLite's locks (sqlite.py, rule 3).
    """
    h = hashlib.sha256()
    for offset in range(0, size, _DIGEST_CHUNK):
        h.update(read(offset, min(_DIGEST_CHUNK, size - offset)))
    return h.hexdigest()


_DIGEST_CHUNK = 1 << 20


def file_digest(path: Path) -> str:
    """The sha256 of a file nobody else has open (the restore's own output)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return digest(lambda offset, length: os.pread(fd, length, offset), os.fstat(fd).st_size)
    finally:
        os.close(fd)


def record_restored(db_path: Path, generation: int, txid: int, snapshot_us: int, sha256: str) -> bool:
    """Leave the state that lets `replicate` continue a just-restored file's generation at `txid`.

    Returns False (and leaves nothing) when a replicator holds the state directory: it decides for itself.
    The state is only a claim: replicate.py proves it against the file (`sha256`) and the replicas (the
    last writer's seal) before continuing, and starts a new generation if anything disagrees.
    """
    db_path = db_path.resolve()
    state_dir = StateDir(db_path)
    try:
        state_dir.lock()
    except ReplicatorError:
        return False
    try:
        st = os.stat(db_path)
        with open(db_path, "rb") as f:
            head = f.read(100)
        page_size = int.from_bytes(head[16:18], "big")
        page_size = 65536 if page_size == 1 else page_size
        state_dir.save(
            ShipperState(
                generation=generation,
                txid=txid,
                db_size=st.st_size // page_size,
                page_size=page_size,
                device=st.st_dev,
                inode=st.st_ino,
                wal=None,
                last_snapshot_us=snapshot_us,
                restored_digest=sha256,
            )
        )
        return True
    except OSError:
        return False
    finally:
        state_dir.unlock()
