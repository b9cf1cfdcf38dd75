"""Rebuilding a database from a replica: a pure plan from the listing, then a verified, atomic apply.

Plan (no I/O): pick the generation (newest by last write, or the one covering the target time), its newest
snapshot at or before the target, and the unbroken chain of segments after it up to the target. A gap in
the chain is an error, never a silent older state.

Apply: stream the snapshot into a temporary file beside the output, apply each segment's commit records
(pages written in place, file cut to the commit's size), verify every object as it is read, run
`PRAGMA integrity_check`, fsync, rename into place, fsync the directory. On any failure the temporary file
is removed: no output is ever half-written.
"""

from __future__ import annotations

import os
import tempfile
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import apsw

from . import keys
from .errors import ReplicatorError
from .keys import ObjectKey, SegmentKey, SnapshotKey
from .segment import SegmentReader
from .storage import ObjectReader, ReplicaClient


class RestoreError(ReplicatorError):
    """The replica cannot produce the requested database."""


class ReplicaEmpty(RestoreError):
    """The replica holds no restorable generation."""


@dataclass(frozen=True, slots=True)
class RestorePlan:
    generation: int
    snapshot: SnapshotKey
    segments: tuple[SegmentKey, ...]

    @property
    def txid(self) -> int:
        return self.segments[-1].last_txid if self.segments else self.snapshot.txid

    @property
    def objects(self) -> tuple[ObjectKey, ...]:
        return (self.snapshot, *self.segments)


def _last_write(items: list[ObjectKey]) -> int:
    return max(k.time_us if isinstance(k, SnapshotKey) else k.last_time_us for k in items)


def plan_restore(
    objects: Iterable[ObjectKey],
    *,
    generation: int | None = None,
    txid: int | None = None,
    timestamp_us: int | None = None,
) -> RestorePlan:
    """Choose what to fetch to rebuild the database at the target (the latest state by default)."""
    by_generation: dict[int, list[ObjectKey]] = defaultdict(list)
    for obj in objects:
        by_generation[obj.generation].append(obj)
    based = {g: items for g, items in by_generation.items() if any(isinstance(k, SnapshotKey) for k in items)}
    if not based:
        raise ReplicaEmpty("the replica holds no snapshot to restore from")
    if generation is not None:
        if generation not in based:
            raise RestoreError(f"generation {generation:016x} is not in the replica (or has no snapshot)")
        chosen = generation
    elif timestamp_us is not None:
        started = {g: min(k.time_us for k in items if isinstance(k, SnapshotKey)) for g, items in based.items()}
        candidates = [g for g in based if started[g] <= timestamp_us]
        if not candidates:
            raise RestoreError("the target time is before the earliest restorable point of the replica")
        chosen = max(candidates, key=lambda g: (started[g], g))
    else:
        chosen = max(based, key=lambda g: (_last_write(based[g]), g))

    items = based[chosen]

    def reachable(k: ObjectKey) -> bool:
        if isinstance(k, SnapshotKey):
            return (txid is None or k.txid <= txid) and (timestamp_us is None or k.time_us <= timestamp_us)
        return (txid is None or k.last_txid <= txid) and (timestamp_us is None or k.last_time_us <= timestamp_us)

    snapshots = [k for k in items if isinstance(k, SnapshotKey) and reachable(k)]
    if not snapshots:
        raise RestoreError(f"generation {chosen:016x} has no snapshot at or before the target")
    snapshot = max(snapshots, key=keys.chain_order)
    segments = sorted(
        (k for k in items if isinstance(k, SegmentKey) and k.last_txid > snapshot.txid), key=lambda k: k.first_txid
    )
    chain: list[SegmentKey] = []
    expected = snapshot.txid + 1
    for seg in segments:
        if seg.first_txid != expected:
            # A gap matters if the target lies beyond it: then we must not stop short and call it done.
            needed = (txid is None or seg.first_txid <= txid) and (
                timestamp_us is None or seg.last_time_us <= timestamp_us
            )
            if needed:
                raise RestoreError(
                    f"generation {chosen:016x} is missing transactions {expected}..{seg.first_txid - 1} "
                    f"(next object: {seg.key}); restore an earlier point or another generation"
                )
            break
        if not reachable(seg):
            break
        chain.append(seg)
        expected = seg.last_txid + 1
    return RestorePlan(chosen, snapshot, tuple(chain))


def list_objects(client: ReplicaClient) -> list[ObjectKey]:
    """Every object of ours in the replica; foreign keys are skipped (see keys.parse)."""
    return keys.parse_listing(o.key for o in client.list(keys.GENERATIONS))[0]


def apply_plan(client: ReplicaClient, plan: RestorePlan, output: Path) -> None:
    """Build the database of `plan` at `output`, which must not exist yet."""
    output = output.absolute()
    if output.exists():
        raise RestoreError(f"{output} already exists; remove it or restore elsewhere")
    if not output.parent.is_dir():
        raise RestoreError(f"{output.parent} is not a directory")
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.restore-", dir=output.parent)
    except OSError as exc:
        raise RestoreError(f"cannot write in {output.parent}: {exc.strerror}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "r+b") as f:
            _write_snapshot(client, plan.snapshot, f)
            for seg in plan.segments:
                _apply_segment(client, seg, f)
            f.flush()
            os.fsync(f.fileno())
        _check_integrity(tmp)
        for suffix in ("-wal", "-shm"):
            Path(f"{output}{suffix}").unlink(missing_ok=True)
        os.link(tmp, output)  # fails rather than replacing an output that appeared meanwhile
        _fsync_dir(output.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _write_snapshot(client: ReplicaClient, key: SnapshotKey, f: BinaryIO) -> None:
    reader = SegmentReader(ObjectReader(client, key.key), key.key, expect=key)
    for chunk in reader.image():
        f.write(chunk)


def _apply_segment(client: ReplicaClient, key: SegmentKey, f: BinaryIO) -> None:
    reader = SegmentReader(ObjectReader(client, key.key), key.key, expect=key)
    page_size = reader.header.page_size
    for commit, pages in reader.commits():
        for pgno, image in pages:
            f.seek((pgno - 1) * page_size)
            f.write(image)
        f.truncate(commit.db_size * page_size)


def _check_integrity(path: Path) -> None:
    conn = apsw.Connection(f"file:{path}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
    try:
        result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
    except apsw.Error as exc:
        raise RestoreError(f"the restored database does not open: {exc}") from None
    finally:
        conn.close()
    if result != ["ok"]:
        raise RestoreError(f"the restored database fails integrity_check: {'; '.join(map(str, result[:3]))}")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def restore(client: ReplicaClient, output: Path, **target: int | None) -> RestorePlan:
    """Plan and apply: the latest state, or the one at `txid=` / `timestamp_us=` / in `generation=`."""
    plan = plan_restore(list_objects(client), **target)
    apply_plan(client, plan, output)
    return plan
