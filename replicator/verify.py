"""`replicator verify`: proof from a replica's own bytes that it restores, not from what replication reported.

Rules:
1. From the listing alone (`inspect`, pure): keys that are not ours, objects no restore can use (a
   generation without a snapshot, a segment that starts by its generation's earliest snapshot), two
   objects of one level that cover a txid both (two writers), and shipped segments that do not continue
   the chain (a gap).
2. Every object is read whole and verified as restore verifies it: header, key against header, the
   compressed body's checksum, the trailer. Segments are kept on local disk for rule 3 while their
   generation is checked (the scratch directory is the caller's; snapshots are only streamed).
3. Each compacted segment is rebuilt from the objects of the levels below that it stands for (their
   cheapest cover, paths.py) and must hold the same header, records and pages. Where those inputs are gone
   (retention), it is said, not failed.
4. The restorable window of each generation: from its earliest snapshot to the furthest txid its verified
   objects reach.
5. A drill restores the latest state into a temporary file (restore's own checks and integrity_check),
   runs an optional SQL sentinel on it, and reports how long the restore took.
Findings are typed (`Kind`); some are problems (the replica may not restore what it should: exit 1), the
rest are notes.
"""

from __future__ import annotations

import enum
import itertools
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import apsw

from . import paths
from .compaction import merge
from .errors import CorruptSegment, UnsupportedFormatVersion
from .history import by_generation, overlaps
from .keys import ObjectKey, SegmentKey, SnapshotKey
from .rebuild import Listing, ReplicaEmpty, RestoreError, list_replica, restore
from .segment import SegmentReader
from .storage import ReplicaClient


class Kind(enum.Enum):
    CORRUPT = "corrupt"  # fails its checks (rule 2)
    GAP = "gap"  # a shipped segment that does not continue the chain
    FORK = "fork"  # two objects of one level cover a txid both
    COMPACTED_DIFFERS = "compacted-differs"  # not what the segments it stands for give (rule 3)
    NOTHING_RESTORABLE = "nothing-restorable"
    DRILL_FAILED = "drill-failed"
    FOREIGN = "foreign"  # not a key of ours: ignored by restore
    UNUSABLE = "unusable"  # ours, but no restore can use it (left over; retention removes such objects)
    UNCHECKED = "unchecked"  # a compacted segment whose inputs are gone: read and verified, not rebuilt

    @property
    def problem(self) -> bool:
        return self not in (Kind.FOREIGN, Kind.UNUSABLE, Kind.UNCHECKED)


@dataclass(frozen=True, slots=True)
class Finding:
    kind: Kind
    key: str
    detail: str


@dataclass(frozen=True, slots=True)
class Window:
    """What one generation restores (rule 4): every txid from its earliest snapshot to `last_txid`."""

    generation: int
    first_txid: int
    first_time_us: int
    last_txid: int
    last_time_us: int
    objects: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Drill:
    txid: int
    generation: int
    seconds: float
    sentinel: list[tuple[object, ...]] | None


@dataclass(slots=True)
class Report:
    url: str
    windows: list[Window] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    objects_read: int = 0
    bytes_read: int = 0
    drill: Drill | None = None

    @property
    def healthy(self) -> bool:
        return not any(f.kind.problem for f in self.findings)


def inspect(listing: Listing) -> list[Finding]:
    """Rule 1: what the listing alone says is wrong or unusable."""
    found = [Finding(Kind.FOREIGN, key, "not an object of this tool; restore ignores it") for key in listing.foreign]
    based = False
    for generation, items in sorted(by_generation(listing.objects).items()):
        snapshots = sorted(k.txid for k in items if isinstance(k, SnapshotKey))
        segments = [k for k in items if isinstance(k, SegmentKey)]
        if not snapshots:
            found += [Finding(Kind.UNUSABLE, k.key, f"generation {generation:016x} has no snapshot") for k in items]
            continue
        based = True
        usable = [k for k in segments if k.first_txid > snapshots[0]]
        found += [
            Finding(Kind.UNUSABLE, k.key, "starts by the generation's earliest snapshot")
            for k in segments
            if k.first_txid <= snapshots[0]
        ]
        found += _forks(usable)
        found += _gaps([k for k in usable if k.level == 0], snapshots)
    if not based:
        found.append(Finding(Kind.NOTHING_RESTORABLE, "", "the replica holds no snapshot to restore from"))
    return found


