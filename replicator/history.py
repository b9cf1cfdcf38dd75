"""What a replica's objects say about its history, the same for restore, retention and the listings.

Rules:
1. A generation is the set of objects that carry its id; it starts at its earliest snapshot (segments
   without a snapshot can never be restored, so they start nothing).
2. Its last write is the latest time any of its objects records (a snapshot's time, a segment's last).
3. Times are shown as RFC 3339 in UTC to the microsecond, so a time copied from a listing into
   `restore --timestamp` includes that very object.
"""

from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from .keys import ObjectKey, SegmentKey, SnapshotKey


def by_generation(objects: Iterable[ObjectKey]) -> dict[int, list[ObjectKey]]:
    grouped: dict[int, list[ObjectKey]] = defaultdict(list)
    for obj in objects:
        grouped[obj.generation].append(obj)
    return dict(grouped)


def by_level(segments: Iterable[SegmentKey]) -> dict[int, list[SegmentKey]]:
    grouped: dict[int, list[SegmentKey]] = defaultdict(list)
    for seg in segments:
        grouped[seg.level].append(seg)
    return dict(grouped)


def overlaps(segments: Iterable[SegmentKey]) -> list[tuple[SegmentKey, SegmentKey]]:
    """Pairs (a, b) of one level where b starts inside a: two writers shipped the same transactions.

    Objects of different levels overlap by design (compaction.py). Per level, sorted by first txid, any
    overlap shows as one between neighbours, so neighbours are all that is compared.
    """
    found = []
    for run in by_level(segments).values():
        run.sort(key=lambda k: k.first_txid)
        found += [(a, b) for a, b in itertools.pairwise(run) if b.first_txid <= a.last_txid]
    return found


def started(items: Iterable[ObjectKey]) -> int | None:
    """Rule 1: when a generation's objects say it started (its earliest snapshot), or None."""
    return min((k.time_us for k in items if isinstance(k, SnapshotKey)), default=None)


def time_of(key: ObjectKey) -> int:
    """When an object's last change was captured, microseconds: a snapshot's time, a segment's last commit."""
    return key.time_us if isinstance(key, SnapshotKey) else key.last_time_us


def last_write(items: Iterable[ObjectKey]) -> int:
    """Rule 2."""
    return max(time_of(k) for k in items)


def restorable_span(objects: Iterable[ObjectKey]) -> tuple[int, int] | None:
    """(earliest, latest) restorable times in the replica, microseconds; None if nothing is restorable."""
    items = list(objects)
    first = started(items)
    return None if first is None else (first, last_write(items))


def format_time(time_us: int) -> str:
    """Rule 3."""
    moment = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=time_us)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
