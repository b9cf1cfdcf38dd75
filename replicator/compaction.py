"""Compacted segments: a run of consecutive segments merged into one object that restores to the run's end,
and the plan of which to build (pure, from the segments at hand and the time).

Rules:
1. Applying the merged object to a database gives exactly what applying its inputs one after another
   gives (tests/test_compaction.py checks it over random histories). It restores to its last txid only:
   the states inside it are not kept, the finer objects it was made from keep them.
2. It holds, for each page still in the database at the end, the newest image written after the last
   time the database shrank below that page; pages cut off by a shrink and never written again are left
   out. Where the database was ever smaller inside the run than at its end, a leading record with no
   pages cuts the file to that smallest size first, so a page cut and later re-grown reads as zeros, as it
   would have.
3. Merging is streaming and bounded: page images wait in a scratch file (one slot per page, the newest
   image overwrites the older), only page numbers are held in memory.
4. Level k has an interval (`--compaction 10s,1m,...`, each a multiple of the one below). Once a window
   [n * interval, (n + 1) * interval) of commit times has passed, the segments of lower levels that end in
   it are merged along their cheapest cover (paths.py): the compacted segments below where they exist,
   shipped ones elsewhere. A window whose cover is one object already gets nothing (the same bytes are
   never stored at two levels), one that has its level-k segment is done, and one whose cover has a gap
   (inputs no longer at hand) is skipped: restore then uses the finer objects there. Windows of one level
   never share a segment, so their compacted segments never overlap (which restore would call a fork).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from . import paths
from .keys import SegmentKey
from .segment import Commit, Kind, Readable, SegmentHeader, SegmentReader, SegmentWriter, Writable


class NotARun(ValueError):
    """The inputs are not consecutive segments of one generation and page size."""


def merge(
    inputs: Iterable[tuple[SegmentKey, Readable]],
    out: Writable,
    *,
    level: int,
    scratch: Path | None = None,
    zstd_level: int = 1,
) -> SegmentHeader:
    """Write to `out` one segment of `level` equivalent to `inputs` (rule 1); returns its header.

    Each input is verified as it is read (CorruptSegment names it); `out` gets nothing unless all were good.
    """
    with tempfile.TemporaryFile(dir=scratch) as images:
        fd = images.fileno()
        slots: dict[int, int] = {}  # pgno -> slot in the scratch file
        written: dict[int, int] = {}  # pgno -> index of the record that wrote its newest image
        records: list[Commit] = []
        first: SegmentHeader | None = None
        previous: SegmentHeader | None = None
        for key, source in inputs:
            reader = SegmentReader(source, key.key, expect=key)
            header = reader.header
            if header.kind is not Kind.SEGMENT:
                raise NotARun(f"{key.key} is not a segment")
            if previous is not None and (
                header.generation != previous.generation
                or header.page_size != previous.page_size
                or header.first_txid != previous.last_txid + 1
            ):
                raise NotARun(f"{key.key} does not continue txid {previous.last_txid} of the run")
            page_size = header.page_size
            for commit, pages in reader.commits():
                index = len(records)
                for pgno, image in pages:
                    slot = slots.setdefault(pgno, len(slots))
                    os.pwrite(fd, image, slot * page_size)
                    written[pgno] = index
                records.append(Commit(commit.txid, commit.time_us, commit.db_size, ()))
            first = first or header
            previous = header
        if first is None or previous is None:
            raise NotARun("nothing to merge")

        # Rule 2: a page survives if no record from its newest write on cut the database below it.
        lowest_from = [0] * len(records)
        low = records[-1].db_size
        for i in range(len(records) - 1, -1, -1):
            low = min(low, records[i].db_size)
            lowest_from[i] = low
        kept = sorted(p for p, i in written.items() if lowest_from[i] >= p)
        end = records[-1]
        out_records: list[Commit] = []
        if lowest_from[0] < end.db_size:
            cut = max(i for i, r in enumerate(records) if r.db_size == lowest_from[0])
            out_records.append(records[cut])
        out_records.append(Commit(end.txid, end.time_us, end.db_size, kept))

        merged = SegmentHeader(
            Kind.SEGMENT,
            previous.page_size,
            end.db_size,
            first.generation,
            first.first_txid,
            end.txid,
            first.first_time_us,
            end.time_us,
            len(out_records),
            len(kept),
            level=level,
        )
        ps = merged.page_size
        writer = SegmentWriter(out, merged, level=zstd_level)
        for record in out_records[:-1]:
            writer.write_commit(record, [])
        writer.write_commit(out_records[-1], (_pread_exact(fd, ps, slots[p] * ps) for p in kept))
        writer.close()
        return merged


def _pread_exact(fd: int, size: int, offset: int) -> bytes:
    data = os.pread(fd, size, offset)
    if len(data) != size:  # our own scratch file: only a vanished or damaged disk gets here
        raise OSError(f"short read from the compaction scratch file at offset {offset}")
    return data


@dataclass(frozen=True, slots=True)
class Job:
    """One compacted segment to build (rule 4): its inputs in chain order, and the key it will have."""

    level: int
    inputs: tuple[SegmentKey, ...]

    @property
    def output(self) -> SegmentKey:
        first, last = self.inputs[0], self.inputs[-1]
        return SegmentKey(first.generation, first.first_txid, last.last_txid, last.last_time_us, self.level)


def plan_compaction(held: Iterable[SegmentKey], intervals_us: Sequence[int], now_us: int) -> list[Job]:
    """What to build now from `held` (one generation's segments at hand, any level), lowest level first.

    Each job's output counts as held for the levels above it, so one call plans every level that is due.
    """
    have = set(held)
    jobs: list[Job] = []
    for level, interval in enumerate(intervals_us, start=1):
        windows: dict[int, list[SegmentKey]] = {}
        done: set[int] = set()
        for seg in have:
            n = seg.last_time_us // interval
            if seg.level == level:
                done.add(n)
            elif seg.level < level and (n + 1) * interval <= now_us:
                windows.setdefault(n, []).append(seg)
        for n in sorted(windows.keys() - done):
            members = windows[n]
            first = min(k.first_txid for k in members)
            last = max(k.last_txid for k in members)
            best = paths.cheapest([paths.start(first - 1)], members, {})
            if last not in best:
                continue  # a gap: some inputs are no longer at hand
            cover = paths.objects_to(best, last)
            if len(cover) > 1:
                job = Job(level, tuple(k for k in cover if isinstance(k, SegmentKey)))
                jobs.append(job)
                have.add(job.output)
    return jobs


def spent(held: Iterable[SegmentKey], intervals_us: Sequence[int], now_us: int) -> set[SegmentKey]:
    """The segments no compaction will need again: inside a compacted segment of a higher level, or in a
    window of the top level that has passed (planned by then: call this after building what was planned)."""
    have = list(held)
    if not intervals_us:
        return set(have)
    top = intervals_us[-1]
    out = {k for k in have if (k.last_time_us // top + 1) * top <= now_us}
    compacted = [k for k in have if k.level > 0]
    for k in have:
        if any(c.level > k.level and c.first_txid <= k.first_txid and k.last_txid <= c.last_txid for c in compacted):
            out.add(k)
    return out
