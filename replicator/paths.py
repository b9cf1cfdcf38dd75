"""The cheapest chains of objects through a generation's history: the one search restore and compaction share.

A snapshot stands at its txid; a segment leads from txid first - 1 to txid last. Objects only go forward,
so taking segments by first txid settles each txid before any segment starting after it is tried: one pass
finds, for every reachable txid, the fewest objects (then bytes) that reach it, whatever mix of levels
overlaps (compaction.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .keys import ObjectKey, SegmentKey


@dataclass(frozen=True, slots=True)
class Step:
    """The cheapest way found to a txid: its cost, the object that reaches it, and the txid that one leaves."""

    gets: int
    bytes: int
    last: ObjectKey | None  # None at a start given without an object
    previous: int | None  # None at a start


def start(txid: int, obj: ObjectKey | None = None, size: int = 0) -> tuple[int, Step]:
    """A place a chain may start: a snapshot (one GET), or a bare txid that costs nothing."""
    return txid, Step(0 if obj is None else 1, size, obj, None)


def cheapest(
    starts: Iterable[tuple[int, Step]], segments: Iterable[SegmentKey], sizes: Mapping[ObjectKey, int]
) -> dict[int, Step]:
    """Every txid reachable from `starts` through `segments`, with the cheapest step into it."""
    best: dict[int, Step] = {}

    def offer(node: int, step: Step) -> None:
        known = best.get(node)
        if known is None or (step.gets, step.bytes) < (known.gets, known.bytes):
            best[node] = step

    for node, step in starts:
        offer(node, step)
    for seg in sorted(segments, key=lambda k: (k.first_txid, k.last_txid, k.level)):
        before = best.get(seg.first_txid - 1)
        if before is not None:
            offer(seg.last_txid, Step(before.gets + 1, before.bytes + sizes.get(seg, 0), seg, seg.first_txid - 1))
    return best


def objects_to(best: Mapping[int, Step], end: int) -> list[ObjectKey]:
    """The objects of the cheapest chain into `end`, first to last (a bare start contributes none)."""
    chain: list[ObjectKey] = []
    node: int | None = end
    while node is not None:
        step = best[node]
        if step.last is not None:
            chain.append(step.last)
        node = step.previous
    chain.reverse()
    return chain
