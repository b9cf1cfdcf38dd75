"""Local state, kept next to the database in `.<db name>-replicator/` (e.g. `.app.db-replicator/`).

    lock                 held (flock) by the one replicator of this database; holds its PID
    state.json           where the shipper is: generation, last txid, WAL life (salts) and position in it
    spool/generations/…  objects captured but not yet uploaded to every replica (same layout as a replica)

Everything is written atomically (temporary file, fsync, rename), so a kill -9 leaves either the old or
the new version. None of it is trusted blindly: replicate.py checks it against the WAL and the replicas at
start-up, and a fresh container simply has none of it (a new generation starts). How far each replica
is comes from what it lists, never from a local note.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
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
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class StateDir:
    def __init__(self, db_path: Path) -> None:
        self.db_path = db_path
        self.path = db_path.parent / f".{db_path.name}-replicator"
        self.spool = FileClient(self.path / "spool")
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
