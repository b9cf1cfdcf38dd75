"""Turning captured WAL transactions into segments: each page once, at its last version in the batch."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from . import segment, wal

# A batch is cut at a transaction boundary once it holds this much WAL: bounds object size, not latency.
MAX_BATCH_BYTES = 256 << 20


@dataclass(frozen=True, slots=True)
class BatchPlan:
    """Which WAL frame supplies each page of a batch's single commit record."""

    pgnos: tuple[int, ...]  # sorted, each <= db_size
    frames: tuple[int, ...]  # frames[i] holds the last version of pgnos[i]
    db_size: int
    transactions: int


def plan_batch(transactions: Sequence[wal.Transaction]) -> BatchPlan:
    """Fold transactions into one state change: the last frame of each page, pages past the end dropped."""
    last: dict[int, int] = {}
    for t in transactions:
        for i, pgno in enumerate(t.pgnos):
            last[pgno] = t.first_frame + i
    db_size = transactions[-1].db_size
    pgnos = sorted(p for p in last if p <= db_size)
    return BatchPlan(tuple(pgnos), tuple(last[p] for p in pgnos), db_size, len(transactions))


def split_batches(transactions: Sequence[wal.Transaction], frame_size: int) -> Iterator[Sequence[wal.Transaction]]:
    """Consecutive runs of whole transactions, each under MAX_BATCH_BYTES of WAL (or one big transaction).

    `transactions` follow each other in one WAL life, so their frames are one run."""
    if transactions and (transactions[-1].end_frame - transactions[0].first_frame) * frame_size <= MAX_BATCH_BYTES:
        yield transactions  # the usual case, without a look at each transaction
        return
    start = 0
    size = 0
    for i, t in enumerate(transactions):
        if i > start and size + t.frame_count * frame_size > MAX_BATCH_BYTES:
            yield transactions[start:i]
            start, size = i, 0
        size += t.frame_count * frame_size
    if start < len(transactions):
        yield transactions[start:]


# Page images for (pgno, frame) pairs, in order: how encoders get pages without knowing where they live.
PageReader = Callable[[Sequence[tuple[int, int]]], list[bytes]]
_READ_CHUNK = 1024  # pages fetched per call: bounds memory for any batch size


def paged(read_pages: PageReader, pairs: Sequence[tuple[int, int]]) -> Iterator[bytes]:
    for start in range(0, len(pairs), _READ_CHUNK):
        yield from read_pages(pairs[start : start + _READ_CHUNK])


def encode_batch(
    out: segment.Writable,
    read_pages: PageReader,
    page_size: int,
    plan: BatchPlan,
    *,
    generation: int,
    first_txid: int,
    time_us: int,
    level: int = segment.DEFAULT_LEVEL,
) -> segment.SegmentHeader:
    """Write the batch as one segment (a single commit record) to `out`; return its header."""
    last_txid = first_txid + plan.transactions - 1
    seg = segment.SegmentHeader(
        segment.Kind.SEGMENT,
        page_size,
        plan.db_size,
        generation,
        first_txid,
        last_txid,
        time_us,
        time_us,
        1,
        len(plan.pgnos),
    )
    writer = segment.SegmentWriter(out, seg, level=level)
    pages = paged(read_pages, list(zip(plan.pgnos, plan.frames, strict=True)))
    writer.write_commit(segment.Commit(last_txid, time_us, plan.db_size, plan.pgnos), pages)
    writer.close()
    return seg
