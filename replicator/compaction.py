"""Compacted segments: a run of consecutive segments merged into one object that restores to the run's end.

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
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from pathlib import Path

from .keys import SegmentKey
from .segment import Commit, Kind, Readable, SegmentHeader, SegmentReader, SegmentWriter, Writable

COMPACTED_ZSTD_LEVEL = 3  # written once, read by every restore: worth more CPU than a shipped segment's level 1


class NotARun(ValueError):
    """The inputs are not consecutive segments of one generation and page size."""


def merge(
    inputs: Iterable[tuple[SegmentKey, Readable]],
    out: Writable,
    *,
    level: int,
    scratch: Path | None = None,
    zstd_level: int = COMPACTED_ZSTD_LEVEL,
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
