"""The spool's process-wide cap (spool.py): what is dropped beyond it, and what never is."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from replicator.keys import ObjectKey, SegmentKey, SnapshotKey, chain_order
from replicator.lineage import NOTHING, Position
from replicator.spool import Outbox, SpoolBudget
from replicator.storage.file import FileClient

GENERATION = 7
SIZE = 1000


@dataclass
class _Client:
    url: str


@dataclass
class FakeUploader:
    """What the outbox reads of an uploader: how far its replica got, and whether it is reachable."""

    url: str
    position: Position = NOTHING
    failing_since: float | None = None
    refused: str | None = None
    held: set[ObjectKey] | None = None

    @property
    def client(self) -> _Client:
        return _Client(self.url)


def outbox(tmp_path: Path, budget: SpoolBudget, name: str, *uploaders: FakeUploader) -> Outbox:
    box = Outbox(FileClient(tmp_path / name), budget, database=name)
    box.uploaders = uploaders
    return box


def spool(box: Outbox, *keys: SnapshotKey | SegmentKey) -> None:
    for key in keys:
        box.spool.put(key.key, b"x" * SIZE)
        box.add(key, SIZE)


def snapshot(txid: int) -> SnapshotKey:
    return SnapshotKey(GENERATION, txid, 1)


def segment(txid: int) -> SegmentKey:
    return SegmentKey(GENERATION, txid, txid, 1)


def spooled(box: Outbox) -> list[str]:
    return sorted(o.key for o in box.spool.list())


def test_under_the_limit_nothing_is_dropped(tmp_path: Path) -> None:
    budget = SpoolBudget(10 * SIZE)
    box = outbox(tmp_path, budget, "a", FakeUploader("s3://down", failing_since=1.0))
    spool(box, snapshot(0), segment(1), segment(2))
    assert len(spooled(box)) == 3
    assert budget.used == 3 * SIZE


def test_beyond_the_limit_what_only_an_unreachable_replica_waits_for_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    budget = SpoolBudget(3 * SIZE)
    box = outbox(tmp_path, budget, "a", FakeUploader("s3://down", failing_since=1.0))
    spool(box, snapshot(0), segment(1), segment(2), segment(3))
    assert spooled(box) == []
    assert budget.used == 0
    assert box.next_after(NOTHING) is None  # the replica, when back, asks for a fresh snapshot
    assert "only s3://down, unreachable, waited for" in caplog.text


def test_what_a_reachable_replica_still_needs_is_never_dropped(tmp_path: Path) -> None:
    budget = SpoolBudget(3 * SIZE)
    up = FakeUploader("file:///up", position=chain_order(segment(2)))
    box = outbox(tmp_path, budget, "a", FakeUploader("s3://down", failing_since=1.0), up)
    spool(box, snapshot(0), segment(1), segment(2), segment(3), segment(4))
    assert spooled(box) == sorted([segment(3).key, segment(4).key])
    assert budget.used == 2 * SIZE


def test_with_every_replica_reachable_the_spool_may_exceed_the_limit_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    budget = SpoolBudget(2 * SIZE)
    box = outbox(tmp_path, budget, "a", FakeUploader("s3://slow"))
    spool(box, snapshot(0), segment(1), segment(2), segment(3))
    assert len(spooled(box)) == 4
    assert caplog.text.count("nothing is dropped") == 1


def test_the_spool_with_the_most_to_drop_sheds_first(tmp_path: Path) -> None:
    budget = SpoolBudget(5 * SIZE)
    small = outbox(tmp_path, budget, "small", FakeUploader("s3://down/small", failing_since=1.0))
    large = outbox(tmp_path, budget, "large", FakeUploader("s3://down/large", failing_since=1.0))
    spool(small, snapshot(0))
    spool(large, snapshot(0), segment(1), segment(2), segment(3), segment(4))
    assert len(spooled(small)) == 1
    assert spooled(large) == []


def test_a_database_no_longer_followed_is_not_shed(tmp_path: Path) -> None:
    budget = SpoolBudget(2 * SIZE)
    box = outbox(tmp_path, budget, "a", FakeUploader("s3://down", failing_since=1.0))
    box.close()
    spool(box, snapshot(0), segment(1), segment(2))
    assert len(spooled(box)) == 3


# -- compacted segments: extras beside the chain (rule 4) ---------------------------------------------


def compacted(first: int, last: int) -> SegmentKey:
    return SegmentKey(GENERATION, first, last, 1, level=1)


def spool_extra(box: Outbox, key: SegmentKey) -> None:
    box.spool.put(key.key, b"x" * SIZE)
    box.add_extra(key, SIZE)


def test_a_compacted_segment_is_told_apart_from_the_shipped_one_that_ends_where_it_does(tmp_path: Path) -> None:
    box = outbox(tmp_path, SpoolBudget(10 * SIZE), "a", FakeUploader("r"))
    spool(box, segment(4))
    assert box.has(segment(4)) and not box.has(compacted(1, 4))
    spool_extra(box, compacted(1, 4))
    assert box.has(compacted(1, 4))


def test_a_compacted_segment_goes_to_a_replica_once_its_chain_reaches_its_end(tmp_path: Path) -> None:
    box = outbox(tmp_path, SpoolBudget(10 * SIZE), "a")
    spool_extra(box, compacted(1, 4))
    assert box.next_extra(chain_order(segment(3)), set()) is None
    assert box.next_extra(chain_order(segment(4)), set()) == compacted(1, 4)
    assert box.next_extra(chain_order(segment(4)), {compacted(1, 4)}) is None


def test_a_compacted_segment_leaves_the_spool_once_every_replica_has_it_or_moved_on(tmp_path: Path) -> None:
    has_it = FakeUploader("a", chain_order(segment(4)), held={compacted(1, 4)})
    lacks_it = FakeUploader("b", chain_order(segment(4)), held=set())
    box = outbox(tmp_path, SpoolBudget(10 * SIZE), "a", has_it, lacks_it)
    spool_extra(box, compacted(1, 4))
    box.collect()
    assert compacted(1, 4).key in spooled(box)
    lacks_it.position = (GENERATION + 1, 0, 1)  # re-based on a newer generation: it no longer needs it
    box.collect()
    assert compacted(1, 4).key not in spooled(box)


def test_over_the_limit_compacted_segments_only_unreachable_replicas_lack_are_shed(tmp_path: Path) -> None:
    up = FakeUploader("up", chain_order(segment(4)), held={compacted(1, 4)})
    down = FakeUploader("down", chain_order(segment(4)), failing_since=1.0, held=set())
    box = outbox(tmp_path, SpoolBudget(SIZE // 2), "a", up, down)
    spool_extra(box, compacted(1, 4))
    assert compacted(1, 4).key not in spooled(box)
