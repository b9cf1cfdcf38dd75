"""Local state, kept next to the database in `.<db name>-replicator/` (e.g. `.app.db-replicator/`).

    state.json           where the shipper is: generation, last txid, WAL life (salts) and position in it
    replicas/<id>.json   per replica: the last object uploaded there
    spool/generations/…  objects captured but not yet uploaded to every replica (same layout as a replica)

Everything is written atomically (temporary file, fsync, rename), so a kill -9 leaves either the old or
the new version. None of it is trusted blindly: replicate.py checks it against the WAL and the replicas at
start-up, and a fresh container simply has none of it (a new generation starts).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .storage.file import FileClient, atomic_writer


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
        self.path = db_path.parent / f".{db_path.name}-replicator"
        self.spool = FileClient(self.path / "spool")

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

    def _replica_file(self, url: str) -> Path:
        return self.path / "replicas" / f"{hashlib.sha256(url.encode()).hexdigest()[:16]}.json"

    def load_replica(self, url: str) -> tuple[int, int, int] | None:
        """The upload position (generation, txid, kind order) recorded for a replica."""
        data = _read_json(self._replica_file(url))
        if data is None or data.get("url") != url:
            return None
        try:
            gen, txid, kind = data["position"]
            return int(gen), int(txid), int(kind)
        except (KeyError, TypeError, ValueError):
            return None

    def save_replica(self, url: str, position: tuple[int, int, int]) -> None:
        _write_json(self._replica_file(url), {"url": url, "position": list(position)})