def _forks(segments: Iterable[SegmentKey]) -> list[Finding]:
    return [
        Finding(Kind.FORK, b.key, f"covers txid {b.first_txid} as {a.key} does (level {b.level})")
        for a, b in overlaps(segments)
    ]


def _gaps(shipped: Sequence[SegmentKey], snapshots: Sequence[int]) -> list[Finding]:
    """Shipped segments must each start right after another one or a snapshot."""
    ends = {k.last_txid for k in shipped} | set(snapshots)
    found = []
    for seg in sorted(shipped, key=lambda k: k.first_txid):
        if seg.first_txid - 1 not in ends:
            before = max((e for e in ends if e < seg.first_txid), default=snapshots[0])
            found.append(
                Finding(Kind.GAP, seg.key, f"transactions {before + 1}..{seg.first_txid - 1} are missing before it")
            )
    return found


def verify(
    client: ReplicaClient,
    *,
    scratch: Path | None = None,
    parallelism: int = 8,
    drill: bool = False,
    sentinel: str | None = None,
) -> Report:
    """Check a replica (rules 1-4) and, with `drill`, restore its latest state (rule 5)."""
    listing = list_replica(client)
    report = Report(client.url, findings=inspect(listing))
    unusable = {f.key for f in report.findings if f.kind is Kind.UNUSABLE}
    with tempfile.TemporaryDirectory(prefix="replicator-verify-", dir=scratch) as tmp:
        for _, items in sorted(by_generation(listing.objects).items()):
            wanted = [k for k in items if k.key not in unusable]
            if wanted:
                _check_generation(client, listing, wanted, tmp=Path(tmp), parallelism=parallelism, report=report)
        if drill:
            _drill(client, Path(tmp), parallelism, sentinel, report)
    return report


def _check_generation(
    client: ReplicaClient,
    listing: Listing,
    items: Sequence[ObjectKey],
    *,
    tmp: Path,
    parallelism: int,
    report: Report,
) -> None:
    here = tmp / f"{items[0].generation:016x}"
    here.mkdir()
    good: list[ObjectKey] = []
    with ThreadPoolExecutor(max(1, parallelism), thread_name_prefix="verify") as pool:
        for key, problem in zip(items, pool.map(lambda k: _read(client, k, here), items), strict=True):
            report.objects_read += 1
            report.bytes_read += listing.sizes[key]
            if problem is None:
                good.append(key)
            else:
                report.findings.append(Finding(Kind.CORRUPT, key.key, problem))
    segments = [k for k in good if isinstance(k, SegmentKey)]
    for compacted in (k for k in segments if k.level > 0):
        finding = _rebuild(compacted, segments, here)
        if finding is not None:
            report.findings.append(finding)
    snapshots = [k for k in good if isinstance(k, SnapshotKey)]
    if snapshots:
        best = paths.cheapest((paths.start(s.txid, s) for s in snapshots), segments, {})
        end = max(best)
        times = {k.txid: k.time_us for k in snapshots} | {k.last_txid: k.last_time_us for k in segments}
        first = min(snapshots, key=lambda k: (k.txid, k.time_us))
        report.windows.append(
            Window(
                first.generation,
                first.txid,
                first.time_us,
                end,
                times[end],
                len(items),
                sum(listing.sizes[k] for k in items),
            )
        )


def _local(key: ObjectKey, here: Path) -> Path:
    return here / key.key.replace("/", "~")


