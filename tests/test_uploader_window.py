"""The restorable window an uploader reports (metrics, `status`) is the one its replica's listing gives, kept
current by its own uploads without reading the whole listing at every look."""

from __future__ import annotations

import time
from pathlib import Path

from replicator.history import restorable_span
from replicator.keys import SegmentKey, SnapshotKey
from replicator.spool import Outbox
from replicator.storage import MemoryClient
from replicator.storage.file import FileClient
from replicator.uploader import Uploader, inventory

GENERATION = 7
T = time.time_ns() // 1000 - 60_000_000  # a minute ago: well inside the retention window


def spool(box: Outbox, key: SnapshotKey | SegmentKey) -> None:
    box.spool.put(key.key, b"x")
    box.add(key, 1)
    box.set_head(GENERATION, key.txid if isinstance(key, SnapshotKey) else key.last_txid)


def drain(uploader: Uploader) -> None:
    """Step it until its replica holds the head (retention runs as a snapshot goes up)."""
    for _ in range(100):
        uploader.step()
        if uploader.position[:2] == uploader.outbox.head:
            return
    raise AssertionError("the uploader did not reach the head")


def test_the_window_follows_uploads_and_matches_the_listing(tmp_path: Path) -> None:
    replica = MemoryClient()
    box = Outbox(FileClient(tmp_path / "spool"))
    uploader = Uploader(box, replica, "app.db", None, retention_us=10**12)
    box.uploaders = [uploader]
    spool(box, SnapshotKey(GENERATION, 0, T))
    drain(uploader)
    assert uploader.restorable() == (T, T) == restorable_span(inventory(replica))
    for txid in range(1, 6):
        spool(box, SegmentKey(GENERATION, txid, txid, T + txid * 500))
        drain(uploader)
        assert uploader.restorable() == (T, T + txid * 500) == restorable_span(inventory(replica))
    spool(box, SnapshotKey(GENERATION, 5, T + 4_000))
    drain(uploader)
    assert uploader.restorable() == (T, T + 4_000) == restorable_span(inventory(replica))


def test_after_retention_deletes_the_window_starts_at_what_is_left(tmp_path: Path) -> None:
    replica = MemoryClient()
    box = Outbox(FileClient(tmp_path / "spool"))
    uploader = Uploader(box, replica, "app.db", None, retention_us=5_000_000)
    box.uploaders = [uploader]
    spool(box, SnapshotKey(GENERATION, 0, T))
    spool(box, SegmentKey(GENERATION, 1, 1, T + 1))
    drain(uploader)
    assert uploader.restorable() == (T, T + 1)
    spool(box, SnapshotKey(GENERATION, 1, T + 50_000_000))  # a new snapshot: the old one leaves the window
    drain(uploader)
    assert uploader.restorable() == restorable_span(inventory(replica)) == (T + 50_000_000, T + 50_000_000)
