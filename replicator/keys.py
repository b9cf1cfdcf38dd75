"""The one place object keys are built and parsed.

Layout, relative to the replica's root (an S3 bucket prefix or a directory):

    generations/<generation>/snapshots/<txid>-<time>.snap
    generations/<generation>/segments/<first txid>-<last txid>-<last commit time>.seg
    generations/<generation>/levels/<level>/<first txid>-<last txid>-<last commit time>.seg

Segments as shipped are level 0; a compacted segment (compaction.py) merges a run of them into one object
of level 1..9 that restores only to its end. `levels/` sorts before `segments/`, so a LIST from
`past_segments` (the probe) sees none of them.

Every number is 16 lowercase hex digits, so lexical order is numeric order and a listing alone is enough to
plan a restore (which generation, which snapshot, which segments, up to which time) without a HEAD or GET.
Times are microseconds since the Unix epoch, taken from the object's own header when it was written; the
object is still verified against its key when read. Keys found in a bucket are parsed strictly: anything else
is foreign (or damaged) and reported, never guessed at.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import MalformedKey

GENERATIONS = "generations/"
_HEX = "[0-9a-f]{16}"
_SNAPSHOT = re.compile(rf"generations/({_HEX})/snapshots/({_HEX})-({_HEX})\.snap")
_SEGMENT = re.compile(rf"generations/({_HEX})/(?:segments|levels/([1-9]))/({_HEX})-({_HEX})-({_HEX})\.seg")
_MAX = (1 << 64) - 1
MAX_LEVEL = 9


def _hex(value: int) -> str:
    if not 0 <= value <= _MAX:
        raise ValueError(f"{value} does not fit in 64 bits")
    return f"{value:016x}"


@dataclass(frozen=True, order=True, slots=True)
class SnapshotKey:
    """A whole database image as of transaction `txid`."""

    generation: int
    txid: int
    time_us: int

    @property
    def key(self) -> str:
        return f"{generation_prefix(self.generation)}snapshots/{_hex(self.txid)}-{_hex(self.time_us)}.snap"


@dataclass(frozen=True, order=True, slots=True)
class SegmentKey:
    """Transactions first_txid..last_txid; the last of them committed at `last_time_us`.

    Level 0 is a segment as shipped (the chain); levels 1..9 are compacted ones (compaction.py).
    """

    generation: int
    first_txid: int
    last_txid: int
    last_time_us: int
    level: int = 0

    def __post_init__(self) -> None:
        if self.first_txid > self.last_txid:
            raise ValueError(f"segment txid range {self.first_txid}..{self.last_txid} is reversed")
        if not 0 <= self.level <= MAX_LEVEL:
            raise ValueError(f"segment level {self.level} is not in 0..{MAX_LEVEL}")

    @property
    def key(self) -> str:
        where = "segments/" if self.level == 0 else f"levels/{self.level}/"
        return (
            f"{generation_prefix(self.generation)}{where}"
            f"{_hex(self.first_txid)}-{_hex(self.last_txid)}-{_hex(self.last_time_us)}.seg"
        )


ObjectKey = SnapshotKey | SegmentKey


def generation_prefix(generation: int) -> str:
    return f"{GENERATIONS}{_hex(generation)}/"


def parse(key: str) -> ObjectKey:
    """Parse a key found in a replica; raise MalformedKey for anything that is not exactly ours."""
    if m := _SNAPSHOT.fullmatch(key):
        gen, txid, ts = (int(g, 16) for g in m.groups())
        return SnapshotKey(gen, txid, ts)
    if m := _SEGMENT.fullmatch(key):
        gen, first, last, ts = (int(m.group(i), 16) for i in (1, 3, 4, 5))
        if first > last:
            raise MalformedKey(key, "segment txid range is reversed")
        return SegmentKey(gen, first, last, ts, int(m.group(2) or 0))
    raise MalformedKey(key, "not a snapshot or segment key of this tool")


def parse_listing(names: Iterable[str]) -> tuple[list[ObjectKey], list[str]]:
    """Split the keys listed in a replica into our objects and foreign ones (reported, never fatal)."""
    ours: list[ObjectKey] = []
    foreign: list[str] = []
    for name in names:
        try:
            ours.append(parse(name))
        except MalformedKey:
            foreign.append(name)
    return ours, foreign


def past_segments(generation: int, txid: int) -> str:
    """A key that sorts after every segment of `generation` starting at or before `txid`, and before the rest.

    A LIST from there shows segments of the generation that reach past `txid`, then the generation's
    snapshots, then every newer generation: all a probe needs to spot a second writer (uploader.py).
    """
    return f"{generation_prefix(generation)}segments/{_hex(txid)}~"


def new_generation_id(now_ms: int | None = None) -> int:
    """A time-sortable id: 48 bits of Unix milliseconds, then 16 random bits."""
    ms = int(time.time() * 1000) if now_ms is None else now_ms
    return ((ms & ((1 << 48) - 1)) << 16) | secrets.randbits(16)


def chain_order(key: ObjectKey) -> tuple[int, int, int]:
    """Order of objects along a replica's history: by generation, then by the txid they reach.

    A snapshot at txid N comes after the segment that ends at N (and a generation's first snapshot, at
    txid 0, before everything else in it). Upload and restore both follow this order.
    """
    if isinstance(key, SnapshotKey):
        return key.generation, key.txid, 1
    return key.generation, key.last_txid, 0