def _read(client: ReplicaClient, key: ObjectKey, here: Path) -> str | None:
    """Rule 2: None if the object verifies, else what is wrong with it. Segments are kept in `here`."""
    stream = client.stream(key.key)
    try:
        if isinstance(key, SnapshotKey):
            for _ in SegmentReader(stream, key.key, expect=key).image():
                pass
            return None
        with open(_local(key, here), "w+b") as f:
            while chunk := stream.read(1 << 20):
                f.write(chunk)
            f.seek(0)
            for _, pages in SegmentReader(f, key.key, expect=key).commits():
                for _ in pages:
                    pass
        return None
    except (CorruptSegment, UnsupportedFormatVersion) as exc:
        return str(exc)


def _rebuild(compacted: SegmentKey, segments: Sequence[SegmentKey], here: Path) -> Finding | None:
    """Rule 3."""
    below = [
        k
        for k in segments
        if k.level < compacted.level and compacted.first_txid <= k.first_txid and k.last_txid <= compacted.last_txid
    ]
    best = paths.cheapest([paths.start(compacted.first_txid - 1)], below, {})
    if compacted.last_txid not in best:
        return Finding(Kind.UNCHECKED, compacted.key, "the segments it stands for are gone; verified on its own")
    inputs = [k for k in paths.objects_to(best, compacted.last_txid) if isinstance(k, SegmentKey)]
    rebuilt = here / f"rebuilt-{compacted.level}-{compacted.last_txid}"
    with open(rebuilt, "w+b") as out:
        merge(_opened(inputs, here), out, level=compacted.level, scratch=here)
        out.seek(0)
        with open(_local(compacted, here), "rb") as theirs:
            difference = _difference(SegmentReader(out, "rebuilt"), SegmentReader(theirs, compacted.key))
    rebuilt.unlink()
    if difference is None:
        return None
    return Finding(Kind.COMPACTED_DIFFERS, compacted.key, f"{difference} (rebuilt from {len(inputs)} objects)")


def _opened(inputs: Sequence[SegmentKey], here: Path) -> Iterator[tuple[SegmentKey, BinaryIO]]:
    for key in inputs:
        with open(_local(key, here), "rb") as f:
            yield key, f


def _difference(ours: SegmentReader, theirs: SegmentReader) -> str | None:
    if ours.header != theirs.header:
        return "its header differs from the one rebuilt"
    for (a, a_pages), (b, b_pages) in zip(ours.commits(), theirs.commits(), strict=True):
        if a != b:
            return f"commit record {b.txid} differs"
        for (pgno, x), (_, y) in zip(a_pages, b_pages, strict=True):
            if x != y:
                return f"page {pgno} differs"
    return None


def _drill(client: ReplicaClient, tmp: Path, parallelism: int, sentinel: str | None, report: Report) -> None:
    """Rule 5."""
    out = tmp / "drill.db"
    started = time.perf_counter()
    try:
        plan = restore(client, out, parallelism=parallelism).plan
    except ReplicaEmpty:
        return  # said by inspect
    except (RestoreError, CorruptSegment, UnsupportedFormatVersion) as exc:
        report.findings.append(Finding(Kind.DRILL_FAILED, "", f"restore failed: {exc}"))
        return
    seconds = time.perf_counter() - started
    rows: list[tuple[object, ...]] | None = None
    if sentinel is not None:
        conn = apsw.Connection(str(out), flags=apsw.SQLITE_OPEN_READONLY)
        try:
            rows = [tuple(r) for r in itertools.islice(conn.execute(sentinel), 20)]
        except apsw.Error as exc:
            report.findings.append(Finding(Kind.DRILL_FAILED, "", f"the sentinel query failed: {exc}"))
        finally:
            conn.close()
        if rows == []:
            report.findings.append(Finding(Kind.DRILL_FAILED, "", "the sentinel query returned no rows"))
    assert plan is not None  # asked for no leniency: a restore rebuilds or raises
    report.drill = Drill(plan.txid, plan.generation, seconds, rows)
