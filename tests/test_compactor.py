"""The compactor's edge: it builds from its own cache of what was spooled, survives restarts, stays bounded,
and a segment it cannot build costs only that segment."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from replicator import segment
from replicator.compactor import Compactor
from replicator.keys import SegmentKey
from replicator.segment import Commit, Kind, SegmentHeader
from replicator.storage import FileClient

PS = 512
GEN = 0x42
S = 1_000_000


def spool_segment(spool: FileClient, txid: int, second: float) -> SegmentKey:
    """One transaction writing page 1 (and page txid + 1), shipped at `second`."""
    t = int(second * S)
    pages = (1, txid + 1)
    header = SegmentHeader(Kind.SEGMENT, PS, txid + 1, GEN, txid, txid, t, t, 1, 2)
    data = segment.encode(header, [(Commit(txid, t, txid + 1, pages), [bytes([txid % 256]) * PS] * 2)])
    key = segment.key_for(header)
    assert isinstance(key, SegmentKey)
    spool.put(key.key, data)
    return key


@pytest.fixture
def spool(tmp_path: Path) -> FileClient:
    return FileClient(tmp_path / "spool")


def compactor(tmp_path: Path, spool: FileClient, built: list[SegmentKey], **options: int) -> Compactor:
    return Compactor(tmp_path / "cache", spool, [1.0, 3.0], on_built=lambda k, _: built.append(k), **options)


def test_it_builds_each_passed_window_into_the_spool_without_reading_the_spool_back(
    tmp_path: Path, spool: FileClient
) -> None:
    built: list[SegmentKey] = []
    c = compactor(tmp_path, spool, built)
    for txid in range(1, 13):
        key = spool_segment(spool, txid, txid * 0.25)
        c.add(key)
        spool.delete([key.key])  # uploaded everywhere: the spool lets it go, the cache keeps it
    assert c.due(3 * S)
    c.run(3 * S)
    assert [(k.level, k.first_txid, k.last_txid) for k in built] == [(1, 1, 3), (1, 4, 7), (1, 8, 11), (2, 1, 11)]
    assert all(spool.exists(k.key) for k in built)
    assert c.due_us == 4 * S  # txid 12's window of a second


def test_a_restart_builds_from_what_the_cache_kept(tmp_path: Path, spool: FileClient) -> None:
    first: list[SegmentKey] = []
    c = compactor(tmp_path, spool, first)
    c.start(GEN)
    for txid in range(1, 5):
        c.add(spool_segment(spool, txid, 0.1 * txid))
    again: list[SegmentKey] = []
    c = compactor(tmp_path, spool, again)
    c.start(GEN)
    assert c.due(1 * S)
    c.run(1 * S)
    assert [(k.level, k.first_txid, k.last_txid) for k in again] == [(1, 1, 4)]


def test_a_new_generation_empties_the_cache(tmp_path: Path, spool: FileClient) -> None:
    c = compactor(tmp_path, spool, [])
    c.add(spool_segment(spool, 1, 0.1))
    c.start(GEN + 1)
    assert c.held == {} and list(c.cache.list("generations/")) == []


def test_the_cache_stays_under_its_limit_dropping_the_oldest(tmp_path: Path, spool: FileClient) -> None:
    c = compactor(tmp_path, spool, [], limit=600)  # about four of these small segments
    keys = [spool_segment(spool, txid, 0.1 * txid) for txid in range(1, 9)]
    for key in keys:
        c.add(key)
    assert sum(c.held.values()) <= 600 and keys[-1] in c.held and keys[0] not in c.held


def test_the_cache_never_holds_more_than_its_disk_has_left_free(
    tmp_path: Path, spool: FileClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = compactor(tmp_path, spool, [])
    keys = [spool_segment(spool, txid, 0.1 * txid) for txid in range(1, 9)]
    monkeypatch.setattr(os, "statvfs", lambda _: SimpleNamespace(f_bavail=600, f_frsize=1))  # 600 bytes free
    for key in keys:
        c.add(key)
    assert 0 < sum(c.held.values()) <= 600 and keys[-1] in c.held


def test_the_cache_gives_way_when_the_spool_cannot_write(
    tmp_path: Path, spool: FileClient, caplog: pytest.LogCaptureFixture
) -> None:
    c = compactor(tmp_path, spool, [])
    for txid in range(1, 5):
        c.add(spool_segment(spool, txid, 0.1 * txid))
    c.shed()
    assert c.held == {} and list(c.cache.list("generations/")) == []
    assert "the spool needs the room" in caplog.text


def test_a_damaged_cache_file_costs_only_its_window_and_is_said_once(
    tmp_path: Path, spool: FileClient, caplog: pytest.LogCaptureFixture
) -> None:
    built: list[SegmentKey] = []
    c = compactor(tmp_path, spool, built)
    keys = [spool_segment(spool, txid, txid * 0.25) for txid in range(1, 9)]
    for key in keys:
        c.add(key)
    damaged = c.cache.path(keys[1].key)
    damaged.write_bytes(damaged.read_bytes()[:-3])
    c.run(2 * S)
    assert [(k.level, k.first_txid, k.last_txid) for k in built] == [(1, 4, 7)]
    assert sum("compaction: cannot build" in r.message for r in caplog.records) == 1
