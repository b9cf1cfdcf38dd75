"""Compaction as users run it: the replicator builds compacted segments from what it shipped, every replica
gets them, and a restore from them is the same database as a restore from the shipped segments alone, at
every point, in fewer objects. Killing the replicator at any moment never costs restorability."""

from __future__ import annotations

import random
import time
from pathlib import Path

from conftest import Replica
from harness import Replicator, Writer, inventory, restored_rows, rows

from replicator.keys import SegmentKey, SnapshotKey
from replicator.rebuild import list_replica, plan_restore
from replicator.storage import MemoryClient
from replicator.storage.base import ReplicaClient

LEVELS = ("--sync-interval", "100ms", "--compaction", "1s,3s")


def replicator_for(db: Path, replica: Replica, *options: str) -> Replicator:
    return Replicator(db, [replica.url], (*LEVELS, *options), replica.env)


def shipped_only(client: ReplicaClient) -> MemoryClient:
    """A copy of the replica without its compacted segments: what restore had to work with before them."""
    copy = MemoryClient("shipped-only")
    for info in client.list("generations/"):
        if "/levels/" not in info.key:
            copy.put(info.key, client.get(info.key))
    return copy


def compacted(client: ReplicaClient) -> list[SegmentKey]:
    return [k for k in inventory(client) if isinstance(k, SegmentKey) and k.level > 0]


def test_every_replica_gets_compacted_segments_and_restores_from_them_exactly(
    app_db: Path, replica: Replica, tmp_path: Path
) -> None:
    writer = Writer(app_db, tmp_path / "commits.log").start(count=1400, rate=200)
    repl = replicator_for(app_db, replica).start()
    writer.wait()
    time.sleep(1.2)  # the last window passes while the replicator runs
    assert repl.stop() == 0, repl.output
    levels = {k.level for k in compacted(replica.client)}
    assert levels == {1, 2}, repl.output

    assert restored_rows(replica.client, tmp_path) == rows(app_db)
    listing = list_replica(replica.client)
    with_levels = plan_restore(listing.objects)
    without = plan_restore([k for k in listing.objects if not (isinstance(k, SegmentKey) and k.level)])
    assert with_levels.txid == without.txid
    assert len(with_levels.objects) * 3 < len(without.objects)

    fine = shipped_only(replica.client)
    began = min(k.time_us for k in listing.objects if isinstance(k, SnapshotKey)) / 1e6
    times = sorted(t for _, t in writer.committed() if t > began)  # the app may start before we do
    for moment in random.Random(3).sample(times, 6):
        at = int(moment * 1e6)
        assert restored_rows(replica.client, tmp_path, timestamp_us=at) == restored_rows(
            fine, tmp_path, timestamp_us=at
        )


def test_kill_9_at_any_moment_of_compaction_leaves_every_point_restorable(
    app_db: Path, file_replica: Replica, tmp_path: Path
) -> None:
    writer = Writer(app_db, tmp_path / "commits.log").start(count=100_000, rate=300)
    rng = random.Random(11)
    for _ in range(4):
        repl = replicator_for(app_db, file_replica, "--compaction", "500ms,1s").start()
        time.sleep(rng.uniform(1.0, 2.5))
        repl.kill()
        listing = list_replica(file_replica.client)
        latest = plan_restore(listing.objects)
        fine = shipped_only(file_replica.client)
        assert restored_rows(file_replica.client, tmp_path) == restored_rows(fine, tmp_path)
        # the app checkpoints while nothing runs, which may start a new generation: points come from the newest
        newest = [k for k in listing.objects if k.generation == latest.generation]
        points = [k.last_txid for k in newest if isinstance(k, SegmentKey)]
        point = rng.choice(points or [latest.snapshot.txid])
        assert restored_rows(file_replica.client, tmp_path, txid=point) == restored_rows(fine, tmp_path, txid=point)
        assert latest.txid == plan_restore(list_replica(fine).objects).txid
    repl = replicator_for(app_db, file_replica, "--compaction", "500ms,1s").start()
    time.sleep(1.5)
    writer.stop()
    assert repl.stop() == 0, repl.output
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)
    assert compacted(file_replica.client)


def test_compaction_none_ships_only_what_was_captured(app_db: Path, file_replica: Replica, tmp_path: Path) -> None:
    writer = Writer(app_db, tmp_path / "commits.log").start(count=500, rate=250)
    repl = replicator_for(app_db, file_replica, "--compaction", "none").start()
    writer.wait()
    time.sleep(1.2)
    assert repl.stop() == 0, repl.output
    assert compacted(file_replica.client) == []
    assert restored_rows(file_replica.client, tmp_path) == rows(app_db)
